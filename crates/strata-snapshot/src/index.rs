//! The snapshot index: one SQLite file in the store directory that records layers, snapshots,
//! tags, tracked checkouts and leases, shared by every process of the host using the store.
//!
//! Concurrency model:
//! - Each [`Index`] owns one connection; open one per thread (it is `Send`, not `Sync`).
//! - Every write transaction is `BEGIN IMMEDIATE`, so writers queue on SQLite's write lock
//!   (with a 30 s busy timeout) instead of failing with `SQLITE_BUSY` when upgrading a read.
//! - Setting WAL mode and running migrations happen under an OS lock on `<db>.lock`, because
//!   several processes doing either at once on a fresh file fail.
//! - WAL needs shared memory, so every process must be on the same host (no network
//!   filesystems).
//!
//! Leases name their owner by pid and process start time, so a lease whose process died
//! (even by `SIGKILL`) stops protecting its snapshot. All processes sharing a store must see
//! the same pids (one pid namespace, one `/proc`).
//!
//! Ids are stored as lowercase hex `TEXT`, times as milliseconds since the Unix epoch, and
//! paths as raw bytes (on non-Unix: the path's UTF-8, lossily).

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use rusqlite_migration::{M, Migrations};
use serde::Serialize;
use strata_cas::LayerId;

use crate::SnapshotId;

/// Result of index operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation on the index's files failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "lock").
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// SQLite could not open the database file.
    #[error("cannot open the snapshot index {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// Bringing the schema up to date failed (or the file was written by a newer Strata).
    #[error("cannot migrate the snapshot index {}: {source}", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    /// A query failed.
    #[error("snapshot index: cannot {op}: {source}")]
    Sqlite {
        /// What was being done ("add a snapshot").
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// No snapshot has this id, tag or id prefix.
    #[error("no snapshot matches `{reference}`")]
    UnknownReference {
        /// What was asked for.
        reference: String,
    },
    /// An id prefix matches several snapshots.
    #[error("`{reference}` is ambiguous: it matches {} snapshots", candidates.len())]
    Ambiguous {
        /// What was asked for.
        reference: String,
        /// Every matching snapshot, in id order.
        candidates: Vec<SnapshotId>,
    },
    /// Removal refused because something still depends on the object.
    #[error("{kind} {id} is in use: {why}")]
    InUse {
        /// `"snapshot"` or `"layer"`.
        kind: &'static str,
        /// The object's id, in hex.
        id: String,
        /// What uses it.
        why: String,
    },
    /// The checkout directory is already tracked.
    #[error("checkout directory {} is already tracked", dir.display())]
    AlreadyTracked {
        /// The directory.
        dir: PathBuf,
    },
    /// A new snapshot's parent is not in the index.
    #[error("parent snapshot {id} is not in the index")]
    MissingParent {
        /// The parent's id.
        id: SnapshotId,
    },
    /// The layer is not in the index.
    #[error("layer {id} is not in the index")]
    MissingLayer {
        /// The layer's id.
        id: LayerId,
    },
    /// The snapshot is not in the index.
    #[error("snapshot {id} is not in the index")]
    MissingSnapshot {
        /// The snapshot's id.
        id: SnapshotId,
    },
    /// A tag name was rejected.
    #[error("invalid tag name `{name}`: {why}")]
    BadTag {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A cache name was rejected.
    #[error("invalid cache name `{name}`: {why}")]
    BadCacheName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The directory is not a view of a cache (it was released, or swept as abandoned).
    #[error("{} is not a cache view", dir.display())]
    UnknownCacheView {
        /// The directory.
        dir: PathBuf,
    },
    /// A number does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} is too large for the snapshot index")]
    OutOfRange {
        /// Which number ("uncompressed size").
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

/// A layer known to the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerRow {
    /// The layer's id (blake3 of its uncompressed tar stream).
    pub id: LayerId,
    /// Bytes of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Bytes of the stored blob.
    pub compressed_size: u64,
    /// Whether the store's unpacked-layer cache holds this layer.
    pub unpacked: bool,
    /// When it was first recorded (ms since the Unix epoch).
    pub created: i64,
}

/// What [`Index::add_snapshot`] needs; the id and depth are derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    /// The snapshot below, or none for a base snapshot.
    pub parent: Option<SnapshotId>,
    /// The layer on top.
    pub layer: LayerId,
    /// Where the layer's tree was checked out when committed, as raw path bytes (see
    /// [`path_to_bytes`]); none for imported layers.
    pub root_path: Option<Vec<u8>>,
    /// The current time (ms since the Unix epoch), used for `created` and `last_used`.
    pub now: i64,
}

/// A snapshot known to the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRow {
    /// `SnapshotId::derive(parent, layer)`.
    pub id: SnapshotId,
    /// The snapshot below, if any.
    pub parent: Option<SnapshotId>,
    /// The layer on top.
    pub layer: LayerId,
    /// Number of snapshots below this one (0 for a base).
    pub depth: u32,
    /// Where the layer's tree was checked out when committed, as raw path bytes.
    #[serde(serialize_with = "serialize_opt_bytes_lossy")]
    pub root_path: Option<Vec<u8>>,
    /// When it was first recorded (ms since the Unix epoch).
    pub created: i64,
    /// When it was last added, checked out or touched (ms since the Unix epoch).
    pub last_used: i64,
}

/// A tracked checkout: a directory holding a snapshot's tree, which pins the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckoutRow {
    /// The checkout directory (the key).
    #[serde(serialize_with = "serialize_path_lossy")]
    pub dir: PathBuf,
    /// The snapshot checked out.
    pub snapshot: SnapshotId,
    /// How it was checked out; the engine defines the values.
    pub mode: String,
    /// The engine's private state for this checkout (an overlay upper/work dir), if any.
    #[serde(serialize_with = "serialize_opt_path_lossy")]
    pub state_dir: Option<PathBuf>,
    /// The root the sandbox sees, as raw path bytes (see [`path_to_bytes`]); it becomes the
    /// `root_path` of a snapshot committed from this checkout.
    #[serde(serialize_with = "serialize_bytes_lossy")]
    pub root_path: Vec<u8>,
    /// When it was made (ms since the Unix epoch).
    pub created: i64,
}

/// The identity of a lease, for [`Index::release_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

/// A lease: pins a snapshot while its owner process is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    /// The lease's id.
    pub id: LeaseId,
    /// The snapshot pinned.
    pub snapshot: SnapshotId,
    /// The process holding it.
    pub owner: Owner,
    /// Why, for humans ("build step 3").
    pub purpose: String,
    /// When it was taken (ms since the Unix epoch).
    pub created: i64,
}

/// A shared cache: a named tree whose successive versions are snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheRow {
    /// The cache's name (see [`check_cache_name`]).
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

/// A view of a cache: a tracked checkout that one user writes to privately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheViewRow {
    /// The checkout directory (the key).
    #[serde(serialize_with = "serialize_path_lossy")]
    pub dir: PathBuf,
    /// The cache it is a view of.
    pub cache: String,
    /// The version it was taken from (the empty base snapshot for an empty cache).
    pub snapshot: SnapshotId,
    /// The cache's generation when it was taken.
    pub base_generation: u64,
    /// The process holding it; when that process dies the view may be swept.
    pub owner: Owner,
    /// When it was taken (ms since the Unix epoch).
    pub created: i64,
}

/// What [`Index::add_cache_view`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCacheView {
    /// The cache; created (empty, generation 0) if missing.
    pub cache: String,
    /// Where the view will be checked out.
    pub dir: PathBuf,
    /// The process taking it.
    pub owner: Owner,
    /// Owner of the root of views, recorded if the cache is created.
    pub uid: u32,
    /// Group of the root of views, recorded if the cache is created.
    pub gid: u32,
    /// A layer with no entries, already stored: the base of views of an empty cache.
    pub empty_layer: LayerRow,
    /// The current time (ms since the Unix epoch).
    pub now: i64,
}

