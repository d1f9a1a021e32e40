//! Helpers shared by the integration tests of Strata's crates, so that every suite treats
//! missing tools, child processes and trees alike: requirements that fail under CI instead
//! of skipping, child test processes that never pass on their own, and tree comparison.

#![allow(
    clippy::print_stderr,
    reason = "a skipped test says on stderr what it skipped and why"
)]

mod child;
mod require;
#[cfg(unix)]
pub mod tree;

pub use child::{child_test, child_test_args, child_var, test_binary};
pub use require::{require, root, runc, runs, tool, under_ci};
