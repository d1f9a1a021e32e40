//! `cargo xtask bench [--quick]`: whole-process comparisons against GNU tar, zstd, b3sum, cp
//! and rsync on a real Debian tree, snapshot checkout/commit/prune timings, peak-memory
//! checks, and the criterion micro-benchmarks of `benches/`.
//!
//! Steps, in order:
//!
//! 1. check the external tools (`tar`, `zstd`, `b3sum`, `cp`, `rsync`, GNU `time`, `dpkg`,
//!    `apt-get`, and as root `mkfs.ext4` and `mount`), failing with the Debian package to
//!    install;
//! 2. build (once) the fixture tree under `target/bench/fixture/root` from a fixed list of
//!    Debian packages ([`fixture`]);
//! 3. `cargo build --release -p strata-cli`;
//! 4. set up the scratch filesystem: as root, a journaled ext4 loop image mounted at
//!    `target/bench/mnt`; otherwise `target/bench/work` ([`scratch`]);
//! 5. run the cases side by side, ours and baseline interleaved ([`cases`], [`runner`]),
//!    then the snapshot cases: checkouts, commits and prune of a 10-layer snapshot of the
//!    fixture ([`snapshots`]), then `checkout --copy` of a debootstrapped Debian rootfs
//!    against `tar -x` ([`rootfs`]), then the builder cases: cache hits and a no-op runc step
//!    against a bare `runc run` ([`build`]), then the registry cases: push and pull against
//!    `skopeo copy`, a cold build with `--cache-from` ([`registry`]), then the Docker
//!    driver's cases against `docker run --rm` and runc ([`docker`]);
//! 6. `cargo bench -p benches` and collect criterion's estimates ([`micro`]);
//! 7. write `target/bench/report.json` and `target/bench/report.md`, print the markdown.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};

/// Progress line on stderr (the report itself goes to stdout at the end).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::bench::util::progress(format_args!($($arg)*))
    };
}

mod build;
mod cases;
mod docker;
mod fixture;
mod machine;
mod micro;
mod registry;
mod report;
mod rootfs;
mod runner;
mod scratch;
mod snapshots;
mod util;

use util::{Paths, tool_line};

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, Clone)]
struct Options {
    /// `--quick`: 3 runs per case, criterion's quick mode, no big-layer memory case.
    quick: bool,
    /// `--runs N`: overrides the number of runs per whole-process case.
    runs: Option<usize>,
    /// `--no-micro`: skip the criterion micro-benchmarks.
    no_micro: bool,
    /// `--no-compare`: skip the whole-process cases (micro-benchmarks only).
    no_compare: bool,
    /// `--only GROUP`: run one group of whole-process cases (`layers`, `snapshots`, `rootfs`,
    /// `builder`, `registry`, `docker`).
    only: Option<String>,
}

const USAGE: &str = "\
usage: cargo xtask bench [--quick] [--runs N] [--no-micro] [--no-compare] [--only GROUP]

  --quick       3 runs per case, criterion --quick, skip the 2 GiB memory case
  --runs N      runs per whole-process case (default: 3 quick, 10 full)
  --no-micro    skip the criterion micro-benchmarks
  --no-compare  skip the whole-process comparisons (and the fixture)
  --only GROUP  only these whole-process cases: layers, snapshots, rootfs, builder,
                registry or docker (registry and docker need no fixture)

Writes target/bench/report.json and target/bench/report.md; see docs/benchmarks.md.";

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        let mut opts = Options {
            quick: false,
            runs: None,
            no_micro: false,
            no_compare: false,
            only: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => opts.quick = true,
                "--no-micro" => opts.no_micro = true,
                "--no-compare" => opts.no_compare = true,
                "--only" => {
                    let group = it.next().context("--only needs a group")?;
                    if ![
                        "layers",
                        "snapshots",
                        "rootfs",
                        "builder",
                        "registry",
                        "docker",
                    ]
                    .contains(&group.as_str())
                    {
                        bail!(
                            "--only {group}: the groups are layers, snapshots, rootfs, builder, \
                             registry and docker"
                        );
                    }
                    opts.only = Some(group.clone());
                }
                "--runs" => {
                    let n = it.next().context("--runs needs a number")?;
                    let n: usize = n
                        .parse()
                        .with_context(|| format!("--runs {n}: not a number"))?;
                    if n == 0 {
                        bail!("--runs must be at least 1");
                    }
                    opts.runs = Some(n);
                }
                "--help" | "-h" => {
                    writeln!(std::io::stdout().lock(), "{USAGE}")?;
                    return Ok(None);
                }
                other => bail!("unknown option `{other}`\n{USAGE}"),
            }
        }
        Ok(Some(opts))
    }

    fn runs(&self) -> usize {
        self.runs.unwrap_or(if self.quick { 3 } else { 10 })
    }
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(opts) = Options::parse(args)? else {
        return Ok(());
    };
    let started = Instant::now();
    let started_at = SystemTime::now();
    let paths = Paths::new();
    std::fs::create_dir_all(&paths.bench)
        .with_context(|| format!("creating {}", paths.bench.display()))?;

    // The registry cases check their own tools (docker-registry, skopeo).
    machine::check_tools(!opts.no_compare && opts.only.as_deref() != Some("registry"))?;
    let machine = machine::collect();
    let mode = if opts.quick { "quick" } else { "full" };
    say!(
        "mode: {mode}, {} runs per case, {} cores",
        opts.runs(),
        machine.nproc
    );

    let mut report = report::Report::new(mode, opts.runs(), machine);

    let scratch = scratch::Scratch::setup(&paths)?;
    report.filesystem = Some(scratch.describe());
    let outcome = run_cases(&opts, &paths, &scratch, &mut report, started_at);
    // Leave the scratch space empty and unmounted whatever happened.
    drop(scratch);
    outcome?;

    report.duration_seconds = started.elapsed().as_secs_f64();
    let json_path = paths.bench.join("report.json");
    let md_path = paths.bench.join("report.md");
    let markdown = report.to_markdown(&paths);
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("writing {}", md_path.display()))?;
    say!(
        "wrote {} and {}",
        paths.show(&json_path),
        paths.show(&md_path)
    );
    write!(std::io::stdout().lock(), "{markdown}")?;
    Ok(())
}

