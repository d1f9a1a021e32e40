//! Committing a checkout: its changes stored as a layer and recorded as a child snapshot.

use std::fs;
use std::path::Path;

use strata_cas::{Change, ChangeKind, CreateOptions, Progress};

use super::files::bytes_path;
use super::unpacked::mark_unsynced;
#[cfg(target_os = "linux")]
use super::unpacked::same_boot;
use super::{CheckoutMode, Engine, Error, Result, failpoint, failpoint_for, io_err};
use crate::index::{CheckoutRow, SnapshotRow};
use crate::{Snapshot, portable, relocate};

impl Engine {
    /// Commits a tracked checkout's changes as a child snapshot and releases the checkout.
    ///
    /// A commit that fails (a full disk, a change no layer can hold) stores nothing of its
    /// own: no temp file, no row (a blob stored before the index failed to record it is left
    /// for `gc`, like any blob no row names). The checkout stays tracked as it was, an
    /// overlay one mounted again, to be committed once the problem is fixed or released.
    pub fn commit(&self, dir: &Path, tag: Option<&str>) -> Result<Snapshot> {
        self.commit_with_progress(dir, tag, &Progress::default())
    }

    /// [`commit`](Engine::commit), advancing `progress` by the uncompressed bytes of the new
    /// layer as they are compressed; its total is set, once the changes are listed, to their
    /// file data plus an allowance for tar headers.
    pub fn commit_with_progress(
        &self,
        dir: &Path,
        tag: Option<&str>,
        progress: &Progress,
    ) -> Result<Snapshot> {
        let row = self.tracked(dir)?;
        let mode = row.mode;
        let state = row.state_dir.clone().unwrap_or_default();
        let unmounted = match mode {
            CheckoutMode::Overlay => self.unmount_to_commit(&row, &state)?,
            CheckoutMode::Portable => false,
        };
        let snapshot = match self.commit_changes(&row, mode, &state, tag, progress) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // Put the checkout back as it was. Should that fail too, it stays unmounted,
                // which `commit` and `release` handle.
                #[cfg(target_os = "linux")]
                if unmounted {
                    let _ = self.remount_overlay(&row, &state);
                }
                #[cfg(not(target_os = "linux"))]
                let _ = unmounted;
                return Err(e);
            }
        };
        self.discard(&row, false)?;
        self.with_tags(snapshot)
    }

    /// Unmounts an overlay checkout to commit its upper dir; whether it was mounted. Not
    /// mounted after a crash or a reboot, the upper dir is all a commit needs, unless the
    /// host went down since it was mounted (see `same_boot`).
    #[cfg(target_os = "linux")]
    fn unmount_to_commit(&self, row: &CheckoutRow, state: &Path) -> Result<bool> {
        let mounted = crate::overlay::is_mounted(&row.dir)?;
        if mounted {
            crate::overlay::unmount(&row.dir)?;
        } else if !same_boot(state) {
            return Err(Error::EarlierBoot {
                dir: row.dir.clone(),
            });
        }
        failpoint("commit.overlay.unmounted");
        Ok(mounted)
    }

    #[cfg(not(target_os = "linux"))]
    fn unmount_to_commit(&self, _: &CheckoutRow, _: &Path) -> Result<bool> {
        Err(Error::OverlayUnavailable)
    }

    /// Stores and records the changes of an (unmounted) checkout. Fails only before the
    /// snapshot is recorded; an overlay checkout keeps its upper dir until then.
    fn commit_changes(
        &self,
        row: &CheckoutRow,
        mode: CheckoutMode,
        state: &Path,
        tag: Option<&str>,
        progress: &Progress,
    ) -> Result<SnapshotRow> {
        let (source, changes) = match mode {
            CheckoutMode::Overlay => {
                #[cfg(target_os = "linux")]
                {
                    let upper = state.join("upper");
                    let changes = crate::overlay::upper_changes(&upper)?;
                    (upper, changes)
                }
                #[cfg(not(target_os = "linux"))]
                return Err(Error::OverlayUnavailable);
            }
            CheckoutMode::Portable => {
                let path = state.join("manifest");
                let bytes = fs::read(&path).map_err(io_err("read", &path))?;
                let manifest = portable::Manifest::from_bytes(&bytes)?;
                (row.dir.clone(), portable::diff(&row.dir, &manifest)?)
            }
        };
        let (files, bytes) = changed_files(&source, &changes);
        let relocations = relocate::scan(&source, &row.root_path, &files)?;
        // Held until the upper dir is in place too: `gc` must not drop the new layer (pruned
        // at once by another process) between recording it and moving its directory in.
        let gc = self.gc_lock(false)?;
        let mut options = create_options(bytes, changes.len());
        progress.set_total(tar_estimate(bytes, changes.len()));
        options.progress = progress.clone();
        let info = self.cas.put_changes(&source, &changes, &options)?;
        failpoint_for(mode, "commit.overlay.stored", "commit.portable.stored");
        // The blob is on disk (the CAS flushed it). An overlay commit flushes the new rows
        // together with the upper dir below, in one go; a portable one flushes the index.
        let snapshot = self.record(
            Some(row.snapshot),
            &info,
            Some(row.root_path.clone()),
            Some(&relocations),
            tag,
            true,
        )?;
        failpoint_for(mode, "commit.overlay.recorded", "commit.portable.recorded");
        if mode == CheckoutMode::Overlay {
            // The upper dir is the new layer in overlay format: keep it, never extract it.
            // Without its upper dir the checkout is past its point of no return: a crash from
            // here on leaves it for recovery to discard. The mount was volatile and nothing
            // flushed the upper dir: it is marked unsynced in this boot first, so that after
            // a host crash it is unpacked again from its (flushed) blob instead of trusted.
            // All of it is an optimisation: the snapshot is recorded, and a failure here
            // only means the layer is unpacked from its blob when it is next needed.
            let target = self.unpacked.join(info.id.to_hex());
            let upper = state.join("upper");
            if !target.exists()
                && mark_unsynced(&target).is_ok()
                && fs::rename(&upper, &target).is_ok()
            {
                failpoint("commit.overlay.renamed");
                let id = info.id;
                let _ = self.with_index(|ix| Ok(ix.set_layer_unpacked(&id, true)?));
            }
            failpoint("commit.overlay.marked");
        }
        drop(gc);
        Ok(snapshot)
    }
}

