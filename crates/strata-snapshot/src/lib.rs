//! Strata's snapshot engine: a snapshot is a stack of layers (base first) plus metadata; the
//! engine checks snapshots out as directories a sandbox can run in and commits a changed
//! directory back as a child snapshot.
//!
//! [`Engine`] is the entry point and the whole public surface: import, checkout (overlay or
//! portable), commit, release, copy out; listing, resolving, tagging, touching and removing
//! snapshots ([`Snapshot`]); tracked checkouts ([`Checkout`]); leases ([`Lease`]); holds
//! that keep `gc` off layers not yet recorded ([`LayerHold`]); shared
//! caches ([`caches`]); and prune, gc, du, fsck and layer removal ([`maintenance`]). The
//! SQLite index underneath is private; only its errors ([`index::Error`]) show, as sources of
//! the engine's. The `Engine` docs draw the store layout and its crash model.

pub mod caches;
mod engine;
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
// Strata's own tests and benchmarks only (tidy checks that embedders' crates do not build it).
#[cfg(feature = "testing")]
pub mod testing;
mod types;
#[cfg(all(test, windows))]
mod windows_tests;

#[cfg(feature = "failpoints")]
pub use engine::FAILPOINTS;
pub use engine::{
    Engine, Error, LayerHold, Lease, Result, RootRecord, TrashHandoff, overlay_available,
};
pub use id::{ParseSnapshotIdError, SnapshotId};
pub use types::{Checkout, CheckoutMode, ParseCheckoutModeError, Snapshot, now_millis};
