//! The step cache on disk: which snapshot and log each step key produced, and per-key locks.
//!
//! ```text
//! <store>/build-v1/
//! ├── steps.sqlite        key → snapshot, created, used (WAL; shared by processes)
//! ├── logs/<key>.log      the log of a successful step, replayed on every hit
//! ├── logs/<key>.running  the log of the step running now (tailed by waiters)
//! ├── locks/<key>.lock    held (flock) by the process running that step
//! └── roots/              the pool of checkout roots (see `roots.rs`)
//! ```
//!
//! Logs may hold whatever a step printed (secrets are masked, but a step can print other
//! private data): the directory is the owner's alone (0700) and each log is created 0600.
//!
//! The snapshot engine knows nothing of this: its prune may drop a snapshot a key names, so a
//! lookup checks that the snapshot still exists and forgets the key if not.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use strata_snapshot::SnapshotId;

use crate::context::Context;
use crate::error::{Error, Result, io_err};
use crate::key::StepKey;

#[derive(Debug)]
pub(crate) struct Steps {
    pub(crate) dir: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS steps (
    key TEXT PRIMARY KEY NOT NULL,
    snapshot TEXT NOT NULL,
    created INTEGER NOT NULL,
    used INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS images (
    snapshot TEXT PRIMARY KEY NOT NULL,
    context TEXT NOT NULL
) STRICT;
";

impl Steps {
    pub(crate) fn open(store: &Path) -> Result<Steps> {
        let dir = store.join("build-v1");
        for d in ["logs", "locks", "roots"] {
            let p = dir.join(d);
            create_private_dir(&p)?;
        }
        let db_path = dir.join("steps.sqlite");
        let db = |source| Error::Db {
            path: db_path.clone(),
            source,
        };
        let conn = Connection::open(&db_path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        // Checkpointing is left to SQLite's automatic checkpoints: one on every close would
        // cost a build served from the cache a few fsyncs for nothing.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(db)?;
        // IF NOT EXISTS plus SQLite's own write lock make concurrent first opens safe.
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Steps {
            dir,
            db_path,
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|source| Error::Db {
            path: self.db_path.clone(),
            source,
        })
    }

    /// The snapshot a step recorded, and when the step was last used (ms since the epoch).
    pub(crate) fn get(&self, key: &StepKey) -> Result<Option<(SnapshotId, i64)>> {
        let row: Option<(String, i64)> = self.with(|c| {
            c.query_row(
                "SELECT snapshot, used FROM steps WHERE key = ?1",
                [key.to_hex()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        Ok(row.and_then(|(hex, used)| Some((hex.parse().ok()?, used))))
    }

    /// Records a successful step. The log must already be in place: a key is never visible
    /// without its log.
    pub(crate) fn put(&self, key: &StepKey, snapshot: &SnapshotId) -> Result<()> {
        let now = strata_snapshot::now_millis();
        self.with(|c| {
            c.execute(
                "INSERT INTO steps (key, snapshot, created, used) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (key) DO UPDATE SET snapshot = excluded.snapshot, used = excluded.used",
                params![key.to_hex(), snapshot.to_hex(), now],
            )
        })?;
        Ok(())
    }

    /// Records the context a build ended in with its result (the last build's wins: two
    /// specs may end in the same snapshot with different environments).
    pub(crate) fn put_image(&self, snapshot: &SnapshotId, context: &Context) -> Result<()> {
        let json = serde_json::to_string(context).expect("a context serialises");
        self.with(|c| {
            c.execute(
                "INSERT INTO images (snapshot, context) VALUES (?1, ?2)
                 ON CONFLICT (snapshot) DO UPDATE SET context = excluded.context",
                params![snapshot.to_hex(), json],
            )
        })?;
        Ok(())
    }

    /// The context a build of `snapshot` ended in, if one was recorded (and readable).
    pub(crate) fn get_image(&self, snapshot: &SnapshotId) -> Result<Option<Context>> {
        let json: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT context FROM images WHERE snapshot = ?1",
                [snapshot.to_hex()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Forgets the recorded contexts of the snapshots `gone` says are gone.
    pub(crate) fn forget_images(&self, gone: impl Fn(&SnapshotId) -> bool) -> Result<()> {
        let rows: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT snapshot FROM images")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        for hex in rows {
            if hex.parse().is_ok_and(|id| gone(&id)) {
                self.with(|c| c.execute("DELETE FROM images WHERE snapshot = ?1", [&hex]))?;
            }
        }
        Ok(())
    }

    pub(crate) fn touch(&self, key: &StepKey, now: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE steps SET used = ?2 WHERE key = ?1",
                params![key.to_hex(), now],
            )
        })?;
        Ok(())
    }

    /// Forgets a key whose snapshot is gone.
    pub(crate) fn forget(&self, key: &StepKey) -> Result<()> {
        self.with(|c| c.execute("DELETE FROM steps WHERE key = ?1", [key.to_hex()]))?;
        let _ = fs::remove_file(self.log_path(key));
        Ok(())
    }

    /// Forgets every key naming one of `snapshots` (after `strata delete`).
    pub(crate) fn forget_snapshots(&self, snapshots: &[SnapshotId]) -> Result<usize> {
        let mut n = 0;
        for (key, snapshot) in self.all()? {
            if snapshots.contains(&snapshot) {
                self.forget_hex(&key)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every recorded step: (key in hex, snapshot).
    pub(crate) fn all(&self) -> Result<Vec<(String, SnapshotId)>> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut st = c.prepare("SELECT key, snapshot FROM steps")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, s)| Some((k, s.parse().ok()?)))
            .collect())
    }

    /// Forgets the step `key` (hex) and removes its log.
    pub(crate) fn forget_hex(&self, key: &str) -> Result<()> {
        self.with(|c| c.execute("DELETE FROM steps WHERE key = ?1", [key]))?;
        let _ = fs::remove_file(self.dir.join("logs").join(format!("{key}.log")));
        Ok(())
    }

    pub(crate) fn log_path(&self, key: &StepKey) -> PathBuf {
        self.dir.join("logs").join(format!("{key}.log"))
    }

    pub(crate) fn running_log_path(&self, key: &StepKey) -> PathBuf {
        self.dir.join("logs").join(format!("{key}.running"))
    }

    pub(crate) fn lock_file(&self, key: &StepKey) -> Result<File> {
        let p = self.dir.join("locks").join(format!("{key}.lock"));
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("open", &p))
    }

    pub(crate) fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots")
    }
}

/// Creates `dir` (and missing parents) for the owner alone, narrowing the mode of one made
/// earlier with a wider one.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        let meta = fs::metadata(dir).map_err(io_err("inspect", dir))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict access to", dir))?;
        }
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    Ok(())
}

/// Creates (truncating) a file only its owner can read.
pub(crate) fn create_private(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(io_err("create", path))
}
