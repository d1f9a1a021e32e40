//! The snapshot engine: import, checkout, commit and release, on top of the CAS, the index,
//! overlayfs or portable materialisation, and path relocation.
//!
//! ```text
//! <store>/
//! ├── layout, blobs-v1/, tmp/   the CAS (strata-cas)
//! ├── index-v1.sqlite           snapshots, layers, tags, tracked checkouts, leases
//! ├── gc.lock                   shared while layers are stored and recorded, exclusive in gc
//! ├── unpacked-v1/
//! │   ├── <layer>               a layer unpacked once, read-only, overlayfs whiteouts
//! │   ├── <layer>.plain         the same with OCI `.wh.` files (unpacked without root)
//! │   ├── <layer>@<root>        a relocated variant, for overlay checkouts at another root
//! │   │                         (kept while a checkout at that root is tracked)
//! │   ├── <layer>@dup-<n>       a hard-linked twin, for a layer that repeats in one stack
//! │   └── tmp-<pid>-<n>         an unpack in progress; renamed into place when complete
//! ├── caches-v1/views/<n>/     private views of shared caches (tracked checkouts)
//! └── checkouts-v1/
//!     ├── c-<pid>-<n>/          state of one tracked checkout, made by process <pid>:
//!     │                         upper/ + work/ (overlay) or manifest (portable)
//!     └── x-<pid>-<n>/          state of a checkout being discarded by process <pid>
//! ```
//!
//! The root, `unpacked-v1/`, `checkouts-v1/` and `caches-v1/` are private to the store's
//! owner (mode 0700, narrowed on open; see [`Engine::open`]): unpacked layers keep setuid
//! bits and device nodes, which no other local user may reach.
//!
//! # Crash safety
//!
//! A process may die at any point (`kill -9`, power loss). The order of effects makes every
//! intermediate state one that [`Engine::open`] or [`Engine::fsck`] recognises:
//!
//! - Layers: blob stored, then the layer row (with its relocations) and the snapshot row, all
//!   under the shared gc lock; `gc` removes the layer row before the blob, under the exclusive
//!   lock. So no snapshot ever names a layer whose blob is missing; a crash leaves at most an
//!   unreferenced layer or an unrecorded blob, which `gc` collects.
//! - Unpacked layers: extracted into `tmp-<pid>-*`, renamed into place, then flagged in the
//!   index. A commit renames its overlay upper dir into place after recording the layer.
//! - Checkouts: state dir (with `upper/` and `work/` for overlay), then the row, then unpacking
//!   and the mount or the files, then (portable) the manifest. Discarding unmounts, moves the
//!   state dir aside (`x-*`, the point of no return), removes the files, the state, and last
//!   the row. A committed overlay checkout loses its `upper/` (renamed into `unpacked-v1/`)
//!   before it is discarded. A commit that fails before recording its snapshot (a full
//!   disk) leaves the checkout as it was, an overlay one mounted again.
//!
//! Recovery in [`Engine::open`], cheap when there is nothing to do (two directory listings
//! and one query):
//!
//! - `unpacked-v1/tmp-*` and row-less `checkouts-v1/*` of processes that no longer run are
//!   removed, after detaching overlay mounts that sit under them;
//! - a tracked checkout whose state dir is gone, or an overlay one without `upper/`, was
//!   being discarded or committed: the discard is finished (mount detached, files, row);
//! - a portable checkout without its manifest whose maker no longer runs was half made: it
//!   is rolled back the same way;
//! - leases of dead processes expire; the CAS sweeps its own temp files.
//!
//! Kept on purpose: a tracked overlay checkout whose mount is gone but whose upper dir is
//! intact (a crash before mounting or while committing, or a reboot). `commit` and `release`
//! work on it without a mount; `fsck` reports it and its repair releases it (remounting
//! would hand a sandbox a tree it may not expect). Anything the current process, or another
//! live one, may still be working on is never touched: makers are known by the pid in the
//! state dir's name (a recycled pid errs on the side of keeping).
//!
//! # Durability
//!
//! A snapshot that `import`, `commit` or a cache release returned survives power loss, with
//! as few flushes as that allows, since they dominate a small commit:
//!
//! - the CAS flushes a blob and its directory before it has a name (two fsyncs);
//! - the index runs with `synchronous=NORMAL` and is not checkpointed when a process closes
//!   it (that cost two flushes per `strata` command, and recreating the WAL two more); rows
//!   that must last are written with [`Index::durably`] (one fsync of the WAL), or
//! - an overlay commit, whose upper dir was mounted `volatile` (unmounting flushes nothing),
//!   records the snapshot durably like any other and never flushes the upper dir: it marks
//!   it `unpacked-v1/<layer>.unsynced` (holding the boot id) and renames it into
//!   `unpacked-v1/`. After a reboot, a marked layer is distrusted and unpacked again from its
//!   blob; `gc` flushes the filesystem once and drops the markers. No commit calls `syncfs`,
//!   which on a shared disk would wait for every other process's dirty data.
//!
//! A volatile upper dir left by a host crash may have lost writes: `commit` refuses an
//! overlay checkout mounted in an earlier boot (its state dir records the boot id).
//!
//! With the `failpoints` cargo feature, which only the crate's own tests turn on, named
//! failpoints (`FAILPOINTS`) sit between the effects, so tests can kill a process at each of
//! them (`STRATA_FAILPOINT=<name>` aborts the process there). Without it they compile to
//! nothing.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

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

