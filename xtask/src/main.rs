//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask ci`: everything CI checks (formatting, clippy, the test suite, tidy).
//! - `cargo xtask bench [--quick]`: criterion micro-benchmarks plus whole-process comparisons
//!   against GNU tar, zstd and b3sum; writes `target/bench/report.{md,json}`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask is a command-line tool; it reports on stdout and stderr"
)]

mod bench;
mod ci;
mod tidy;

use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .map_or(("help", &[][..]), |(c, r)| (c.as_str(), r));
    match cmd {
        "ci" => ci::run(rest),
        "bench" => bench::run(rest),
        "help" | "--help" | "-h" => {
            eprintln!("usage: cargo xtask <ci | bench [--quick]>");
            Ok(())
        }
        other => anyhow::bail!("unknown xtask command `{other}`; try `cargo xtask help`"),
    }
}

/// The workspace root, derived from this crate's manifest directory.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
