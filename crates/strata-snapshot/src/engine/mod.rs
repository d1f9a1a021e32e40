//! The snapshot engine: import, checkout, commit and release, on top of the CAS, the index,
//! overlayfs or portable materialisation, and path relocation. The store layout and the
//! crash model are documented on [`Engine`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::io::Read;

use strata_cas::{CreateOptions, LayerId, LayerInfo, Limits, OciDigests, Progress, Store};

use crate::index::{Index, LayerRow, SnapshotRow};
use crate::{CheckoutMode, Snapshot, SnapshotId, relocate};

mod checkout;
mod commit;
mod discard;
mod error;
mod files;
mod recovery;
mod snapshots;
mod trash;
mod unpacked;

use discard::Reaper;
use error::io_err;
pub(crate) use error::io_error;
pub use error::{Error, Result};
pub(crate) use files::{canonical, remove_tree};
pub(crate) use recovery::{CheckoutHealth, overlay_mounts};
pub use snapshots::Lease;
pub(crate) use trash::TRASH_DIR;
pub use trash::TrashHandoff;
#[cfg(target_os = "linux")]
pub(crate) use unpacked::sync_filesystems;
pub(crate) use unpacked::variant_suffix;

#[cfg(feature = "failpoints")]
pub use crate::failpoints::FAILPOINTS;
#[cfg(feature = "failpoints")]
pub(crate) use crate::failpoints::failpoint;

/// Where shared caches live, under the store: private to the store's owner, like the store.
/// The [`caches`](crate::caches) module fills it; opening a store narrows it.
pub(crate) const CACHES_DIR: &str = "caches-v1";

/// Without the `failpoints` feature a failpoint is nothing at all: no environment variable
/// is read, and no process of an embedder can be made to abort.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint(_name: &'static str) {}

/// The failpoint of `mode`'s variant of a step.
fn failpoint_for(mode: CheckoutMode, overlay: &'static str, portable: &'static str) {
    failpoint(match mode {
        CheckoutMode::Overlay => overlay,
        CheckoutMode::Portable => portable,
    });
}

