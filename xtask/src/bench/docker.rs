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

use super::cases::{pair_case, s};
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
    // The 2,000-file step has a store of its own: its result differs on every run (file
    // times), so the run before is found and deleted by listing the base's children.
    let store = dir.join("store");
    let files_store = dir.join("store-files");
    let strata_at = |store: &std::path::Path, args: &[&str]| -> Vec<String> {
        let mut v = vec![s(ctx.strata), "--store".into(), s(store)];
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    };
    let strata = |args: &[&str]| strata_at(&store, args);
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
    let snapshot_at = |store: &std::path::Path, sandbox: &str, spec: &str| {
        let out = runner::timed(&strata_at(
            store,
            &["--json", "build", "--sandbox", sandbox, spec],
        ))?
        .1;
        let result: serde_json::Value =
            serde_json::from_str(out.trim()).context("parsing build --json")?;
        anyhow::Ok(
            result["snapshot"]
                .as_str()
                .context("no snapshot in build --json")?
                .to_owned(),
        )
    };
    let noop_step = snapshot_at(&store, "docker", &noop)?;
    let files_step = snapshot_at(&files_store, "docker", &files)?;
    let files_base =
        snapshot_chain(&|a: &[&str]| strata_at(&files_store, a), &files_step)?[0].clone();
    let ten = snapshot_at(&store, "docker", &layers)?;
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
    pair_case(
        ctx.paths,
        report,
        name,
        &[ours, bare],
        ctx.runs,
        Target::AtLeast(NOOP_RATIO_TARGET),
    )?;

    let delete_files_step = || -> anyhow::Result<()> {
        for child in children(&|a: &[&str]| strata_at(&files_store, a), &files_base)? {
            runner::timed(&strata_at(&files_store, &["delete", &child]))?;
        }
        Ok(())
    };
    let name = "docker: a step adding 2,000 small files, docker vs runc";
    pair_case(
        ctx.paths,
        report,
        name,
        &[
            Contender {
                label: "strata build --sandbox docker (2,000 files)",
                argv: strata_at(&files_store, &["build", "--sandbox", "docker", &files]),
                prepare: &delete_files_step,
            },
            Contender {
                label: "strata build --sandbox runc (2,000 files)",
                argv: strata_at(&files_store, &["build", "--sandbox", "runc", &files]),
                prepare: &delete_files_step,
            },
        ],
        ctx.runs,
        Target::None,
    )?;

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
    let name = "docker: 10-layer snapshot to engine image, first time vs cached";
    pair_case(
        ctx.paths,
        report,
        name,
        &[
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
        ],
        ctx.runs,
        Target::None,
    )?;
    remove_images()?;
    runner::remove(&dir)?;
    Ok(())
}

/// Every snapshot of the store, as `strata --json snapshot ls` lists them.
fn snapshots(strata: &dyn Fn(&[&str]) -> Vec<String>) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = runner::timed(&strata(&["--json", "snapshot", "ls"]))?.1;
    let list: serde_json::Value =
        serde_json::from_str(out.trim()).context("parsing snapshot ls")?;
    list.as_array()
        .cloned()
        .context("snapshot ls lists no snapshots")
}

/// The ids of the snapshots made on `parent`.
fn children(strata: &dyn Fn(&[&str]) -> Vec<String>, parent: &str) -> anyhow::Result<Vec<String>> {
    Ok(snapshots(strata)?
        .iter()
        .filter(|r| r["parent"].as_str() == Some(parent))
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect())
}

/// The ids of the chain of snapshot `id`, its base first.
fn snapshot_chain(
    strata: &dyn Fn(&[&str]) -> Vec<String>,
    id: &str,
) -> anyhow::Result<Vec<String>> {
    let rows = snapshots(strata)?;
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