/// What [`Index::add_cache_view`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedCacheView {
    /// The cache, as it is now.
    pub cache: CacheRow,
    /// The new view.
    pub view: CacheViewRow,
    /// The snapshot to check out (the empty base if the cache is empty).
    pub base: SnapshotRow,
}

/// A new version of a cache, for [`Index::publish_cache_version`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheVersion {
    /// A snapshot already recorded (committed from the view, a child of its base).
    Snapshot(SnapshotId),
    /// A stored layer holding the whole tree, recorded here as a base snapshot, only if the
    /// release wins.
    Flattened {
        /// The layer.
        layer: LayerRow,
        /// The snapshot's `root_path`.
        root_path: Option<Vec<u8>>,
    },
}

/// How [`Index::publish_cache_version`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// The version was unchanged since the view was taken: the new one is current.
    Won {
        /// The new current version.
        snapshot: SnapshotRow,
        /// The cache's generation now.
        generation: u64,
    },
    /// Another release came first; nothing was changed or recorded.
    Lost {
        /// The cache's generation now.
        generation: u64,
    },
}

/// How [`Index::remove_cache`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveCache {
    /// The cache is forgotten; its versions are no longer pinned by it.
    Removed,
    /// There was no such cache.
    Missing,
    /// Views of the cache are out; nothing was changed.
    Busy {
        /// How many.
        views: u64,
    },
}

/// Totals over the index, for `strata df`-style reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Number of snapshots.
    pub snapshots: u64,
    /// Number of layers.
    pub layers: u64,
    /// Number of tracked checkouts.
    pub checkouts: u64,
    /// Number of leases, live or not yet expired.
    pub leases: u64,
    /// Sum of the layers' uncompressed sizes.
    pub uncompressed_bytes: u64,
    /// Sum of the layers' compressed sizes.
    pub compressed_bytes: u64,
}

/// A process, identified so that a recycled pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    /// The process id.
    pub pid: u32,
    /// On Linux, the process's start time in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`); 0 where unknown, which matches any process with this pid.
    pub start_time: u64,
}

impl Owner {
    /// The calling process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner::of(pid).unwrap_or(Owner { pid, start_time: 0 })
    }

    /// The running process `pid`, or none if there is no such process.
    pub fn of(pid: u32) -> Option<Owner> {
        process::owner_of(pid)
    }

    /// Whether this process still runs. A zombie, or a different process that reused the
    /// pid, counts as dead. When liveness cannot be determined the answer is `true`, so a
    /// lease is kept rather than its snapshot pruned. On Unix and Windows it asks the
    /// kernel; elsewhere it is always `true` (leases there only end by
    /// [`Index::release_lease`]).
    pub fn is_alive(&self) -> bool {
        process::is_alive(self)
    }
}

/// The current time in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The bytes the index stores for a path: the raw `OsStr` bytes on Unix, UTF-8 (lossy)
/// elsewhere.
pub fn path_to_bytes(path: &Path) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        path.to_string_lossy().into_owned().into_bytes()
    }
}

/// The inverse of [`path_to_bytes`].
pub fn bytes_to_path(bytes: Vec<u8>) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(bytes))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Longest cache name, in bytes.
pub const MAX_CACHE_NAME_LEN: usize = 255;

/// Checks a cache name: non-empty, at most [`MAX_CACHE_NAME_LEN`] bytes, no `/` or NUL, and
/// not `.` or `..`. Names are only index keys, never paths, so nothing else is refused.
pub fn check_cache_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_CACHE_NAME_LEN {
        return Err("it is longer than 255 bytes");
    }
    if name.contains('/') {
        return Err("it contains `/`");
    }
    if name.contains('\0') {
        return Err("it contains a NUL byte");
    }
    if name == "." || name == ".." {
        return Err("it is `.` or `..`");
    }
    Ok(())
}

/// Shortest id prefix [`Index::resolve`] accepts.
pub const MIN_PREFIX_LEN: usize = 4;

/// Longest tag name, in bytes.
pub const MAX_TAG_LEN: usize = 255;

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// WAL pages (4 KiB) past which a commit checkpoints the WAL into the database. Every
/// process's first read rebuilds the WAL's index by reading the whole WAL (it is not
/// checkpointed on close), so it is kept to 1 MiB.
const WAL_AUTOCHECKPOINT: i64 = 256;

