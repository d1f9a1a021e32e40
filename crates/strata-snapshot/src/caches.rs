//! Shared caches, OBuilder's `(cache (NAME (target PATH)))`: named trees that `run` steps
//! mount writable and that outlive the step, such as a package manager's download directory.
//!
//! Semantics (OBuilder's, kept across processes and restarts through the index):
//! - A cache has a current version, a snapshot, or none while it is empty. Its `generation`
//!   counts the releases that replaced the version.
//! - [`Engine::cache_acquire`] gives the caller a private writable view of the current version:
//!   a tracked checkout under `<store>/caches-v1/views/`, recorded with the generation it was
//!   taken at. Use is not exclusive: every user gets its own view. A missing cache is created
//!   empty, its root owned by the given user.
//! - [`Engine::cache_release`] runs whether the step succeeded or not: there is no success
//!   flag, as in OBuilder, since a failed step's downloads are as good as a successful one's.
//!   If no other release of the cache happened since the view was taken (a compare-and-swap on
//!   the generation, in one write transaction), the view becomes the new version, committed as
//!   a child of the version it was taken from; otherwise it is discarded. So the first release
//!   wins. Either way the view's checkout is gone afterwards, also when releasing fails.
//! - Versions form a chain, one layer per winning release. Overlayfs stacks at most 500
//!   layers, and deep stacks are slow to check out, so a version that would be deeper than
//!   [`MAX_CACHE_DEPTH`] is stored instead as one layer of the whole tree, with no parent.
//! - [`Engine::cache_delete`] is refused with [`Error::Busy`] while views are out (as
//!   OBuilder's overlayfs, ZFS and QEMU stores do): forgetting the cache under a view would let
//!   that view's release resurrect it. A deleted cache's versions become prunable.
//! - A view pins the version it was taken from, and a cache pins its current version, so
//!   prune leaves both alone. Views of processes that died are found by their recorded owner
//!   and removed by [`Engine::cache_sweep_dead_views`].
//!
//! Layers record no entry for the root directory, so the owner of a cache's root is kept in
//! the index and given to the root of every view; other changes a step makes to the root
//! directory itself (its mode, say) are not kept.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use strata_cas::{CreateOptions, LayerId, LayerInfo, Limits};

use crate::SnapshotId;
use crate::engine::{CACHES_DIR, io_error, remove_tree};
use crate::index::{
    self, AddedCacheView, CacheRow, CacheVersion, LayerRow, NewCacheView, Owner, Publish,
    RemoveCache,
};
use crate::{CheckoutMode, Engine};

/// The deepest a cache version may be (snapshots below it); a deeper one is flattened.
pub const MAX_CACHE_DEPTH: u32 = 64;

/// Where views are checked out, under [`CACHES_DIR`].
const VIEWS_DIR: &str = "views";

/// A tar archive with no entries: its end-of-archive marker, two zero blocks.
const EMPTY_TAR: [u8; 1024] = [0; 1024];

/// Errors of shared caches. Each names the cache, and the view directory where one is
/// involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine failed outside any one view.
    #[error(transparent)]
    Engine(#[from] crate::Error),
    /// A cache name was rejected.
    #[error("invalid cache name `{name}`: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Deletion refused: views of the cache are out.
    #[error("cache `{name}` is busy: {views} view(s) of it are out; release them first")]
    Busy {
        /// The cache.
        name: String,
        /// How many views are out.
        views: u64,
    },
    /// Something failed while making, releasing or removing one view.
    #[error("cache `{name}`: cannot {op} view {}: {source}", dir.display())]
    View {
        /// The cache.
        name: String,
        /// What was being done ("check out", "release", "remove").
        op: &'static str,
        /// The view's directory.
        dir: PathBuf,
        // Boxed: the engine's error is large, and this one is returned everywhere.
        #[source]
        source: Box<crate::Error>,
    },
}

/// The result type of shared caches.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A private writable view of a cache, from [`Engine::cache_acquire`]. Hand it back with
/// [`Engine::cache_release`] (or [`Engine::cache_discard`]); until then it stays checked out,
/// and dropping it leaves it so until the process exits and the view is swept.
#[derive(Debug)]
#[non_exhaustive]
#[must_use = "a cache view stays checked out until it is released"]
pub struct CacheView {
    /// The cache.
    pub name: String,
    /// The view: mount or bind this directory into the sandbox.
    pub dir: PathBuf,
    /// The cache's generation when the view was taken.
    pub base_generation: u64,
    /// The version the view was taken from (the empty base snapshot for an empty cache).
    pub base: SnapshotId,
    /// That version's depth.
    pub base_depth: u32,
    /// How the view is checked out.
    pub mode: CheckoutMode,
}

