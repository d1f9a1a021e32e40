//! The snapshot index: one SQLite file in the store directory that records layers, snapshots,
//! tags, tracked checkouts and leases, shared by every process of the host using the store.
//! Only the engine reads and writes it; its errors ([`Error`]) are public, as sources of the
//! engine's.
//!
//! Concurrency model:
//! - Each `Index` owns one connection; open one per thread (it is `Send`, not `Sync`).
//! - Every write transaction is `BEGIN IMMEDIATE`, so writers queue on SQLite's write lock
//!   (with a 30 s busy timeout) instead of failing with `SQLITE_BUSY` when upgrading a read.
//! - Setting WAL mode and running migrations happen under an OS lock on `<db>.lock`, because
//!   several processes doing either at once on a fresh file fail.
//! - WAL needs shared memory, so every process must be on the same host (no network
//!   filesystems).
//!
//! Leases and cache views name their owner by pid and process start time
//! ([`strata_process::Owner`]), so one whose process died (even by `SIGKILL`) stops protecting
//! its snapshot. All processes sharing a store must see the same pids (one pid namespace, one
//! `/proc`).
//!
//! Ids are stored as lowercase hex `TEXT`, times as milliseconds since the Unix epoch, and
//! paths as raw bytes (on non-Unix: the path's UTF-8, lossily).

use std::path::{Path, PathBuf};

mod error;
mod migrations;
mod queries;
mod rows;
#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub(crate) use queries::Index;
pub(crate) use rows::{
    AddedCacheView, CacheRow, CacheVersion, CacheViewRow, CheckoutRow, LayerRow, LeaseId, LeaseRow,
    NewCacheView, NewSnapshot, Publish, RemoveCache, SnapshotRow, Usage,
};
pub(crate) use strata_process::Owner;

/// The bytes the index stores for a path: the raw `OsStr` bytes on Unix, UTF-8 (lossy)
/// elsewhere.
pub(crate) fn path_to_bytes(path: &Path) -> Vec<u8> {
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
pub(crate) fn bytes_to_path(bytes: Vec<u8>) -> PathBuf {
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
pub(crate) const MAX_CACHE_NAME_LEN: usize = 255;

/// Checks a cache name: non-empty, at most [`MAX_CACHE_NAME_LEN`] bytes, no `/` or NUL, and
/// not `.` or `..`. Names are only index keys, never paths, so nothing else is refused.
pub(crate) fn check_cache_name(name: &str) -> Result<(), &'static str> {
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
pub(crate) const MIN_PREFIX_LEN: usize = 4;

/// Longest tag name, in bytes.
pub(crate) const MAX_TAG_LEN: usize = 255;

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