// Never edit a released migration: append a new one. Version 1: layers, snapshots, tags,
// checkouts, leases. Version 2: shared caches and the views taken of them.
const MIGRATIONS_SLICE: &[M<'_>] = &[
    M::up(
        "CREATE TABLE layers (
        id TEXT PRIMARY KEY NOT NULL,
        uncompressed_size INTEGER NOT NULL,
        compressed_size INTEGER NOT NULL,
        unpacked INTEGER NOT NULL DEFAULT 0,
        relocation_root BLOB,
        relocations BLOB,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY NOT NULL,
        parent TEXT REFERENCES snapshots(id) ON DELETE RESTRICT,
        layer TEXT NOT NULL REFERENCES layers(id) ON DELETE RESTRICT,
        depth INTEGER NOT NULL,
        root_path BLOB,
        created INTEGER NOT NULL,
        last_used INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX snapshots_parent ON snapshots(parent);
    CREATE INDEX snapshots_last_used ON snapshots(last_used);
    CREATE INDEX snapshots_layer ON snapshots(layer);
    CREATE TABLE tags (
        name TEXT PRIMARY KEY NOT NULL,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE
    ) STRICT;
    CREATE INDEX tags_snapshot ON tags(snapshot);
    CREATE TABLE checkouts (
        dir BLOB PRIMARY KEY NOT NULL,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE RESTRICT,
        mode TEXT NOT NULL,
        state_dir BLOB,
        root_path BLOB NOT NULL,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX checkouts_snapshot ON checkouts(snapshot);
    CREATE TABLE leases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        purpose TEXT NOT NULL,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX leases_snapshot ON leases(snapshot);",
    ),
    // A cache's current version is `snapshot` (none: empty). `generation` counts the releases
    // that replaced it; a view records the generation it was taken at, and its release wins
    // only if the generation is unchanged. Both tables pin the snapshots they name.
    M::up(
        "CREATE TABLE caches (
        name TEXT PRIMARY KEY NOT NULL,
        snapshot TEXT REFERENCES snapshots(id) ON DELETE RESTRICT,
        generation INTEGER NOT NULL,
        owner_uid INTEGER NOT NULL,
        owner_gid INTEGER NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX caches_snapshot ON caches(snapshot);
    CREATE TABLE cache_views (
        dir BLOB PRIMARY KEY NOT NULL,
        cache TEXT NOT NULL REFERENCES caches(name) ON DELETE RESTRICT,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE RESTRICT,
        base_generation INTEGER NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX cache_views_cache ON cache_views(cache);
    CREATE INDEX cache_views_snapshot ON cache_views(snapshot);",
    ),
];

const MIGRATIONS: Migrations<'_> = Migrations::from_slice(MIGRATIONS_SLICE);

// One spelling of a snapshot row's columns, so every query decodes with `snapshot_row`.
macro_rules! snapshot_columns {
    () => {
        "s.id, s.parent, s.layer, s.depth, s.root_path, s.created, s.last_used"
    };
}

macro_rules! cache_columns {
    () => {
        "c.name, c.snapshot, c.generation, c.owner_uid, c.owner_gid, c.created, c.updated,
         (SELECT count(*) FROM cache_views v WHERE v.cache = c.name)"
    };
}

// Owner first, so that `owner_cols` decodes it.
macro_rules! cache_view_columns {
    () => {
        "v.owner_pid, v.owner_start, v.dir, v.cache, v.snapshot, v.base_generation, v.created"
    };
}

/// The snapshot index over one SQLite file.
#[derive(Debug)]
pub struct Index {
    conn: Connection,
    path: PathBuf,
}

impl Index {
    /// Opens the index at `path`, creating the file (not its parent directory) and the
    /// schema if needed.
    pub fn open(path: &Path) -> Result<Index> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| Error::Io {
                op: "open",
                path: lock_path.clone(),
                source,
            })?;
        // Held until the end of this function: WAL setup and migrations race otherwise.
        lock.lock().map_err(|source| Error::Io {
            op: "lock",
            path: lock_path.clone(),
            source,
        })?;
        let index = Index::open_locked(path);
        drop(lock);
        index
    }

    fn open_locked(path: &Path) -> Result<Index> {
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        // No SQLITE_OPEN_URI: a store path starting with `file:` is still a path.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        // First, so that everything below already waits for other processes.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // NORMAL: a commit only appends to the WAL. Writes that must survive power loss say
        // so ([`Index::durably`]) or are flushed by the engine with the rest of a commit.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // Short-lived processes (one per `strata` command) would otherwise checkpoint and
        // delete the WAL on every exit, and the next writer would recreate it and fsync its
        // header and directory: two to four flushes per command for nothing. The WAL stays
        // and is checkpointed when it grows past `WAL_AUTOCHECKPOINT` pages instead.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Io {
                op: "switch to WAL mode",
                path: path.to_owned(),
                source: io::Error::other(format!("journal mode stayed `{mode}`")),
            });
        }
        MIGRATIONS
            .to_latest(&mut conn)
            .map_err(|source| Error::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Index {
            conn,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with every commit flushed to disk before it returns (`synchronous=FULL`:
    /// one fsync of the WAL per transaction, which also covers the earlier unflushed ones),
    /// for writes that must survive power loss, such as a new snapshot.
    pub fn durably<T>(&mut self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        self.set_synchronous("FULL")?;
        let out = f(self);
        let reset = self.set_synchronous("NORMAL");
        let out = out?;
        reset?;
        Ok(out)
    }

    fn set_synchronous(&mut self, level: &str) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", level)
            .map_err(sql("set the sync level"))
    }

    fn begin(&mut self) -> Result<rusqlite::Transaction<'_>> {
        // IMMEDIATE (set at open): takes the write lock now, waiting up to the busy timeout.
        self.conn
            .transaction()
            .map_err(sql("begin a write transaction"))
    }

    // ---- layers ----

    /// Records a layer; does nothing if it is already recorded (same id, same content).
    pub fn add_layer(&mut self, row: &LayerRow) -> Result<()> {
        insert_layer(&self.conn, row)
    }

    /// The layer `id`, if recorded.
    pub fn layer(&self, id: &LayerId) -> Result<Option<LayerRow>> {
        self.conn
            .prepare_cached(
                "SELECT id, uncompressed_size, compressed_size, unpacked, created
                 FROM layers WHERE id = ?1",
            )
            .and_then(|mut st| st.query_row([id.to_hex()], layer_row).optional())
            .map_err(sql("read a layer"))
    }

    /// Records whether the store's unpacked-layer cache holds layer `id`.
    pub fn set_layer_unpacked(&mut self, id: &LayerId, unpacked: bool) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE layers SET unpacked = ?2 WHERE id = ?1",
                params![id.to_hex(), unpacked],
            )
            .map_err(sql("mark a layer unpacked"))?;
        if n == 0 {
            return Err(Error::MissingLayer { id: *id });
        }
        Ok(())
    }

    /// Stores the engine's relocation data for layer `id` (opaque to the index).
    pub fn set_relocations(&mut self, id: &LayerId, root: &[u8], records: &[u8]) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE layers SET relocation_root = ?2, relocations = ?3 WHERE id = ?1",
                params![id.to_hex(), root, records],
            )
            .map_err(sql("store relocations"))?;
        if n == 0 {
            return Err(Error::MissingLayer { id: *id });
        }
        Ok(())
    }

    /// The relocation data `(root, records)` of layer `id`, or none if never set.
    /// Errors with [`Error::MissingLayer`] if the layer is not recorded.
    pub fn relocations(&self, id: &LayerId) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let found = self
            .conn
            .prepare_cached("SELECT relocation_root, relocations FROM layers WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id.to_hex()], |r| {
                    Ok((
                        r.get::<_, Option<Vec<u8>>>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                    ))
                })
                .optional()
            })
            .map_err(sql("read relocations"))?;
        match found {
            None => Err(Error::MissingLayer { id: *id }),
            Some((Some(root), Some(records))) => Ok(Some((root, records))),
            Some(_) => Ok(None),
        }
    }

    /// Layers no snapshot refers to, in id order.
    pub fn unreferenced_layers(&self) -> Result<Vec<LayerId>> {
        let op = "list unreferenced layers";
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT l.id FROM layers l
                 WHERE NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.layer = l.id)
                 ORDER BY l.id",
            )
            .map_err(sql(op))?;
        st.query_map([], |r| hex_col(r, 0))
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// Forgets layer `id`. Refuses with [`Error::InUse`] while a snapshot refers to it.
    pub fn remove_layer(&mut self, id: &LayerId) -> Result<()> {
        let op = "remove a layer";
        let tx = self.begin()?;
        let users: Option<i64> = tx
            .query_row(
                "SELECT (SELECT count(*) FROM snapshots WHERE layer = ?1)
                 FROM layers WHERE id = ?1",
                [id.to_hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(op))?;
        match users {
            None => return Err(Error::MissingLayer { id: *id }),
            Some(0) => {}
            Some(n) => {
                return Err(Error::InUse {
                    kind: "layer",
                    id: id.to_hex(),
                    why: format!("{n} snapshot(s) use it"),
                });
            }
        }
        tx.execute("DELETE FROM layers WHERE id = ?1", [id.to_hex()])
            .map_err(sql(op))?;
        tx.commit().map_err(sql(op))
    }

    // ---- snapshots ----

    /// Records the snapshot `new.layer` on `new.parent` and returns it. If it already exists
    /// (same parent and layer), returns the existing row with `last_used` raised to
    /// `new.now`; its `root_path` and `created` are kept.
    pub fn add_snapshot(&mut self, new: &NewSnapshot) -> Result<SnapshotRow> {
        let tx = self.begin()?;
        let row = insert_snapshot(&tx, new)?;
        tx.commit().map_err(sql("add a snapshot"))?;
        Ok(row)
    }

    /// Records `layer` and the snapshot of it on `parent` in one transaction, so that a
    /// concurrent [`Index::remove_layer`] of an unreferenced layer cannot slip in between.
    /// Otherwise as [`Index::add_layer`] then [`Index::add_snapshot`].
    pub fn add_layer_and_snapshot(
        &mut self,
        layer: &LayerRow,
        parent: Option<SnapshotId>,
        root_path: Option<Vec<u8>>,
        now: i64,
    ) -> Result<SnapshotRow> {
        let new = NewSnapshot {
            parent,
            layer: layer.id,
            root_path,
            now,
        };
        let tx = self.begin()?;
        insert_layer(&tx, layer)?;
        let row = insert_snapshot(&tx, &new)?;
        tx.commit().map_err(sql("add a snapshot"))?;
        Ok(row)
    }

    /// The snapshot `id`, if recorded.
    pub fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRow>> {
        select_snapshot(&self.conn, id)
    }

    /// The snapshot named by `reference`: a tag, a full id, or a unique id prefix of at least
    /// [`MIN_PREFIX_LEN`] hex digits. A tag wins over an id prefix spelled the same way.
    pub fn resolve(&self, reference: &str) -> Result<SnapshotId> {
        let op = "resolve a reference";
        let tagged: Option<SnapshotId> = self
            .conn
            .prepare_cached("SELECT snapshot FROM tags WHERE name = ?1")
            .and_then(|mut st| st.query_row([reference], |r| hex_col(r, 0)).optional())
            .map_err(sql(op))?;
        if let Some(id) = tagged {
            return Ok(id);
        }
        let unknown = || Error::UnknownReference {
            reference: reference.to_owned(),
        };
        if !(MIN_PREFIX_LEN..=64).contains(&reference.len())
            || !reference.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(unknown());
        }
        let prefix = reference.to_ascii_lowercase();
        // Every id starting with `prefix` sorts in [prefix, prefix + "g"): hex digits < 'g'.
        let upper = format!("{prefix}g");
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM snapshots WHERE id >= ?1 AND id < ?2 ORDER BY id")
            .map_err(sql(op))?;
        let mut matches: Vec<SnapshotId> = st
            .query_map([&prefix, &upper], |r| hex_col(r, 0))
            .and_then(Iterator::collect)
            .map_err(sql(op))?;
        match matches.len() {
            0 => Err(unknown()),
            1 => Ok(matches.remove(0)),
            _ => Err(Error::Ambiguous {
                reference: reference.to_owned(),
                candidates: matches,
            }),
        }
    }

    /// The stack of snapshot `id`: its base first, `id` itself last.
    pub fn chain(&self, id: &SnapshotId) -> Result<Vec<SnapshotRow>> {
        let op = "read a snapshot chain";
        // UNION rather than UNION ALL: a (corrupt) cycle then ends instead of looping.
        let mut st = self
            .conn
            .prepare_cached(concat!(
                "WITH RECURSIVE chain(id) AS (
                     SELECT ?1
                     UNION
                     SELECT p.parent FROM snapshots p JOIN chain c ON p.id = c.id
                     WHERE p.parent IS NOT NULL
                 )
                 SELECT ",
                snapshot_columns!(),
                " FROM chain c JOIN snapshots s ON s.id = c.id ORDER BY s.depth"
            ))
            .map_err(sql(op))?;
        let rows: Vec<SnapshotRow> = st
            .query_map([id.to_hex()], snapshot_row)
            .and_then(Iterator::collect)
            .map_err(sql(op))?;
        if rows.is_empty() {
            return Err(Error::MissingSnapshot { id: *id });
        }
        Ok(rows)
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        let op = "list snapshots";
        let mut st = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                snapshot_columns!(),
                " FROM snapshots s ORDER BY s.created, s.id"
            ))
            .map_err(sql(op))?;
        st.query_map([], snapshot_row)
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// The snapshots whose parent is `id`, in id order.
    pub fn children(&self, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
        let op = "list child snapshots";
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM snapshots WHERE parent = ?1 ORDER BY id")
            .map_err(sql(op))?;
        st.query_map([id.to_hex()], |r| hex_col(r, 0))
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// Raises `last_used` of each snapshot in `ids` to `now` (never lowers it). Ids not in
    /// the index are ignored: touching is advisory.
    pub fn touch(&mut self, ids: &[SnapshotId], now: i64) -> Result<()> {
        let op = "touch snapshots";
        let tx = self.begin()?;
        {
            let mut st = tx
                .prepare_cached(
                    "UPDATE snapshots SET last_used = ?2 WHERE id = ?1 AND last_used < ?2",
                )
                .map_err(sql(op))?;
            for id in ids {
                st.execute(params![id.to_hex(), now]).map_err(sql(op))?;
            }
        }
        tx.commit().map_err(sql(op))
    }

    /// Forgets snapshot `id` and its tags (and its dead leases). Refuses with
    /// [`Error::InUse`] while it has children, tracked checkouts or live leases, while it is
    /// a cache's current version, and while a cache view is based on it or on its parent
    /// (that view's release may be about to make it current).
    pub fn remove_snapshot(&mut self, id: &SnapshotId) -> Result<()> {
        self.remove_snapshots(std::slice::from_ref(id))
    }

    /// Forgets the snapshots `ids`, in that order (children before their parents), all or
    /// none: each is refused as [`Index::remove_snapshot`] refuses it, at its turn, and a
    /// refusal leaves every one of them recorded.
    pub fn remove_snapshots(&mut self, ids: &[SnapshotId]) -> Result<()> {
        let tx = self.begin()?;
        for id in ids {
            delete_snapshot(&tx, id)?;
        }
        tx.commit().map_err(sql("remove a snapshot"))
    }

    /// The snapshots whose stack holds layer `id`: those made of it and every snapshot built
    /// on one of them, deepest first (so removing them in this order removes children
    /// before their parents).
    pub fn snapshots_needing_layer(&self, id: &LayerId) -> Result<Vec<SnapshotRow>> {
        let op = "list the snapshots that need a layer";
        let mut st = self
            .conn
            .prepare_cached(concat!(
                "WITH RECURSIVE needing(id) AS (
                     SELECT id FROM snapshots WHERE layer = ?1
                     UNION
                     SELECT c.id FROM snapshots c JOIN needing n ON c.parent = n.id
                 )
                 SELECT ",
                snapshot_columns!(),
                " FROM needing n JOIN snapshots s ON s.id = n.id ORDER BY s.depth DESC, s.id"
            ))
            .map_err(sql(op))?;
        st.query_map([id.to_hex()], snapshot_row)
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    // ---- tags ----

    /// Points tag `name` at snapshot `id`, moving it if it exists.
    pub fn set_tag(&mut self, name: &str, id: &SnapshotId) -> Result<()> {
        if let Err(why) = check_tag_name(name) {
            return Err(Error::BadTag {
                name: name.to_owned(),
                why,
            });
        }
        self.conn
            .execute(
                "INSERT INTO tags (name, snapshot) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot",
                params![name, id.to_hex()],
            )
            .map_err(|e| missing_snapshot_or(e, id, "set a tag"))?;
        Ok(())
    }

    /// Deletes tag `name`; `false` if there was none.
    pub fn remove_tag(&mut self, name: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM tags WHERE name = ?1", [name])
            .map_err(sql("remove a tag"))?;
        Ok(n > 0)
    }

    /// Every tag and its snapshot, by name.
    pub fn tags(&self) -> Result<Vec<(String, SnapshotId)>> {
        let op = "list tags";
        let mut st = self
            .conn
            .prepare_cached("SELECT name, snapshot FROM tags ORDER BY name")
            .map_err(sql(op))?;
        st.query_map([], |r| Ok((r.get(0)?, hex_col(r, 1)?)))
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    // ---- checkouts ----

    /// Starts tracking a checkout, which pins its snapshot. Errors with
    /// [`Error::AlreadyTracked`] if `row.dir` is tracked.
    pub fn add_checkout(&mut self, row: &CheckoutRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO checkouts (dir, snapshot, mode, state_dir, root_path, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                path_to_bytes(&row.dir),
                row.snapshot.to_hex(),
                row.mode,
                row.state_dir.as_deref().map(path_to_bytes),
                row.root_path,
                row.created
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(e) if extended_code(&e) == Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                Err(Error::AlreadyTracked {
                    dir: row.dir.clone(),
                })
            }
            Err(e) => Err(missing_snapshot_or(e, &row.snapshot, "add a checkout")),
        }
    }

    /// The tracked checkout at `dir`, if any.
    pub fn checkout(&self, dir: &Path) -> Result<Option<CheckoutRow>> {
        self.conn
            .prepare_cached(
                "SELECT dir, snapshot, mode, state_dir, root_path, created
                 FROM checkouts WHERE dir = ?1",
            )
            .and_then(|mut st| st.query_row([path_to_bytes(dir)], checkout_row).optional())
            .map_err(sql("read a checkout"))
    }

    /// Stops tracking the checkout at `dir`; `false` if it was not tracked.
    pub fn remove_checkout(&mut self, dir: &Path) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM checkouts WHERE dir = ?1", [path_to_bytes(dir)])
            .map_err(sql("remove a checkout"))?;
        Ok(n > 0)
    }

    /// Every tracked checkout, by directory.
    pub fn checkouts(&self) -> Result<Vec<CheckoutRow>> {
        let op = "list checkouts";
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT dir, snapshot, mode, state_dir, root_path, created
                 FROM checkouts ORDER BY dir",
            )
            .map_err(sql(op))?;
        st.query_map([], checkout_row)
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    // ---- leases ----

    /// Pins `snapshot` while `owner` lives (or until released).
    pub fn lease(
        &mut self,
        snapshot: &SnapshotId,
        owner: Owner,
        purpose: &str,
        now: i64,
    ) -> Result<LeaseId> {
        let start = to_i64("process start time", owner.start_time)?;
        self.conn
            .execute(
                "INSERT INTO leases (snapshot, owner_pid, owner_start, purpose, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![snapshot.to_hex(), owner.pid, start, purpose, now],
            )
            .map_err(|e| missing_snapshot_or(e, snapshot, "take a lease"))?;
        Ok(LeaseId(self.conn.last_insert_rowid()))
    }

    /// Ends a lease. Releasing a lease that no longer exists is not an error.
    pub fn release_lease(&mut self, lease: LeaseId) -> Result<()> {
        self.conn
            .execute("DELETE FROM leases WHERE id = ?1", [lease.0])
            .map_err(sql("release a lease"))?;
        Ok(())
    }

    /// Every lease, live or not, by id.
    pub fn leases(&self) -> Result<Vec<LeaseRow>> {
        select_leases(&self.conn, None)
    }

    /// Deletes the leases whose owner is no longer alive; returns how many.
    pub fn expire_dead_leases(&mut self) -> Result<u64> {
        let op = "expire dead leases";
        let owners: Vec<Owner> = {
            let mut st = self
                .conn
                .prepare_cached("SELECT DISTINCT owner_pid, owner_start FROM leases")
                .map_err(sql(op))?;
            st.query_map([], owner_cols)
                .and_then(Iterator::collect)
                .map_err(sql(op))?
        };
        // Liveness is checked outside the transaction: a dead owner cannot take new leases.
        let dead: Vec<Owner> = owners.into_iter().filter(|o| !o.is_alive()).collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let tx = self.begin()?;
        let mut removed = 0;
        {
            let mut st = tx
                .prepare_cached("DELETE FROM leases WHERE owner_pid = ?1 AND owner_start = ?2")
                .map_err(sql(op))?;
            for owner in &dead {
                let start = to_i64("process start time", owner.start_time)?;
                removed += st.execute(params![owner.pid, start]).map_err(sql(op))? as u64;
            }
        }
        tx.commit().map_err(sql(op))?;
        Ok(removed)
    }

    // ---- caches ----

    /// The cache `name`, if it exists.
    pub fn cache(&self, name: &str) -> Result<Option<CacheRow>> {
        select_cache(&self.conn, name)
    }

    /// Every cache, by name.
    pub fn caches(&self) -> Result<Vec<CacheRow>> {
        let op = "list caches";
        let mut st = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                cache_columns!(),
                " FROM caches c ORDER BY c.name"
            ))
            .map_err(sql(op))?;
        st.query_map([], cache_row)
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// Records a view of cache `new.cache` at `new.dir`, in one transaction: creates the
    /// cache (empty, generation 0, its root owned by `new.uid`/`new.gid`) if missing, records
    /// the empty base snapshot if the cache is empty, and pins the version the view is taken
    /// from. The caller then checks `base` out at `dir`.
    pub fn add_cache_view(&mut self, new: &NewCacheView) -> Result<AddedCacheView> {
        let op = "add a cache view";
        if let Err(why) = check_cache_name(&new.cache) {
            return Err(Error::BadCacheName {
                name: new.cache.clone(),
                why,
            });
        }
        let owner_start = to_i64("process start time", new.owner.start_time)?;
        let tx = self.begin()?;
        tx.execute(
            "INSERT INTO caches (name, snapshot, generation, owner_uid, owner_gid, created, updated)
             VALUES (?1, NULL, 0, ?2, ?3, ?4, ?4) ON CONFLICT (name) DO NOTHING",
            params![new.cache, new.uid, new.gid, new.now],
        )
        .map_err(sql(op))?;
        let (current, generation): (Option<String>, i64) = tx
            .query_row(
                "SELECT snapshot, generation FROM caches WHERE name = ?1",
                [&new.cache],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql(op))?;
        let base = match current {
            Some(hex) => {
                let id: SnapshotId = parse_hex(0, &hex).map_err(sql(op))?;
                select_snapshot(&tx, &id)?.ok_or(Error::MissingSnapshot { id })?
            }
            None => {
                insert_layer(&tx, &new.empty_layer)?;
                insert_snapshot(
                    &tx,
                    &NewSnapshot {
                        parent: None,
                        layer: new.empty_layer.id,
                        root_path: None,
                        now: new.now,
                    },
                )?
            }
        };
        let inserted = tx.execute(
            "INSERT INTO cache_views
                 (dir, cache, snapshot, base_generation, owner_pid, owner_start, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                path_to_bytes(&new.dir),
                new.cache,
                base.id.to_hex(),
                generation,
                new.owner.pid,
                owner_start,
                new.now
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if extended_code(&e) == Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                return Err(Error::AlreadyTracked {
                    dir: new.dir.clone(),
                });
            }
            Err(e) => return Err(sql(op)(e)),
        }
        let cache = select_cache(&tx, &new.cache)?.ok_or_else(|| Error::Sqlite {
            op,
            source: rusqlite::Error::QueryReturnedNoRows,
        })?;
        tx.commit().map_err(sql(op))?;
        let view = CacheViewRow {
            dir: new.dir.clone(),
            cache: new.cache.clone(),
            snapshot: base.id,
            base_generation: cache.generation,
            owner: new.owner,
            created: new.now,
        };
        Ok(AddedCacheView { cache, view, base })
    }

    /// The cache view at `dir`, if any.
    pub fn cache_view(&self, dir: &Path) -> Result<Option<CacheViewRow>> {
        select_cache_view(&self.conn, dir)
    }

    /// The views of cache `name` (of every cache if none), by directory.
    pub fn cache_views(&self, name: Option<&str>) -> Result<Vec<CacheViewRow>> {
        let op = "list cache views";
        let mut st = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                cache_view_columns!(),
                " FROM cache_views v WHERE ?1 IS NULL OR v.cache = ?1 ORDER BY v.dir"
            ))
            .map_err(sql(op))?;
        st.query_map([name], cache_view_row)
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// Hands the view at `dir` to another process (the one that will release it); `false`
    /// if there is no such view.
    pub fn set_cache_view_owner(&mut self, dir: &Path, owner: Owner) -> Result<bool> {
        let start = to_i64("process start time", owner.start_time)?;
        let n = self
            .conn
            .execute(
                "UPDATE cache_views SET owner_pid = ?2, owner_start = ?3 WHERE dir = ?1",
                params![path_to_bytes(dir), owner.pid, start],
            )
            .map_err(sql("set the owner of a cache view"))?;
        Ok(n > 0)
    }

    /// Forgets the view at `dir` (once its checkout is gone); `false` if it was not recorded.
    pub fn remove_cache_view(&mut self, dir: &Path) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "DELETE FROM cache_views WHERE dir = ?1",
                [path_to_bytes(dir)],
            )
            .map_err(sql("remove a cache view"))?;
        Ok(n > 0)
    }

    /// Makes `version` the current version of the cache the view at `dir` belongs to, if no
    /// other release happened since the view was taken: a compare-and-swap on the cache's
    /// generation, in one write transaction. A flattened version's layer and snapshot are
    /// recorded in the same transaction, and only if the release wins. The view stays
    /// recorded (and keeps pinning its base) until [`Index::remove_cache_view`].
    pub fn publish_cache_version(
        &mut self,
        dir: &Path,
        version: &CacheVersion,
        now: i64,
    ) -> Result<Publish> {
        let op = "publish a cache version";
        let tx = self.begin()?;
        let view = select_cache_view(&tx, dir)?.ok_or_else(|| Error::UnknownCacheView {
            dir: dir.to_path_buf(),
        })?;
        // The view pins its cache (a foreign key), so the cache exists.
        let current: i64 = tx
            .query_row(
                "SELECT generation FROM caches WHERE name = ?1",
                [&view.cache],
                |r| r.get(0),
            )
            .map_err(sql(op))?;
        let base = to_i64("cache generation", view.base_generation)?;
        if current != base {
            return Ok(Publish::Lost {
                generation: u64::try_from(current).unwrap_or(0),
            });
        }
        let snapshot = match version {
            CacheVersion::Snapshot(id) => {
                select_snapshot(&tx, id)?.ok_or(Error::MissingSnapshot { id: *id })?
            }
            CacheVersion::Flattened { layer, root_path } => {
                insert_layer(&tx, layer)?;
                insert_snapshot(
                    &tx,
                    &NewSnapshot {
                        parent: None,
                        layer: layer.id,
                        root_path: root_path.clone(),
                        now,
                    },
                )?
            }
        };
        let swapped = tx
            .execute(
                "UPDATE caches SET snapshot = ?2, generation = generation + 1, updated = ?4
                 WHERE name = ?1 AND generation = ?3",
                params![view.cache, snapshot.id.to_hex(), base, now],
            )
            .map_err(sql(op))?;
        if swapped != 1 {
            // Unreachable inside the write transaction; kept as the swap's own guard.
            return Ok(Publish::Lost {
                generation: u64::try_from(current).unwrap_or(0),
            });
        }
        tx.commit().map_err(sql(op))?;
        Ok(Publish::Won {
            snapshot,
            generation: view.base_generation + 1,
        })
    }

    /// Forgets cache `name` unless views of it are out. Its versions stay until pruned.
    pub fn remove_cache(&mut self, name: &str) -> Result<RemoveCache> {
        let op = "remove a cache";
        let tx = self.begin()?;
        let views: Option<i64> = tx
            .query_row(
                "SELECT (SELECT count(*) FROM cache_views WHERE cache = ?1)
                 FROM caches WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(op))?;
        let outcome = match views {
            None => RemoveCache::Missing,
            Some(0) => {
                tx.execute("DELETE FROM caches WHERE name = ?1", [name])
                    .map_err(sql(op))?;
                RemoveCache::Removed
            }
            Some(n) => RemoveCache::Busy {
                views: u64::try_from(n).unwrap_or(0),
            },
        };
        tx.commit().map_err(sql(op))?;
        Ok(outcome)
    }

    // ---- pruning ----

    /// Up to `limit` snapshots that could be removed now, least recently used first: those
    /// with no children, tracked checkouts, tags or live leases, that are no cache's current
    /// version and have no cache view based on them or on their parent, and `last_used <
    /// older_than`. Removing them can make their parents candidates (leaf-first pruning).
    /// The answer is advisory: [`Index::remove_snapshot`] checks again atomically.
    pub fn prune_candidates(&self, older_than: i64, limit: usize) -> Result<Vec<SnapshotRow>> {
        let op = "find prune candidates";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut alive: HashMap<Owner, bool> = HashMap::new();
        let leased: HashSet<SnapshotId> = select_leases(&self.conn, None)?
            .into_iter()
            .filter(|l| *alive.entry(l.owner).or_insert_with(|| l.owner.is_alive()))
            .map(|l| l.snapshot)
            .collect();
        let mut st = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                snapshot_columns!(),
                " FROM snapshots s
                 WHERE s.last_used < ?1
                   AND NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent = s.id)
                   AND NOT EXISTS (SELECT 1 FROM checkouts k WHERE k.snapshot = s.id)
                   AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.snapshot = s.id)
                   AND NOT EXISTS (SELECT 1 FROM caches ca WHERE ca.snapshot = s.id)
                   AND NOT EXISTS (SELECT 1 FROM cache_views v
                                   WHERE v.snapshot = s.id OR v.snapshot = s.parent)
                 ORDER BY s.last_used, s.id"
            ))
            .map_err(sql(op))?;
        let mut out = Vec::new();
        let rows = st.query_map([older_than], snapshot_row).map_err(sql(op))?;
        for row in rows {
            let row = row.map_err(sql(op))?;
            if !leased.contains(&row.id) {
                out.push(row);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Counts and sizes over the whole index.
    pub fn usage(&self) -> Result<Usage> {
        // One statement, so the numbers come from one consistent read.
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM snapshots),
                        (SELECT count(*) FROM layers),
                        (SELECT count(*) FROM checkouts),
                        (SELECT count(*) FROM leases),
                        (SELECT coalesce(sum(uncompressed_size), 0) FROM layers),
                        (SELECT coalesce(sum(compressed_size), 0) FROM layers)",
                [],
                |r| {
                    Ok(Usage {
                        snapshots: u64_col(r, 0)?,
                        layers: u64_col(r, 1)?,
                        checkouts: u64_col(r, 2)?,
                        leases: u64_col(r, 3)?,
                        uncompressed_bytes: u64_col(r, 4)?,
                        compressed_bytes: u64_col(r, 5)?,
                    })
                },
            )
            .map_err(sql("compute usage"))
    }
}

