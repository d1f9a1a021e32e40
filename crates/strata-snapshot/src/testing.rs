//! Hooks that make a store look as crashes, dead processes and years of use leave it, for
//! Strata's own tests and benchmarks. **Not for embedders**: they bypass the engine's
//! invariants (a fabricated snapshot has no blob; a moved state dir or a handed-over view is
//! whatever the caller says). Built only with the `testing` cargo feature, which only the
//! crate's own tests and `xtask` turn on (tidy checks that `strata-build` and `strata-cli`
//! do not).

use std::path::{Path, PathBuf};

use strata_cas::LayerId;
use strata_process::Owner;

use crate::index::LayerRow;
use crate::{Engine, Result, Snapshot, SnapshotId};

impl Engine {
    /// Records a snapshot of layer `layer` on `parent` without storing the layer, as if made
    /// and last used at `time` (ms since the Unix epoch): index rows only, for stores with
    /// many snapshots made in moments (prune tests and benchmarks). `gc` then removes layer
    /// rows without blobs.
    pub fn fabricate_snapshot(
        &self,
        parent: Option<SnapshotId>,
        layer: LayerId,
        uncompressed_size: u64,
        compressed_size: u64,
        time: i64,
    ) -> Result<Snapshot> {
        let row = LayerRow {
            id: layer,
            uncompressed_size,
            compressed_size,
            unpacked: false,
            created: time,
        };
        let snapshot =
            self.with_index(|ix| Ok(ix.add_layer_and_snapshot(&row, parent, None, time)?))?;
        self.with_tags(snapshot)
    }

    /// The private state directory of the tracked checkout at `dir` (`dir` as recorded).
    pub fn checkout_state_dir(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let row = self.with_index(|ix| Ok(ix.checkout(dir)?))?;
        Ok(row.and_then(|r| r.state_dir))
    }

    /// Records `state` as the state directory of the tracked checkout at `dir` (`dir` as
    /// recorded), as if the process `state` is named after had made it. Moving the directory
    /// is the caller's.
    pub fn set_checkout_state_dir(&self, dir: &Path, state: &Path) -> Result<()> {
        self.with_index(|ix| {
            let row = ix.checkout(dir)?.ok_or_else(|| crate::Error::NotTracked {
                dir: dir.to_path_buf(),
            })?;
            ix.remove_checkout(dir)?;
            let moved = crate::index::CheckoutRow {
                state_dir: Some(state.to_path_buf()),
                ..row
            };
            Ok(ix.add_checkout(&moved)?)
        })
    }

    /// Hands the cache view at `dir` to process `owner`, as if that process had taken it;
    /// `false` if there is no such view.
    pub fn set_cache_view_owner(&self, dir: &Path, owner: Owner) -> Result<bool> {
        self.with_index(|ix| Ok(ix.set_cache_view_owner(dir, owner)?))
    }

    /// Records a view of cache `name` at `dir` held by process `owner`, without checking it
    /// out: what a process leaves when it dies right after recording a view.
    pub fn record_cache_view(&self, name: &str, dir: &Path, owner: Owner) -> Result<()> {
        self.record_view(name, dir, (0, 0), owner).map(|_| ())
    }

    /// Unpacks every layer of `snapshot` into the unpacked-layer cache, as an overlay
    /// checkout does (a portable one only fills it where the filesystem clones files);
    /// returns their directories, base first.
    pub fn unpack_snapshot(&self, snapshot: &SnapshotId) -> Result<Vec<PathBuf>> {
        let chain = self.with_index(|ix| Ok(ix.chain(snapshot)?))?;
        let ids: Vec<LayerId> = chain.iter().map(|row| row.layer).collect();
        self.ensure_unpacked(&ids)
    }

    /// Decides, for this engine, whether the store's filesystem counts as one that clones
    /// files, which steers portable checkouts of layers not unpacked yet: `true` fills the
    /// cache and copies from it, `false` streams the layers' blobs into the checkout. Only
    /// before the first such checkout; `false` if it came too late.
    pub fn assume_clones(&self, clones: bool) -> bool {
        self.clones.set(clones).is_ok()
    }

    /// Forgets that layer `id` is unpacked, so that the next checkout unpacks it again from
    /// its blob (as after a reboot, or on another machine). Removing the directories is the
    /// caller's.
    pub fn forget_unpacked(&self, id: &LayerId) -> Result<()> {
        self.with_index(|ix| Ok(ix.set_layer_unpacked(id, false)?))
    }
}
