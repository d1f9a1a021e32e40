//! Why an index operation failed.

use std::io;
use std::path::PathBuf;

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
    /// The database would not switch to WAL mode, which concurrent use needs.
    #[error("cannot switch the snapshot index {} to WAL mode: its journal mode stayed `{mode}`", path.display())]
    NotWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode it kept.
        mode: String,
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
    /// A tracked checkout's recorded mode is not one this version knows (a mode is only
    /// added with a schema migration, which older versions refuse, so this is damage).
    #[error("checkout {} has a bad mode in the snapshot index: {source}", dir.display())]
    BadCheckoutMode {
        /// The checkout directory.
        dir: PathBuf,
        #[source]
        source: crate::ParseCheckoutModeError,
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