/// Checks a tag name: non-empty, at most [`MAX_TAG_LEN`] bytes, no whitespace, control
/// characters or `/`, and not a full snapshot id (which would shadow the id).
fn check_tag_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_TAG_LEN {
        return Err("it is longer than 255 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or control characters");
    }
    if name.contains('/') {
        return Err("it contains `/`");
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("it looks like a snapshot id");
    }
    Ok(())
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Sqlite { op, source }
}

fn extended_code(e: &rusqlite::Error) -> Option<std::ffi::c_int> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    }
}

// A single-statement insert that names a snapshot fails with a foreign-key error exactly when
// the snapshot is missing; saying so beats SQLite's "FOREIGN KEY constraint failed".
fn missing_snapshot_or(e: rusqlite::Error, id: &SnapshotId, op: &'static str) -> Error {
    if extended_code(&e) == Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY) {
        Error::MissingSnapshot { id: *id }
    } else {
        Error::Sqlite { op, source: e }
    }
}

fn to_i64(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::OutOfRange { what, value })
}

fn insert_layer(conn: &Connection, row: &LayerRow) -> Result<()> {
    let uncompressed = to_i64("uncompressed size", row.uncompressed_size)?;
    let compressed = to_i64("compressed size", row.compressed_size)?;
    conn.prepare_cached(
        "INSERT INTO layers (id, uncompressed_size, compressed_size, unpacked, created)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
    )
    .and_then(|mut st| {
        st.execute(params![
            row.id.to_hex(),
            uncompressed,
            compressed,
            row.unpacked,
            row.created
        ])
    })
    .map_err(sql("add a layer"))?;
    Ok(())
}