/// A shared cache, as [`Engine::caches`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Cache {
    /// The cache's name.
    pub name: String,
    /// The current version, or none while the cache is still empty.
    pub snapshot: Option<SnapshotId>,
    /// How many releases have replaced the version since the cache was created.
    pub generation: u64,
    /// Owner given to the root of every view (the user that created the cache).
    pub owner_uid: u32,
    /// Group given to the root of every view.
    pub owner_gid: u32,
    /// Views taken and not yet released or swept.
    pub views: u64,
    /// When it was created (ms since the Unix epoch).
    pub created: i64,
    /// When its version last changed (ms since the Unix epoch).
    pub updated: i64,
}

impl From<CacheRow> for Cache {
    fn from(row: CacheRow) -> Cache {
        Cache {
            name: row.name,
            snapshot: row.snapshot,
            generation: row.generation,
            owner_uid: row.owner_uid,
            owner_gid: row.owner_gid,
            views: row.views,
            created: row.created,
            updated: row.updated,
        }
    }
}

/// What [`Engine::cache_release`] did with a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReleaseOutcome {
    /// No other release came first: the view is the cache's new version.
    Kept {
        /// The new version.
        snapshot: SnapshotId,
        /// The cache's generation now.
        generation: u64,
        /// Whether the version was stored flattened (as a base snapshot) to bound the depth.
        flattened: bool,
    },
    /// Another release came first: the view was thrown away.
    Discarded {
        /// The cache's generation now.
        generation: u64,
    },
}

impl ReleaseOutcome {
    /// Whether the view became the new version.
    pub fn kept(&self) -> bool {
        matches!(self, ReleaseOutcome::Kept { .. })
    }
}

fn check_name(name: &str) -> Result<()> {
    index::check_cache_name(name).map_err(|why| Error::BadName {
        name: name.to_owned(),
        why,
    })
}

fn layer_row(info: &LayerInfo, now: i64) -> LayerRow {
    LayerRow {
        id: info.id,
        uncompressed_size: info.uncompressed_size,
        compressed_size: info.compressed_size,
        unpacked: false,
        created: now,
    }
}

impl Engine {
    /// Where cache views are checked out.
    pub fn cache_views_dir(&self) -> PathBuf {
        self.root().join(CACHES_DIR).join(VIEWS_DIR)
    }

    /// Every cache, by name.
    pub fn caches(&self) -> Result<Vec<Cache>> {
        let rows = self.with_index(|ix| Ok(ix.caches()?))?;
        Ok(rows.into_iter().map(Cache::from).collect())
    }

    /// The cache `name`, if it exists.
    pub fn cache(&self, name: &str) -> Result<Option<Cache>> {
        check_name(name)?;
        let row = self.with_index(|ix| Ok(ix.cache(name)?))?;
        Ok(row.map(Cache::from))
    }

    /// A private writable view of the current version of cache `name`, checked out the
    /// default way. A missing cache is created empty, its root owned by `owner` (uid, gid);
    /// an existing cache keeps the owner it was created with.
    pub fn cache_acquire(&self, name: &str, owner: (u32, u32)) -> Result<CacheView> {
        self.cache_acquire_with(name, owner, None)
    }

    /// [`Engine::cache_acquire`] with a chosen checkout mode (none: the default).
    pub fn cache_acquire_with(
        &self,
        name: &str,
        owner: (u32, u32),
        mode: Option<CheckoutMode>,
    ) -> Result<CacheView> {
        check_name(name)?;
        let mode = mode.unwrap_or_else(|| self.default_mode());
        let views = self.cache_views_dir();
        strata_cas::private_dir(&self.root().join(CACHES_DIR)).map_err(crate::Error::from)?;
        fs::create_dir_all(&views).map_err(io_error("create", &views))?;
        // Canonical, like the checkout row the engine will record for it.
        let views = crate::engine::canonical(&views).map_err(io_error("resolve", &views))?;
        // Named after this process like the engine's other entries, though views are swept
        // by the owner their row records.
        let dir = views.join(strata_process::unique_name(""));
        let added = self.record_view(name, &dir, owner, Owner::current())?;
        // The view is recorded: from here on a failure must remove it again.
        let made = self
            .checkout(&added.base.id, &dir, Some(mode))
            .and_then(|_| set_root_owner(&dir, added.cache.owner_uid, added.cache.owner_gid));
        if let Err(source) = made {
            let _ = self.drop_view(&dir);
            return Err(Error::View {
                name: name.to_owned(),
                op: "check out",
                dir,
                source: Box::new(source),
            });
        }
        Ok(CacheView {
            name: name.to_owned(),
            dir,
            base_generation: added.view.base_generation,
            base: added.base.id,
            base_depth: added.base.depth,
            mode,
        })
    }

