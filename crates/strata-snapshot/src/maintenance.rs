//! Keeping a store healthy: leaf-first LRU prune, garbage collection of unreferenced layers
//! (and of relocated variants no checkout uses), disk usage, the removal of chosen layers
//! (never from under a snapshot), and a consistency check that can repair what a crash left
//! behind.
//!
//! `fsck` checks what [`Engine::open`] recovers and more (see the engine's module docs for
//! the crash model): a repaired store checks clean, and no repair drops a snapshot.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use strata_cas::LayerId;

use crate::SnapshotId;
use crate::engine::{CheckoutHealth, Engine, Result, failpoint, overlay_mounts, remove_tree};

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
    /// Unpacked layers made by overlay commits without a flush, now flushed and trusted.
    pub settled: u64,
    /// Relocated variants of unpacked layers (`<layer>@<root>`) for roots where no
    /// checkout is tracked any more.
    pub variants: u64,
    /// Trees deleted from the trash (released checkouts, leftovers of dead processes)
    /// that no background deletion had finished.
    pub trash: u64,
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
    /// Relocated variants and hard-linked twins of unpacked layers (`<layer>@…`), made for
    /// overlay checkouts; `gc` removes the variants of roots no checkout uses any more.
    pub variants: u64,
    /// Tracked checkouts.
    pub checkouts: u64,
}

/// What [`Engine::remove_layers`] may remove besides the layers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveLayersOptions {
    /// Also remove every snapshot whose stack holds one of the layers: those made of it and
    /// everything built on them, with their tags. Without it, such layers are refused.
    pub with_snapshots: bool,
}

/// A snapshot that needs a layer: its own, or one of its ancestors'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerUser {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// The layer it needs.
    pub layer: LayerId,
    /// Its tags, by name.
    pub tags: Vec<String>,
}

