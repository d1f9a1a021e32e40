//! The index's rows, as the queries read and write them, and their decoding from SQLite.

use std::path::PathBuf;
use std::str::FromStr;

use rusqlite::Row;
use rusqlite::types::Type;
use strata_cas::LayerId;

use super::{Error, Owner, bytes_to_path};
use crate::{CheckoutMode, SnapshotId};

/// A layer known to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerRow {
    /// The layer's id (blake3 of its uncompressed tar stream).
    pub(crate) id: LayerId,
    /// Bytes of the uncompressed tar stream.
    pub(crate) uncompressed_size: u64,
    /// Bytes of the stored blob.
    pub(crate) compressed_size: u64,
    /// Whether the store's unpacked-layer cache holds this layer.
    pub(crate) unpacked: bool,
    /// When it was first recorded (ms since the Unix epoch).
    pub(crate) created: i64,
}

/// What [`Index::add_snapshot`] needs; the id and depth are derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewSnapshot {
    /// The snapshot below, or none for a base snapshot.
    pub(crate) parent: Option<SnapshotId>,
    /// The layer on top.
    pub(crate) layer: LayerId,
    /// Where the layer's tree was checked out when committed, as raw path bytes (see
    /// [`path_to_bytes`]); none for imported layers.
    pub(crate) root_path: Option<Vec<u8>>,
    /// The current time (ms since the Unix epoch), used for `created` and `last_used`.
    pub(crate) now: i64,
}

/// A snapshot known to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotRow {
    /// `SnapshotId::derive(parent, layer)`.
    pub(crate) id: SnapshotId,
    /// The snapshot below, if any.
    pub(crate) parent: Option<SnapshotId>,
    /// The layer on top.
    pub(crate) layer: LayerId,
    /// Number of snapshots below this one (0 for a base).
    pub(crate) depth: u32,
    /// Where the layer's tree was checked out when committed, as raw path bytes.
    pub(crate) root_path: Option<Vec<u8>>,
    /// When it was first recorded (ms since the Unix epoch).
    pub(crate) created: i64,
    /// When it was last added, checked out or touched (ms since the Unix epoch).
    pub(crate) last_used: i64,
}

/// A tracked checkout: a directory holding a snapshot's tree, which pins the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckoutRow {
    /// The checkout directory (the key).
    pub(crate) dir: PathBuf,
    /// The snapshot checked out.
    pub(crate) snapshot: SnapshotId,
    /// How it was checked out; the engine defines the values.
    pub(crate) mode: CheckoutMode,
    /// The engine's private state for this checkout (an overlay upper/work dir), if any.
    pub(crate) state_dir: Option<PathBuf>,
    /// The root the sandbox sees, as raw path bytes (see [`path_to_bytes`]); it becomes the
    /// `root_path` of a snapshot committed from this checkout.
    pub(crate) root_path: Vec<u8>,
    /// When it was made (ms since the Unix epoch).
    pub(crate) created: i64,
}

/// The identity of a lease, for [`Index::release_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LeaseId(pub(crate) i64);

/// A lease: pins a snapshot while its owner process is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    /// The lease's id.
    pub(crate) id: LeaseId,
    /// The snapshot pinned.
    pub(crate) snapshot: SnapshotId,
    /// The process holding it.
    pub(crate) owner: Owner,
    /// Why, for humans ("build step 3").
    pub(crate) purpose: String,
    /// When it was taken (ms since the Unix epoch).
    pub(crate) created: i64,
}

/// A shared cache: a named tree whose successive versions are snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheRow {
    /// The cache's name (see [`check_cache_name`]).
    pub(crate) name: String,
    /// The current version, or none while the cache is still empty.
    pub(crate) snapshot: Option<SnapshotId>,
    /// How many releases have replaced the version since the cache was created.
    pub(crate) generation: u64,
    /// Owner given to the root of every view (the user that created the cache).
    pub(crate) owner_uid: u32,
    /// Group given to the root of every view.
    pub(crate) owner_gid: u32,
    /// Views taken and not yet released or swept.
    pub(crate) views: u64,
    /// When it was created (ms since the Unix epoch).
    pub(crate) created: i64,
    /// When its version last changed (ms since the Unix epoch).
    pub(crate) updated: i64,
}