    /// Hands a view back: it becomes the cache's new version if no other release of the cache
    /// happened since it was taken, and is discarded otherwise. Call it whether or not the
    /// step succeeded. The view's checkout is removed in every case, errors included.
    pub fn cache_release(&self, view: CacheView) -> Result<ReleaseOutcome> {
        let settled = self.settle(&view);
        let removed = self.drop_view(&view.dir);
        let (outcome, loser) = settled.map_err(|source| Error::View {
            name: view.name.clone(),
            op: "release",
            dir: view.dir.clone(),
            source: Box::new(source),
        })?;
        removed.map_err(|source| Error::View {
            name: view.name.clone(),
            op: "remove",
            dir: view.dir.clone(),
            source: Box::new(source),
        })?;
        if let Some(id) = loser {
            // Best effort: other views of the same version pin it (it may be their release in
            // progress) until they are gone; prune collects it then.
            let _ = self.with_index(|ix| Ok(ix.remove_snapshot(&id)?));
        }
        Ok(outcome)
    }

    /// Throws a view away without trying to make it the new version (for a step that never
    /// ran, say).
    pub fn cache_discard(&self, view: CacheView) -> Result<()> {
        self.drop_view(&view.dir).map_err(|source| Error::View {
            name: view.name,
            op: "discard",
            dir: view.dir,
            source: Box::new(source),
        })
    }

