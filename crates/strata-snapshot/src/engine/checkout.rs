//! Checking snapshots out: tracked overlay mounts and portable copies, relocated to the
//! checkout's root, and untracked copies.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use strata_cas::{LayerId, WhiteoutMode};

use super::files::bytes_path;
#[cfg(target_os = "linux")]
use super::unpacked::record_boot;
use super::{
    CheckoutMode, Engine, Error, Result, canonical, failpoint, failpoint_for, io_err,
    overlay_available, remove_tree, unique_name,
};
use crate::index::{self, CheckoutRow, SnapshotRow};
use crate::{Checkout, SnapshotId, portable, relocate};

impl Engine {
    /// Makes a tracked checkout of `snapshot` at `dir` (created if missing, else it must be
    /// empty). Files whose layers were committed at another root are relocated to `dir`.
    pub fn checkout(
        &self,
        snapshot: &SnapshotId,
        dir: &Path,
        mode: Option<CheckoutMode>,
    ) -> Result<Checkout> {
        let mode = mode.unwrap_or_else(|| self.default_mode());
        if mode == CheckoutMode::Overlay && !overlay_available() {
            return Err(Error::OverlayUnavailable);
        }
        let dir = prepare_target(dir)?;
        // The state is complete before the row names it (overlay: with its upper dir), so
        // a row whose state lacks it can only be a discard or commit in progress.
        let state = self.states.join(unique_name("c-"));
        let made = fs::create_dir(&state).map_err(io_err("create", &state));
        let made = made.and_then(|()| match mode {
            CheckoutMode::Overlay => {
                ["upper", "work"].iter().try_for_each(|d| {
                    let d = state.join(d);
                    fs::create_dir(&d).map_err(io_err("create", &d))
                })?;
                #[cfg(target_os = "linux")]
                record_boot(&state)?;
                Ok(())
            }
            CheckoutMode::Portable => Ok(()),
        });
        if let Err(e) = made {
            let _ = remove_tree(&state);
            return Err(e);
        }
        failpoint_for(mode, "checkout.overlay.state", "checkout.portable.state");
        let row = CheckoutRow {
            dir: dir.clone(),
            snapshot: *snapshot,
            mode,
            state_dir: Some(state.clone()),
            root_path: index::path_to_bytes(&dir),
            created: crate::now_millis(),
        };
        // The row pins the snapshot (prune skips it, so gc keeps its layers) before its
        // layers are unpacked and used.
        if let Err(e) = self.with_index(|ix| Ok(ix.add_checkout(&row)?)) {
            let _ = remove_tree(&state);
            return Err(e);
        }
        failpoint_for(mode, "checkout.overlay.row", "checkout.portable.row");
        let made = self.make_checkout(snapshot, mode, &state, &dir);
        if let Err(e) = made {
            let _ = self.discard(&row, false);
            return Err(e);
        }
        Ok(row.into())
    }

    /// Unpacks the chain of `snapshot` and mounts or materialises it at `dir`.
    fn make_checkout(
        &self,
        snapshot: &SnapshotId,
        mode: CheckoutMode,
        state: &Path,
        dir: &Path,
    ) -> Result<()> {
        let chain = self.with_index(|ix| Ok(ix.chain(snapshot)?))?;
        let ids: Vec<LayerId> = chain.iter().map(|row| row.layer).collect();
        if mode == CheckoutMode::Portable && !self.portable_from_cache(&ids) {
            failpoint("checkout.portable.unpacked");
            self.stream_layers(&chain, dir)?;
            let manifest = portable::manifest_of_written(dir)?;
            write_manifest(state, &manifest)?;
        } else {
            let layers = self.ensure_unpacked(&ids)?;
            failpoint_for(
                mode,
                "checkout.overlay.unpacked",
                "checkout.portable.unpacked",
            );
            match mode {
                CheckoutMode::Overlay => self.mount_overlay(&chain, &layers, state, dir)?,
                CheckoutMode::Portable => self.materialize(&chain, &layers, state, dir)?,
            }
        }
        failpoint_for(mode, "checkout.overlay.mounted", "checkout.portable.done");
        let ids: Vec<SnapshotId> = chain.iter().map(|r| r.id).collect();
        let now = crate::now_millis();
        self.with_index(|ix| Ok(ix.touch(&ids, now)?))
    }

    #[cfg(target_os = "linux")]
    fn mount_overlay(
        &self,
        chain: &[SnapshotRow],
        layers: &[PathBuf],
        state: &Path,
        dir: &Path,
    ) -> Result<()> {
        // Held from finding relocated variants until they are mounted (see `overlay_lowers`).
        let _gc = self.gc_lock(false)?;
        let lowers = self.overlay_lowers(chain, layers, dir)?;
        let upper = state.join("upper");
        // The merged root shows the upper dir's own mode and owner: give it the snapshot's.
        if let Some(top) = lowers.last() {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::symlink_metadata(top).map_err(io_err("stat", top))?;
            std::os::unix::fs::lchown(&upper, Some(meta.uid()), Some(meta.gid()))
                .map_err(io_err("set the owner of", &upper))?;
            fs::set_permissions(&upper, meta.permissions())
                .map_err(io_err("set the mode of", &upper))?;
        }
        self.mount_lowers(lowers, state, dir)
    }