/// The shape a tracked checkout is in, as recovery and `fsck` judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckoutHealth {
    /// Complete, or at least usable: `commit` and `release` work.
    Healthy,
    /// Incomplete, but its maker still runs and may be completing it.
    InProgress,
    /// Its state dir, or an overlay checkout's upper dir, is gone: a discard or commit died
    /// past its point of no return. Finishing the discard is all that is left to do.
    Abandoned,
    /// A portable checkout without a manifest, whose maker died while materialising it.
    HalfMade,
    /// Its directory is gone (removed by hand, or on a filesystem that is not mounted).
    Lost,
    /// An overlay checkout whose maker is gone and whose mount is gone too, upper dir intact
    /// (a crash before mounting or while committing, or a reboot).
    Unmounted,
}

#[cfg(feature = "failpoints")]
pub use crate::failpoints::FAILPOINTS;
#[cfg(feature = "failpoints")]
pub(crate) use crate::failpoints::failpoint;

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
    /// An overlay checkout whose mount did not survive a reboot: its upper dir may have lost
    /// writes (mounts are volatile), so it cannot be committed.
    #[error(
        "{} was mounted before the host last restarted, and its changes may be incomplete: \
         release it and run the step again",
        dir.display()
    )]
    EarlierBoot {
        /// The checkout directory.
        dir: PathBuf,
    },
    /// Overlay checkouts need Linux, root and overlayfs.
    #[error("overlay checkouts need Linux, root and overlayfs here; use a portable checkout")]
    OverlayUnavailable,
    /// Layers that snapshots still need, refused by [`Engine::remove_layers`]: nothing was
    /// removed.
    #[error("{}; nothing was removed", needed_by(users))]
    LayersNeeded {
        /// Every snapshot whose stack holds one of the layers, with its tags.
        users: Vec<crate::maintenance::LayerUser>,
    },
    /// The index names a checkout mode this build does not know.
    #[error("checkout {} has unknown mode `{mode}`", dir.display())]
    UnknownMode {
        /// The directory.
        dir: PathBuf,
        /// The mode recorded.
        mode: String,
    },
}

/// "layer L is needed by snapshot S (tags `a`, `b`), snapshot T; layer M is needed by ...".
fn needed_by(users: &[crate::maintenance::LayerUser]) -> String {
    let mut text = String::new();
    let mut last = None;
    for user in users {
        if last == Some(user.layer) {
            text.push_str(", ");
        } else {
            if last.is_some() {
                text.push_str("; ");
            }
            text.push_str(&format!("layer {} is needed by ", user.layer));
            last = Some(user.layer);
        }
        text.push_str(&format!("snapshot {}", user.snapshot));
        if !user.tags.is_empty() {
            let tags: Vec<String> = user.tags.iter().map(|t| format!("`{t}`")).collect();
            let word = if tags.len() == 1 { "tag" } else { "tags" };
            text.push_str(&format!(" ({word} {})", tags.join(", ")));
        }
    }
    text
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
    reaper: Reaper,
}

