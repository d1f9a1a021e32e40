//! The Docker driver cases (`--only docker`), against the local engine:
//!
//! - a no-op `(run (shell "true"))` step end to end with `--sandbox docker` (image cached;
//!   container create, attach, start, wait, changes, export, commit, record; the result is
//!   deleted with `strata delete` before every run, untimed) against a bare
//!   `docker run --rm` of the same image and argv. Target: at most 1.3× the bare run;
//! - a step adding 2,000 small files, with docker and with runc side by side;
//! - `strata healthcheck` on a 10-layer snapshot whose engine image is loaded first
//!   (every image of its chain removed before each run, untimed) and cached.
//!
//! Without an engine they are skipped with a note.

use anyhow::Context as _;

use super::cases::{s, time_case_at};
use super::registry::RegistryContext;
use super::report::{Report, Target};
use super::runner::{self, Contender};

/// Within 1.3× of the bare run: baseline / ours ≥ 1 / 1.3.
const NOOP_RATIO_TARGET: f64 = 0.77;

/// Runs without the fixture, like the registry group, so it shares its context.
pub(crate) fn run(ctx: &RegistryContext<'_>, report: &mut Report) -> anyhow::Result<()> {
    let engine = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        report
            .notes
            .push("docker cases skipped: they need a docker engine and its CLI".into());
        return Ok(());
    }
    let dir = ctx.work.join("docker");
    runner::remove(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let store = dir.join("store");
    let strata = |args: &[&str]| -> Vec<String> {
        let mut v = vec![s(ctx.strata), "--store".into(), s(&store)];
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    };
    let spec_dir = |name: &str, spec: String| -> anyhow::Result<String> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("build.spec"), spec)?;
        Ok(s(&d))
    };
    let noop = spec_dir(
        "noop",
        "((from busybox) (shell /bin/sh -c) (run (shell \"true\")))".into(),
    )?;
    let files = spec_dir(
        "files",
        "((from busybox) (shell /bin/sh -c) (run (shell \"mkdir /f && cd /f && i=0; \
         while [ $i -lt 2000 ]; do echo $i > f$i; i=$((i+1)); done\")))"
            .into(),
    )?;
    let layers = spec_dir(
        "layers",
        format!(
            "((from busybox) (shell /bin/sh -c)\n{})",
            (0..9)
                .map(|i| format!(" (run (shell \"echo {i} > /layer{i}\"))\n"))
                .collect::<String>()
        ),
    )?;
    // Untimed: the base, its image, and every step once, for the snapshot ids.
    let snapshot = |sandbox: &str, spec: &str| -> anyhow::Result<String> {
        let out = runner::timed(&strata(&["--json", "build", "--sandbox", sandbox, spec]))?.1;
        let result: serde_json::Value =
            serde_json::from_str(out.trim()).context("parsing build --json")?;
        Ok(result["snapshot"]
            .as_str()
            .context("no snapshot in build --json")?
            .to_owned())
    };
    let noop_step = snapshot("docker", &noop)?;
    let files_docker = snapshot("docker", &files)?;
    let files_runc = snapshot("runc", &files)?;
    let ten = snapshot("docker", &layers)?;
    let base = snapshot_chain(&strata, &ten)?;
    let base_image = format!("strata-snapshot:{}", base[0]);

    let delete = |id: String| {
        move || -> anyhow::Result<()> {
            let _ = runner::timed(&strata(&["delete", &id]));
            Ok(())
        }
    };
    let nothing = || Ok(());
    let delete_noop = delete(noop_step);
    let ours = Contender {
        label: "strata build --sandbox docker (no-op step)",
        argv: strata(&["build", "--sandbox", "docker", &noop]),
        prepare: &delete_noop,
    };
    let bare = Contender {
        label: "docker run --rm",
        argv: [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            &base_image,
            "/bin/sh",
            "-c",
            "true",
        ]
        .map(str::to_owned)
        .to_vec(),
        prepare: &nothing,
    };
    let name = "docker: no-op run step vs docker run --rm of the same image";
    let contenders = [ours, bare];
    let (samples, share) = runner::side_by_side(name, &contenders, ctx.runs)?;
    report.cases.push(time_case_at(
        ctx.paths,
        name,
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        Target::AtLeast(NOOP_RATIO_TARGET),
        share,
    ));

    let delete_docker = delete(files_docker);
    let delete_runc = delete(files_runc);
    let contenders = [
        Contender {
            label: "strata build --sandbox docker (2,000 files)",
            argv: strata(&["build", "--sandbox", "docker", &files]),
            prepare: &delete_docker,
        },
        Contender {
            label: "strata build --sandbox runc (2,000 files)",
            argv: strata(&["build", "--sandbox", "runc", &files]),
            prepare: &delete_runc,
        },
    ];
    let name = "docker: a step adding 2,000 small files, docker vs runc";
    let (samples, share) = runner::side_by_side(name, &contenders, ctx.runs)?;
    report.cases.push(time_case_at(
        ctx.paths,
        name,
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        Target::None,
        share,
    ));

    // The 10-layer snapshot's image: loaded (every image of the chain removed first) and
    // cached, each with one container run.
    let remove_images = || -> anyhow::Result<()> {
        for id in &base {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", &format!("strata-snapshot:{id}")])
                .output();
        }
        Ok(())
    };
    let contenders = [
        Contender {
            label: "healthcheck, 10-layer image loaded first",
            argv: strata(&["healthcheck", "--sandbox", "docker", "--base", &ten]),
            prepare: &remove_images,
        },
        Contender {
            label: "healthcheck, 10-layer image cached",
            argv: strata(&["healthcheck", "--sandbox", "docker", "--base", &ten]),
            prepare: &nothing,
        },
    ];
    let name = "docker: 10-layer snapshot to engine image, first time vs cached";
    let (samples, share) = runner::side_by_side(name, &contenders, ctx.runs)?;
    report.cases.push(time_case_at(
        ctx.paths,
        name,
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        Target::None,
        share,
    ));
    remove_images()?;
    runner::remove(&dir)?;
    Ok(())
}

/// The ids of the chain of snapshot `id`, its base first (`strata --json snapshot ls`).
fn snapshot_chain(
    strata: &dyn Fn(&[&str]) -> Vec<String>,
    id: &str,
) -> anyhow::Result<Vec<String>> {
    let out = runner::timed(&strata(&["--json", "snapshot", "ls"]))?.1;
    let list: serde_json::Value =
        serde_json::from_str(out.trim()).context("parsing snapshot ls")?;
    let rows = list
        .as_array()
        .or_else(|| list["snapshots"].as_array())
        .context("snapshot ls lists no snapshots")?;
    let parent_of = |id: &str| {
        rows.iter()
            .find(|r| r["id"].as_str() == Some(id))
            .and_then(|r| r["parent"].as_str().map(str::to_owned))
    };
    let mut chain = vec![id.to_owned()];
    while let Some(p) = parent_of(chain.last().unwrap()) {
        chain.push(p);
    }
    chain.reverse();
    Ok(chain)
}
