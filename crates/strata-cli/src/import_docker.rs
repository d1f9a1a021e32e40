//! `strata import --docker IMAGE --tag NAME`: a base snapshot from an image of the local
//! Docker engine, read through the Engine API (`docker save`) layer by layer, each layer a
//! snapshot on the one below, so images that share layers share snapshots.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context as _, Result};
use strata::docker::{DockerDriver, DockerOptions};
use strata_cas::{CreateOptions, LayerInfo, Limits};

use crate::cli::GlobalArgs;

pub(crate) fn import_docker(global: &GlobalArgs, image: &str, tag: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let engine = crate::snapshot::open(global)?;
    let driver = DockerDriver::new(DockerOptions::new(1));
    let mut stored: HashMap<String, LayerInfo> = HashMap::new();
    let order = driver
        .save_image(image, &mut |path, layer| {
            // Every header is validated as the layer is stored.
            let info =
                engine
                    .cas()
                    .put_tar(layer, &CreateOptions::default(), &Limits::default())?;
            stored.insert(path.to_owned(), info);
            Ok(())
        })
        .with_context(|| format!("cannot read image {image} from the docker engine"))?;
    let mut parent = None;
    let mut last = None;
    for (i, path) in order.iter().enumerate() {
        let info = &stored[path];
        let top = i + 1 == order.len();
        let row = engine
            .add_snapshot(parent.as_ref(), &info.id, if top { tag } else { None })
            .with_context(|| format!("cannot record layer {path} of image {image}"))?;
        parent = Some(row.id);
        last = Some(row);
    }
    let row = last.with_context(|| format!("image {image} has no layers"))?;
    crate::snapshot::print_snapshot(global.json, &row, tag, started, "imported")
}