/// The added or modified regular files under `tree` (to scan for the checkout root) and
/// their total size.
fn changed_files(tree: &Path, changes: &[Change]) -> (Vec<Vec<u8>>, u64) {
    let mut bytes = 0;
    let files = changes
        .iter()
        .filter(|c| matches!(c.kind, ChangeKind::Added | ChangeKind::Modified))
        .filter(|c| {
            fs::symlink_metadata(tree.join(bytes_path(&c.path))).is_ok_and(|m| {
                bytes += m.len();
                m.file_type().is_file()
            })
        })
        .map(|c| c.path.clone())
        .collect();
    (files, bytes)
}

/// An upper bound of the tar size of `entries` entries holding `bytes` of file data:
/// headers, padding and PAX records at a generous 4 KiB per entry.
fn tar_estimate(bytes: u64, entries: usize) -> u64 {
    bytes.saturating_add(4096u64.saturating_mul(entries as u64 + 1))
}

/// How to compress a layer of `entries` entries and about `bytes` bytes of file data. Most
/// commits of a build step are small: a layer that surely fits in one zstd frame is
/// compressed on this thread, with a chunk buffer of its size rather than the default's
/// 8 MiB (allocating and zeroing those, and starting workers, costs more than compressing a
/// few kilobytes). The blob is the same either way: one frame of the whole tar.
fn create_options(bytes: u64, entries: usize) -> CreateOptions {
    let defaults = CreateOptions::default();
    // Twice the generous estimate in all.
    let chunk = tar_estimate(bytes, entries)
        .saturating_mul(2)
        .next_power_of_two();
    if chunk < defaults.chunk_size as u64 {
        CreateOptions {
            threads: 1,
            chunk_size: chunk as usize,
            ..defaults
        }
    } else {
        defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_layers_are_compressed_inline_in_one_frame() {
        let defaults = CreateOptions::default();
        let small = create_options(64 << 10, 7);
        assert_eq!((small.threads, small.level), (1, defaults.level));
        assert!(small.chunk_size >= 2 * ((64 << 10) + 8 * 4096));
        assert!(small.chunk_size < defaults.chunk_size);
        let large = create_options(100 << 20, 10);
        assert_eq!(
            (large.threads, large.chunk_size),
            (defaults.threads, defaults.chunk_size)
        );
        // Many small files: the per-entry allowance alone passes the default chunk.
        assert_eq!(create_options(0, 4000).threads, defaults.threads);
    }
}