/// The engine over one store directory: import, checkout, commit and release, on top of the
/// CAS, the index, overlayfs or portable materialisation, and path relocation. Share it
/// between threads; several processes may open the same store.
///
/// ```text
/// <store>/
/// ├── layout, blobs-v1/, tmp/   the CAS (strata-cas)
/// ├── index-v1.sqlite           snapshots, layers, tags, tracked checkouts, leases
/// ├── gc.lock                   shared while layers are stored and recorded, exclusive in gc
/// ├── unpacked-v1/
/// │   ├── <layer>               a layer unpacked once, read-only, overlayfs whiteouts
/// │   ├── <layer>.plain         the same with OCI `.wh.` files (unpacked without root)
/// │   ├── <layer>@<root>        a relocated variant, for overlay checkouts at another root
/// │   │                         (kept while a checkout at that root is tracked)
/// │   ├── <layer>@dup-<n>       a hard-linked twin, for a layer that repeats in one stack
/// │   └── tmp-<owner>-<n>       an unpack in progress; renamed into place when complete
/// ├── caches-v1/views/<owner>-<n>/  private views of shared caches (tracked checkouts)
/// ├── checkouts-v1/
/// │   ├── c-<owner>-<n>/        state of one tracked checkout, made by process <owner>:
/// │   │                         upper/ + work/ (overlay) or manifest (portable)
/// │   └── x-<owner>-<n>/        state of a checkout being discarded by process <owner>
/// └── trash-v1/                 trees nobody uses, deleted off the user's path:
///     ├── t-<…>                 waiting for a deleter
///     └── d-<owner>-<n>         being deleted by process <owner>
/// ```
///
/// The root, `unpacked-v1/`, `checkouts-v1/` and `caches-v1/` are private to the store's
/// owner (mode 0700, narrowed on open; see [`Engine::open`]): unpacked layers keep setuid
/// bits and device nodes, which no other local user may reach.
///
/// # Crash safety
///
/// A process may die at any point (`kill -9`, power loss). The order of effects makes every
/// intermediate state one that [`Engine::open`] or [`Engine::fsck`] recognises:
///
/// - Layers: blob stored, then the layer row (with its relocations) and the snapshot row, all
///   under the shared gc lock; `gc` removes the layer row before the blob, under the exclusive
///   lock. So no snapshot ever names a layer whose blob is missing; a crash leaves at most an
///   unreferenced layer or an unrecorded blob, which `gc` collects.
/// - Unpacked layers: extracted into `tmp-<owner>-*`, renamed into place, then flagged in the
///   index. A commit renames its overlay upper dir into place after recording the layer.
/// - Checkouts: state dir (with `upper/` and `work/` for overlay), then the row, then unpacking
///   and the mount or the files, then (portable) the manifest. Discarding unmounts, moves the
///   state dir aside (`x-*`, the point of no return), removes the files, the state, and last
///   the row. A committed overlay checkout loses its `upper/` (renamed into `unpacked-v1/`)
///   before it is discarded. A commit that fails before recording its snapshot (a full
///   disk) leaves the checkout as it was, an overlay one mounted again.
///
/// Recovery in [`Engine::open`], cheap when there is nothing to do (two directory listings
/// and one query):
///
/// - `unpacked-v1/tmp-*` and row-less `checkouts-v1/*` of processes that no longer run are
///   moved into the trash, after detaching overlay mounts that sit under them;
/// - a tracked checkout whose state dir is gone, or an overlay one without `upper/`, was
///   being discarded or committed: the discard is finished (mount detached, files, row);
/// - a portable checkout without its manifest whose maker no longer runs was half made: it
///   is rolled back the same way;
/// - leases of dead processes expire; the CAS sweeps its own temp files.
///
/// Kept on purpose: a tracked overlay checkout whose mount is gone but whose upper dir is
/// intact (a crash before mounting or while committing, or a reboot). `commit` and `release`
/// work on it without a mount; `fsck` reports it and its repair releases it (remounting
/// would hand a sandbox a tree it may not expect). Anything the current process, or another
/// live one, may still be working on is never touched: makers are known by the owner in the
/// state dir's name, `<pid>.<start time>` (`strata_process`): a maker that exited, a zombie
/// included, is dead, and so is one whose pid now belongs to a process started at another
/// time. Names older versions made carry the pid only, and are kept while a process has it.
///
/// # Durability
///
/// A snapshot that `import`, `commit` or a cache release returned survives power loss, with
/// as few flushes as that allows, since they dominate a small commit:
///
/// - the CAS flushes a blob and its directory before it has a name (two fsyncs);
/// - the index runs with `synchronous=NORMAL` and is not checkpointed when a process closes
///   it (that cost two flushes per `strata` command, and recreating the WAL two more); rows
///   that must last are written with `synchronous=FULL` (one fsync of the WAL), or
/// - an overlay commit, whose upper dir was mounted `volatile` (unmounting flushes nothing),
///   records the snapshot durably like any other and never flushes the upper dir: it marks
///   it `unpacked-v1/<layer>.unsynced` (holding the boot id) and renames it into
///   `unpacked-v1/`. After a reboot, a marked layer is distrusted and unpacked again from its
///   blob; `gc` flushes the filesystem once and drops the markers. No commit calls `syncfs`,
///   which on a shared disk would wait for every other process's dirty data.
///
/// A volatile upper dir left by a host crash may have lost writes: `commit` refuses an
/// overlay checkout mounted in an earlier boot (its state dir records the boot id).
///
/// With the `failpoints` cargo feature, which only the crate's own tests turn on, named
/// failpoints (`FAILPOINTS`) sit between the effects, so tests can kill a process at each of
/// them (`STRATA_FAILPOINT=<name>` aborts the process there). Without it they compile to
/// nothing.
pub struct Engine {
    root: PathBuf,
    cas: Store,
    index: Mutex<Index>,
    unpacked: PathBuf,
    states: PathBuf,
    privileged: bool,
    /// `trash-v1/`: see `trash.rs`.
    trash: PathBuf,
    /// Whether the store's filesystem clones files, probed on first need.
    pub(crate) clones: std::sync::OnceLock<bool>,
    reaper: Reaper,
    handoff: Mutex<Option<TrashHandoff>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let handoff = self
            .handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        f.debug_struct("Engine")
            .field("root", &self.root)
            .field("cas", &self.cas)
            .field("privileged", &self.privileged)
            .field("trash_handoff", &handoff)
            .finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let handoff = self
            .handoff
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match handoff {
            // A short-lived process: stop deleting, and let something else finish.
            Some(handoff) => {
                self.reaper.stop();
                if self.trash_pending() {
                    let _ = handoff(&self.root);
                }
            }
            None => self.reaper.flush(),
        }
    }
}