/// Deletes released checkout trees on a background thread, so that `commit` and `release`
/// return once the index no longer tracks the checkout, not once 20,000 files are unlinked.
/// The trees wait in `checkouts-v1/x-<pid>-<n>` directories: if the process dies first, the
/// next `Engine::open` sweeps them like any other state of a dead process. Dropping the
/// engine waits for the deletions to finish.
#[derive(Debug, Default)]
struct Reaper {
    queue: Mutex<Option<std::sync::mpsc::Sender<Reap>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Work for the reaper thread.
enum Reap {
    /// Delete this tree.
    Tree(PathBuf),
    /// Report when everything queued before is deleted.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl Reaper {
    fn send(&self, job: Reap) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Reap>();
            let worker = std::thread::Builder::new()
                .name("strata-reaper".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            // Best effort: what is left is swept by the next open.
                            Reap::Tree(path) => {
                                let _ = remove_tree(&path);
                            }
                            Reap::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
            match worker {
                Ok(handle) => {
                    *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                    *queue = Some(tx);
                }
                Err(_) => return Self::run_inline(job),
            }
        }
        if let Some(Err(std::sync::mpsc::SendError(job))) = queue.as_ref().map(|q| q.send(job)) {
            Self::run_inline(job);
        }
    }

    fn run_inline(job: Reap) {
        match job {
            Reap::Tree(path) => {
                let _ = remove_tree(&path);
            }
            Reap::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    fn delete(&self, path: PathBuf) {
        self.send(Reap::Tree(path));
    }

    fn flush(&self) {
        let started = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if started {
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            self.send(Reap::Flush(done));
            let _ = wait.recv();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}-{}",
        std::process::id(),
        index::now_millis(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
        // The root is private already (the CAS made it so); these are too, in case the root
        // is ever opened up: they hold whole trees, setuid files and device nodes included.
        for dir in [&unpacked, &states] {
            strata_cas::private_dir(dir)?;
        }
        let caches = root.join(crate::caches::CACHES_DIR);
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
            reaper: Reaper::default(),
        };
        engine.recover()?;
        Ok(engine)
    }

    /// Undoes or finishes what crashed processes left half done. Each item is best effort:
    /// one that cannot be cleaned up now (a mount this user may not detach, say) stays for
    /// `fsck` to report, and must not stop the store from opening.
    fn recover(&self) -> Result<()> {
        for tmp in self.partial_unpacks()? {
            let _ = remove_tree(&tmp);
        }
        let rows = self.with_index(|ix| Ok(ix.checkouts()?))?;
        for row in &rows {
            if matches!(
                self.checkout_health(row, None),
                CheckoutHealth::Abandoned | CheckoutHealth::HalfMade
            ) {
                let _ = self.discard(row, true);
            }
        }
        for state in self.stray_states()? {
            let _ = self.remove_stray_state(&state);
        }
        // Cache views of dead processes would otherwise pin their snapshots forever.
        let _ = self.cache_sweep_dead_views();
        // Recovery is rare: finish its deletions so the store is clean once open returns.
        self.reaper.flush();
        self.with_index(|ix| Ok(ix.expire_dead_leases().map(|_| ())?))
    }

    /// Waits until the trees of released checkouts, deleted in the background, are gone
    /// (before measuring disk usage, say). Dropping the engine waits for them too.
    pub fn wait_for_deletions(&self) {
        self.reaper.flush();
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
        failpoint("import.stored");
        let row = self.record(None, &info, None, None, tag, true)?;
        failpoint("import.recorded");
        Ok(row)
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
            created: index::now_millis(),
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

    /// The directories holding `layers` unpacked, unpacking the missing ones first. Each is
    /// extracted into `tmp-<pid>-*` and renamed into place once flushed: on Linux with one
    /// `syncfs` for all of them (a cold checkout of ten layers paid ten), elsewhere by the
    /// extraction itself.
    fn ensure_unpacked(&self, layers: &[LayerId]) -> Result<Vec<PathBuf>> {
        let overlay_format = self.privileged;
        let targets: Vec<PathBuf> = layers
            .iter()
            .map(|layer| {
                self.unpacked.join(if overlay_format {
                    layer.to_hex()
                } else {
                    format!("{}.plain", layer.to_hex())
                })
            })
            .collect();
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
            sync: !cfg!(target_os = "linux"),
            ..ExtractOptions::default()
        };
        // (layer, its temporary directory, its place), for each one not unpacked yet.
        let mut made: Vec<(LayerId, PathBuf, &PathBuf)> = Vec::new();
        let extracted = (|| {
            for (layer, target) in layers.iter().zip(&targets) {
                if target.is_dir() && unsynced_in_earlier_boot(target) {
                    // Made from a volatile upper dir before a reboot: it may have lost
                    // writes. Move it aside (others may still have it mounted) and unpack
                    // the layer again from its blob.
                    let aside = self.unpacked.join(unique_name("tmp-"));
                    if fs::rename(target, &aside).is_ok() {
                        let _ = fs::remove_file(unsynced_marker(target));
                        let _ = remove_tree(&aside);
                        self.remove_derived(target);
                    }
                }
                if target.is_dir() || made.iter().any(|(_, _, t)| *t == target) {
                    continue;
                }
                let tmp = self.unpacked.join(unique_name("tmp-"));
                made.push((*layer, tmp.clone(), target));
                self.cas.apply(layer, &tmp, &opts)?;
                failpoint("unpack.extracted");
            }
            #[cfg(target_os = "linux")]
            if !made.is_empty() {
                sync_filesystems(&[self.unpacked.as_path()])?;
            }
            Ok(())
        })();
        if let Err(e) = extracted {
            for (_, tmp, _) in &made {
                let _ = remove_tree(tmp);
            }
            return Err(e);
        }
        for (layer, tmp, target) in made {
            match fs::rename(&tmp, target) {
                Ok(()) => {}
                // Another process unpacked the same layer first: same content, keep theirs.
                Err(_) if target.is_dir() => remove_tree(&tmp)?,
                Err(e) => return Err(io_err("rename into place", target)(e)),
            }
            failpoint("unpack.renamed");
            self.with_index(|ix| Ok(ix.set_layer_unpacked(&layer, true)?))?;
        }
        Ok(targets)
    }

    /// Unpacks in progress (`unpacked-v1/tmp-*`) of processes that no longer run.
    pub(crate) fn partial_unpacks(&self) -> Result<Vec<PathBuf>> {
        Ok(
            entries_of_dead_makers(&self.unpacked, |name| name.starts_with("tmp-"))?
                .into_iter()
                .map(|(_, path)| path)
                .collect(),
        )
    }

    /// State dirs no checkout row names, of processes that no longer run: checkouts that
    /// died before their row was written, and discards that died after moving the state
    /// aside.
    pub(crate) fn stray_states(&self) -> Result<Vec<PathBuf>> {
        // Liveness is decided before the rows are read: a maker that was dead then had
        // written every row it ever will, so a row-less state of it stays row-less.
        let dead = entries_of_dead_makers(&self.states, |_| true)?;
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let named: HashSet<String> = self
            .with_index(|ix| Ok(ix.checkouts()?))?
            .iter()
            .filter_map(|row| row.state_dir.as_deref().and_then(Path::file_name))
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        Ok(dead
            .into_iter()
            .filter(|(name, _)| !named.contains(name))
            .map(|(_, path)| path)
            .collect())
    }

    /// Removes a stray state dir, detaching any overlay mount that sits under it first.
    pub(crate) fn remove_stray_state(&self, state: &Path) -> Result<()> {
        #[cfg(target_os = "linux")]
        for point in crate::overlay::mounts_under(state)? {
            detach(&point)?;
        }
        remove_tree(state)
    }

    /// What shape a tracked checkout is in. `mounts` (the overlay mount points of the host)
    /// is only needed to tell [`CheckoutHealth::Unmounted`]; without it such a checkout
    /// passes as healthy.
    pub(crate) fn checkout_health(
        &self,
        row: &CheckoutRow,
        mounts: Option<&HashSet<PathBuf>>,
    ) -> CheckoutHealth {
        let Some(state) = &row.state_dir else {
            // Not made by this engine's `checkout`: nothing to judge it by but its directory.
            return if row.dir.is_dir() {
                CheckoutHealth::Healthy
            } else {
                CheckoutHealth::Lost
            };
        };
        let mode = CheckoutMode::parse(&row.mode);
        // Only a discard or a commit past its point of no return takes these away.
        if !state.is_dir() || (mode == Some(CheckoutMode::Overlay) && !state.join("upper").is_dir())
        {
            return CheckoutHealth::Abandoned;
        }
        if !row.dir.is_dir() {
            return CheckoutHealth::Lost;
        }
        // Decided before looking at what the maker writes last, so a maker that finishes
        // and exits in between is not mistaken for a dead one.
        let maker_alive = state
            .file_name()
            .is_some_and(|n| maker_alive(&n.to_string_lossy()));
        match mode {
            Some(CheckoutMode::Portable) if !state.join("manifest").is_file() => {
                if maker_alive {
                    CheckoutHealth::InProgress
                } else {
                    CheckoutHealth::HalfMade
                }
            }
            Some(CheckoutMode::Overlay) => match mounts {
                Some(mounts) if !mounts.contains(&row.dir) => {
                    if maker_alive {
                        CheckoutHealth::InProgress
                    } else {
                        CheckoutHealth::Unmounted
                    }
                }
                _ => CheckoutHealth::Healthy,
            },
            _ => CheckoutHealth::Healthy,
        }
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
            mode: mode.as_str().to_owned(),
            state_dir: Some(state.clone()),
            root_path: index::path_to_bytes(&dir),
            created: index::now_millis(),
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
        Ok(row)
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
        failpoint_for(mode, "checkout.overlay.mounted", "checkout.portable.done");
        let ids: Vec<SnapshotId> = chain.iter().map(|r| r.id).collect();
        let now = index::now_millis();
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
    fn remount_overlay(&self, row: &CheckoutRow, state: &Path) -> Result<()> {
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

    /// Removes the twins and relocated variants (`<name>@…`) derived from the unpacked layer
    /// at `source`: they share its files, so they go when it is distrusted.
    fn remove_derived(&self, source: &Path) {
        let Some(name) = source
            .file_name()
            .map(|n| format!("{}@", n.to_string_lossy()))
        else {
            return;
        };
        let Ok(entries) = fs::read_dir(&self.unpacked) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&name) {
                let aside = self.unpacked.join(unique_name("tmp-"));
                if fs::rename(entry.path(), &aside).is_ok() {
                    let _ = remove_tree(&aside);
                }
            }
        }
    }

    /// The `n`th hard-linked twin of the unpacked layer at `source` (made once, then reused):
    /// the same files under another directory name, so one stack can name the layer twice.
    #[cfg(target_os = "linux")]
    fn twin(&self, source: &Path, n: usize) -> Result<PathBuf> {
        self.derived_layer(source, &format!("dup-{n}"), |tmp| {
            clone_tree(
                source,
                tmp,
                &mut Vec::new(),
                &std::collections::HashSet::new(),
            )
        })
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
        let copied: std::collections::HashSet<&[u8]> =
            records.files.iter().map(|f| f.path.as_slice()).collect();
        self.derived_layer(source, &variant_suffix(root), |tmp| {
            clone_tree(source, tmp, &mut Vec::new(), &copied)?;
            relocate::relocate(tmp, records, root)?;
            failpoint("checkout.overlay.relocated");
            Ok(())
        })
    }

    /// `unpacked-v1/<source name>@<suffix>`, built once by `build` in a temporary directory
    /// and renamed into place; concurrent builders race harmlessly (the loser's copy goes).
    #[cfg(target_os = "linux")]
    fn derived_layer(
        &self,
        source: &Path,
        suffix: &str,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = self.unpacked.join(format!("{name}@{suffix}"));
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.unpacked.join(unique_name("tmp-"));
        if let Err(e) = build(&tmp) {
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
        failpoint("checkout.portable.materialized");
        // Written whole then renamed: a manifest that exists marks a complete checkout.
        let path = state.join("manifest");
        let tmp = state.join("manifest.tmp");
        fs::write(&tmp, manifest.to_bytes()).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
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

    /// Commits a tracked checkout's changes as a child snapshot and releases the checkout.
    ///
    /// A commit that fails (a full disk, a change no layer can hold) stores nothing of its
    /// own: no temp file, no row (a blob stored before the index failed to record it is left
    /// for `gc`, like any blob no row names). The checkout stays tracked as it was, an
    /// overlay one mounted again, to be committed once the problem is fixed or released.
    pub fn commit(&self, dir: &Path, tag: Option<&str>) -> Result<SnapshotRow> {
        let row = self.tracked(dir)?;
        let mode = CheckoutMode::parse(&row.mode).ok_or_else(|| Error::UnknownMode {
            dir: row.dir.clone(),
            mode: row.mode.clone(),
        })?;
        let state = row.state_dir.clone().unwrap_or_default();
        let unmounted = match mode {
            CheckoutMode::Overlay => self.unmount_to_commit(&row, &state)?,
            CheckoutMode::Portable => false,
        };
        let snapshot = match self.commit_changes(&row, mode, &state, tag) {
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
        Ok(snapshot)
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
        let info =
            self.cas
                .put_changes(&source, &changes, &create_options(bytes, changes.len()))?;
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

    /// Discards a tracked checkout: unmounts or deletes it and forgets it.
    pub fn release(&self, dir: &Path) -> Result<()> {
        let row = self.tracked(dir)?;
        self.discard(&row, false)
    }

    fn tracked(&self, dir: &Path) -> Result<CheckoutRow> {
        let dir = canonical(dir).map_err(io_err("resolve", dir))?;
        self.with_index(|ix| Ok(ix.checkout(&dir)?))?
            .ok_or(Error::NotTracked { dir })
    }

    /// Removes a checkout's mount, its state, its files, and its index row, in that order.
    /// Moving the state aside is the point of no return: a crash after it leaves a row
    /// without state, which recovery finishes discarding. Every step tolerates its effect
    /// being done already (by a crashed attempt, or another process finishing it). With
    /// `detach`, mounts are detached (recovery: whoever used them is gone) rather than
    /// unmounted, which fails while they are busy.
    pub(crate) fn discard(&self, row: &CheckoutRow, detach: bool) -> Result<()> {
        let mode = CheckoutMode::parse(&row.mode).unwrap_or(CheckoutMode::Portable);
        #[cfg(not(target_os = "linux"))]
        let _ = detach; // only overlay mounts need detaching
        #[cfg(target_os = "linux")]
        if detach {
            for point in crate::overlay::mounts_under(&row.dir)? {
                self::detach(&point)?;
            }
        } else if mode == CheckoutMode::Overlay && crate::overlay::is_mounted(&row.dir)? {
            crate::overlay::unmount(&row.dir)?;
        }
        if mode == CheckoutMode::Overlay {
            failpoint("discard.overlay.unmounted");
        }
        let trash = match &row.state_dir {
            Some(state) => {
                let trash = self.states.join(unique_name("x-"));
                match fs::rename(state, &trash) {
                    Ok(()) => Some(trash),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io_err("move aside", state)(e)),
                }
            }
            None => None,
        };
        failpoint_for(
            mode,
            "discard.overlay.abandoned",
            "discard.portable.abandoned",
        );
        // The tree joins the moved-aside state, to be deleted in the background; where it
        // cannot be moved (another filesystem) it is deleted now.
        let moved = trash.as_ref().is_some_and(|trash| {
            row.dir.exists() && fs::rename(&row.dir, trash.join("released-tree")).is_ok()
        });
        if !moved {
            remove_tree(&row.dir)?;
        }
        failpoint_for(mode, "discard.overlay.removed", "discard.portable.removed");
        let dir = row.dir.clone();
        self.with_index(|ix| Ok(ix.remove_checkout(&dir).map(|_| ())?))?;
        failpoint_for(mode, "discard.overlay.state", "discard.portable.state");
        if let Some(trash) = trash {
            self.reaper.delete(trash);
        }
        Ok(())
    }

    /// Writes a plain, untracked copy of `snapshot` at `dir`, relocated to `dir`.
    pub fn copy_out(&self, snapshot: &SnapshotId, dir: &Path) -> Result<()> {
        let dir = prepare_target(dir)?;
        // A lease keeps a concurrent prune (and so gc) off the snapshot's layers while they
        // are read; if this process dies, the lease dies with it.
        let lease = self.with_index(|ix| {
            Ok(ix.lease(
                snapshot,
                index::Owner::current(),
                "copy out",
                index::now_millis(),
            )?)
        })?;
        let copied = self.copy_leased(snapshot, &dir);
        let released = self.with_index(|ix| Ok(ix.release_lease(lease)?));
        copied.and(released)
    }

    fn copy_leased(&self, snapshot: &SnapshotId, dir: &Path) -> Result<()> {
        let chain = self.with_index(|ix| Ok(ix.chain(snapshot)?))?;
        let ids: Vec<LayerId> = chain.iter().map(|row| row.layer).collect();
        let layers = self.ensure_unpacked(&ids)?;
        let refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
        portable::materialize(&refs, dir)?;
        self.relocate_copy(&chain, &layers, dir)?;
        Ok(())
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

/// How to compress a layer of `entries` entries and about `bytes` bytes of file data. Most
/// commits of a build step are small: a layer that surely fits in one zstd frame is
/// compressed on this thread, with a chunk buffer of its size rather than the default's
/// 8 MiB (allocating and zeroing those, and starting workers, costs more than compressing a
/// few kilobytes). The blob is the same either way: one frame of the whole tar.
fn create_options(bytes: u64, entries: usize) -> CreateOptions {
    let defaults = CreateOptions::default();
    // Headers, padding and PAX records: a generous 4 KiB per entry, and twice that in all.
    let tar = bytes.saturating_add(4096u64.saturating_mul(entries as u64 + 1));
    let chunk = tar.saturating_mul(2).next_power_of_two();
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

/// Flushes the filesystems holding `paths` (each once): `syncfs`, one journal commit for
/// everything written there, rather than an fsync per file and directory.
#[cfg(target_os = "linux")]
pub(crate) fn sync_filesystems(paths: &[&Path]) -> Result<()> {
    let mut synced = Vec::new();
    for path in paths {
        let fd = rustix::fs::open(
            *path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_err("open", path)(e.into()))?;
        let dev = rustix::fs::fstat(&fd)
            .map_err(|e| io_err("stat", path)(e.into()))?
            .st_dev;
        if !synced.contains(&dev) {
            rustix::fs::syncfs(&fd)
                .map_err(|e| io_err("flush the filesystem of", path)(e.into()))?;
            synced.push(dev);
        }
    }
    Ok(())
}

/// The marker saying an unpacked layer was made from a volatile upper dir in some boot and
/// has not been flushed since: `unpacked-v1/<layer>.unsynced`, holding that boot's id.
pub(crate) fn unsynced_marker(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".unsynced");
    PathBuf::from(name)
}

/// Writes [`unsynced_marker`] for `target` before `target` gets its name. The marker is
/// written aside and renamed into place, so a reader never sees it half-written (two
/// commits of one layer may race here). No flush: journaled filesystems persist the
/// marker no later than the rename of `target` that follows, and a marker whose contents a
/// crash lost reads as another boot's, which is what a crash means.
fn mark_unsynced(target: &Path) -> Result<()> {
    let path = unsynced_marker(target);
    let Some(boot) = boot_id() else {
        return Ok(()); // without boot ids there is nothing to compare later
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}", unique_name("tmp-")));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, boot).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("rename into place", &path)(e)
    })
}

/// Whether `target` was made unflushed in an earlier boot. Only a marker that names another
/// boot (or whose contents a crash lost) says so: a layer in use by this boot's checkouts
/// must never be taken for stale.
fn unsynced_in_earlier_boot(target: &Path) -> bool {
    let Some(now) = boot_id() else {
        return false;
    };
    match fs::read_to_string(unsynced_marker(target)) {
        Ok(made_in) => made_in.trim() != now,
        Err(_) => false,
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel tells. Read once per
/// process; a failed read is retried next time rather than remembered.
fn boot_id() -> Option<String> {
    static BOOT: OnceLock<String> = OnceLock::new();
    if let Some(id) = BOOT.get() {
        return Some(id.clone());
    }
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(BOOT.get_or_init(|| id.trim().to_owned()).clone())
}

/// Notes in an overlay checkout's state dir which boot mounted it (see [`same_boot`]).
#[cfg(target_os = "linux")]
fn record_boot(state: &Path) -> Result<()> {
    let path = state.join("boot-id");
    match boot_id() {
        Some(id) => fs::write(&path, id).map_err(io_err("write", &path)),
        None => Ok(()),
    }
}

/// Whether the overlay checkout with this state dir was mounted during this boot. Mounts are
/// volatile, so the upper dir of an earlier boot may have lost writes when the host went
/// down; one without a record (or without a boot id to compare) is given the benefit.
#[cfg(target_os = "linux")]
fn same_boot(state: &Path) -> bool {
    match (fs::read_to_string(state.join("boot-id")), boot_id()) {
        (Ok(recorded), Some(now)) => recorded.trim() == now,
        _ => true,
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

/// The suffix of the relocated variants made for checkouts at `root`: `<layer>@<suffix>`.
pub(crate) fn variant_suffix(root: &[u8]) -> String {
    blake3::hash(root).to_hex()[..16].to_owned()
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
    canonical(dir).map_err(io_err("resolve", dir))
}

/// `fs::canonicalize`, without Windows's `\\?\` prefix where the path has a plain form: a
/// checkout's root is recorded, and looked for in files (relocation), as tools spell it.
pub(crate) fn canonical(path: &Path) -> io::Result<PathBuf> {
    let path = fs::canonicalize(path)?;
    #[cfg(windows)]
    if let Some(plain) = path.to_str().and_then(plain_windows_path) {
        return Ok(PathBuf::from(plain));
    }
    Ok(path)
}

/// The plain form of a verbatim Windows path: `\\?\C:\x` is `C:\x`, `\\?\UNC\host\share\x`
/// is `\\host\share\x`. `None` for other verbatim paths (devices, volume GUIDs) and where the
/// plain form would name something else: Win32 drops trailing dots and spaces of components.
#[cfg_attr(
    not(windows),
    allow(dead_code, reason = "used on Windows; unit-tested everywhere")
)]
fn plain_windows_path(path: &str) -> Option<String> {
    let plain = if let Some(rest) = path.strip_prefix(r"\\?\UNC\") {
        format!(r"\\{rest}")
    } else {
        let rest = path.strip_prefix(r"\\?\")?;
        let drive = rest.as_bytes();
        if !(drive.len() >= 3 && drive[0].is_ascii_alphabetic() && &drive[1..3] == b":\\") {
            return None;
        }
        rest.to_owned()
    };
    let odd = plain
        .split('\\')
        .any(|c| c.ends_with('.') || c.ends_with(' '));
    (!odd && !plain.contains('/')).then_some(plain)
}

/// Removes a tree, including read-only directories (root can, others may need chmod). A
/// missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        // Gone already, or removed by another process meanwhile (recovery races are benign).
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io_err("remove", path)),
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

/// Whether the process that named an entry `<prefix>-<pid>-...` may still run. Names
/// without a pid were not made by this engine and count as dead.
/// The entries of `dir` that `wanted` accepts and whose maker (the pid in a
/// [`unique_name`]) no longer runs, as (name, path).
fn entries_of_dead_makers(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if wanted(&name) && !maker_alive(&name) {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

fn maker_alive(name: &str) -> bool {
    name.split('-')
        .nth(1)
        .and_then(|pid| pid.parse().ok())
        .is_some_and(process_alive)
}

/// The overlay mount points of the host (of this process's mount namespace).
pub(crate) fn overlay_mounts() -> Result<HashSet<PathBuf>> {
    #[cfg(target_os = "linux")]
    return Ok(crate::overlay::mounts_under(Path::new("/"))?
        .into_iter()
        .collect());
    #[cfg(not(target_os = "linux"))]
    Ok(HashSet::new())
}

/// Detaches the mount at `point`; one already gone is fine (another process got there).
#[cfg(target_os = "linux")]
fn detach(point: &Path) -> Result<()> {
    match crate::overlay::unmount_detach(point) {
        Ok(()) | Err(crate::overlay::Error::NotMounted { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a process with this pid exists (a recycled pid errs on the side of keeping).
fn process_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    return Path::new(&format!("/proc/{pid}")).exists();
    #[cfg(all(unix, not(target_os = "linux")))]
    return rustix::process::Pid::from_raw(pid as i32)
        .is_none_or(|p| rustix::process::test_kill_process(p).is_ok());
    #[cfg(windows)]
    return !matches!(
        crate::index::process::win32::process_state(pid),
        crate::index::process::win32::State::Gone
    );
    #[cfg(not(any(unix, windows)))]
    {
        let _ = pid;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbatim_windows_paths_get_their_plain_form_where_it_means_the_same() {
        let plain = |p: &str| plain_windows_path(p);
        assert_eq!(plain(r"\\?\C:\strata\s01"), Some(r"C:\strata\s01".into()));
        assert_eq!(
            plain(r"\\?\UNC\host\share\s01"),
            Some(r"\\host\share\s01".into())
        );
        // Already plain, a device or volume path, or a name Win32 would trim.
        assert_eq!(plain(r"C:\strata"), None);
        assert_eq!(plain(r"\\?\Volume{1234}\x"), None);
        assert_eq!(plain(r"\\?\C:\strata\dot."), None);
        assert_eq!(plain(r"\\?\C:\strata\space \x"), None);
    }

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