// Runs inside the caller's write transaction, which makes the existence checks hold.
fn insert_snapshot(tx: &Connection, new: &NewSnapshot) -> Result<SnapshotRow> {
    let op = "add a snapshot";
    let id = SnapshotId::derive(new.parent.as_ref(), &new.layer);
    if let Some(mut row) = select_snapshot(tx, &id)? {
        if row.last_used < new.now {
            tx.execute(
                "UPDATE snapshots SET last_used = ?2 WHERE id = ?1",
                params![id.to_hex(), new.now],
            )
            .map_err(sql(op))?;
            row.last_used = new.now;
        }
        return Ok(row);
    }
    let layer_known = tx
        .query_row(
            "SELECT 1 FROM layers WHERE id = ?1",
            [new.layer.to_hex()],
            |_| Ok(()),
        )
        .optional()
        .map_err(sql(op))?
        .is_some();
    if !layer_known {
        return Err(Error::MissingLayer { id: new.layer });
    }
    let depth = match &new.parent {
        None => 0,
        Some(parent) => {
            let parent_depth: Option<u32> = tx
                .query_row(
                    "SELECT depth FROM snapshots WHERE id = ?1",
                    [parent.to_hex()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql(op))?;
            match parent_depth {
                Some(d) => d + 1,
                None => return Err(Error::MissingParent { id: *parent }),
            }
        }
    };
    tx.execute(
        "INSERT INTO snapshots (id, parent, layer, depth, root_path, created, last_used)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            id.to_hex(),
            new.parent.map(|p| p.to_hex()),
            new.layer.to_hex(),
            depth,
            new.root_path,
            new.now
        ],
    )
    .map_err(sql(op))?;
    Ok(SnapshotRow {
        id,
        parent: new.parent,
        layer: new.layer,
        depth,
        root_path: new.root_path.clone(),
        created: new.now,
        last_used: new.now,
    })
}