/// Where a snapshot's top layer was committed and which of its files mention that root
/// ([`Engine::root_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RootRecord {
    /// The checkout root, as bytes of the path.
    pub root: Vec<u8>,
    /// The relocation records, in the store's own format; empty when no file mentions it.
    pub relocations: Vec<u8>,
}

impl RootRecord {
    /// A record of `root` with `relocations` as [`Engine::root_record`] gave them.
    pub fn new(root: Vec<u8>, relocations: Vec<u8>) -> RootRecord {
        RootRecord { root, relocations }
    }
}

/// A name for something this process makes and may leave behind if it dies
/// (`<prefix><pid>.<start time>-<n>`, see [`strata_process::owned_name`]): recovery tells a
/// dead maker's leftovers by it.
pub(crate) fn unique_name(prefix: &str) -> String {
    strata_process::unique_name(prefix)
}

impl Engine {
    /// Opens (creating if needed) the store at `root` and recovers from crashed writers (see
    /// the module docs for what is recovered and what is kept). The store root and the
    /// directories under it that hold trees are private to their owner (mode 0700): an
    /// older store whose directories are wider is narrowed, and one that belongs to another
    /// user and is open to others is refused ([`strata_cas::Error::NotPrivate`]).
    pub fn open(root: &Path) -> Result<Engine> {
        let cas = Store::open(root)?;
        // Canonical, so that state paths recorded in rows stay valid from any working dir.
        let root = canonical(root).map_err(io_err("resolve", root))?;
        let unpacked = root.join("unpacked-v1");
        let states = root.join("checkouts-v1");
        let trash = root.join(TRASH_DIR);
        // The root is private already (the CAS made it so); these are too, in case the root
        // is ever opened up: they hold whole trees, setuid files and device nodes included.
        for dir in [&unpacked, &states, &trash] {
            strata_cas::private_dir(dir)?;
        }
        let caches = root.join(CACHES_DIR);
        if caches.is_dir() {
            strata_cas::private_dir(&caches)?;
        }
        let index = Index::open(&root.join("index-v1.sqlite"))?;
        let engine = Engine {
            root,
            cas,
            index: Mutex::new(index),
            unpacked,
            states,
            privileged: is_root(),
            trash,
            clones: std::sync::OnceLock::new(),
            reaper: Reaper::default(),
            handoff: Mutex::new(None),
        };
        engine.recover()?;
        Ok(engine)
    }

