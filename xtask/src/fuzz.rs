//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the libFuzzer targets in `fuzz/` with
//! cargo-fuzz and runs each for a bounded time, two at a time.
//!
//! cargo-fuzz passes nightly-only flags (`-Zsanitizer=address`); `RUSTC_BOOTSTRAP=1` lets
//! the stable toolchain accept them, and stable ships the AddressSanitizer runtime, so the
//! targets run with ASan, debug assertions and overflow checks. Each target starts from its
//! seeds in `fuzz/corpus/<target>` (never written to) and keeps what it finds in
//! `target/fuzz/corpus/<target>`; a crash, leak, timeout or out-of-memory fails the run and
//! names the input libFuzzer saved, with the command that reproduces it. Scratch files go
//! to a directory on `/dev/shm` when there is one: the extraction targets make and remove
//! thousands of directories per second.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::project_root;

/// The cargo-fuzz release `cargo xtask fuzz` (and so `ci`) installs when it is missing.
pub(crate) const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// A fuzz target and how to run it.
struct Target {
    name: &'static str,
    /// Dictionary in `fuzz/dict/`, if any.
    dict: Option<&'static str>,
    /// Largest input libFuzzer makes.
    max_len: u32,
}

/// Large inputs where the defects they look for need size: 1-2 MiB PAX paths and specs.
const TARGETS: &[Target] = &[
    Target {
        name: "tar_reader",
        dict: Some("tar.dict"),
        max_len: 1 << 20,
    },
    Target {
        name: "frames",
        dict: None,
        max_len: 256 << 10,
    },
    Target {
        name: "layer_apply",
        dict: Some("tar.dict"),
        max_len: 2 << 20,
    },
    Target {
        name: "spec",
        dict: Some("spec.dict"),
        max_len: 1 << 20,
    },
    Target {
        name: "deep_path",
        dict: None,
        max_len: 64,
    },
    Target {
        name: "spec_names",
        dict: None,
        max_len: 64,
    },
];

