//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask strata ARGS…`: installs what `strata build` needs (Debian packages, as
//!   root), then runs the release `strata` with ARGS: the README's first command.
//! - `cargo xtask ci`: installs what the tests need, then everything CI checks (formatting,
//!   clippy, the test suite, tidy, the stress run, cross-checks, the Wine tests).
//! - `cargo xtask wine-test`: the Windows unit tests under Wine, then `strata.exe` end to end
//!   under Wine: relocation between slots, and a build with the `windows-user` sandbox (also
//!   part of `ci`); `cargo xtask wine-cli` runs only the latter.
//! - `cargo xtask bench [--quick]`: criterion micro-benchmarks plus whole-process comparisons
//!   against GNU tar, zstd and b3sum; writes `target/bench/report.{md,json}`.
//! - `cargo xtask stress [--jobs N] [--concurrency C]`: OBuilder's stress test with real runc.
//! - `cargo xtask fuzz [--seconds N] [TARGET...]`: the libFuzzer targets in `fuzz/`, each for
//!   a bounded time (also part of `ci`, briefly).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask is a command-line tool; it reports on stdout and stderr"
)]

mod bench;
mod ci;
mod deps;
mod fuzz;
mod stress;
mod tidy;
mod toolchain;
mod wine;
mod wine_cli;

use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .map_or(("help", &[][..]), |(c, r)| (c.as_str(), r));
    match cmd {
        "ci" => ci::run(rest),
        "strata" => deps::run_strata(rest),
        "bench" => bench::run(rest),
        "wine-test" => wine::run(rest),
        "wine-cli" => wine::run_cli(rest),
        "stress" => stress::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "--help" | "-h" => {
            eprintln!(
                "usage: cargo xtask <strata ARGS… | ci | wine-test | wine-cli | bench [--quick] | \
                 stress | fuzz [--seconds N] [TARGET...]>"
            );
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