    /// Waits until the trees of released checkouts, deleted in the background, are gone
    /// (before measuring disk usage, say), and deletes what else the trash holds, but for
    /// trees other live processes are deleting. Dropping the engine waits for the
    /// background deletions too, unless a handoff is set ([`Engine::hand_off_trash`]).
    pub fn wait_for_deletions(&self) {
        self.reaper.flush();
        let _ = self.empty_trash();
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
    pub(crate) fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut index)
    }

    /// Makes a base snapshot from a root filesystem tarball (`.tar`, `.tar.gz`, `.tar.zst`).
    pub fn import(&self, tarball: &Path, tag: Option<&str>) -> Result<Snapshot> {
        self.import_with_progress(tarball, tag, &Progress::default())
    }

    /// [`import`](Engine::import), advancing `progress` by the uncompressed bytes stored.
    pub fn import_with_progress(
        &self,
        tarball: &Path,
        tag: Option<&str>,
        progress: &Progress,
    ) -> Result<Snapshot> {
        let _gc = self.gc_lock(false)?;
        let options = CreateOptions {
            progress: progress.clone(),
            ..CreateOptions::default()
        };
        let info = self.cas.put_file_with(tarball, &options)?;
        failpoint("import.stored");
        let row = self.record(None, &info, None, None, tag, true)?;
        failpoint("import.recorded");
        self.with_tags(row)
    }

    /// Records a layer given as an uncompressed tar stream with OCI semantics (`.wh.`
    /// whiteouts included) as a snapshot on top of `parent`, or as a base without one. The
    /// bytes are kept as they are, every header validated (see [`Store::put_tar`]). This is
    /// how a layer made elsewhere (an engine image's layer, a sandbox's changes fetched
    /// through an API) becomes an ordinary snapshot; it records no root path, so nothing in
    /// it is relocated.
    pub fn import_layer(
        &self,
        parent: Option<&SnapshotId>,
        tar: impl Read,
        tag: Option<&str>,
    ) -> Result<Snapshot> {
        self.check_parent(parent)?;
        let _gc = self.gc_lock(false)?;
        let info = self
            .cas
            .put_tar(tar, &CreateOptions::default(), &Limits::default())?;
        let row = self.record(parent.copied(), &info, None, None, tag, true)?;
        self.with_tags(row)
    }

    /// Records a layer the store already holds (put there with [`Store::put_tar`], say, while
    /// its order in a stack was not known yet) as a snapshot on top of `parent`, or as a
    /// base. Fails naming the layer if its blob is missing (`gc` removes blobs no snapshot
    /// records: record them soon after storing them).
    pub fn add_snapshot(
        &self,
        parent: Option<&SnapshotId>,
        layer: &LayerId,
        tag: Option<&str>,
    ) -> Result<Snapshot> {
        self.check_parent(parent)?;
        let _gc = self.gc_lock(false)?;
        let info = self.stored_layer(layer)?;
        let row = self.record(parent.copied(), &info, None, None, tag, true)?;
        self.with_tags(row)
    }

    /// The root `snapshot`'s top layer was committed at and the relocation records of its
    /// files, as stored; none for a layer recorded without a root (imported). With
    /// [`Engine::add_snapshot_at`], this copies a built snapshot to another store (through a
    /// shared cache) so that it is relocated there as it is here.
    pub fn root_record(&self, snapshot: &SnapshotId) -> Result<Option<RootRecord>> {
        let Some(row) = self.snapshot(snapshot)? else {
            return Err(crate::index::Error::MissingSnapshot { id: *snapshot }.into());
        };
        let Some(root) = row.root_path.as_deref().map(crate::index::path_to_bytes) else {
            return Ok(None);
        };
        let relocations = self
            .with_index(|ix| Ok(ix.relocations(&row.layer)?))?
            .filter(|(recorded, _)| *recorded == root)
            .map(|(_, records)| records)
            .unwrap_or_default();
        Ok(Some(RootRecord { root, relocations }))
    }

    /// [`Engine::add_snapshot`] for a layer committed at another store's root: the snapshot
    /// records `record`'s root and relocation records (checked to be well-formed and to name
    /// that root), so checkouts here relocate its files as the store that built it would.
    pub fn add_snapshot_at(
        &self,
        parent: Option<&SnapshotId>,
        layer: &LayerId,
        tag: Option<&str>,
        record: &RootRecord,
    ) -> Result<Snapshot> {
        self.check_parent(parent)?;
        let records = if record.relocations.is_empty() {
            relocate::Records {
                root: record.root.clone(),
                files: Vec::new(),
            }
        } else {
            relocate::Records::from_bytes(&record.relocations)?
        };
        if records.root != record.root {
            return Err(relocate::Error::InvalidRecords {
                path: crate::index::bytes_to_path(record.root.clone()),
                problem: "the relocation records name another root".to_owned(),
            }
            .into());
        }
        let _gc = self.gc_lock(false)?;
        let info = self.stored_layer(layer)?;
        let row = self.record(
            parent.copied(),
            &info,
            Some(record.root.clone()),
            Some(&records),
            tag,
            true,
        )?;
        self.with_tags(row)
    }

    /// Fails with `MissingParent` unless `parent` (where given) is a snapshot here.
    fn check_parent(&self, parent: Option<&SnapshotId>) -> Result<()> {
        if let Some(parent) = parent
            && self.snapshot(parent)?.is_none()
        {
            return Err(crate::index::Error::MissingParent { id: *parent }.into());
        }
        Ok(())
    }

    /// What a snapshot records of a layer the store already holds, read from its blob.
    fn stored_layer(&self, layer: &LayerId) -> Result<LayerInfo> {
        let blob = self.cas.stat(layer)?;
        Ok(LayerInfo {
            id: *layer,
            uncompressed_size: blob.uncompressed_size,
            compressed_size: blob.compressed_size,
            frames: blob.frames,
            entries: 0,
        })
    }

    /// The OCI identities of `layer` (sha256 diff_id, blob digest and size), as an engine or
    /// a registry names it. Computed from the blob the first time (which reads it twice) and
    /// remembered in the index with the layer's row, so later calls cost one query.
    pub fn oci_digests(&self, layer: &LayerId) -> Result<OciDigests> {
        if let Some(known) = self.with_index(|ix| Ok(ix.layer_oci(layer)?))? {
            return Ok(known);
        }
        let digests = self.cas.oci_digests(layer)?;
        match self.with_index(|ix| Ok(ix.set_layer_oci(layer, &digests)?)) {
            // A blob no snapshot records (yet, or any more) has nowhere to keep them.
            Ok(()) | Err(Error::Index(crate::index::Error::MissingLayer { .. })) => {}
            Err(e) => return Err(e),
        }
        Ok(digests)
    }

    /// Records a stored layer, with its relocation records, as a snapshot on top of
    /// `parent`. Call it under the shared gc lock. With `durable`, the rows are on disk when
    /// this returns; without, the caller flushes the index's filesystem itself.
    fn record(
        &self,
        parent: Option<SnapshotId>,
        info: &LayerInfo,
        root_path: Option<Vec<u8>>,
        relocations: Option<&relocate::Records>,
        tag: Option<&str>,
        durable: bool,
    ) -> Result<SnapshotRow> {
        let layer = LayerRow {
            id: info.id,
            uncompressed_size: info.uncompressed_size,
            compressed_size: info.compressed_size,
            unpacked: false,
            created: crate::now_millis(),
        };
        let write = |ix: &mut Index| {
            // Relocations go in before the snapshot row exists, so no snapshot is ever seen
            // without them. A crash in between leaves an unreferenced layer row, which `gc`
            // removes; the shared gc lock keeps `gc` away from it meanwhile.
            if let Some(records) = relocations.filter(|r| !r.files.is_empty())
                && let Some(root) = &root_path
            {
                ix.add_layer(&layer)?;
                ix.set_relocations(&layer.id, root, &records.to_bytes())?;
            }
            // Layer and snapshot rows in one transaction, so `gc` never sees the layer
            // unreferenced in between.
            let row = ix.add_layer_and_snapshot(&layer, parent, root_path, layer.created)?;
            if let Some(tag) = tag {
                ix.set_tag(tag, &row.id)?;
            }
            Ok(row)
        };
        self.with_index(|ix| {
            if durable {
                ix.durably(write)
            } else {
                write(ix)
            }
            .map_err(Error::from)
        })
    }

    /// Holds `gc` off, in every process that shares the store, until the hold is dropped:
    /// a layer found in the store, or stored, through [`Engine::cas`] then stays until a
    /// snapshot records it (otherwise `gc` may remove an unrecorded layer, or one whose
    /// snapshots were pruned, in between). Holds are shared: any number may be held at once,
    /// and `gc` waits for all of them. Take one before storing or reusing blobs directly,
    /// as an image import or a pull does, and drop it once they are recorded.
    pub fn hold_layers(&self) -> Result<LayerHold> {
        Ok(LayerHold {
            _lock: self.gc_lock(false)?,
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

    /// Which mode `checkout` uses when the caller does not choose.
    pub fn default_mode(&self) -> CheckoutMode {
        if overlay_available() {
            CheckoutMode::Overlay
        } else {
            CheckoutMode::Portable
        }
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

/// A hold on the store's layers, from [`Engine::hold_layers`]: `gc` waits while it lives.
#[derive(Debug)]
#[must_use = "a hold keeps gc off only while it is held"]
pub struct LayerHold {
    _lock: fs::File,
}