/// A view of a cache: a tracked checkout that one user writes to privately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheViewRow {
    /// The checkout directory (the key).
    pub(crate) dir: PathBuf,
    /// The cache it is a view of.
    pub(crate) cache: String,
    /// The version it was taken from (the empty base snapshot for an empty cache).
    pub(crate) snapshot: SnapshotId,
    /// The cache's generation when it was taken.
    pub(crate) base_generation: u64,
    /// The process holding it; when that process dies the view may be swept.
    pub(crate) owner: Owner,
    /// When it was taken (ms since the Unix epoch).
    pub(crate) created: i64,
}

/// What [`Index::add_cache_view`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewCacheView {
    /// The cache; created (empty, generation 0) if missing.
    pub(crate) cache: String,
    /// Where the view will be checked out.
    pub(crate) dir: PathBuf,
    /// The process taking it.
    pub(crate) owner: Owner,
    /// Owner of the root of views, recorded if the cache is created.
    pub(crate) uid: u32,
    /// Group of the root of views, recorded if the cache is created.
    pub(crate) gid: u32,
    /// A layer with no entries, already stored: the base of views of an empty cache.
    pub(crate) empty_layer: LayerRow,
    /// The current time (ms since the Unix epoch).
    pub(crate) now: i64,
}

/// What [`Index::add_cache_view`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddedCacheView {
    /// The cache, as it is now.
    pub(crate) cache: CacheRow,
    /// The new view.
    pub(crate) view: CacheViewRow,
    /// The snapshot to check out (the empty base if the cache is empty).
    pub(crate) base: SnapshotRow,
}

/// A new version of a cache, for [`Index::publish_cache_version`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheVersion {
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
pub(crate) enum Publish {
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
pub(crate) enum RemoveCache {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    /// Number of snapshots.
    pub(crate) snapshots: u64,
    /// Number of layers.
    pub(crate) layers: u64,
    /// Number of tracked checkouts.
    pub(crate) checkouts: u64,
    /// Number of leases, live or not yet expired.
    pub(crate) leases: u64,
    /// Sum of the layers' uncompressed sizes.
    pub(crate) uncompressed_bytes: u64,
    /// Sum of the layers' compressed sizes.
    pub(crate) compressed_bytes: u64,
}

pub(super) fn cache_row(r: &Row<'_>) -> rusqlite::Result<CacheRow> {
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

pub(super) fn cache_view_row(r: &Row<'_>) -> rusqlite::Result<CacheViewRow> {
    Ok(CacheViewRow {
        owner: owner_cols(r)?,
        dir: bytes_to_path(r.get(2)?),
        cache: r.get(3)?,
        snapshot: hex_col(r, 4)?,
        base_generation: u64_col(r, 5)?,
        created: r.get(6)?,
    })
}

// Columns 0 and 1 hold owner_pid and owner_start.
pub(super) fn owner_cols(r: &Row<'_>) -> rusqlite::Result<Owner> {
    Ok(Owner::new(r.get(0)?, u64_col(r, 1)?))
}

pub(super) fn snapshot_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
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

pub(super) fn layer_row(r: &Row<'_>) -> rusqlite::Result<LayerRow> {
    Ok(LayerRow {
        id: hex_col(r, 0)?,
        uncompressed_size: u64_col(r, 1)?,
        compressed_size: u64_col(r, 2)?,
        unpacked: r.get(3)?,
        created: r.get(4)?,
    })
}

/// A checkout row, or the error naming its directory if its mode is one this version does
/// not know.
pub(super) fn checkout_row(r: &Row<'_>) -> rusqlite::Result<Result<CheckoutRow, Error>> {
    let dir = bytes_to_path(r.get(0)?);
    let mode = match r.get::<_, String>(2)?.parse() {
        Ok(mode) => mode,
        Err(source) => return Ok(Err(Error::BadCheckoutMode { dir, source })),
    };
    Ok(Ok(CheckoutRow {
        dir,
        snapshot: hex_col(r, 1)?,
        mode,
        state_dir: r.get::<_, Option<Vec<u8>>>(3)?.map(bytes_to_path),
        root_path: r.get(4)?,
        created: r.get(5)?,
    }))
}

pub(super) fn parse_hex<T>(idx: usize, text: &str) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

pub(super) fn hex_col<T>(r: &Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    parse_hex(idx, &r.get::<_, String>(idx)?)
}

// rusqlite only converts u64 with its `fallible_uint` feature; do it here.
pub(super) fn u64_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}
