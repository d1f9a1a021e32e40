//! `strata import`: snapshots from a root filesystem tarball, an OCI image layout or a
//! docker-archive tar.

use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::cli::{GlobalArgs, ImportArgs};
use crate::snapshot::{open, print_snapshot};

/// `strata import ROOTFS | --oci PATH | --docker-archive TAR | --docker IMAGE [--ref NAME]
/// [--tag NAME]`.
pub(crate) fn import(global: &GlobalArgs, args: &ImportArgs) -> Result<()> {
    if let Some(image) = &args.docker {
        return crate::import_docker::import_docker(global, image, args.tag.as_deref());
    }
    let started = Instant::now();
    let engine = open(global)?;
    let tag = args.tag.as_deref();
    let reference = args.reference.as_deref();
    let row = if let Some(path) = &args.oci {
        strata_oci::import_oci(&engine, path, reference, tag)
            .with_context(|| format!("cannot import the OCI image {}", path.display()))?
            .snapshot
    } else if let Some(path) = &args.docker_archive {
        strata_oci::import_docker_archive(&engine, path, reference, tag)
            .with_context(|| format!("cannot import the docker archive {}", path.display()))?
            .snapshot
    } else {
        let rootfs = args.rootfs.as_ref().expect("clap requires one source");
        let progress = strata_cas::Progress::new();
        let _shown = crate::progress::watch("importing", &progress);
        engine
            .import_with_progress(rootfs, tag, &progress)
            .with_context(|| format!("cannot import {}", rootfs.display()))?
    };
    print_snapshot(global.json, &row, tag, started, "imported")
}
