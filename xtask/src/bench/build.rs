//! The builder cases: what a cached step costs, and what running a no-op step through runc
//! costs next to a plain `runc run` of the same root filesystem.
//!
//! - a 1-step and a 20-step spec whose steps are all cache hits (`strata --json build`, its
//!   in-process `seconds` against issue 4's < 2 ms per hit and < 50 ms for 20 hits);
//! - a no-op `(run (shell "true"))` step run end to end (checkout, runc, commit, record;
//!   the result is deleted with `strata delete` before every run, untimed) against
//!   `runc run` of a bundle holding the busybox rootfs and the same argv, side by side.
//!   The baseline is what `docker run` would do: the bundle carries the same seccomp filter
//!   as our step (Docker's default profile, which runc compiles on every start); target: at
//!   most 1.5× that. The same bundle without a filter is reported too.
//!
//! They need root, runc and busybox-static; without them they are skipped with a note.

use std::path::Path;

use anyhow::Context as _;
use strata_isolate::{DriverOptions, Job, NetworkMode, User};

use super::cases::{Context, s, time_case};
use super::report::{Report, Target};
use super::runner::{self, Contender};
use super::snapshots::latency_case;

const HIT_TARGET: f64 = 0.002;
const TWENTY_HITS_TARGET: f64 = 0.050;
/// Within 1.5× of the bare run: baseline / ours ≥ 1 / 1.5, rounded up to what the report shows.
const NOOP_RATIO_TARGET: f64 = 0.67;

pub(crate) fn run(ctx: &Context<'_>, report: &mut Report) -> anyhow::Result<()> {
    let runc_ok = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runc_ok || !rustix_is_root() || !Path::new("/bin/busybox").exists() {
        report
            .notes
            .push("builder cases skipped: they need root, runc and busybox-static".into());
        return Ok(());
    }
    let dir = ctx.dir("build")?;
    let store = dir.join("store");
    let strata = |args: &[&str]| -> Vec<String> {
        let mut v = ctx.strata(&["--store", &s(&store)]);
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    };
    let spec_dir = |name: &str, spec: String| -> anyhow::Result<String> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("build.spec"), spec)?;
        Ok(s(&d))
    };
    let one = spec_dir(
        "one",
        "((from busybox) (shell /bin/sh -c) (run (shell \"echo one > /one\")))".into(),
    )?;
    let twenty = spec_dir(
        "twenty",
        format!(
            "((from busybox) (shell /bin/sh -c)\n{})",
            (0..20)
                .map(|i| format!(" (run (shell \"echo {i} >> /steps\"))\n"))
                .collect::<String>()
        ),
    )?;
    let noop = spec_dir(
        "noop",
        "((from busybox) (shell /bin/sh -c) (run (shell \"true\")))".into(),
    )?;
    // Untimed: the base and every step, so the hit cases only hit.
    for spec in [&one, &twenty, &noop] {
        runner::timed(&strata(&["build", spec]))?;
    }

    for (name, spec, target) in [
        ("build: 1 cached step (hit)", &one, HIT_TARGET),
        (
            "build: 20 cached steps (all hits)",
            &twenty,
            TWENTY_HITS_TARGET,
        ),
    ] {
        let argv = strata(&["--json", "build", spec]);
        let nothing = || Ok(());
        let contender = Contender {
            label: "strata",
            argv: argv.clone(),
            prepare: &nothing,
        };
        let (samples, share) =
            runner::side_by_side(name, std::slice::from_ref(&contender), ctx.runs)?;
        report.cases.push(latency_case(
            ctx,
            name,
            &argv,
            &samples[0],
            Target::UnderSeconds(target),
            Some("in-process: store open, spec, every key and lookup, log replay".into()),
            share,
        )?);
    }

    // The no-op step: our whole process against a bare runc run.
    let out = runner::timed(&strata(&["--json", "build", &noop]))?.1;
    let result: serde_json::Value =
        serde_json::from_str(out.trim()).context("parsing build --json")?;
    let step = result["snapshot"]
        .as_str()
        .context("no snapshot in build --json")?
        .to_owned();
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let rootfs = bundle.join("rootfs");
    runner::timed(&strata(&["checkout", "--copy", "busybox", &s(&rootfs)]))?;
    write_bare_config(&bundle, &rootfs, None)?;
    let filtered = dir.join("bundle-seccomp");
    std::fs::create_dir_all(&filtered)?;
    write_bare_config(&filtered, &rootfs, Some(step_seccomp(&dir, &rootfs)?))?;
    let runc_root = dir.join("runc-state");
    let delete_step = || -> anyhow::Result<()> {
        // Deleting the step's snapshot makes the next build run it again.
        let _ = runner::timed(&strata(&["delete", &step]));
        Ok(())
    };
    let nothing = || Ok(());
    let ours = Contender {
        label: "strata build (no-op step)",
        argv: strata(&["build", &noop]),
        prepare: &delete_step,
    };
    let docker_like = Contender {
        label: "runc run (seccomp)",
        argv: bare_argv(&filtered, &runc_root, "strata-bench-seccomp"),
        prepare: &nothing,
    };
    let bare = Contender {
        label: "runc run",
        argv: bare_argv(&bundle, &runc_root, "strata-bench-bare"),
        prepare: &nothing,
    };
    let name = "build: no-op run step (runc) vs runc run with Docker's seccomp profile";
    let contenders = [ours, docker_like, bare];
    let (samples, share) = runner::side_by_side(name, &contenders, ctx.runs)?;
    report.cases.push(time_case(
        ctx,
        name,
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        Target::AtLeast(NOOP_RATIO_TARGET),
        share,
    ));
    report.cases.push(time_case(
        ctx,
        "build: no-op run step (runc) vs bare runc run without seccomp",
        (&contenders[0], &samples[0]),
        (&contenders[2], &samples[2]),
        Target::None,
        share,
    ));
    runner::remove(&dir)?;
    Ok(())
}

/// `runc run` of a bare bundle as container `name`, under its own state root.
fn bare_argv(bundle: &Path, runc_root: &Path, name: &str) -> Vec<String> {
    [
        "runc",
        "--root",
        &s(runc_root),
        "run",
        "--bundle",
        &s(bundle),
        name,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The seccomp filter the runc driver gives a step, read from the plan of a job.
fn step_seccomp(dir: &Path, rootfs: &Path) -> anyhow::Result<serde_json::Value> {
    let driver = strata_isolate::driver("runc", &DriverOptions::new(dir.join("probe")))?;
    let plan = driver.plan(&Job {
        name: "strata-bench-probe".to_owned(),
        root: rootfs.to_owned(),
        argv: vec!["/bin/true".to_owned()],
        cwd: "/".to_owned(),
        env: Vec::new(),
        user: User::Unix { uid: 0, gid: 0 },
        network: NetworkMode::None,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "bench".to_owned(),
    })?;
    let seccomp = plan.detail["linux"]["seccomp"].clone();
    anyhow::ensure!(seccomp.is_object(), "the runc plan has no seccomp filter");
    Ok(seccomp)
}

/// `runc spec`'s default config, running `/bin/sh -c true` without a terminal in `rootfs`,
/// with `seccomp` as its filter if given.
fn write_bare_config(
    bundle: &Path,
    rootfs: &Path,
    seccomp: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let status = std::process::Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(bundle)
        .status()?;
    anyhow::ensure!(status.success(), "runc spec failed");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "true"]);
    config["root"]["readonly"] = false.into();
    config["root"]["path"] = s(rootfs).into();
    if let Some(seccomp) = seccomp {
        config["linux"]["seccomp"] = seccomp;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

fn rustix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
