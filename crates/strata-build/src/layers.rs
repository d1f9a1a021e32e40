//! A snapshot's layer chain as drivers with [`Layout::Layers`](strata_isolate::Layout::Layers)
//! read it: straight from the store, so such a driver needs no checkout.

use std::io::{self, Read};

use strata_cas::LayerId;
use strata_isolate::LayerChain;
use strata_snapshot::{Engine, SnapshotId};

use crate::Result;

/// The chain of one snapshot, its base first.
pub(crate) struct EngineChain<'e> {
    engine: &'e Engine,
    snapshot: String,
    snapshots: Vec<SnapshotId>,
    ids: Vec<LayerId>,
    layers: Vec<(String, u64)>,
}

impl<'e> EngineChain<'e> {
    pub(crate) fn new(engine: &'e Engine, id: &SnapshotId) -> Result<EngineChain<'e>> {
        let chain = engine.chain(id)?;
        let mut layers = Vec::with_capacity(chain.len());
        for s in &chain {
            let blob = engine.cas().stat(&s.layer)?;
            layers.push((s.layer.to_string(), blob.uncompressed_size));
        }
        Ok(EngineChain {
            engine,
            snapshot: id.to_hex(),
            snapshots: chain.iter().map(|s| s.id).collect(),
            ids: chain.iter().map(|s| s.layer).collect(),
            layers,
        })
    }

    fn layer(&self, index: usize) -> io::Result<&LayerId> {
        self.ids.get(index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("snapshot {} has no layer {index}", self.snapshot),
            )
        })
    }
}

impl LayerChain for EngineChain<'_> {
    fn snapshot(&self) -> &str {
        &self.snapshot
    }

    fn layers(&self) -> &[(String, u64)] {
        &self.layers
    }

    fn diff_id(&self, index: usize) -> io::Result<String> {
        let layer = self.layer(index)?;
        self.engine
            .oci_digests(layer)
            .map(|d| d.diff_id)
            .map_err(io::Error::other)
    }

    fn open(&self, index: usize) -> io::Result<Box<dyn Read + Send>> {
        let layer = self.layer(index)?;
        let reader = self
            .engine
            .cas()
            .open_layer(layer)
            .map_err(io::Error::other)?;
        Ok(Box::new(reader))
    }

    fn ancestor(&self, depth: usize) -> Option<String> {
        let i = depth.checked_sub(1)?;
        (depth < self.snapshots.len()).then(|| self.snapshots[i].to_hex())
    }
}