/// Seconds one input may take before libFuzzer reports it as a timeout.
const UNIT_TIMEOUT: u32 = 60;
/// Targets run at once.
const PARALLEL: usize = 2;

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 60u32;
    let mut names = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .with_context(|| format!("--seconds takes a number, got `{value}`"))?;
            }
            "-h" | "--help" => {
                let all: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                eprintln!(
                    "usage: cargo xtask fuzz [--seconds N] [TARGET...]\ntargets: {}",
                    all.join(" ")
                );
                return Ok(());
            }
            name if name.starts_with('-') => bail!("unknown option `{name}`"),
            name => names.push(name.to_owned()),
        }
    }
    let targets: Vec<&Target> = if names.is_empty() {
        TARGETS.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                TARGETS.iter().find(|t| t.name == n).with_context(|| {
                    let all: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                    format!("no fuzz target `{n}`; the targets are {}", all.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    ensure_cargo_fuzz()?;
    build()?;
    run_targets(&targets, seconds)
}

/// Installs the pinned cargo-fuzz from crates.io unless it is here already.
pub(crate) fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim()
                    == format!("cargo-fuzz {CARGO_FUZZ_VERSION}")
        });
    if installed {
        return Ok(());
    }
    eprintln!("==> fuzz: cargo install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked");
    let status = Command::new(cargo())
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("installing cargo-fuzz {CARGO_FUZZ_VERSION} failed ({status})");
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn fuzz_dir() -> PathBuf {
    project_root().join("fuzz")
}

/// `cargo fuzz` with the environment every invocation needs.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir())
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Release builds with debug assertions (and so overflow checks) and AddressSanitizer.
const BUILD_FLAGS: &[&str] = &["--release", "--debug-assertions", "--sanitizer", "address"];

fn build() -> anyhow::Result<()> {
    let started = Instant::now();
    // cargo-fuzz has no `--locked`: check the lock file first, so CI builds what it records.
    let status = Command::new(cargo())
        .args(["fetch", "--locked", "--manifest-path"])
        .arg(fuzz_dir().join("Cargo.toml"))
        .status()
        .context("cannot run cargo fetch for the fuzz targets")?;
    if !status.success() {
        bail!("fuzz/Cargo.lock is out of date ({status}); run cargo update in fuzz/");
    }
    eprintln!("==> fuzz: cargo fuzz build {}", BUILD_FLAGS.join(" "));
    let status = cargo_fuzz(&["build"])
        .args(BUILD_FLAGS)
        .status()
        .context("cannot run cargo fuzz build")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    eprintln!(
        "==> fuzz: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_targets(targets: &[&Target], seconds: u32) -> anyhow::Result<()> {
    let work = project_root().join("target/fuzz");
    let scratch = scratch_dir(&work)?;
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(targets.len()) {
            s.spawn(|| {
                while let Some(target) = targets.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = run_target(target, seconds, &work, &scratch) {
                        failures
                            .lock()
                            .expect("failures lock")
                            .push(format!("{e:#}"));
                    }
                }
            });
        }
    });
    let _ = fs::remove_dir_all(&scratch);
    let failures = failures.into_inner().expect("failures lock");
    if !failures.is_empty() {
        bail!("fuzzing found problems:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// A fresh directory for the targets' temporary files, on tmpfs if it has room (Docker
/// gives containers 64 MiB of `/dev/shm`, which a full target would fill).
fn scratch_dir(work: &Path) -> anyhow::Result<PathBuf> {
    let shm = Path::new("/dev/shm");
    let free = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(shm)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
        });
    let base = if free.is_some_and(|bytes| bytes >= 2 << 30) {
        shm.to_path_buf()
    } else {
        work.to_path_buf()
    };
    let dir = base.join(format!("strata-fuzz-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn run_target(target: &Target, seconds: u32, work: &Path, scratch: &Path) -> anyhow::Result<()> {
    let name = target.name;
    let corpus = work.join("corpus").join(name);
    let artifacts = work.join("artifacts").join(name);
    let tmp = scratch.join(name);
    for dir in [&corpus, &artifacts, &tmp] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let seeds = fuzz_dir().join("corpus").join(name);
    let log_path = work.join(format!("{name}.log"));
    let log = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let before = artifact_files(&artifacts);
    let mut options = vec![
        format!("-max_total_time={seconds}"),
        format!("-max_len={}", target.max_len),
        format!("-timeout={UNIT_TIMEOUT}"),
        "-rss_limit_mb=2048".to_owned(),
        "-print_final_stats=1".to_owned(),
        format!("-artifact_prefix={}/", artifacts.display()),
    ];
    if let Some(dict) = target.dict {
        options.push(format!(
            "-dict={}",
            fuzz_dir().join("dict").join(dict).display()
        ));
    }
    eprintln!(
        "==> fuzz: {name} for {seconds} s (log: {})",
        log_path.display()
    );
    let status = cargo_fuzz(&["run"])
        .args(BUILD_FLAGS)
        .arg(name)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .args(&options)
        .env("TMPDIR", &tmp)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run cargo fuzz run {name}"))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let summary = text
        .lines()
        .filter(|l| l.contains("DONE") || l.starts_with("stat::number_of_executed_units"))
        .collect::<Vec<_>>()
        .join("; ");
    if status.success() {
        eprintln!("==> fuzz: {name}: {summary}");
        return Ok(());
    }
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    eprintln!(
        "==> fuzz: {name} failed; the end of its log:\n{}",
        tail.join("\n")
    );
    let found: Vec<PathBuf> = artifact_files(&artifacts)
        .into_iter()
        .filter(|f| !before.contains(f))
        .filter(|f| {
            let file = f
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            !file.starts_with("slow-unit-")
        })
        .collect();
    match found.as_slice() {
        [] => bail!(
            "fuzz target {name} failed ({status}) without saving an input; see {}",
            log_path.display()
        ),
        inputs => {
            let list: Vec<String> = inputs
                .iter()
                .map(|f| {
                    format!(
                        "{}\n    reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {} {name} {}",
                        f.display(),
                        BUILD_FLAGS.join(" "),
                        f.display()
                    )
                })
                .collect();
            bail!(
                "fuzz target {name} failed ({status}) on:\n  {}",
                list.join("\n  ")
            )
        }
    }
}

fn artifact_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
