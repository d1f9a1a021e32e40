//! Integration tests of strata-snapshot against real SQLite files, real mounts and real trees.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests say why they skip, and child processes report on stdout"
)]

mod caches;
mod crash;
mod engine;
#[cfg(target_os = "linux")]
mod full_disk;
mod maintenance;
#[cfg(target_os = "linux")]
mod one_tree;
#[cfg(target_os = "linux")]
mod overlay;
mod portable;
#[cfg(target_os = "linux")]
mod privacy;
mod relocate;
mod trash;

/// `None` where overlay checkouts work, else why not: for `strata_test_support::require`.
pub(crate) fn overlay_problem() -> Option<String> {
    (!strata_snapshot::overlay_available())
        .then(|| "overlay checkouts need root and overlayfs".to_owned())
}