fn select_snapshot(conn: &Connection, id: &SnapshotId) -> Result<Option<SnapshotRow>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        snapshot_columns!(),
        " FROM snapshots s WHERE s.id = ?1"
    ))
    .and_then(|mut st| st.query_row([id.to_hex()], snapshot_row).optional())
    .map_err(sql("read a snapshot"))
}

fn select_cache(conn: &Connection, name: &str) -> Result<Option<CacheRow>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        cache_columns!(),
        " FROM caches c WHERE c.name = ?1"
    ))
    .and_then(|mut st| st.query_row([name], cache_row).optional())
    .map_err(sql("read a cache"))
}

fn select_cache_view(conn: &Connection, dir: &Path) -> Result<Option<CacheViewRow>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        cache_view_columns!(),
        " FROM cache_views v WHERE v.dir = ?1"
    ))
    .and_then(|mut st| {
        st.query_row([path_to_bytes(dir)], cache_view_row)
            .optional()
    })
    .map_err(sql("read a cache view"))
}

fn cache_row(r: &Row<'_>) -> rusqlite::Result<CacheRow> {
    Ok(CacheRow {
        name: r.get(0)?,
        snapshot: r
            .get::<_, Option<String>>(1)?
            .map(|s| parse_hex(1, &s))
            .transpose()?,
        generation: u64_col(r, 2)?,
        owner_uid: r.get(3)?,
        owner_gid: r.get(4)?,
        created: r.get(5)?,
        updated: r.get(6)?,
        views: u64_col(r, 7)?,
    })
}

