//! Strata's snapshot engine: a snapshot is a stack of layers (base first) plus metadata; the
//! engine checks snapshots out as directories a sandbox can run in and commits a changed
//! directory back as a child snapshot.
//!
//! Work in progress (issue 3): the index, overlay mounting and path relocation come first.

mod id;
pub mod index;
#[cfg(target_os = "linux")]
pub mod overlay;
pub mod relocate;

pub use id::{ParseSnapshotIdError, SnapshotId};