    /// Mounts a tracked overlay checkout again over its upper dir, as it was before an
    /// unmount (a commit that failed): the upper dir, root included, is kept as it is. The
    /// work dir is made afresh: overlayfs refuses one that a `volatile` mount used (it
    /// cannot tell a clean unmount from a crash; `same_boot` can, and the commit checked).
    #[cfg(target_os = "linux")]
    pub(super) fn remount_overlay(&self, row: &CheckoutRow, state: &Path) -> Result<()> {
        let work = state.join("work");
        remove_tree(&work)?;
        fs::create_dir(&work).map_err(io_err("create", &work))?;
        let _gc = self.gc_lock(false)?;
        let chain = self.with_index(|ix| Ok(ix.chain(&row.snapshot)?))?;
        let ids: Vec<LayerId> = chain.iter().map(|r| r.layer).collect();
        let layers = self.ensure_unpacked(&ids)?;
        let lowers = self.overlay_lowers(&chain, &layers, &row.dir)?;
        self.mount_lowers(lowers, state, &row.dir)
    }

    /// The lower dirs of an overlay checkout of `chain` at `dir`, base first. Layers
    /// committed at another root are mounted through relocated variants, made once per
    /// (layer, root) and shared by every checkout at that root. `gc` removes those of roots
    /// no checkout row names, under the exclusive gc lock: callers hold it shared from here
    /// until the variants are mounted, so none goes between the two (the checkout's row,
    /// written before, keeps it from then on).
    #[cfg(target_os = "linux")]
    fn overlay_lowers(
        &self,
        chain: &[SnapshotRow],
        layers: &[PathBuf],
        dir: &Path,
    ) -> Result<Vec<PathBuf>> {
        let target = index::path_to_bytes(dir);
        let mut lowers: Vec<PathBuf> = Vec::with_capacity(layers.len());
        for (row, layer_dir) in chain.iter().zip(layers) {
            // An empty layer (a step that changed nothing) adds nothing to the view.
            let mut listing = fs::read_dir(layer_dir).map_err(io_err("list", layer_dir))?;
            if listing.next().is_none() {
                continue;
            }
            let recorded = self.with_index(|ix| Ok(ix.relocations(&row.layer)?))?;
            let mut lower = match recorded {
                Some((root, raw)) if root != target => {
                    let records = relocate::Records::from_bytes(&raw)?;
                    self.relocated_variant(layer_dir, &records, &target)?
                }
                _ => layer_dir.clone(),
            };
            // overlayfs refuses a stack that names one directory twice (ELOOP); a layer that
            // repeats (the same change made twice) is mounted through hard-linked twins.
            let mut twin = 0;
            while lowers.contains(&lower) {
                twin += 1;
                lower = self.twin(layer_dir, twin)?;
            }
            lowers.push(lower);
        }
        // overlayfs needs one lower at least: a stack of empty layers mounts its base.
        if lowers.is_empty()
            && let Some(base) = layers.first()
        {
            lowers.push(base.clone());
        }
        Ok(lowers)
    }

