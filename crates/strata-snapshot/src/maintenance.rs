//! Keeping a store healthy: leaf-first LRU prune, garbage collection of unreferenced layers,
//! disk usage, and a consistency check that can repair what a crash left behind.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use strata_cas::LayerId;

use crate::SnapshotId;
use crate::engine::{Engine, Result};

/// Blobs and unpacked directories that no index row mentions are only collected once they
/// are this old: a commit in another process may have stored them and not recorded them yet.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// What `prune` may delete. Snapshots still in use (children, tracked checkouts, leases of
/// live processes, tags) are never deleted.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Only snapshots last used before this time (milliseconds since the epoch); `None`: any.
    pub older_than: Option<i64>,
    /// Stop once at most this many snapshots remain.
    pub keep_count: Option<u64>,
    /// Stop once the layers of the remaining snapshots take at most this many bytes.
    pub keep_bytes: Option<u64>,
}

/// What `prune` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Snapshots deleted.
    pub snapshots: Vec<SnapshotId>,
    /// What the garbage collection after it freed.
    pub gc: GcReport,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Layers whose rows, blobs and unpacked directories were removed.
    pub layers: u64,
    /// Blob bytes freed.
    pub bytes: u64,
    /// Orphaned blobs and unpacked directories (no index row, older than the grace period).
    pub orphans: u64,
}

/// Disk usage of a store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskUsage {
    /// Snapshots in the index.
    pub snapshots: u64,
    /// Layer blobs stored.
    pub blobs: u64,
    /// Bytes of the blobs (compressed).
    pub blob_bytes: u64,
    /// Bytes of the layers uncompressed.
    pub layer_bytes: u64,
    /// Unpacked layer directories.
    pub unpacked: u64,
    /// Tracked checkouts.
    pub checkouts: u64,
}

/// One problem `fsck` found, and whether it was repaired.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What is wrong.
    pub what: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