fn cache_view_row(r: &Row<'_>) -> rusqlite::Result<CacheViewRow> {
    Ok(CacheViewRow {
        owner: owner_cols(r)?,
        dir: bytes_to_path(r.get(2)?),
        cache: r.get(3)?,
        snapshot: hex_col(r, 4)?,
        base_generation: u64_col(r, 5)?,
        created: r.get(6)?,
    })
}

/// Deletes snapshot `id` inside `tx`, with the refusals of [`Index::remove_snapshot`].
fn delete_snapshot(tx: &rusqlite::Transaction<'_>, id: &SnapshotId) -> Result<()> {
    let op = "remove a snapshot";
    let hex = id.to_hex();
    let in_use = |why: String| Error::InUse {
        kind: "snapshot",
        id: hex.clone(),
        why,
    };
    let counts: Option<(i64, i64, Option<String>, i64)> = tx
        .query_row(
            "SELECT (SELECT count(*) FROM snapshots WHERE parent = ?1),
                    (SELECT count(*) FROM checkouts WHERE snapshot = ?1),
                    (SELECT min(name) FROM caches WHERE snapshot = ?1),
                    (SELECT count(*) FROM cache_views v
                     WHERE v.snapshot = ?1 OR v.snapshot = s.parent)
             FROM snapshots s WHERE s.id = ?1",
            [&hex],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(sql(op))?;
    match counts {
        None => return Err(Error::MissingSnapshot { id: *id }),
        Some((children, ..)) if children > 0 => {
            return Err(in_use(format!("it has {children} child snapshot(s)")));
        }
        Some((_, checkouts, ..)) if checkouts > 0 => {
            return Err(in_use(format!("it has {checkouts} tracked checkout(s)")));
        }
        Some((_, _, Some(cache), _)) => {
            return Err(in_use(format!(
                "it is the current version of cache `{cache}`"
            )));
        }
        Some((.., views)) if views > 0 => {
            return Err(in_use(format!(
                "{views} cache view(s) are based on it or on its parent"
            )));
        }
        Some(_) => {}
    }
    let leases = select_leases(tx, Some(id))?;
    // Liveness is read inside the write transaction so no lease can sneak in between.
    if let Some(live) = leases.iter().find(|l| l.owner.is_alive()) {
        return Err(in_use(format!(
            "it is leased by process {} ({})",
            live.owner.pid, live.purpose
        )));
    }
    tx.execute("DELETE FROM snapshots WHERE id = ?1", [&hex])
        .map_err(sql(op))?;
    Ok(())
}

fn select_leases(conn: &Connection, snapshot: Option<&SnapshotId>) -> Result<Vec<LeaseRow>> {
    let op = "list leases";
    let mut st = conn
        .prepare_cached(
            "SELECT owner_pid, owner_start, id, snapshot, purpose, created FROM leases
             WHERE ?1 IS NULL OR snapshot = ?1 ORDER BY id",
        )
        .map_err(sql(op))?;
    st.query_map([snapshot.map(SnapshotId::to_hex)], |r| {
        Ok(LeaseRow {
            owner: owner_cols(r)?,
            id: LeaseId(r.get(2)?),
            snapshot: hex_col(r, 3)?,
            purpose: r.get(4)?,
            created: r.get(5)?,
        })
    })
    .and_then(Iterator::collect)
    .map_err(sql(op))
}

// Columns 0 and 1 hold owner_pid and owner_start.
fn owner_cols(r: &Row<'_>) -> rusqlite::Result<Owner> {
    Ok(Owner {
        pid: r.get(0)?,
        start_time: u64_col(r, 1)?,
    })
}

fn snapshot_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow {
        id: hex_col(r, 0)?,
        parent: r
            .get::<_, Option<String>>(1)?
            .map(|s| parse_hex(1, &s))
            .transpose()?,
        layer: hex_col(r, 2)?,
        depth: r.get(3)?,
        root_path: r.get(4)?,
        created: r.get(5)?,
        last_used: r.get(6)?,
    })
}

fn layer_row(r: &Row<'_>) -> rusqlite::Result<LayerRow> {
    Ok(LayerRow {
        id: hex_col(r, 0)?,
        uncompressed_size: u64_col(r, 1)?,
        compressed_size: u64_col(r, 2)?,
        unpacked: r.get(3)?,
        created: r.get(4)?,
    })
}

fn checkout_row(r: &Row<'_>) -> rusqlite::Result<CheckoutRow> {
    Ok(CheckoutRow {
        dir: bytes_to_path(r.get(0)?),
        snapshot: hex_col(r, 1)?,
        mode: r.get(2)?,
        state_dir: r.get::<_, Option<Vec<u8>>>(3)?.map(bytes_to_path),
        root_path: r.get(4)?,
        created: r.get(5)?,
    })
}

fn parse_hex<T>(idx: usize, text: &str) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

fn hex_col<T>(r: &Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    parse_hex(idx, &r.get::<_, String>(idx)?)
}

// rusqlite only converts u64 with its `fallible_uint` feature; do it here.
fn u64_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

fn serialize_bytes_lossy<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

