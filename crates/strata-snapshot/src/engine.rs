//! The snapshot engine: import, checkout, commit and release, on top of the CAS, the index,
//! overlayfs or portable materialisation, and path relocation.
//!
//! ```text
//! <store>/
//! ├── layout, blobs-v1/, tmp/   the CAS (strata-cas)
//! ├── index-v1.sqlite           snapshots, layers, tags, tracked checkouts, leases
//! ├── unpacked-v1/
//! │   ├── <layer>               a layer unpacked once, read-only, overlayfs whiteouts
//! │   ├── <layer>.plain         the same with OCI `.wh.` files (unpacked without root)
//! │   └── tmp-<pid>-<n>         an unpack in progress; renamed into place when complete
//! └── checkouts-v1/<n>/         state of one tracked checkout: upper/ + work/ (overlay)
//!                               or manifest (portable)
//! ```
//!
//! Order of effects, so that a crash at any point leaves a store the next open recovers:
//! blobs before index rows, unpacked layers renamed into place before they are used,
//! checkout rows written before their mount or copy exists and removed after it is gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_cas::{
    Change, ChangeKind, CreateOptions, DevicePolicy, ExtractOptions, LayerId, LayerInfo,
    SetuidPolicy, Store, WhiteoutMode,
};

use crate::index::{self, CheckoutRow, Index, LayerRow, SnapshotRow};
use crate::{SnapshotId, portable, relocate};

/// How a tracked checkout is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CheckoutMode {
    /// An overlayfs mount over the unpacked layers (Linux, root): instant.
    Overlay,
    /// A plain directory built from the unpacked layers with reflinks or copies.
    Portable,
}

impl CheckoutMode {
    fn as_str(self) -> &'static str {
        match self {
            CheckoutMode::Overlay => "overlay",
            CheckoutMode::Portable => "portable",
        }
    }

    fn parse(s: &str) -> Option<CheckoutMode> {
        match s {
            "overlay" => Some(CheckoutMode::Overlay),
            "portable" => Some(CheckoutMode::Portable),
            _ => None,
        }
    }
}