impl Engine {
    /// Deletes unused snapshots, least recently used leaves first, until the limits hold;
    /// then collects the layers nothing refers to any more.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        self.with_index(|ix| Ok(ix.expire_dead_leases().map(|_| ())?))?;
        let older_than = opts.older_than.unwrap_or(i64::MAX);
        let limited = opts.keep_count.is_some() || opts.keep_bytes.is_some();
        let satisfied = |snapshots: u64, bytes: u64| {
            limited
                && opts.keep_count.is_none_or(|n| snapshots <= n)
                && opts.keep_bytes.is_none_or(|n| bytes <= n)
        };
        loop {
            // Usage is re-read once per batch (other processes work too) and kept up to date
            // locally in between; layers are counted as freed with their snapshot, which is
            // exact unless two snapshots share a layer.
            let usage = self.with_index(|ix| Ok(ix.usage()?))?;
            let (mut snapshots, mut bytes) = (usage.snapshots, usage.uncompressed_bytes);
            if satisfied(snapshots, bytes) {
                break;
            }
            // Candidates are re-read after every batch: deleting a leaf can make its parent a
            // leaf, and other processes may start using a snapshot meanwhile.
            let batch = self.with_index(|ix| Ok(ix.prune_candidates(older_than, 1024)?))?;
            if batch.is_empty() {
                break;
            }
            let mut deleted_any = false;
            for row in batch {
                if satisfied(snapshots, bytes) {
                    break;
                }
                // Removal re-checks, inside its transaction, that nothing uses the snapshot.
                let removed = self.with_index(|ix| {
                    let size = ix.layer(&row.layer)?.map_or(0, |l| l.uncompressed_size);
                    Ok(ix.remove_snapshot(&row.id).map(|()| size))
                })?;
                if let Ok(size) = removed {
                    report.snapshots.push(row.id);
                    snapshots -= 1;
                    bytes = bytes.saturating_sub(size);
                    deleted_any = true;
                }
            }
            if !deleted_any {
                break;
            }
        }
        report.gc = self.gc()?;
        Ok(report)
    }

    /// Removes layers no snapshot refers to: their index rows, blobs and unpacked
    /// directories; and blobs or unpacked directories no row mentions, once old enough.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.gc_lock(true)?;
        let mut report = GcReport::default();
        let mut unpacked = self.unpacked_entries()?;
        let unreferenced = self.with_index(|ix| Ok(ix.unreferenced_layers()?))?;
        for layer in unreferenced {
            // The row goes first: a concurrent checkout then fails cleanly instead of mounting
            // a half-deleted directory.
            if self.with_index(|ix| Ok(ix.remove_layer(&layer)?)).is_err() {
                continue; // referenced again meanwhile
            }
            report.bytes += self.cas().stat(&layer).map_or(0, |b| b.compressed_size);
            self.cas().remove(&layer)?;
            self.remove_unpacked(&layer, &mut unpacked)?;
            report.layers += 1;
        }
        for id in self.cas().ids()? {
            let known = self.with_index(|ix| Ok(ix.layer(&id)?.is_some()))?;
            if !known && older_than(&self.cas().blob_path(&id), ORPHAN_GRACE) {
                self.cas().remove(&id)?;
                self.remove_unpacked(&id, &mut unpacked)?;
                report.orphans += 1;
            }
        }
        Ok(report)
    }

    /// Unpacked directories by the layer id they start with (`<id>`, `<id>.plain`, and
    /// relocated variants `<id>@<root>`), listed once per collection.
    fn unpacked_entries(&self) -> Result<HashMap<String, Vec<PathBuf>>> {
        let dir = self.unpacked_dir();
        let mut map: HashMap<String, Vec<PathBuf>> = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(crate::engine::io_error("list", &dir))? {
            let entry = entry.map_err(crate::engine::io_error("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.get(..64) {
                map.entry(hex.to_owned()).or_default().push(entry.path());
            }
        }
        Ok(map)
    }

    fn remove_unpacked(
        &self,
        layer: &LayerId,
        unpacked: &mut HashMap<String, Vec<PathBuf>>,
    ) -> Result<()> {
        for path in unpacked.remove(&layer.to_hex()).unwrap_or_default() {
            crate::engine::remove_tree(&path)?;
        }
        Ok(())
    }

    /// Disk usage of the store.
    pub fn du(&self) -> Result<DiskUsage> {
        let usage = self.with_index(|ix| Ok(ix.usage()?))?;
        let blobs = self.cas().list()?;
        let unpacked = fs::read_dir(self.unpacked_dir())
            .map_err(crate::engine::io_error("list", &self.unpacked_dir()))?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with("tmp-"))
            .count() as u64;
        Ok(DiskUsage {
            snapshots: usage.snapshots,
            blobs: blobs.len() as u64,
            blob_bytes: blobs.iter().map(|b| b.compressed_size).sum(),
            layer_bytes: blobs.iter().map(|b| b.uncompressed_size).sum(),
            unpacked,
            checkouts: usage.checkouts,
        })
    }

    /// Checks that every snapshot's layer is stored, every unpacked mark is true, and every
    /// tracked checkout still exists; with `repair`, fixes what can be fixed without losing
    /// a valid snapshot (marks are cleared, dead checkouts forgotten, dead leases expired).
    pub fn fsck(&self, repair: bool) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let snapshots = self.with_index(|ix| Ok(ix.snapshots()?))?;
        for row in &snapshots {
            if !self.cas().contains(&row.layer) {
                problems.push(Problem {
                    what: format!(
                        "snapshot {} needs layer {}, which is not stored",
                        row.id, row.layer
                    ),
                    repaired: false,
                });
            }
        }
        let checkouts = self.with_index(|ix| Ok(ix.checkouts()?))?;
        for row in checkouts {
            let alive = row.dir.is_dir() && row.state_dir.as_ref().is_none_or(|s| s.is_dir());
            if !alive {
                let mut repaired = false;
                if repair {
                    let dir = row.dir.clone();
                    self.with_index(|ix| Ok(ix.remove_checkout(&dir).map(|_| ())?))?;
                    if let Some(state) = &row.state_dir {
                        crate::engine::remove_tree(state)?;
                    }
                    repaired = true;
                }
                problems.push(Problem {
                    what: format!(
                        "checkout {} has lost its directory or state",
                        row.dir.display()
                    ),
                    repaired,
                });
            }
        }
        if repair {
            let expired = self.with_index(|ix| Ok(ix.expire_dead_leases()?))?;
            if expired > 0 {
                problems.push(Problem {
                    what: format!("{expired} leases of processes that no longer run"),
                    repaired: true,
                });
            }
        }
        let report = self.cas().verify()?;
        for bad in report.corrupt {
            problems.push(Problem {
                what: format!("layer {}: {}", bad.id, bad.reason),
                repaired: false,
            });
        }
        Ok(problems)
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}
