//! Strata's snapshot engine: a snapshot is a stack of layers (base first) plus metadata; the
//! engine checks snapshots out as directories a sandbox can run in and commits a changed
//! directory back as a child snapshot.
//!
//! [`Engine`] is the entry point: import, checkout (overlay or portable), commit, release;
//! [`maintenance`] adds prune, gc, du, fsck and layer removal. The engine's module docs draw the store layout.

pub mod caches;
pub mod engine;
// Only the crate's own tests build it (tidy checks that nothing else does).
#[cfg(feature = "failpoints")]
mod failpoints;
mod id;
pub mod index;
pub mod maintenance;
#[cfg(target_os = "linux")]
pub mod overlay;
pub mod portable;
pub mod relocate;
#[cfg(all(test, windows))]
mod windows_tests;

pub use engine::{CheckoutMode, Engine, Error, Result};
pub use id::{ParseSnapshotIdError, SnapshotId};