/// Errors of the engine. Each names the snapshot, checkout directory or path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The layer store failed.
    #[error(transparent)]
    Cas(#[from] strata_cas::Error),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] index::Error),
    /// Mounting or diffing an overlay failed.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Overlay(#[from] crate::overlay::Error),
    /// Materialising or diffing a portable checkout failed.
    #[error(transparent)]
    Portable(#[from] portable::Error),
    /// Relocating a checkout failed.
    #[error(transparent)]
    Relocate(#[from] relocate::Error),
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The directory is not a tracked checkout.
    #[error("{} is not a tracked checkout (see `strata checkout`)", dir.display())]
    NotTracked {
        /// The directory.
        dir: PathBuf,
    },
    /// A checkout target that already has contents.
    #[error("{} is not empty: check out into a new or empty directory", dir.display())]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// Overlay checkouts need Linux, root and overlayfs.
    #[error("overlay checkouts need Linux, root and overlayfs here; use a portable checkout")]
    OverlayUnavailable,
    /// The index names a checkout mode this build does not know.
    #[error("checkout {} has unknown mode `{mode}`", dir.display())]
    UnknownMode {
        /// The directory.
        dir: PathBuf,
        /// The mode recorded.
        mode: String,
    },
}

/// The result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    io_err(op, path)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(unix)]
fn path_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn path_bytes(path: &Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

/// The engine over one store directory. Share it between threads; several processes may
/// open the same store.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    cas: Store,
    index: Mutex<Index>,
    unpacked: PathBuf,
    states: PathBuf,
    privileged: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}-{}",
        std::process::id(),
        now_ms(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Engine {
    /// Opens (creating if needed) the store at `root` and recovers from crashed writers.
    pub fn open(root: &Path) -> Result<Engine> {
        let cas = Store::open(root)?;
        let unpacked = root.join("unpacked-v1");
        let states = root.join("checkouts-v1");
        for dir in [&unpacked, &states] {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let index = Index::open(&root.join("index-v1.sqlite"))?;
        let engine = Engine {
            root: root.to_path_buf(),
            cas,
            index: Mutex::new(index),
            unpacked,
            states,
            privileged: is_root(),
        };
        engine.sweep_partial_unpacks()?;
        Ok(engine)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where unpacked layers live.
    pub(crate) fn unpacked_dir(&self) -> PathBuf {
        self.unpacked.clone()
    }

    /// The layer store underneath.
    pub fn cas(&self) -> &Store {
        &self.cas
    }

    /// Runs `f` with the index locked. Keep `f` short: other threads wait.
    pub fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut index)
    }

    /// Resolves an id, a unique id prefix or a tag.
    pub fn resolve(&self, reference: &str) -> Result<SnapshotId> {
        self.with_index(|ix| Ok(ix.resolve(reference)?))
    }

    /// Makes a base snapshot from a root filesystem tarball (`.tar`, `.tar.gz`, `.tar.zst`).
    pub fn import(&self, tarball: &Path, tag: Option<&str>) -> Result<SnapshotRow> {
        let _gc = self.gc_lock(false)?;
        let info = self.cas.put_file(tarball)?;
        self.record(None, &info, None, tag)
    }

    /// Records a stored layer as a snapshot on top of `parent`.
    fn record(
        &self,
        parent: Option<SnapshotId>,
        info: &LayerInfo,
        root_path: Option<Vec<u8>>,
        tag: Option<&str>,
    ) -> Result<SnapshotRow> {
        let layer = LayerRow {
            id: info.id,
            uncompressed_size: info.uncompressed_size,
            compressed_size: info.compressed_size,
            unpacked: false,
            created: now_ms(),
        };
        self.with_index(|ix| {
            // Layer and snapshot rows in one transaction, so `gc` never sees the layer
            // unreferenced in between.
            let row = ix.add_layer_and_snapshot(&layer, parent, root_path, layer.created)?;
            if let Some(tag) = tag {
                ix.set_tag(tag, &row.id)?;
            }
            Ok(row)
        })
    }

    /// Shared while a layer is stored and recorded; exclusive while `gc` deletes layers.
    /// Without it, `gc` could delete a blob that a commit in another process has just found
    /// already stored and is about to record.
    pub(crate) fn gc_lock(&self, exclusive: bool) -> Result<fs::File> {
        let path = self.root.join("gc.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        if exclusive {
            file.lock().map_err(io_err("lock", &path))?;
        } else {
            file.lock_shared().map_err(io_err("lock", &path))?;
        }
        Ok(file)
    }

    /// The directory holding `layer` unpacked, unpacking it first if needed.
    fn ensure_unpacked(&self, layer: &LayerId) -> Result<PathBuf> {
        let overlay_format = self.privileged;
        let name = if overlay_format {
            layer.to_hex()
        } else {
            format!("{}.plain", layer.to_hex())
        };
        let target = self.unpacked.join(&name);
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.unpacked.join(unique_name("tmp-"));
        let opts = ExtractOptions {
            devices: if self.privileged {
                DevicePolicy::Create
            } else {
                DevicePolicy::Skip
            },
            setuid: SetuidPolicy::Keep,
            whiteouts: if overlay_format {
                WhiteoutMode::Overlay
            } else {
                WhiteoutMode::Keep
            },
            sync: true,
            ..ExtractOptions::default()
        };
        if let Err(e) = self.cas.apply(layer, &tmp, &opts) {
            let _ = remove_tree(&tmp);
            return Err(e.into());
        }
        match fs::rename(&tmp, &target) {
            Ok(()) => {}
            // Another process unpacked the same layer first: same content, keep theirs.
            Err(_) if target.is_dir() => remove_tree(&tmp)?,
            Err(e) => return Err(io_err("rename into place", &target)(e)),
        }
        let layer = *layer;
        self.with_index(|ix| Ok(ix.set_layer_unpacked(&layer, true)?))?;
        Ok(target)
    }

    /// Removes unpacks left by processes that no longer run.
    fn sweep_partial_unpacks(&self) -> Result<()> {
        for entry in fs::read_dir(&self.unpacked).map_err(io_err("list", &self.unpacked))? {
            let entry = entry.map_err(io_err("list", &self.unpacked))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("tmp-") else {
                continue;
            };
            let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
            if pid.is_some_and(|pid| !process_alive(pid)) {
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Which mode `checkout` uses when the caller does not choose.
    pub fn default_mode(&self) -> CheckoutMode {
        if overlay_available() {
            CheckoutMode::Overlay
        } else {
            CheckoutMode::Portable
        }
    }

    /// Makes a tracked checkout of `snapshot` at `dir` (created if missing, else it must be
    /// empty). Files whose layers were committed at another root are relocated to `dir`.
    pub fn checkout(
        &self,
        snapshot: &SnapshotId,
        dir: &Path,
        mode: Option<CheckoutMode>,
    ) -> Result<CheckoutRow> {
        let mode = mode.unwrap_or_else(|| self.default_mode());
        if mode == CheckoutMode::Overlay && !overlay_available() {
            return Err(Error::OverlayUnavailable);
        }
        let dir = prepare_target(dir)?;
        let chain = self.with_index(|ix| Ok(ix.chain(snapshot)?))?;
        let mut layers = Vec::with_capacity(chain.len());
        for row in &chain {
            layers.push(self.ensure_unpacked(&row.layer)?);
        }
        let state = self.states.join(unique_name("c-"));
        fs::create_dir(&state).map_err(io_err("create", &state))?;
        let row = CheckoutRow {
            dir: dir.clone(),
            snapshot: *snapshot,
            mode: mode.as_str().to_owned(),
            state_dir: Some(state.clone()),
            root_path: path_bytes(&dir),
            created: now_ms(),
        };
        self.with_index(|ix| Ok(ix.add_checkout(&row)?))?;
        let made = match mode {
            CheckoutMode::Overlay => self.mount_overlay(&chain, &layers, &state, &dir),
            CheckoutMode::Portable => self.materialize(&chain, &layers, &state, &dir),
        };
        if let Err(e) = made {
            let _ = self.discard(&row);
            return Err(e);
        }
        let ids: Vec<SnapshotId> = chain.iter().map(|r| r.id).collect();
        let now = now_ms();
        self.with_index(|ix| Ok(ix.touch(&ids, now)?))?;
        Ok(row)
    }

    #[cfg(target_os = "linux")]
    fn mount_overlay(
        &self,
        chain: &[SnapshotRow],
        layers: &[PathBuf],
        state: &Path,
        dir: &Path,
    ) -> Result<()> {
        // Layers committed at another root are mounted through relocated variants, made once
        // per (layer, root) and shared by every checkout at that root.
        let target = path_bytes(dir);
        let mut lowers = Vec::with_capacity(layers.len());
        for (row, layer_dir) in chain.iter().zip(layers) {
            let recorded = self.with_index(|ix| Ok(ix.relocations(&row.layer)?))?;
            match recorded {
                Some((root, raw)) if root != target => {
                    let records = relocate::Records::from_bytes(&raw)?;
                    lowers.push(self.relocated_variant(layer_dir, &records, &target)?);
                }
                _ => lowers.push(layer_dir.clone()),
            }
        }
        let (upper, work) = (state.join("upper"), state.join("work"));
        for d in [&upper, &work] {
            fs::create_dir(d).map_err(io_err("create", d))?;
        }
        // The merged root shows the upper dir's own mode and owner: give it the snapshot's.
        if let Some(top) = lowers.last() {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::symlink_metadata(top).map_err(io_err("stat", top))?;
            std::os::unix::fs::lchown(&upper, Some(meta.uid()), Some(meta.gid()))
                .map_err(io_err("set the owner of", &upper))?;
            fs::set_permissions(&upper, meta.permissions())
                .map_err(io_err("set the mode of", &upper))?;
        }
        crate::overlay::mount(&crate::overlay::OverlayMount {
            lowers: lowers.into_iter().rev().collect(),
            upper,
            work,
            target: dir.to_path_buf(),
        })?;
        Ok(())
    }

    /// A copy of the unpacked layer at `source`, relocated to `root`: files with recorded
    /// occurrences are real copies rewritten in place, everything else is a hard link to the
    /// shared original (unpacked layers are read-only, so sharing inodes is safe).
    #[cfg(target_os = "linux")]
    fn relocated_variant(
        &self,
        source: &Path,
        records: &relocate::Records,
        root: &[u8],
    ) -> Result<PathBuf> {
        let suffix = &blake3::hash(root).to_hex()[..16];
        let name = format!(
            "{}@{suffix}",
            source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let target = self.unpacked.join(name);
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.unpacked.join(unique_name("tmp-"));
        let copied: std::collections::HashSet<&[u8]> =
            records.files.iter().map(|f| f.path.as_slice()).collect();
        let made = clone_tree(source, &tmp, &mut Vec::new(), &copied)
            .and_then(|()| Ok(relocate::relocate(&tmp, records, root).map(|_| ())?));
        if let Err(e) = made {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &target) {
            Ok(()) => Ok(target),
            Err(_) if target.is_dir() => {
                remove_tree(&tmp)?;
                Ok(target)
            }
            Err(e) => Err(io_err("rename into place", &target)(e)),
        }
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
        let path = state.join("manifest");
        fs::write(&path, manifest.to_bytes()).map_err(io_err("write", &path))?;
        Ok(())
    }

    /// Rewrites, in a private copy at `dir`, every recorded root that differs from `dir`.
    /// A file is relocated with the records of the topmost layer that has it. Returns
    /// whether anything was rewritten.
    fn relocate_copy(&self, chain: &[SnapshotRow], layers: &[PathBuf], dir: &Path) -> Result<bool> {
        let target = path_bytes(dir);
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

    /// Commits a tracked checkout's changes as a child snapshot and releases the checkout.
    pub fn commit(&self, dir: &Path, tag: Option<&str>) -> Result<SnapshotRow> {
        let row = self.tracked(dir)?;
        let mode = CheckoutMode::parse(&row.mode).ok_or_else(|| Error::UnknownMode {
            dir: row.dir.clone(),
            mode: row.mode.clone(),
        })?;
        let state = row.state_dir.clone().unwrap_or_default();
        let (source, changes) = match mode {
            CheckoutMode::Overlay => {
                #[cfg(target_os = "linux")]
                {
                    crate::overlay::unmount(&row.dir)?;
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
        let gc = self.gc_lock(false)?;
        let info = self
            .cas
            .put_changes(&source, &changes, &CreateOptions::default())?;
        let snapshot = self.record(Some(row.snapshot), &info, Some(row.root_path.clone()), tag)?;
        self.record_relocations(&info.id, &source, &row.root_path, &changes)?;
        drop(gc);
        if mode == CheckoutMode::Overlay {
            // The upper dir is the new layer in overlay format: keep it, never extract it.
            let target = self.unpacked.join(info.id.to_hex());
            let upper = state.join("upper");
            if !target.exists() && fs::rename(&upper, &target).is_ok() {
                let id = info.id;
                self.with_index(|ix| Ok(ix.set_layer_unpacked(&id, true)?))?;
            }
        }
        self.discard(&row)?;
        Ok(snapshot)
    }

    fn record_relocations(
        &self,
        layer: &LayerId,
        tree: &Path,
        root: &[u8],
        changes: &[Change],
    ) -> Result<()> {
        let files: Vec<Vec<u8>> = changes
            .iter()
            .filter(|c| matches!(c.kind, ChangeKind::Added | ChangeKind::Modified))
            .filter(|c| {
                fs::symlink_metadata(tree.join(bytes_path(&c.path)))
                    .is_ok_and(|m| m.file_type().is_file())
            })
            .map(|c| c.path.clone())
            .collect();
        let records = relocate::scan(tree, root, &files)?;
        if records.files.is_empty() {
            return Ok(());
        }
        let bytes = records.to_bytes();
        let layer = *layer;
        let root = root.to_vec();
        self.with_index(|ix| Ok(ix.set_relocations(&layer, &root, &bytes)?))
    }

    /// Discards a tracked checkout: unmounts or deletes it and forgets it.
    pub fn release(&self, dir: &Path) -> Result<()> {
        let row = self.tracked(dir)?;
        self.discard(&row)
    }

    fn tracked(&self, dir: &Path) -> Result<CheckoutRow> {
        let dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        self.with_index(|ix| Ok(ix.checkout(&dir)?))?
            .ok_or(Error::NotTracked { dir })
    }

    /// Removes a checkout's mount or files, its state, and its index row, in that order.
    fn discard(&self, row: &CheckoutRow) -> Result<()> {
        #[cfg(target_os = "linux")]
        if row.mode == CheckoutMode::Overlay.as_str()
            && crate::overlay::is_mounted(&row.dir).unwrap_or(false)
        {
            crate::overlay::unmount(&row.dir)?;
        }
        if row.dir.exists() {
            remove_tree(&row.dir)?;
        }
        if let Some(state) = &row.state_dir
            && state.exists()
        {
            remove_tree(state)?;
        }
        let dir = row.dir.clone();
        self.with_index(|ix| Ok(ix.remove_checkout(&dir).map(|_| ())?))
    }

    /// Writes a plain, untracked copy of `snapshot` at `dir`, relocated to `dir`.
    pub fn copy_out(&self, snapshot: &SnapshotId, dir: &Path) -> Result<()> {
        let dir = prepare_target(dir)?;
        let chain = self.with_index(|ix| Ok(ix.chain(snapshot)?))?;
        let mut layers = Vec::with_capacity(chain.len());
        for row in &chain {
            layers.push(self.ensure_unpacked(&row.layer)?);
        }
        let refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
        portable::materialize(&refs, &dir)?;
        self.relocate_copy(&chain, &layers, &dir)?;
        Ok(())
    }
}

/// Clones the tree at `source` into `target`: directories are recreated with their mode,
/// owner, extended attributes and mtime; files in `copied` are copied; everything else
/// (files, symlinks, whiteout devices) is hard-linked.
#[cfg(target_os = "linux")]
fn clone_tree(
    source: &Path,
    target: &Path,
    rel: &mut Vec<u8>,
    copied: &std::collections::HashSet<&[u8]>,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(source).map_err(io_err("stat", source))?;
    fs::create_dir(target).map_err(io_err("create", target))?;
    let mut names: Vec<_> = fs::read_dir(source)
        .map_err(io_err("list", source))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(io_err("list", source))?;
    names.sort();
    for name in names {
        let (from, to) = (source.join(&name), target.join(&name));
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let kind = fs::symlink_metadata(&from).map_err(io_err("stat", &from))?;
        if kind.is_dir() {
            clone_tree(&from, &to, rel, copied)?;
        } else if copied.contains(rel.as_slice()) {
            fs::copy(&from, &to).map_err(io_err("copy", &from))?;
            std::os::unix::fs::lchown(&to, Some(kind.uid()), Some(kind.gid()))
                .map_err(io_err("set the owner of", &to))?;
            set_mtime(&to, &kind)?;
        } else {
            fs::hard_link(&from, &to).map_err(io_err("link", &to))?;
        }
        rel.truncate(len);
    }
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("set the owner of", target))?;
    fs::set_permissions(target, meta.permissions()).map_err(io_err("set the mode of", target))?;
    copy_xattrs(source, target)?;
    set_mtime(target, &meta)
}

#[cfg(target_os = "linux")]
fn copy_xattrs(source: &Path, target: &Path) -> Result<()> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(source, &mut names[..])
        .map_err(|e| io_err("list xattrs of", source)(e.into()))?;
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 4096];
        let len = rustix::fs::lgetxattr(source, name, &mut value[..])
            .map_err(|e| io_err("read xattrs of", source)(e.into()))?;
        rustix::fs::lsetxattr(target, name, &value[..len], rustix::fs::XattrFlags::empty())
            .map_err(|e| io_err("set xattrs of", target)(e.into()))?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn set_mtime(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let t = rustix::fs::Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec(),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set the mtime of", path)(e.into()))
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

#[cfg(unix)]
fn bytes_path(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn bytes_path(bytes: &[u8]) -> &Path {
    Path::new(std::str::from_utf8(bytes).unwrap_or(""))
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
    fs::canonicalize(dir).map_err(io_err("resolve", dir))
}

/// Removes a tree, including read-only directories (root can, others may need chmod).
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn is_root() -> bool {
    #[cfg(unix)]
    return rustix::process::geteuid().is_root();
    #[cfg(not(unix))]
    false
}

/// Whether overlay checkouts work here (Linux, root, overlayfs).
pub fn overlay_available() -> bool {
    #[cfg(target_os = "linux")]
    return crate::overlay::supported();
    #[cfg(not(target_os = "linux"))]
    false
}

/// Whether a process with this pid exists (a recycled pid errs on the side of keeping).
fn process_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    return Path::new(&format!("/proc/{pid}")).exists();
    #[cfg(all(unix, not(target_os = "linux")))]
    return rustix::process::Pid::from_raw(pid as i32)
        .is_none_or(|p| rustix::process::test_kill_process(p).is_ok());
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