    /// Mounts `lowers` (base first) under the state's upper and work dirs at `dir`.
    #[cfg(target_os = "linux")]
    fn mount_lowers(&self, lowers: Vec<PathBuf>, state: &Path, dir: &Path) -> Result<()> {
        crate::overlay::mount(&crate::overlay::OverlayMount {
            lowers: lowers.into_iter().rev().collect(),
            upper: state.join("upper"),
            work: state.join("work"),
            target: dir.to_path_buf(),
        })?;
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn mount_overlay(&self, _: &[SnapshotRow], _: &[PathBuf], _: &Path, _: &Path) -> Result<()> {
        Err(Error::OverlayUnavailable)
    }

    fn materialize(
        &self,
        chain: &[SnapshotRow],
        layers: &[PathBuf],
        state: &Path,
        dir: &Path,
    ) -> Result<()> {
        let refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
        let (mut manifest, _) = portable::materialize(&refs, dir)?;
        if self.relocate_copy(chain, layers, dir)? {
            // Rewritten files changed their ctime: the diff must not see them as changes.
            manifest = portable::manifest_of(dir)?;
        }
        write_manifest(state, &manifest)
    }

    /// Whether a portable checkout (or copy) of these layers is built from the
    /// unpacked-layer cache: when every layer is unpacked already, or when the store's
    /// filesystem clones files (filling the cache then costs about what streaming would,
    /// and every later checkout of the stack is a clone). Otherwise the layers are streamed
    /// from their blobs straight into the target, as `tar -x` of each would, which writes
    /// the tree once instead of twice and leaves the cache as it was.
    fn portable_from_cache(&self, ids: &[LayerId]) -> bool {
        ids.iter().all(|id| self.is_unpacked(id))
            || *self
                .clones
                .get_or_init(|| portable::can_clone(&self.unpacked))
    }

    /// Applies the layers of `chain` from their blobs onto `dir`, base first: whiteouts
    /// delete what lower layers made, through the CAS's hardened extractor (every path
    /// resolved inside `dir`). Each layer's recorded root is rewritten right after the
    /// layer is applied, so that a file an upper layer replaces or deletes is the upper
    /// layer's, as in the merged view.
    fn stream_layers(&self, chain: &[SnapshotRow], dir: &Path) -> Result<()> {
        let opts = self.layer_extract_options(WhiteoutMode::Apply);
        let target = index::path_to_bytes(dir);
        for row in chain {
            self.cas.apply(&row.layer, dir, &opts)?;
            let recorded = self.with_index(|ix| Ok(ix.relocations(&row.layer)?))?;
            if let Some((root, raw)) = recorded
                && root != target
            {
                let records = relocate::Records::from_bytes(&raw)?;
                if !records.files.is_empty() {
                    relocate::relocate(dir, &records, &target)?;
                }
            }
        }
        Ok(())
    }

    /// Rewrites, in a private copy at `dir`, every recorded root that differs from `dir`.
    /// A file is relocated with the records of the topmost layer that has it. Returns
    /// whether anything was rewritten.
    fn relocate_copy(&self, chain: &[SnapshotRow], layers: &[PathBuf], dir: &Path) -> Result<bool> {
        let target = index::path_to_bytes(dir);
        let mut any = false;
        for (i, row) in chain.iter().enumerate() {
            let Some((root, raw)) = self.with_index(|ix| Ok(ix.relocations(&row.layer)?))? else {
                continue;
            };
            if root == target {
                continue;
            }
            let mut records = relocate::Records::from_bytes(&raw)?;
            // Files an upper layer replaced or deleted are not this layer's any more.
            records
                .files
                .retain(|f| layers[i + 1..].iter().all(|upper| !shadows(upper, &f.path)));
            if !records.files.is_empty() {
                relocate::relocate(dir, &records, &target)?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Writes a plain, untracked copy of `snapshot` at `dir`, relocated to `dir`.
    pub fn copy_out(&self, snapshot: &SnapshotId, dir: &Path) -> Result<()> {
        let dir = prepare_target(dir)?;
        // A lease keeps a concurrent prune (and so gc) off the snapshot's layers while they
        // are read; if this process dies, the lease dies with it.
        let lease = self.lease(snapshot, "copy out")?;
        let copied = self.copy_leased(snapshot, &dir);
        let released = lease.release();
        copied.and(released)
    }

    fn copy_leased(&self, snapshot: &SnapshotId, dir: &Path) -> Result<()> {
        let chain = self.with_index(|ix| Ok(ix.chain(snapshot)?))?;
        let ids: Vec<LayerId> = chain.iter().map(|row| row.layer).collect();
        if !self.portable_from_cache(&ids) {
            return self.stream_layers(&chain, dir);
        }
        let layers = self.ensure_unpacked(&ids)?;
        let refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
        portable::materialize(&refs, dir)?;
        self.relocate_copy(&chain, &layers, dir)?;
        Ok(())
    }
}

/// Writes a portable checkout's manifest into its state dir, whole then renamed: a
/// manifest that exists marks a complete checkout.
fn write_manifest(state: &Path, manifest: &portable::Manifest) -> Result<()> {
    failpoint("checkout.portable.materialized");
    let path = state.join("manifest");
    let tmp = state.join("manifest.tmp");
    fs::write(&tmp, manifest.to_bytes()).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))
}

/// Whether layer directory `upper` has an entry (or a whiteout of one) at `path` or above it.
fn shadows(upper: &Path, path: &[u8]) -> bool {
    let mut prefix = Vec::new();
    for component in path.split(|&b| b == b'/') {
        let (parent, name) = (prefix.clone(), component);
        let dir = upper.join(bytes_path(&parent));
        let mut wh = b".wh.".to_vec();
        wh.extend_from_slice(name);
        if fs::symlink_metadata(dir.join(bytes_path(&wh))).is_ok() {
            return true;
        }
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(name);
        match fs::symlink_metadata(upper.join(bytes_path(&prefix))) {
            Ok(m) if !m.is_dir() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Creates `dir` if missing, checks it is empty, and returns its canonical path.
fn prepare_target(dir: &Path) -> Result<PathBuf> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let mut entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
            if entries.next().is_some() {
                return Err(Error::NotEmpty {
                    dir: dir.to_path_buf(),
                });
            }
        }
        Err(e) => return Err(io_err("create", dir)(e)),
    }
    canonical(dir).map_err(io_err("resolve", dir))
}
