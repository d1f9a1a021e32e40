//! The Debian packages the project's commands need, installed on demand: what the README's
//! two quick-start commands (`cargo xtask strata …`, `cargo xtask ci`) rely on, so that a fresh
//! Debian machine with only Rust needs no separate `apt-get install` line.

use std::process::Command;

use anyhow::{Context, bail};

/// What `strata build` needs on the embedded defaults: runc for the sandbox, and the static
/// busybox the default base image is made from.
pub(crate) const RUN: &[&str] = &["runc", "busybox-static"];

/// What the whole test suite (`cargo xtask ci`) needs:
/// - gcc builds libzstd and SQLite; GNU tar, zstd and coreutils are what the interop tests
///   and benchmarks compare against;
/// - rustc-web + rust-web-src (Debian's compiler and std sources), libzstd-dev,
///   libsqlite3-dev and pkg-config let the Windows and macOS type-checks run from Linux;
/// - the mingw-w64 gcc and binutils link Windows test binaries that wine64 runs;
/// - runc and busybox-static run the sandbox tests; python3-venv lets the relocation tests
///   build a real venv; util-linux's setpriv runs checks as an unprivileged user;
/// - docker-registry (CNCF distribution), skopeo and umoci read and serve the images
///   strata-oci writes and pushes;
/// - g++ builds libFuzzer for the fuzz targets.
pub(crate) const TEST: &[&str] = &[
    "gcc",
    "g++",
    "libc6-dev",
    "tar",
    "zstd",
    "coreutils",
    "util-linux",
    "rustc-web",
    "rust-web-src",
    "libzstd-dev",
    "libsqlite3-dev",
    "pkg-config",
    "gcc-mingw-w64-x86-64",
    "binutils-mingw-w64-x86-64",
    "wine64",
    "runc",
    "busybox-static",
    "python3",
    "python3-venv",
    "docker-registry",
    "skopeo",
    "umoci",
    // mkfs.xfs, for the reflink check of portable checkouts on XFS.
    "xfsprogs",
];

/// Installs those of `packages` that are missing, with apt-get as root. Elsewhere (not root,
/// not Debian) it says what is missing and how to install it, and goes on: the commands that
/// need a package then say so themselves.
pub(crate) fn ensure(packages: &[&str]) -> anyhow::Result<()> {
    let Some(missing) = missing(packages) else {
        eprintln!("==> deps: not a Debian system; make sure these are installed: {packages:?}");
        return Ok(());
    };
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        eprintln!("==> deps: missing Debian packages; as root: apt-get install {list}");
        return Ok(());
    }
    eprintln!("==> deps: apt-get install {list}");
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt(&install)
}

/// The packages dpkg does not list as installed; `None` without dpkg.
fn missing(packages: &[&str]) -> Option<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(packages)
        .output()
        .ok()?;
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the others.
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    Some(
        packages
            .iter()
            .filter(|p| !installed.contains(p))
            .map(|p| (*p).to_owned())
            .collect(),
    )
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `cargo xtask strata ARGS…`: installs what `strata build` needs, then runs the release
/// `strata` with ARGS in the current directory.
pub(crate) fn run_strata(args: &[String]) -> anyhow::Result<()> {
    ensure(RUN)?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "run",
            "--quiet",
            "--release",
            "--locked",
            "-p",
            "strata-cli",
            "--",
        ])
        .args(args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