/// What [`Engine::remove_layers`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerRemoval {
    /// Layers removed: their blobs, index rows and unpacked directories.
    pub layers: Vec<LayerId>,
    /// Layers asked for that the store did not hold (neither a blob nor a row).
    pub missing: Vec<LayerId>,
    /// Snapshots removed because they needed one of the layers, children before parents.
    pub snapshots: Vec<LayerUser>,
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
        // Views and leases of dead processes must not keep their snapshots alive. A view that
        // cannot be swept now only keeps its snapshot a little longer: not worth failing for.
        let _ = self.cache_sweep_dead_views();
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
                    failpoint("prune.removed");
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
    /// directories; unpacked directories no row mentions; and blobs no row mentions, once
    /// old enough.
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
            failpoint("gc.row");
            report.bytes += self.cas().stat(&layer).map_or(0, |b| b.compressed_size);
            self.cas().remove(&layer)?;
            failpoint("gc.blob");
            self.remove_unpacked(&layer, &mut unpacked)?;
            report.layers += 1;
        }
        // Unpacked directories are only made for recorded layers (a commit moves its upper
        // dir in after recording, under the shared lock), so under the exclusive lock one
        // without a row is left over from a crashed gc, or from a copy of a snapshot pruned
        // meanwhile: no grace period is needed.
        for (hex, paths) in std::mem::take(&mut unpacked) {
            if self.layer_row_missing(&hex)? {
                for path in paths {
                    remove_tree(&path)?;
                }
                report.orphans += 1;
            }
        }
        for id in self.cas().ids()? {
            let known = self.with_index(|ix| Ok(ix.layer(&id)?.is_some()))?;
            if !known && older_than(&self.cas().blob_path(&id), ORPHAN_GRACE) {
                self.cas().remove(&id)?;
                self.remove_unpacked(&id, &mut unpacked)?;
                report.orphans += 1;
            }
        }
        report.settled = self.settle_unsynced()?;
        report.variants = self.remove_unused_variants()?;
        report.trash = self.empty_trash()?;
        Ok(report)
    }

    /// Removes the relocated variants (`<layer>@<root hash>`) of roots that no tracked
    /// checkout has: each was made for checkouts at one root, and would otherwise stay until
    /// its layer goes. Twins (`@dup-<n>`) are per layer and stay. Call it under the
    /// exclusive gc lock: checkouts hold it shared from finding a variant to mounting it.
    fn remove_unused_variants(&self) -> Result<u64> {
        let live: HashSet<String> = self
            .with_index(|ix| Ok(ix.checkouts()?))?
            .iter()
            .map(|row| crate::engine::variant_suffix(&row.root_path))
            .collect();
        let dir = self.unpacked_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(crate::engine::io_error("list", &dir))? {
            let entry = entry.map_err(crate::engine::io_error("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((_, suffix)) = name.split_once('@') else {
                continue;
            };
            if suffix.starts_with("dup-") || live.contains(suffix) {
                continue;
            }
            // Renamed aside first, so that no half-removed variant is ever found by its name
            // (a crash leaves a `tmp-` directory that recovery removes).
            let aside = dir.join(crate::engine::unique_name("tmp-"));
            fs::rename(entry.path(), &aside)
                .map_err(crate::engine::io_error("move aside", &entry.path()))?;
            remove_tree(&aside)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes layers from the store: blob, index row and unpacked directories. A layer that
    /// a snapshot needs (its own layer or an ancestor's) is refused with
    /// [`Error::LayersNeeded`](crate::Error::LayersNeeded), which names every such snapshot
    /// and its tags, and nothing is removed; with [`RemoveLayersOptions::with_snapshots`],
    /// those snapshots are removed first, all or none: refused while one of them is checked
    /// out, leased, or in use by a cache. Their other layers are left for [`Engine::gc`].
    /// Holds the store's gc lock exclusively, so no commit can start needing a layer
    /// meanwhile.
    pub fn remove_layers(
        &self,
        ids: &[LayerId],
        opts: &RemoveLayersOptions,
    ) -> Result<LayerRemoval> {
        let _lock = self.gc_lock(true)?;
        let tags = self.with_index(|ix| Ok(ix.tags()?))?;
        let mut users: Vec<(u32, LayerUser)> = Vec::new();
        for id in ids {
            for row in self.with_index(|ix| Ok(ix.snapshots_needing_layer(id)?))? {
                // A snapshot that needs two of the layers is listed once.
                if users.iter().any(|(_, u)| u.snapshot == row.id) {
                    continue;
                }
                let user = LayerUser {
                    snapshot: row.id,
                    layer: *id,
                    tags: tags
                        .iter()
                        .filter(|(_, s)| *s == row.id)
                        .map(|(t, _)| t.clone())
                        .collect(),
                };
                users.push((row.depth, user));
            }
        }
        if !users.is_empty() && !opts.with_snapshots {
            return Err(crate::Error::LayersNeeded {
                users: users.into_iter().map(|(_, u)| u).collect(),
            });
        }
        // Children before parents, whichever layer made them needed. Durably: once a blob
        // is gone, no snapshot that needs it may come back with a lost write.
        let mut order = users.clone();
        order.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
        let ids_in_order: Vec<SnapshotId> = order.iter().map(|(_, u)| u.snapshot).collect();
        if !ids_in_order.is_empty() {
            self.with_index(|ix| Ok(ix.durably(|ix| ix.remove_snapshots(&ids_in_order))?))?;
        }
        let mut report = LayerRemoval {
            snapshots: order.into_iter().map(|(_, u)| u).collect(),
            ..LayerRemoval::default()
        };
        let mut unpacked = self.unpacked_entries()?;
        for id in ids {
            if report.layers.contains(id) || report.missing.contains(id) {
                continue;
            }
            // The row before the blob, as in `gc`.
            let had_row = match self.with_index(|ix| Ok(ix.remove_layer(id)?)) {
                Ok(()) => true,
                Err(crate::Error::Index(crate::index::Error::MissingLayer { .. })) => false,
                Err(e) => return Err(e),
            };
            let had_blob = self.cas().remove(id)?;
            self.remove_unpacked(id, &mut unpacked)?;
            if had_row || had_blob {
                report.layers.push(*id);
            } else {
                report.missing.push(*id);
            }
        }
        Ok(report)
    }

    /// Flushes the unpacked layers overlay commits left unflushed (one `syncfs`) and drops
    /// their `.unsynced` markers, so a reboot no longer makes them unpacked again. Under the
    /// exclusive gc lock no commit is between writing a marker and renaming its layer in.
    fn settle_unsynced(&self) -> Result<u64> {
        let dir = self.unpacked_dir();
        let mut markers = Vec::new();
        for entry in fs::read_dir(&dir).map_err(crate::engine::io_error("list", &dir))? {
            let entry = entry.map_err(crate::engine::io_error("list", &dir))?;
            if entry.file_name().to_string_lossy().ends_with(".unsynced") {
                markers.push(entry.path());
            }
        }
        if markers.is_empty() {
            return Ok(0);
        }
        #[cfg(target_os = "linux")]
        crate::engine::sync_filesystems(&[dir.as_path()])?;
        for marker in &markers {
            crate::engine::remove_tree(marker)?;
        }
        Ok(markers.len() as u64)
    }

    /// Whether `hex` spells a layer id that no layer row has (anything else in the unpacked
    /// dir is not the engine's, and is left alone).
    fn layer_row_missing(&self, hex: &str) -> Result<bool> {
        let Ok(id) = hex.parse::<LayerId>() else {
            return Ok(false);
        };
        self.with_index(|ix| Ok(ix.layer(&id)?.is_none()))
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
        let (mut unpacked, mut variants) = (0, 0);
        for (hex, paths) in self.unpacked_entries()? {
            if hex.parse::<LayerId>().is_err() {
                continue;
            }
            for path in paths {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.contains('@') {
                    variants += 1;
                } else if path.is_dir() {
                    unpacked += 1;
                }
            }
        }
        Ok(DiskUsage {
            snapshots: usage.snapshots,
            blobs: blobs.len() as u64,
            blob_bytes: blobs.iter().map(|b| b.compressed_size).sum(),
            layer_bytes: blobs.iter().map(|b| b.uncompressed_size).sum(),
            unpacked,
            variants,
            checkouts: usage.checkouts,
        })
    }

    /// Checks the store: every snapshot's layer is stored and intact; every layer marked
    /// unpacked is; every unpacked directory belongs to a layer; no unpack, state dir or
    /// overlay mount is left by a dead process; every tracked checkout is whole (its
    /// directory, its state, and for overlay its mount).
    ///
    /// With `repair`, fixes what can be fixed without losing a snapshot: marks are cleared,
    /// leftovers removed (mounts detached first), broken checkouts discarded, dead leases
    /// expired. A tracked overlay checkout whose mount is gone (after a crash or a reboot) is
    /// released, its uncommitted changes with it: commit it before repairing to keep them.
    /// Checkouts still being made by a live process are left alone, so a store in use may
    /// need a second pass once it is quiet. A missing or corrupt blob cannot be repaired.
    pub fn fsck(&self, repair: bool) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let mut report = |what: String, repaired: bool| problems.push(Problem { what, repaired });
        let snapshots = self.with_index(|ix| Ok(ix.snapshots()?))?;
        for row in &snapshots {
            if !self.cas().contains(&row.layer) {
                report(
                    format!(
                        "snapshot {} needs layer {}, which is not stored",
                        row.id, row.layer
                    ),
                    false,
                );
            }
        }

        // Checkouts before leftovers: discarding one leaves nothing behind.
        let mounts = overlay_mounts()?;
        for row in self.with_index(|ix| Ok(ix.checkouts()?))? {
            let why = match self.checkout_health(&row, Some(&mounts)) {
                CheckoutHealth::Healthy | CheckoutHealth::InProgress => continue,
                CheckoutHealth::Abandoned => {
                    "was being discarded or committed when its process died"
                }
                CheckoutHealth::HalfMade => "was being made when its process died",
                CheckoutHealth::Lost => "has lost its directory",
                CheckoutHealth::Unmounted => "is an overlay checkout that is not mounted",
            };
            if repair {
                self.discard(&row, true)?;
            }
            report(format!("checkout {} {why}", row.dir.display()), repair);
        }
        for state in self.stray_states()? {
            if repair {
                self.remove_stray_state(&state)?;
            }
            report(
                format!(
                    "{} is the state of no checkout (left by a process that died)",
                    state.display()
                ),
                repair,
            );
        }
        for tmp in self.partial_unpacks()? {
            if repair {
                self.discard_tree(&tmp)?;
            }
            report(
                format!(
                    "{} is an unfinished unpack of a dead process",
                    tmp.display()
                ),
                repair,
            );
        }

        // Unpacked layers and their marks. Every layer row is either used by a snapshot or
        // unreferenced.
        let unpacked = self.unpacked_entries()?;
        for (hex, paths) in &unpacked {
            if self.layer_row_missing(hex)? {
                for path in paths {
                    if repair {
                        remove_tree(path)?;
                    }
                    report(
                        format!("{} unpacks a layer the index does not know", path.display()),
                        repair,
                    );
                }
            }
        }
        let mut layers: Vec<LayerId> = snapshots.iter().map(|r| r.layer).collect();
        layers.extend(self.with_index(|ix| Ok(ix.unreferenced_layers()?))?);
        layers.sort();
        layers.dedup();
        for id in layers {
            let marked = self.with_index(|ix| Ok(ix.layer(&id)?.is_some_and(|l| l.unpacked)))?;
            let hex = id.to_hex();
            let present = unpacked.get(&hex).is_some_and(|paths| {
                paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| n == hex.as_str() || n == format!("{hex}.plain").as_str())
                })
            });
            if marked && !present {
                if repair {
                    self.with_index(|ix| Ok(ix.set_layer_unpacked(&id, false)?))?;
                }
                report(
                    format!("layer {id} is marked unpacked but its directory is missing"),
                    repair,
                );
            }
        }

        if repair {
            let expired = self.with_index(|ix| Ok(ix.expire_dead_leases()?))?;
            if expired > 0 {
                report(
                    format!("{expired} leases of processes that no longer run"),
                    true,
                );
            }
        }
        let verified = self.cas().verify()?;
        for bad in verified.corrupt {
            report(format!("layer {}: {}", bad.id, bad.reason), false);
        }
        // Repairs discard checkouts, whose trees are deleted in the background: finish that,
        // so the store is clean once fsck returns.
        if repair {
            self.wait_for_deletions();
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
