//! `cargo xtask ci`: exactly what CI checks, runnable locally.
//!
//! Formatting, clippy with warnings as errors, the whole test suite (the tidy checks in
//! `tidy.rs` run as xtask's own tests), a short run of every fuzz target (`fuzz.rs`), a
//! small run of OBuilder's stress test against real runc (`stress.rs`), the builder's
//! end-to-end tests and a stress run on the Docker driver (where an engine answers, and
//! always under `CI=true`), a type-check of
//! every crate for Windows and macOS, then the Windows unit tests under Wine (`wine.rs`),
//! in that order, stopping at the first failure.

use std::process::Command;

use anyhow::{Context, bail};

use crate::project_root;
use crate::toolchain::{DEBIAN_RUSTC, have_debian_rust};

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask ci` takes no arguments, got `{arg}`");
    }
    crate::deps::ensure(crate::deps::TEST)?;
    step("format", &["fmt", "--all", "--check"])?;
    // The fuzz crate is a workspace of its own.
    step(
        "format",
        &["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"],
    )?;
    step(
        "lint",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("test", &["test", "--workspace", "--locked"])?;
    // Every fuzz target for a short while, two at a time: about a minute and a half plus
    // the build.
    crate::fuzz::ensure_cargo_fuzz()?;
    crate::fuzz::run(&["--seconds".to_owned(), FUZZ_SECONDS.to_string()])?;
    // OBuilder's stress test, smaller: 30 jobs, 6 at a time, against real runc.
    if runc_usable() || std::env::var_os("CI").is_some() {
        step(
            "stress",
            &[
                "run",
                "--locked",
                "-p",
                "xtask",
                "--",
                "stress",
                "--jobs",
                "30",
                "--concurrency",
                "6",
            ],
        )?;
    } else {
        eprintln!("==> stress: skipped (needs root, runc and busybox-static)");
    }
    // The builder's end-to-end tests again on the Docker driver, and a small stress run
    // on it (strata-docker's own tests ran with the workspace's above).
    if docker_usable() || std::env::var_os("CI").is_some() {
        step_env(
            "docker",
            &[("STRATA_TEST_SANDBOX", "docker")],
            &["test", "--locked", "-p", "strata-build", "--test", "it"],
        )?;
        step(
            "stress (docker)",
            &[
                "run",
                "--locked",
                "-p",
                "xtask",
                "--",
                "stress",
                "--jobs",
                "12",
                "--concurrency",
                "4",
                "--sandbox",
                "docker",
            ],
        )?;
    } else {
        eprintln!("==> docker: skipped (no docker engine answers)");
    }
    cross_check()?;
    crate::wine::run_tests()?;
    Ok(())
}

/// Whether a docker engine answers on the default socket (or `DOCKER_HOST`).
fn docker_usable() -> bool {
    use strata_isolate::Driver;
    strata_docker::DockerDriver::new(strata_docker::DockerOptions::new(1))
        .check()
        .is_ok()
}

/// Seconds each fuzz target runs in CI.
const FUZZ_SECONDS: u32 = 30;

/// Targets whose code we cannot run here but must compile: `cfg(windows)` and macOS paths.
const CROSS_TARGETS: &[&str] = &["x86_64-pc-windows-gnu", "aarch64-apple-darwin"];

/// `cargo check` for other operating systems with `-Zbuild-std` (see
/// `docs/architecture.md`). Needs Debian's `rustc-web rust-web-src libzstd-dev libsqlite3-dev
/// pkg-config`, which `.ci/run` installs; skipped with a notice where they are missing, except
/// in CI.
fn cross_check() -> anyhow::Result<()> {
    if !have_debian_rust() {
        if std::env::var_os("CI").is_some() {
            bail!("the cross-platform check needs Debian's rustc-web and rust-web-src in CI");
        }
        eprintln!(
            "==> cross: skipped (apt-get install rustc-web rust-web-src libzstd-dev pkg-config)"
        );
        return Ok(());
    }
    for target in CROSS_TARGETS {
        eprintln!("==> cross: cargo check --target {target}");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "check",
            "--workspace",
            "--exclude",
            "xtask",
            "--exclude",
            "benches",
            "--locked",
        ])
        .args(["-Zbuild-std=std,panic_abort", "--target", target])
        .args(["--target-dir", "target/cross"])
        .current_dir(project_root())
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-D warnings");
        // C code of dependencies cannot be compiled for macOS here (no SDK), and nothing is
        // linked by `check`: take libzstd and SQLite from pkg-config and blake3's portable
        // Rust. Not for Windows when mingw is here: the Wine tests need the real C builds,
        // and sharing them keeps each step from redoing them after the other.
        if !(target.contains("windows") && crate::wine::have_mingw()) {
            cmd.env("ZSTD_SYS_USE_PKG_CONFIG", "1")
                .env("LIBSQLITE3_SYS_USE_PKG_CONFIG", "1")
                .env("PKG_CONFIG_ALLOW_CROSS", "1")
                .env("CARGO_FEATURE_PURE", "1");
        }
        let status = cmd
            .status()
            .context("cannot run cargo for the cross-platform check")?;
        if !status.success() {
            bail!("the cross-platform check for {target} failed ({status})");
        }
    }
    Ok(())
}

/// Whether runc jobs can run here: root, `runc` on PATH and a static busybox for the base.
fn runc_usable() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    root && runc && std::path::Path::new("/bin/busybox").exists()
}

fn step(name: &str, args: &[&str]) -> anyhow::Result<()> {
    step_env(name, &[], args)
}

fn step_env(name: &str, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<()> {
    eprintln!("==> {name}: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(project_root())
        .status()
        .with_context(|| format!("cannot run cargo for the {name} step"))?;
    if !status.success() {
        bail!("the {name} step failed ({status})");
    }
    Ok(())
}