fn serialize_opt_bytes_lossy<S: serde::Serializer>(
    bytes: &Option<Vec<u8>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

fn serialize_path_lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn serialize_opt_path_lossy<S: serde::Serializer>(
    path: &Option<PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// Process identity and liveness, per platform.
pub(crate) mod process {
    use super::Owner;

    /// `(state, start time)` from the text of `/proc/<pid>/stat`. The command name (field 2)
    /// may contain spaces and parentheses, so fields are counted after the last `)`.
    #[cfg_attr(
        not(any(target_os = "linux", target_os = "android")),
        allow(
            dead_code,
            reason = "only Linux reads /proc; the unit tests run everywhere"
        )
    )]
    pub(super) fn parse_proc_stat(stat: &str) -> Option<(char, u64)> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?.chars().next()?; // field 3
        let start = fields.nth(18)?.parse().ok()?; // field 22
        Some((state, start))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn read_stat(pid: u32) -> std::io::Result<Option<(char, u64)>> {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| parse_proc_stat(&s))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn is_dead_state(state: char) -> bool {
        matches!(state, 'Z' | 'X' | 'x')
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn owner_of(pid: u32) -> Option<Owner> {
        match read_stat(pid) {
            Ok(Some((state, start_time))) if !is_dead_state(state) => {
                Some(Owner { pid, start_time })
            }
            Ok(Some(_)) => None,
            // Unparsable: the process exists, its start time is unknown.
            Ok(None) => Some(Owner { pid, start_time: 0 }),
            Err(_) if !proc_mounted() => pid_exists(pid).then_some(Owner { pid, start_time: 0 }),
            Err(_) => None,
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn is_alive(owner: &Owner) -> bool {
        match read_stat(owner.pid) {
            Ok(Some((state, start))) => {
                !is_dead_state(state) && (owner.start_time == 0 || start == owner.start_time)
            }
            Ok(None) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Without /proc (a chroot) absence proves nothing; ask the kernel instead.
                !proc_mounted() && pid_exists(owner.pid)
            }
            // Unsure (permissions, say): keep the lease.
            Err(_) => true,
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn proc_mounted() -> bool {
        std::path::Path::new("/proc/self/stat").exists()
    }

    #[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
    pub(super) fn owner_of(pid: u32) -> Option<Owner> {
        pid_exists(pid).then_some(Owner { pid, start_time: 0 })
    }

    #[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
    pub(super) fn is_alive(owner: &Owner) -> bool {
        pid_exists(owner.pid)
    }

    /// Whether a process `pid` exists, by sending it signal 0.
    #[cfg(unix)]
    fn pid_exists(pid: u32) -> bool {
        let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            // EPERM: it exists but belongs to someone else.
            Err(e) => e != rustix::io::Errno::SRCH,
        }
    }

    #[cfg(windows)]
    pub(super) fn owner_of(pid: u32) -> Option<Owner> {
        match win32::process_state(pid) {
            win32::State::Running { created } => Some(Owner {
                pid,
                start_time: created,
            }),
            win32::State::Unknown => Some(Owner { pid, start_time: 0 }),
            win32::State::Gone => None,
        }
    }

    /// A process that exited, or a new process with a recycled pid (another creation
    /// time), is dead; one we may not inspect counts as alive.
    #[cfg(windows)]
    pub(super) fn is_alive(owner: &Owner) -> bool {
        match win32::process_state(owner.pid) {
            win32::State::Running { created } => {
                owner.start_time == 0 || created == owner.start_time
            }
            win32::State::Unknown => true,
            win32::State::Gone => false,
        }
    }

    #[cfg(windows)]
    pub(crate) mod win32 {
        //! Process liveness from `OpenProcess`, `GetExitCodeProcess` and `GetProcessTimes`.

        use windows_sys::Win32::Foundation::{
            CloseHandle, ERROR_INVALID_PARAMETER, FILETIME, GetLastError, STILL_ACTIVE,
        };
        use windows_sys::Win32::System::Threading::{
            GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
        };

        pub(crate) enum State {
            /// Running, created at this FILETIME (100 ns ticks since 1601).
            Running { created: u64 },
            /// No such process, or it has exited.
            Gone,
            /// It exists but may not be inspected.
            Unknown,
        }

        #[allow(unsafe_code, reason = "Win32 process queries; std has no equivalent")]
        pub(crate) fn process_state(pid: u32) -> State {
            // SAFETY: OpenProcess takes plain values and returns a handle or null; every
            // handle we get is closed below, and the out-pointers passed to
            // GetExitCodeProcess and GetProcessTimes point at live locals of the right types.
            unsafe {
                let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
                if handle.is_null() {
                    return if GetLastError() == ERROR_INVALID_PARAMETER {
                        State::Gone
                    } else {
                        State::Unknown
                    };
                }
                let mut code = 0u32;
                let mut times = [FILETIME {
                    dwLowDateTime: 0,
                    dwHighDateTime: 0,
                }; 4];
                let state = if GetExitCodeProcess(handle, &mut code) == 0 {
                    State::Unknown
                } else if code != STILL_ACTIVE as u32 {
                    State::Gone
                } else if GetProcessTimes(
                    handle,
                    &mut times[0],
                    &mut times[1],
                    &mut times[2],
                    &mut times[3],
                ) == 0
                {
                    State::Running { created: 0 }
                } else {
                    let created = (u64::from(times[0].dwHighDateTime) << 32)
                        | u64::from(times[0].dwLowDateTime);
                    State::Running { created }
                };
                CloseHandle(handle);
                state
            }
        }
    }

    #[cfg(not(any(unix, windows)))]
    pub(super) fn owner_of(pid: u32) -> Option<Owner> {
        Some(Owner { pid, start_time: 0 })
    }

    #[cfg(not(any(unix, windows)))]
    pub(super) fn is_alive(_owner: &Owner) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_keeps_the_wal_and_durable_writes_sync_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("index.sqlite");
        let mut ix = Index::open(&path).unwrap();
        let level = |ix: &Index| -> i64 {
            ix.conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(level(&ix), 1, "NORMAL");
        let row = LayerRow {
            id: LayerId::of(b"layer"),
            uncompressed_size: 1,
            compressed_size: 1,
            unpacked: false,
            created: 0,
        };
        ix.durably(|ix| {
            assert_eq!(level(ix), 2, "FULL");
            ix.add_layer(&row)
        })
        .unwrap();
        assert_eq!(level(&ix), 1, "NORMAL again");
        drop(ix);
        // Not checkpointed and deleted on close: the next process appends to it.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        let ix = Index::open(&path).unwrap();
        assert!(ix.layer(&LayerId::of(b"layer")).unwrap().is_some());
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_last_paren() {
        // Field 22 is 4242; the command name has spaces and a `)`.
        let stat = "123 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 19 20";
        assert_eq!(process::parse_proc_stat(stat), Some(('S', 4242)));
        let zombie = "9 (true) Z 1 9 9 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert_eq!(process::parse_proc_stat(zombie), Some(('Z', 77)));
        assert_eq!(process::parse_proc_stat("9 (x) S 1 2"), None);
        assert_eq!(process::parse_proc_stat("no paren"), None);
    }

    #[test]
    fn tag_names() {
        assert!(check_tag_name("ubuntu-24.04").is_ok());
        assert!(check_tag_name("abcd").is_ok());
        assert!(check_tag_name(&"a".repeat(63)).is_ok());
        assert!(check_tag_name("").is_err());
        assert!(check_tag_name("a b").is_err());
        assert!(check_tag_name("a\tb").is_err());
        assert!(check_tag_name("a\u{7}b").is_err());
        assert!(check_tag_name("a/b").is_err());
        assert!(check_tag_name(&"0".repeat(64)).is_err());
        assert!(check_tag_name(&"A".repeat(64)).is_err());
        assert!(check_tag_name(&"g".repeat(64)).is_ok());
        assert!(check_tag_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn path_bytes_round_trip() {
        let p = Path::new("/tmp/strata/slot-01/root");
        assert_eq!(bytes_to_path(path_to_bytes(p)), p);
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let odd = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe"));
            assert_eq!(bytes_to_path(path_to_bytes(odd)), odd);
        }
    }

    #[test]
    fn the_current_process_is_alive_and_an_impostor_is_not() {
        let me = Owner::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
        #[cfg(target_os = "linux")]
        {
            assert_ne!(me.start_time, 0);
            let impostor = Owner {
                start_time: me.start_time + 1,
                ..me
            };
            assert!(!impostor.is_alive());
        }
    }

    #[test]
    fn cache_names() {
        assert!(check_cache_name("opam-archives").is_ok());
        assert!(check_cache_name("a b:c%d").is_ok());
        assert!(check_cache_name(&"x".repeat(255)).is_ok());
        assert!(check_cache_name("").is_err());
        assert!(check_cache_name(&"x".repeat(256)).is_err());
        assert!(check_cache_name("a/b").is_err());
        assert!(check_cache_name("a\0b").is_err());
        assert!(check_cache_name(".").is_err());
        assert!(check_cache_name("..").is_err());
        assert!(check_cache_name("...").is_ok());
    }

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }

    #[test]
    fn index_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Index>();
    }
}
