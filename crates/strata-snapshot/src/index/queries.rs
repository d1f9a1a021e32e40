//! The index itself: one SQLite connection, the schema brought up to date on open, and every
//! query, each write in its own `BEGIN IMMEDIATE` transaction.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use strata_cas::LayerId;

use super::migrations::MIGRATIONS;
use super::rows::{
    cache_row, cache_view_row, checkout_row, hex_col, layer_row, owner_cols, parse_hex,
    snapshot_row, u64_col,
};
use super::{
    AddedCacheView, CacheRow, CacheVersion, CacheViewRow, CheckoutRow, Error, LayerRow, LeaseId,
    LeaseRow, MIN_PREFIX_LEN, NewCacheView, NewSnapshot, Owner, Publish, RemoveCache, Result,
    SnapshotRow, Usage, check_cache_name, check_tag_name, path_to_bytes,
};
use crate::SnapshotId;

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// WAL pages (4 KiB) past which a commit checkpoints the WAL into the database. Every
/// process's first read rebuilds the WAL's index by reading the whole WAL (it is not
/// checkpointed on close), so it is kept to 1 MiB.
const WAL_AUTOCHECKPOINT: i64 = 256;

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
pub(crate) struct Index {
    conn: Connection,
}

impl Index {
    /// Opens the index at `path`, creating the file (not its parent directory) and the
    /// schema if needed.
    pub(crate) fn open(path: &Path) -> Result<Index> {
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
            return Err(Error::NotWal {
                path: path.to_owned(),
                mode,
            });
        }
        MIGRATIONS
            .to_latest(&mut conn)
            .map_err(|source| Error::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Index { conn })
    }

    /// Runs `f` with every commit flushed to disk before it returns (`synchronous=FULL`:
    /// one fsync of the WAL per transaction, which also covers the earlier unflushed ones),
    /// for writes that must survive power loss, such as a new snapshot.
    pub(crate) fn durably<T>(&mut self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
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
    pub(crate) fn add_layer(&mut self, row: &LayerRow) -> Result<()> {
        insert_layer(&self.conn, row)
    }

    /// The layer `id`, if recorded.
    pub(crate) fn layer(&self, id: &LayerId) -> Result<Option<LayerRow>> {
        self.conn
            .prepare_cached(
                "SELECT id, uncompressed_size, compressed_size, unpacked, created
                 FROM layers WHERE id = ?1",
            )
            .and_then(|mut st| st.query_row([id.to_hex()], layer_row).optional())
            .map_err(sql("read a layer"))
    }

    /// The OCI identities remembered for layer `id` (none if not computed yet, or if the
    /// layer is not recorded).
    pub(crate) fn layer_oci(&self, id: &LayerId) -> Result<Option<strata_cas::OciDigests>> {
        self.conn
            .prepare_cached(
                "SELECT oci_diff_id, oci_digest, oci_size FROM layers
                 WHERE id = ?1 AND oci_diff_id IS NOT NULL",
            )
            .and_then(|mut st| {
                st.query_row([id.to_hex()], |r| {
                    let size: i64 = r.get(2)?;
                    Ok(strata_cas::OciDigests {
                        diff_id: r.get(0)?,
                        digest: r.get(1)?,
                        size: u64::try_from(size).unwrap_or(0),
                    })
                })
                .optional()
            })
            .map_err(sql("read a layer's OCI digests"))
    }

    /// Remembers the OCI identities of layer `id`, computed from its blob.
    pub(crate) fn set_layer_oci(
        &mut self,
        id: &LayerId,
        digests: &strata_cas::OciDigests,
    ) -> Result<()> {
        let size = i64::try_from(digests.size).unwrap_or(i64::MAX);
        let n = self
            .conn
            .execute(
                "UPDATE layers SET oci_diff_id = ?2, oci_digest = ?3, oci_size = ?4 WHERE id = ?1",
                params![id.to_hex(), digests.diff_id, digests.digest, size],
            )
            .map_err(sql("remember a layer's OCI digests"))?;
        if n == 0 {
            return Err(Error::MissingLayer { id: *id });
        }
        Ok(())
    }

    /// Records whether the store's unpacked-layer cache holds layer `id`.
    pub(crate) fn set_layer_unpacked(&mut self, id: &LayerId, unpacked: bool) -> Result<()> {
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
    pub(crate) fn set_relocations(
        &mut self,
        id: &LayerId,
        root: &[u8],
        records: &[u8],
    ) -> Result<()> {
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
    pub(crate) fn relocations(&self, id: &LayerId) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
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
    pub(crate) fn unreferenced_layers(&self) -> Result<Vec<LayerId>> {
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
    pub(crate) fn remove_layer(&mut self, id: &LayerId) -> Result<()> {
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
    #[cfg(test)]
    pub(crate) fn add_snapshot(&mut self, new: &NewSnapshot) -> Result<SnapshotRow> {
        let tx = self.begin()?;
        let row = insert_snapshot(&tx, new)?;
        tx.commit().map_err(sql("add a snapshot"))?;
        Ok(row)
    }

    /// Records `layer` and the snapshot of it on `parent` in one transaction, so that a
    /// concurrent [`Index::remove_layer`] of an unreferenced layer cannot slip in between.
    /// Otherwise as [`Index::add_layer`] then [`Index::add_snapshot`].
    pub(crate) fn add_layer_and_snapshot(
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
    pub(crate) fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRow>> {
        select_snapshot(&self.conn, id)
    }

    /// The snapshot named by `reference`: a tag, a full id, or a unique id prefix of at least
    /// [`MIN_PREFIX_LEN`] hex digits. A tag wins over an id prefix spelled the same way.
    pub(crate) fn resolve(&self, reference: &str) -> Result<SnapshotId> {
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
    pub(crate) fn chain(&self, id: &SnapshotId) -> Result<Vec<SnapshotRow>> {
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
    pub(crate) fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
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
    pub(crate) fn children(&self, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
        let op = "list child snapshots";
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM snapshots WHERE parent = ?1 ORDER BY id")
            .map_err(sql(op))?;
        st.query_map([id.to_hex()], |r| hex_col(r, 0))
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// The id of every snapshot, in id order: one cheap read, for bulk membership tests.
    pub(crate) fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        let op = "list snapshot ids";
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM snapshots ORDER BY id")
            .map_err(sql(op))?;
        st.query_map([], |r| hex_col(r, 0))
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// Raises `last_used` of each snapshot in `ids` to `now` (never lowers it). Ids not in
    /// the index are ignored: touching is advisory.
    pub(crate) fn touch(&mut self, ids: &[SnapshotId], now: i64) -> Result<()> {
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
    pub(crate) fn remove_snapshot(&mut self, id: &SnapshotId) -> Result<()> {
        self.remove_snapshots(std::slice::from_ref(id))
    }

    /// Forgets the snapshots `ids`, in that order (children before their parents), all or
    /// none: each is refused as [`Index::remove_snapshot`] refuses it, at its turn, and a
    /// refusal leaves every one of them recorded.
    pub(crate) fn remove_snapshots(&mut self, ids: &[SnapshotId]) -> Result<()> {
        let tx = self.begin()?;
        for id in ids {
            delete_snapshot(&tx, id)?;
        }
        tx.commit().map_err(sql("remove a snapshot"))
    }

    /// The snapshots whose stack holds layer `id`: those made of it and every snapshot built
    /// on one of them, deepest first (so removing them in this order removes children
    /// before their parents).
    pub(crate) fn snapshots_needing_layer(&self, id: &LayerId) -> Result<Vec<SnapshotRow>> {
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
    pub(crate) fn set_tag(&mut self, name: &str, id: &SnapshotId) -> Result<()> {
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
    pub(crate) fn remove_tag(&mut self, name: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM tags WHERE name = ?1", [name])
            .map_err(sql("remove a tag"))?;
        Ok(n > 0)
    }

    /// Every tag and its snapshot, by name.
    pub(crate) fn tags(&self) -> Result<Vec<(String, SnapshotId)>> {
        let op = "list tags";
        let mut st = self
            .conn
            .prepare_cached("SELECT name, snapshot FROM tags ORDER BY name")
            .map_err(sql(op))?;
        st.query_map([], |r| Ok((r.get(0)?, hex_col(r, 1)?)))
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    /// The tags naming snapshot `id`, by name.
    pub(crate) fn tags_of(&self, id: &SnapshotId) -> Result<Vec<String>> {
        let op = "list the tags of a snapshot";
        let mut st = self
            .conn
            .prepare_cached("SELECT name FROM tags WHERE snapshot = ?1 ORDER BY name")
            .map_err(sql(op))?;
        st.query_map([id.to_hex()], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(sql(op))
    }

    // ---- checkouts ----

    /// Starts tracking a checkout, which pins its snapshot. Errors with
    /// [`Error::AlreadyTracked`] if `row.dir` is tracked.
    pub(crate) fn add_checkout(&mut self, row: &CheckoutRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO checkouts (dir, snapshot, mode, state_dir, root_path, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                path_to_bytes(&row.dir),
                row.snapshot.to_hex(),
                row.mode.as_str(),
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
    pub(crate) fn checkout(&self, dir: &Path) -> Result<Option<CheckoutRow>> {
        self.conn
            .prepare_cached(
                "SELECT dir, snapshot, mode, state_dir, root_path, created
                 FROM checkouts WHERE dir = ?1",
            )
            .and_then(|mut st| st.query_row([path_to_bytes(dir)], checkout_row).optional())
            .map_err(sql("read a checkout"))?
            .transpose()
    }

    /// Stops tracking the checkout at `dir`; `false` if it was not tracked.
    pub(crate) fn remove_checkout(&mut self, dir: &Path) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM checkouts WHERE dir = ?1", [path_to_bytes(dir)])
            .map_err(sql("remove a checkout"))?;
        Ok(n > 0)
    }

    /// Every tracked checkout, by directory.
    pub(crate) fn checkouts(&self) -> Result<Vec<CheckoutRow>> {
        let op = "list checkouts";
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT dir, snapshot, mode, state_dir, root_path, created
                 FROM checkouts ORDER BY dir",
            )
            .map_err(sql(op))?;
        let rows: Vec<Result<CheckoutRow>> = st
            .query_map([], checkout_row)
            .and_then(Iterator::collect)
            .map_err(sql(op))?;
        rows.into_iter().collect()
    }

    // ---- leases ----

    /// Pins `snapshot` while `owner` lives (or until released).
    pub(crate) fn lease(
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
    pub(crate) fn release_lease(&mut self, lease: LeaseId) -> Result<()> {
        self.conn
            .execute("DELETE FROM leases WHERE id = ?1", [lease.0])
            .map_err(sql("release a lease"))?;
        Ok(())
    }

    /// Every lease, live or not, by id.
    #[cfg(all(test, unix))]
    pub(crate) fn leases(&self) -> Result<Vec<LeaseRow>> {
        select_leases(&self.conn, None)
    }

    /// Deletes the leases whose owner is no longer alive; returns how many.
    pub(crate) fn expire_dead_leases(&mut self) -> Result<u64> {
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
    pub(crate) fn cache(&self, name: &str) -> Result<Option<CacheRow>> {
        select_cache(&self.conn, name)
    }

    /// Every cache, by name.
    pub(crate) fn caches(&self) -> Result<Vec<CacheRow>> {
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
    pub(crate) fn add_cache_view(&mut self, new: &NewCacheView) -> Result<AddedCacheView> {
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
    #[cfg(test)]
    pub(crate) fn cache_view(&self, dir: &Path) -> Result<Option<CacheViewRow>> {
        select_cache_view(&self.conn, dir)
    }

    /// The views of cache `name` (of every cache if none), by directory.
    pub(crate) fn cache_views(&self, name: Option<&str>) -> Result<Vec<CacheViewRow>> {
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
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn set_cache_view_owner(&mut self, dir: &Path, owner: Owner) -> Result<bool> {
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
    pub(crate) fn remove_cache_view(&mut self, dir: &Path) -> Result<bool> {
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
    pub(crate) fn publish_cache_version(
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
    pub(crate) fn remove_cache(&mut self, name: &str) -> Result<RemoveCache> {
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
    pub(crate) fn prune_candidates(
        &self,
        older_than: i64,
        limit: usize,
    ) -> Result<Vec<SnapshotRow>> {
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
    pub(crate) fn usage(&self) -> Result<Usage> {
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
    fn index_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Index>();
    }
}