    /// Forgets cache `name`; its versions become prunable. Refused with [`Error::Busy`] while
    /// views of it are out (views of dead processes are swept first). Deleting a cache that
    /// does not exist succeeds, as in OBuilder.
    pub fn cache_delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        // Nobody will ever release a dead process's view: it must not keep the cache busy.
        self.cache_sweep_dead_views()?;
        match self.with_index(|ix| Ok(ix.remove_cache(name)?))? {
            RemoveCache::Removed | RemoveCache::Missing => Ok(()),
            RemoveCache::Busy { views } => Err(Error::Busy {
                name: name.to_owned(),
                views,
            }),
        }
    }

    /// Removes the views whose owner process is no longer alive (a crashed build), with their
    /// checkouts; their changes are discarded. Returns their directories.
    pub fn cache_sweep_dead_views(&self) -> Result<Vec<PathBuf>> {
        let views = self.with_index(|ix| Ok(ix.cache_views(None)?))?;
        let mut swept = Vec::new();
        for view in views.into_iter().filter(|v| !v.owner.is_alive()) {
            self.drop_view(&view.dir).map_err(|source| Error::View {
                name: view.cache.clone(),
                op: "sweep",
                dir: view.dir.clone(),
                source: Box::new(source),
            })?;
            swept.push(view.dir);
        }
        Ok(swept)
    }

    /// Records a view of cache `name` at `dir` held by `process`, creating the cache (its
    /// root owned by `owner`) if missing; the caller checks it out.
    pub(crate) fn record_view(
        &self,
        name: &str,
        dir: &Path,
        owner: (u32, u32),
        process: Owner,
    ) -> crate::Result<AddedCacheView> {
        // The empty layer is stored and recorded under the shared gc lock, as every layer
        // is, so gc cannot drop its blob in between. Storing it again is a cheap no-op.
        let _gc = self.gc_lock(false)?;
        let opts = CreateOptions {
            threads: 1,
            ..CreateOptions::default()
        };
        let now = crate::now_millis();
        let empty = self
            .cas()
            .put_tar(&EMPTY_TAR[..], &opts, &Limits::default())?;
        let new = NewCacheView {
            cache: name.to_owned(),
            dir: dir.to_path_buf(),
            owner: process,
            uid: owner.0,
            gid: owner.1,
            empty_layer: layer_row(&empty, now),
            now,
        };
        self.with_index(|ix| Ok(ix.add_cache_view(&new)?))
    }

    /// Publishes the view if it has not lost yet. Returns the outcome and, for a view that
    /// was committed but whose snapshot did not become the version, that unused snapshot.
    fn settle(&self, view: &CacheView) -> crate::Result<(ReleaseOutcome, Option<SnapshotId>)> {
        // A view that has already lost is not worth committing. (The cache exists: the view
        // pins it.)
        let generation = self
            .with_index(|ix| Ok(ix.cache(&view.name)?))?
            .map_or(0, |c| c.generation);
        if generation != view.base_generation {
            return Ok((ReleaseOutcome::Discarded { generation }, None));
        }
        if view.base_depth >= MAX_CACHE_DEPTH {
            return Ok((outcome(self.publish_flattened(view)?, true), None));
        }
        let committed = self.commit(&view.dir, None)?;
        let (published, flattened) = if committed.layer == LayerId::of(&EMPTY_TAR) {
            // Nothing changed: the version stays, and the release still counts as one.
            let version = CacheVersion::Snapshot(view.base);
            (self.publish(view, &version)?, false)
        } else if self
            .with_index(|ix| Ok(ix.chain(&view.base)?))?
            .iter()
            .any(|row| row.layer == committed.layer)
        {
            // The same layer twice in one stack cannot be mounted (overlayfs refuses it with
            // ELOOP). Rare: it takes a change identical to an earlier one, metadata included.
            // The committed tree is checked out again at the view's place, which the view row
            // still covers if we crash, and stored flat.
            self.checkout(&committed.id, &view.dir, Some(CheckoutMode::Portable))?;
            (self.publish_flattened(view)?, true)
        } else {
            let version = CacheVersion::Snapshot(committed.id);
            (self.publish(view, &version)?, false)
        };
        let unused = match &published {
            Publish::Won { snapshot, .. } if snapshot.id == committed.id => None,
            _ => Some(committed.id),
        };
        Ok((outcome(published, flattened), unused))
    }

    fn publish(&self, view: &CacheView, version: &CacheVersion) -> crate::Result<Publish> {
        let now = crate::now_millis();
        // A new cache version must survive power loss, like a new snapshot.
        self.with_index(
            |ix| Ok(ix.durably(|ix| ix.publish_cache_version(&view.dir, version, now))?),
        )
    }

    /// Publishes the whole tree at the view's directory as one layer, recorded as a base
    /// snapshot only if the release wins. The caller removes the checkout; a losing layer's
    /// blob is an orphan that gc collects.
    fn publish_flattened(&self, view: &CacheView) -> crate::Result<Publish> {
        // Shared gc lock from storing the blob to recording it, as for every layer.
        let _gc = self.gc_lock(false)?;
        let info = self.cas().put_dir(&view.dir, &CreateOptions::default())?;
        let version = CacheVersion::Flattened {
            layer: layer_row(&info, crate::now_millis()),
            root_path: None,
        };
        self.publish(view, &version)
    }

    /// Removes a view's checkout (whatever state it is in), then its index row.
    fn drop_view(&self, dir: &Path) -> crate::Result<()> {
        let tracked = self.with_index(|ix| Ok(ix.checkout(dir)?))?;
        match tracked {
            Some(row) if row.dir.exists() => match self.release(&row.dir) {
                // Another sweeper got there first.
                Ok(()) | Err(crate::Error::NotTracked { .. }) => {}
                Err(e) => return Err(e),
            },
            Some(row) => {
                // The directory went away (a crash while discarding): forget the rest.
                if let Some(state) = &row.state_dir {
                    remove_tree(state)?;
                }
                self.with_index(|ix| Ok(ix.remove_checkout(&row.dir).map(|_| ())?))?;
            }
            // Committed already, or the process died before the checkout was recorded (the
            // row comes before any mount or file, so this is at most an empty directory).
            None => remove_tree(dir)?,
        }
        self.with_index(|ix| Ok(ix.remove_cache_view(dir).map(|_| ())?))
    }
}

fn outcome(published: Publish, flattened: bool) -> ReleaseOutcome {
    match published {
        Publish::Won {
            snapshot,
            generation,
        } => ReleaseOutcome::Kept {
            snapshot: snapshot.id,
            generation,
            flattened,
        },
        Publish::Lost { generation } => ReleaseOutcome::Discarded { generation },
    }
}

/// Gives the view's root the cache's owner (layers do not record the root's).
#[cfg(unix)]
fn set_root_owner(dir: &Path, uid: u32, gid: u32) -> crate::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(dir).map_err(io_error("stat", dir))?;
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
            .map_err(io_error("set the owner of", dir))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_root_owner(_dir: &Path, _uid: u32, _gid: u32) -> crate::Result<()> {
    Ok(())
}