fn run_cases(
    opts: &Options,
    paths: &Paths,
    scratch: &scratch::Scratch,
    report: &mut report::Report,
    started_at: SystemTime,
) -> anyhow::Result<()> {
    let registry_only = opts.only.as_deref() == Some("registry");
    let docker_only = opts.only.as_deref() == Some("docker");
    if !opts.no_compare && (registry_only || docker_only) {
        let strata = build_strata(paths)?;
        report.machine.strata_version = tool_line(&strata, &["--version"]);
        let ctx = registry::RegistryContext {
            paths,
            strata: &strata,
            work: scratch.work(),
            runs: opts.runs(),
        };
        if docker_only {
            docker::run(&ctx, report)?;
        } else {
            registry::run(&ctx, report)?;
        }
    } else if !opts.no_compare {
        let fixture = fixture::ensure(paths)?;
        report.fixture = Some(fixture.info.clone());
        let strata = build_strata(paths)?;
        report.machine.strata_version = tool_line(&strata, &["--version"]);
        let ctx = cases::Context {
            paths,
            strata: &strata,
            fixture: &fixture,
            work: scratch.work(),
            runs: opts.runs(),
        };
        run_all(&ctx, report, opts.quick, opts.only.as_deref())?;
        if opts.only.is_none() {
            let ctx = registry::RegistryContext {
                paths,
                strata: &strata,
                work: scratch.work(),
                runs: opts.runs(),
            };
            registry::run(&ctx, report)?;
        }
    }
    if !opts.no_micro {
        report.micro = micro::run(paths, scratch.work(), opts.quick, started_at)?;
    }
    Ok(())
}

/// Runs every case, appending to `report`.
fn run_all(
    ctx: &cases::Context<'_>,
    report: &mut report::Report,
    quick: bool,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let wanted = |group: &str| only.is_none_or(|o| o == group);
    if wanted("layers") {
        let layer = cases::create(ctx, report)?;
        cases::extract(ctx, report, &layer)?;
        cases::size(ctx, report, &layer)?;
        cases::memory(
            ctx,
            report,
            ctx.fixture.root.as_path(),
            "fixture",
            ctx.fixture.info.counts.bytes,
        )?;
        // Free the scratch space (and inodes): the snapshot cases hold several copies of the
        // fixture at once, and the big layer needs ~2 GiB to extract into.
        for dir in ["create", "extract", "memory-fixture"] {
            runner::remove(&ctx.work.join(dir))?;
        }
    }
    if wanted("snapshots") {
        snapshots::run(ctx, report, quick)?;
    }
    if wanted("rootfs") {
        rootfs::run(ctx, report)?;
    }
    if wanted("builder") {
        build::run(ctx, report)?;
    }
    if !quick && wanted("layers") {
        let (big, counts) = fixture::ensure_big(ctx.paths)?;
        cases::memory(ctx, report, &big, "big tree", counts.bytes)?;
    }
    Ok(())
}

/// `cargo build --release -p strata-cli`; returns the `strata` binary.
fn build_strata(paths: &Paths) -> anyhow::Result<PathBuf> {
    say!("building the release strata binary (cargo build --release -p strata-cli)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "strata-cli"])
        .current_dir(&paths.root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("`cargo build --release -p strata-cli` failed ({status})");
    }
    let strata = paths.target.join("release").join("strata");
    if !strata.is_file() {
        bail!("{} is missing after the build", strata.display());
    }
    Ok(strata)
}
