//! The snapshot cases: checkouts, commits and prune, on a 10-layer snapshot of the fixture.
//!
//! Setup (untimed, once per run): the fixture's leaves (files, symlinks, empty directories),
//! in depth-first byte order, are cut into [`LAYERS`] contiguous groups, each hard-linked
//! into its own tree under `target/bench/snapshot-groups/` (cached). Group 1 becomes a base
//! snapshot (`strata layer create` + `strata import`); each following group is copied into a
//! checkout of the previous snapshot (`cp -a`) and committed. The merged tree, made once with
//! `strata checkout --copy`, is what the `cp` and `rsync` baselines copy.
//!
//! Cases, in order:
//! - warm checkout (overlay, every layer already unpacked) against `cp -a`, `cp -al` and
//!   `rsync -aH` of the merged tree; the in-process time has issue 3's < 10 ms target;
//! - commit after changing one file (overlay < 10 ms, portable < 100 ms) and after adding
//!   2,000 small files in a new directory (an `apt-get install`-sized step), both paths;
//! - cold checkout (portable, unpacked-layer cache emptied before each run) against
//!   `zstd -dc | tar -x` of the ten layer blobs in order into one directory;
//! - prune of 10,000 fabricated snapshots (1,000 chains of 10, index rows only) with
//!   `strata prune --all`.
//!
//! Overlay cases need root and overlayfs; without them they are skipped with a note. Every
//! input of these cases was just written, so in quick mode they skip the runner's warm-up
//! round.

use std::cell::Cell;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::cases::{Context, s, sh, time_case};
use super::fixture::{self, Fixture, TreeCounts};
use super::report::{Case, Check, LatencyCase, Report, Target};
use super::runner::{self, Contender, Samples};
use super::util::{Paths, sh_path};

/// Layers in the benchmark snapshot.
const LAYERS: usize = 10;
/// Files added by the "apt-get install"-sized step.
const ADDED_FILES: usize = 2000;
/// Snapshots fabricated for the prune case, as chains of [`PRUNE_CHAIN`].
const PRUNE_SNAPSHOTS: usize = 10_000;
const PRUNE_CHAIN: usize = 10;

/// Issue 3's targets, in seconds of in-process time.
const WARM_CHECKOUT_TARGET: f64 = 0.010;
const COMMIT_OVERLAY_TARGET: f64 = 0.010;
const COMMIT_PORTABLE_TARGET: f64 = 0.100;
/// Issue 11's target for the whole `strata commit` process of one changed file (portable):
/// the released tree's deletion must not be on the user's path.
const COMMIT_PORTABLE_PROCESS_TARGET: f64 = 0.060;
/// Issue 11's target for the cold portable checkout: at least as fast as `zstd | tar` of
/// the same layers.
const COLD_CHECKOUT_RATIO: f64 = 1.0;

/// The tag of layer `k` (1-based) of the benchmark snapshot.
fn tag(k: usize) -> String {
    format!("bench-l{k}")
}

/// The 10-layer snapshot and what the cases need to know about it.
struct Stack {
    store: PathBuf,
    /// The tag of the top snapshot.
    top: String,
    /// The layers' blobs, base first.
    blobs: Vec<PathBuf>,
    /// The merged tree (`strata checkout --copy`), for the baselines.
    merged: PathBuf,
    /// A regular file of the snapshot (relative), the one the one-file commit changes.
    sample_file: PathBuf,
}

/// Runs every snapshot case, appending to `report`; leaves no checkout or tree behind.
pub(crate) fn run(ctx: &Context<'_>, report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = ctx.dir("snapshots")?;
    let mut guard = Releaser {
        strata: ctx.strata.to_path_buf(),
        checkouts: Vec::new(),
    };
    let sc = SnapContext {
        ctx,
        dir: &dir,
        warm_up: !quick,
    };
    let outcome = run_cases(&sc, report, &mut guard);
    guard.release_all();
    outcome?;
    runner::remove(&dir)?;
    say!(
        "snapshot cases took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What every snapshot case needs.
struct SnapContext<'a> {
    ctx: &'a Context<'a>,
    /// The scratch directory of the snapshot cases.
    dir: &'a Path,
    /// Whether to run the runner's untimed warm-up round.
    warm_up: bool,
}

impl SnapContext<'_> {
    fn side_by_side(
        &self,
        case: &str,
        contenders: &[Contender<'_>],
    ) -> anyhow::Result<(Vec<Samples>, Option<f64>)> {
        runner::side_by_side_with(case, contenders, self.ctx.runs, self.warm_up)
    }
}

fn run_cases(
    sc: &SnapContext<'_>,
    report: &mut Report,
    guard: &mut Releaser,
) -> anyhow::Result<()> {
    let (ctx, dir) = (sc.ctx, sc.dir);
    let groups = ensure_groups(ctx.paths, ctx.fixture)?;
    let overlay = super::machine::is_root() && strata_snapshot::overlay_available();
    let stack = build_stack(ctx, report, dir, &groups, overlay, guard)?;

    if overlay {
        warm_checkout(sc, report, &stack, guard)?;
    } else {
        report.notes.push(
            "warm checkout (overlay) and commit (overlay) skipped: overlay checkouts need root \
             and overlayfs"
                .to_owned(),
        );
    }
    let modes: &[bool] = if overlay { &[true, false] } else { &[false] };
    for change in [Change::OneFile, Change::AddFiles] {
        for &overlay_mode in modes {
            commit(sc, report, &stack, overlay_mode, change, guard)?;
        }
    }
    cold_checkout(sc, report, &stack, guard)?;
    prune(sc, report)?;
    Ok(())
}

// ---- setup ----

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct GroupStamp {
    layers: usize,
    fixture_entries: u64,
    fixture_bytes: u64,
    /// Files, symlinks and empty directories of the fixture, shared out among the groups.
    leaves: usize,
}

/// The fixture cut into [`LAYERS`] trees.
struct Groups {
    roots: Vec<PathBuf>,
    /// How many leaves they share.
    leaves: usize,
}

/// The [`LAYERS`] group trees (cached under `target/bench/snapshot-groups`, on the fixture's
/// filesystem so that they are hard links, not copies).
fn ensure_groups(paths: &Paths, fixture: &Fixture) -> anyhow::Result<Groups> {
    let fixture_root = fixture.root.as_path();
    let dir = paths.bench.join("snapshot-groups");
    let stamp_path = dir.join("stamp.json");
    let counts = &fixture.info.counts;
    let roots: Vec<PathBuf> = (1..=LAYERS).map(|k| dir.join(format!("g{k:02}"))).collect();
    let cached = std::fs::read_to_string(&stamp_path)
        .ok()
        .and_then(|text| serde_json::from_str::<GroupStamp>(&text).ok());
    if let Some(stamp) = cached
        && stamp.layers == LAYERS
        && stamp.fixture_entries == counts.entries
        && stamp.fixture_bytes == counts.bytes
        && roots.iter().all(|r| r.is_dir())
    {
        return Ok(Groups {
            roots,
            leaves: stamp.leaves,
        });
    }
    say!("snapshots: splitting the fixture into {LAYERS} groups (hard links)");
    runner::remove(&dir)?;
    let mut leaves = Vec::new();
    collect_leaves(fixture_root, Path::new(""), &mut leaves)?;
    let stamp = GroupStamp {
        layers: LAYERS,
        fixture_entries: counts.entries,
        fixture_bytes: counts.bytes,
        leaves: leaves.len(),
    };
    let per_group = leaves.len().div_ceil(LAYERS);
    for (group, root) in leaves.chunks(per_group).zip(&roots) {
        copy_dir_meta(fixture_root, root)?;
        for rel in group {
            let (from, to) = (fixture_root.join(rel), root.join(rel));
            let mut ancestors: Vec<&Path> = rel.ancestors().skip(1).collect();
            ancestors.reverse();
            for parent in ancestors.iter().filter(|p| !p.as_os_str().is_empty()) {
                let target = root.join(parent);
                if !target.exists() {
                    copy_dir_meta(&fixture_root.join(parent), &target)?;
                }
            }
            if std::fs::symlink_metadata(&from)?.is_dir() {
                copy_dir_meta(&from, &to)?;
            } else {
                std::fs::hard_link(&from, &to)
                    .with_context(|| format!("linking {} to {}", from.display(), to.display()))?;
            }
        }
    }
    std::fs::write(&stamp_path, serde_json::to_string_pretty(&stamp)? + "\n")?;
    Ok(Groups {
        roots,
        leaves: stamp.leaves,
    })
}

/// Files, symlinks and empty directories under `root/rel`, depth-first in byte order.
fn collect_leaves(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    if names.is_empty() && !rel.as_os_str().is_empty() {
        out.push(rel.to_path_buf());
    }
    for name in names {
        let child = rel.join(&name);
        if std::fs::symlink_metadata(root.join(&child))?.is_dir() {
            collect_leaves(root, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// Creates directory `to` with the permissions of directory `from`.
fn copy_dir_meta(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mode = std::fs::metadata(from)?.permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Runs `strata ARGS` (which must include `--json`) and parses its output.
fn strata_json(ctx: &Context<'_>, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let argv = ctx.strata(args);
    let (_, out) = runner::timed(&argv)?;
    serde_json::from_str(out.trim()).with_context(|| {
        format!(
            "parsing the output of `{}`: {out:?}",
            runner::command_line(&argv)
        )
    })
}

fn build_stack(
    ctx: &Context<'_>,
    report: &mut Report,
    dir: &Path,
    groups: &Groups,
    overlay: bool,
    guard: &mut Releaser,
) -> anyhow::Result<Stack> {
    let started = Instant::now();
    let store = dir.join("store");
    let st = s(&store);
    say!(
        "snapshots: building the {LAYERS}-layer snapshot ({} checkouts)",
        if overlay { "overlay" } else { "portable" }
    );
    let base = dir.join("base.tar.zst");
    runner::timed(&ctx.strata(&["layer", "create", &s(&groups.roots[0]), "-o", &s(&base)]))?;
    strata_json(
        ctx,
        &[
            "--store",
            &st,
            "import",
            &s(&base),
            "--tag",
            &tag(1),
            "--json",
        ],
    )?;
    runner::remove(&base)?;
    let work = dir.join("build");
    for (k, group) in groups.roots.iter().enumerate().skip(1) {
        let mut args = vec!["--store", &st, "checkout", "--json"];
        if !overlay {
            args.push("--portable");
        }
        let parent = tag(k);
        let ws = s(&work);
        args.extend([parent.as_str(), ws.as_str()]);
        guard.track(&store, &work);
        strata_json(ctx, &args)?;
        runner::timed(&sh(format!(
            "cp -a {}/. {}/",
            sh_path(group),
            sh_path(&work)
        )))?;
        strata_json(
            ctx,
            &[
                "--store",
                &st,
                "commit",
                &ws,
                "--tag",
                &tag(k + 1),
                "--json",
            ],
        )?;
    }
    let top = tag(LAYERS);

    // The blobs in chain order (base first), from the index.
    let blobs = {
        let engine = strata_snapshot::Engine::open(&store)?;
        let id = engine.resolve(&top)?;
        let chain = engine.chain(&id)?;
        chain
            .iter()
            .map(|row| engine.cas().blob_path(&row.layer))
            .collect::<Vec<_>>()
    };
    if blobs.len() != LAYERS {
        bail!(
            "the benchmark snapshot has {} layers, not {LAYERS}",
            blobs.len()
        );
    }

    let merged = dir.join("merged");
    strata_json(
        ctx,
        &[
            "--store",
            &st,
            "checkout",
            "--copy",
            "--json",
            &top,
            &s(&merged),
        ],
    )?;
    let want = &ctx.fixture.info.counts;
    let got = fixture::count_tree(&merged)?;
    report.checks.push(same_tree_check(
        &format!("{LAYERS}-layer snapshot, checked out with --copy"),
        want,
        &got,
    ));
    let sample_file = pick_sample_file(&groups.roots[LAYERS / 2], &merged)?;
    let compressed: u64 = blobs
        .iter()
        .map(|b| std::fs::metadata(b).map_or(0, |m| m.len()))
        .sum();
    report.notes.push(format!(
        "snapshot cases: the fixture's {} leaves (files, symlinks, empty dirs) in depth-first \
         order cut into {LAYERS} groups of equal count; group 1 imported as the base, groups \
         2–{LAYERS} each copied into {} checkout of the previous snapshot and committed \
         ({LAYERS} layers, {:.1} MB of blobs; setup took {:.1} s)",
        groups.leaves,
        if overlay { "an overlay" } else { "a portable" },
        fixture::mb(compressed),
        started.elapsed().as_secs_f64()
    ));
    Ok(Stack {
        store,
        top,
        blobs,
        merged,
        sample_file,
    })
}

/// The largest regular file under 64 KiB of `group`, as a path relative to the tree (a
/// source file a build step might patch).
fn pick_sample_file(group: &Path, merged: &Path) -> anyhow::Result<PathBuf> {
    let mut leaves = Vec::new();
    collect_leaves(group, Path::new(""), &mut leaves)?;
    let mut best: Option<(u64, PathBuf)> = None;
    for rel in leaves {
        let meta = std::fs::symlink_metadata(merged.join(&rel))?;
        if meta.is_file()
            && meta.len() < 64 << 10
            && best.as_ref().is_none_or(|(len, _)| meta.len() > *len)
        {
            best = Some((meta.len(), rel));
        }
    }
    best.map(|(_, rel)| rel)
        .context("the middle group has no regular file under 64 KiB")
}

fn same_tree_check(what: &str, want: &TreeCounts, got: &TreeCounts) -> Check {
    Check {
        name: format!("{what}: same entries and file bytes as the fixture"),
        ok: want.entries == got.entries && want.bytes == got.bytes,
        detail: format!(
            "fixture {} entries / {} B, checkout {} / {} B",
            want.entries, want.bytes, got.entries, got.bytes
        ),
    }
}

/// Releases tracked checkouts left behind by a failed case (best effort), so that no
/// overlay mount keeps the scratch filesystem busy.
struct Releaser {
    strata: PathBuf,
    checkouts: Vec<(PathBuf, PathBuf)>,
}

impl Releaser {
    fn track(&mut self, store: &Path, dir: &Path) {
        let entry = (store.to_path_buf(), dir.to_path_buf());
        if !self.checkouts.contains(&entry) {
            self.checkouts.push(entry);
        }
    }

    fn release_all(&mut self) {
        for (store, dir) in std::mem::take(&mut self.checkouts) {
            release(&self.strata, &store, &dir);
        }
    }
}

/// `strata release DIR` if DIR exists (errors ignored: it may not be tracked), then removes
/// whatever is left of it. Returns how long `strata release` took, if it ran.
fn release(strata: &Path, store: &Path, dir: &Path) -> Option<f64> {
    if std::fs::symlink_metadata(dir).is_err() {
        return None;
    }
    let started = Instant::now();
    let ok = std::process::Command::new(strata)
        .arg("--store")
        .arg(store)
        .arg("release")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let seconds = started.elapsed().as_secs_f64();
    let _ = runner::remove(dir);
    ok.then_some(seconds)
}

/// Waits (untimed, at most 60 s) until the detached `strata empty-trash` a command left
/// has emptied the store's trash, so that one run's background deletion does not run into
/// the next timed run.
pub(super) fn wait_for_trash(store: &Path) -> anyhow::Result<()> {
    let trash = store.join("trash-v1");
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&trash).is_ok_and(|mut entries| entries.next().is_some()) {
        if Instant::now() > deadline {
            bail!("{} was not emptied within 60 s", trash.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// The `seconds` field of each JSON output.
fn reported_seconds(samples: &Samples) -> anyhow::Result<Vec<f64>> {
    samples
        .outputs
        .iter()
        .map(|out| {
            serde_json::from_str::<serde_json::Value>(out.trim())
                .ok()
                .and_then(|v| v["seconds"].as_f64())
                .with_context(|| format!("no `seconds` in {out:?}"))
        })
        .collect()
}

pub(super) fn latency_case(
    ctx: &Context<'_>,
    name: &str,
    argv: &[String],
    samples: &Samples,
    target: Target,
    note: Option<String>,
    other_cpu_share: Option<f64>,
) -> anyhow::Result<Case> {
    let in_process = reported_seconds(samples)?;
    let median = runner::median(&in_process);
    Ok(Case::Latency(LatencyCase {
        name: name.to_owned(),
        command: ctx.show(&runner::command_line(argv)),
        in_process_seconds: median,
        in_process_samples: in_process,
        process_seconds: samples.median(),
        process_samples: samples.seconds.clone(),
        target: target.to_string(),
        pass: target.pass(median),
        note,
        other_cpu_share,
    }))
}

// ---- cases ----

/// Warm overlay checkout of the top snapshot against copying the merged tree.
fn warm_checkout(
    sc: &SnapContext<'_>,
    report: &mut Report,
    stack: &Stack,
    guard: &mut Releaser,
) -> anyhow::Result<()> {
    let (ctx, dir) = (sc.ctx, sc.dir);
    let st = s(&stack.store);
    let ours_dst = dir.join("warm-strata");
    let (cp_dst, cpl_dst, rsync_dst) = (
        dir.join("warm-cp"),
        dir.join("warm-cp-al"),
        dir.join("warm-rsync"),
    );
    guard.track(&stack.store, &ours_dst);
    let ours = ctx.strata(&[
        "--store",
        &st,
        "checkout",
        "--json",
        &stack.top,
        &s(&ours_dst),
    ]);
    let merged = sh_path(&stack.merged);
    let cp = sh(format!("cp -a {merged} {}", sh_path(&cp_dst)));
    let cpl = sh(format!("cp -al {merged} {}", sh_path(&cpl_dst)));
    let rsync = sh(format!("rsync -aH {merged}/ {}/", sh_path(&rsync_dst)));
    let strata = ctx.strata.to_path_buf();
    let store = stack.store.clone();
    let releases = std::cell::RefCell::new(Vec::new());
    let p_ours = || {
        // Flush the baselines' writes first, so that neither the release nor the next
        // checkout is charged for them.
        runner::sync()?;
        releases
            .borrow_mut()
            .extend(release(&strata, &store, &ours_dst));
        runner::sync()
    };
    let prep = runner::clear_before;
    let (p_cp, p_cpl, p_rsync) = (prep(&cp_dst), prep(&cpl_dst), prep(&rsync_dst));
    let contenders = [
        Contender {
            label: "strata",
            argv: ours.clone(),
            prepare: &p_ours,
        },
        Contender {
            label: "cp -a",
            argv: cp,
            prepare: &p_cp,
        },
        Contender {
            label: "cp -al",
            argv: cpl,
            prepare: &p_cpl,
        },
        Contender {
            label: "rsync -aH",
            argv: rsync,
            prepare: &p_rsync,
        },
    ];
    let (samples, other_cpu) = sc.side_by_side("warm checkout", &contenders)?;
    check_mode(&samples[0], "overlay")?;
    for (i, baseline) in ["cp -a", "cp -al", "rsync -aH"].iter().enumerate() {
        report.cases.push(time_case(
            ctx,
            &format!("warm checkout (overlay) vs {baseline}"),
            (&contenders[0], &samples[0]),
            (&contenders[i + 1], &samples[i + 1]),
            Target::None,
            other_cpu,
        ));
    }
    report.cases.push(latency_case(
        ctx,
        &format!("warm checkout (overlay, {LAYERS} layers)"),
        &ours,
        &samples[0],
        Target::UnderSeconds(WARM_CHECKOUT_TARGET),
        Some(format!(
            "every layer already unpacked; `strata release` of the checkout took {:.1} ms \
             (whole process, untimed prepare step); `cp -a` of the merged tree took {:.3} s, \
             `cp -al` {:.3} s, `rsync -aH` {:.3} s",
            runner::median(&releases.borrow()) * 1e3,
            samples[1].median(),
            samples[2].median(),
            samples[3].median()
        )),
        other_cpu,
    )?);
    let got = fixture::count_tree(&ours_dst)?;
    report.checks.push(same_tree_check(
        "warm overlay checkout",
        &ctx.fixture.info.counts,
        &got,
    ));
    release(ctx.strata, &stack.store, &ours_dst);
    for dst in [&cp_dst, &cpl_dst, &rsync_dst] {
        runner::remove(dst)?;
    }
    Ok(())
}

/// Fails unless the last run's JSON says the checkout was made in `mode`.
fn check_mode(samples: &Samples, mode: &str) -> anyhow::Result<()> {
    let out: serde_json::Value = serde_json::from_str(samples.stdout.trim())
        .with_context(|| format!("parsing {:?}", samples.stdout))?;
    if out["mode"] != mode {
        bail!("expected a {mode} checkout, got {out}");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Change {
    /// Append a line to one existing file.
    OneFile,
    /// Add [`ADDED_FILES`] small files in a new directory.
    AddFiles,
}

/// Commit of a checkout of the top snapshot after `change`, timed alone.
fn commit(
    sc: &SnapContext<'_>,
    report: &mut Report,
    stack: &Stack,
    overlay: bool,
    change: Change,
    guard: &mut Releaser,
) -> anyhow::Result<()> {
    let (ctx, dir) = (sc.ctx, sc.dir);
    let st = s(&stack.store);
    let mode = if overlay { "overlay" } else { "portable" };
    let work = dir.join("commit");
    guard.track(&stack.store, &work);
    let mut checkout = vec!["--store", st.as_str(), "checkout", "--json"];
    if !overlay {
        checkout.push("--portable");
    }
    let ws = s(&work);
    checkout.extend([stack.top.as_str(), ws.as_str()]);
    let checkout = ctx.strata(&checkout);
    let run = Cell::new(0usize);
    let prepare = || {
        release(ctx.strata, &stack.store, &work);
        wait_for_trash(&stack.store)?;
        runner::timed(&checkout)?;
        let n = run.get();
        run.set(n + 1);
        match change {
            Change::OneFile => {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(work.join(&stack.sample_file))?;
                writeln!(file, "// strata benchmark change {n}")?;
            }
            Change::AddFiles => add_files(&work.join(format!("usr/share/bench-pkg-{n}")), n)?,
        }
        runner::sync()
    };
    let argv = ctx.strata(&["--store", &st, "commit", "--json", &ws]);
    let contenders = [Contender {
        label: "strata",
        argv: argv.clone(),
        prepare: &prepare,
    }];
    let (name, target) = match change {
        Change::OneFile => (
            format!("commit 1 changed file ({mode})"),
            Target::UnderSeconds(if overlay {
                COMMIT_OVERLAY_TARGET
            } else {
                COMMIT_PORTABLE_TARGET
            }),
        ),
        Change::AddFiles => (
            format!("commit {ADDED_FILES} added files ({mode})"),
            Target::None,
        ),
    };
    let (samples, other_cpu) = sc.side_by_side(&name, &contenders)?;
    let note = match change {
        Change::OneFile => format!(
            "checkout of the {}-entry, {LAYERS}-layer snapshot; one line appended to `{}`",
            ctx.fixture.info.counts.entries,
            stack.sample_file.display()
        ),
        Change::AddFiles => format!(
            "checkout of the {LAYERS}-layer snapshot; {ADDED_FILES} files of 100 B–6 KiB in 20 \
             directories under a new `usr/share/bench-pkg-N`"
        ),
    };
    report.cases.push(latency_case(
        ctx,
        &name,
        &argv,
        &samples[0],
        target,
        Some(note),
        other_cpu,
    )?);
    if !overlay && matches!(change, Change::OneFile) {
        let process = samples[0].median();
        report.checks.push(Check {
            name: format!(
                "{name}: whole process < {} ms (the released tree is deleted after exit)",
                COMMIT_PORTABLE_PROCESS_TARGET * 1e3
            ),
            ok: process < COMMIT_PORTABLE_PROCESS_TARGET,
            detail: format!("median {:.1} ms", process * 1e3),
        });
    }
    release(ctx.strata, &stack.store, &work);
    wait_for_trash(&stack.store)
}

/// Writes [`ADDED_FILES`] small text files under `root` (which must not exist).
fn add_files(root: &Path, seed: usize) -> anyhow::Result<()> {
    for i in 0..ADDED_FILES {
        let sub = root.join(format!("mod{:02}", i % 20));
        if i < 20 {
            std::fs::create_dir_all(&sub)?;
        }
        let len = 100 + (i * 7919 + seed * 104_729) % 6000;
        let line = format!("line {i} of file {i} in step {seed}: some generated content\n");
        let text: String = line.chars().cycle().take(len).collect();
        std::fs::write(sub.join(format!("file{i:04}.txt")), text)?;
    }
    Ok(())
}

/// Portable checkout with an empty unpacked-layer cache against `zstd -dc | tar -x` of every
/// layer blob, in order, into one directory.
fn cold_checkout(
    sc: &SnapContext<'_>,
    report: &mut Report,
    stack: &Stack,
    guard: &mut Releaser,
) -> anyhow::Result<()> {
    let (ctx, dir) = (sc.ctx, sc.dir);
    let st = s(&stack.store);
    let ours_dst = dir.join("cold-strata");
    let tar_dst = dir.join("cold-tar");
    guard.track(&stack.store, &ours_dst);
    let ours = ctx.strata(&[
        "--store",
        &st,
        "checkout",
        "--portable",
        "--json",
        &stack.top,
        &s(&ours_dst),
    ]);
    let script: Vec<String> = stack
        .blobs
        .iter()
        .map(|blob| {
            format!(
                "zstd -dc {} | tar -xf - -C {}",
                sh_path(blob),
                sh_path(&tar_dst)
            )
        })
        .collect();
    let tar = sh(script.join(" && "));
    let unpacked = stack.store.join("unpacked-v1");
    let p_ours = || {
        release(ctx.strata, &stack.store, &ours_dst);
        wait_for_trash(&stack.store)?;
        for entry in std::fs::read_dir(&unpacked)? {
            runner::remove(&entry?.path())?;
        }
        runner::sync()
    };
    let p_tar = runner::empty_before(&tar_dst);
    let contenders = [
        Contender {
            label: "strata",
            argv: ours,
            prepare: &p_ours,
        },
        Contender {
            label: "zstd|tar x10",
            argv: tar,
            prepare: &p_tar,
        },
    ];
    let (samples, other_cpu) = sc.side_by_side("cold checkout", &contenders)?;
    check_mode(&samples[0], "portable")?;
    report.cases.push(time_case(
        ctx,
        &format!("cold checkout (portable, {LAYERS} layers)"),
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        Target::AtLeast(COLD_CHECKOUT_RATIO),
        other_cpu,
    ));
    let want = &ctx.fixture.info.counts;
    report.checks.push(same_tree_check(
        "cold portable checkout",
        want,
        &fixture::count_tree(&ours_dst)?,
    ));
    report.checks.push(same_tree_check(
        "zstd|tar of the layers",
        want,
        &fixture::count_tree(&tar_dst)?,
    ));
    release(ctx.strata, &stack.store, &ours_dst);
    runner::remove(&tar_dst)
}

/// `strata prune --all` of [`PRUNE_SNAPSHOTS`] fabricated snapshots.
fn prune(sc: &SnapContext<'_>, report: &mut Report) -> anyhow::Result<()> {
    let (ctx, dir) = (sc.ctx, sc.dir);
    let template = dir.join("prune-template");
    let store = dir.join("prune-store");
    say!("prune: fabricating {PRUNE_SNAPSHOTS} snapshots in the index");
    let started = Instant::now();
    fabricate(&template)?;
    let fabricated = started.elapsed().as_secs_f64();
    let prepare = || {
        runner::remove(&store)?;
        runner::timed(&["cp".to_owned(), "-a".to_owned(), s(&template), s(&store)])?;
        runner::sync()
    };
    let argv = ctx.strata(&["--store", &s(&store), "prune", "--all", "--json"]);
    let contenders = [Contender {
        label: "strata",
        argv: argv.clone(),
        prepare: &prepare,
    }];
    let name = format!("prune {PRUNE_SNAPSHOTS} snapshots (--all)");
    let (samples, other_cpu) = sc.side_by_side(&name, &contenders)?;
    let out: serde_json::Value = serde_json::from_str(samples[0].stdout.trim())
        .with_context(|| format!("parsing {:?}", samples[0].stdout))?;
    let deleted = out["deleted"].as_u64().unwrap_or(0);
    let layers = out["gc"]["layers"].as_u64().unwrap_or(0);
    report.checks.push(Check {
        name: format!("prune --all deleted all {PRUNE_SNAPSHOTS} snapshots and their layers"),
        ok: deleted == PRUNE_SNAPSHOTS as u64 && layers == PRUNE_SNAPSHOTS as u64,
        detail: format!("deleted {deleted} snapshots, gc removed {layers} layers"),
    });
    report.cases.push(latency_case(
        ctx,
        &name,
        &argv,
        &samples[0],
        Target::None,
        Some(format!(
            "{} chains of {PRUNE_CHAIN}, leaf-first; index rows only (made through the \
             library in {fabricated:.1} s), so gc unlinks no blobs; OBuilder took ~77 s to \
             prune 10 items",
            PRUNE_SNAPSHOTS / PRUNE_CHAIN
        )),
        other_cpu,
    )?);
    runner::remove(&store)?;
    runner::remove(&template)
}

/// A store whose index holds [`PRUNE_SNAPSHOTS`] unused snapshots, each with its own
/// (fabricated, blob-less) layer, last used over the past 30 days.
fn fabricate(store: &Path) -> anyhow::Result<()> {
    runner::remove(store)?;
    let engine = strata_snapshot::Engine::open(store)
        .with_context(|| format!("opening a store at {}", store.display()))?;
    let now = strata_snapshot::now_millis();
    let month_ms: i64 = 30 * 86_400 * 1000;
    let step_ms = month_ms / PRUNE_SNAPSHOTS as i64;
    // Through the test hooks (strata-snapshot's `testing` feature): no public API records a
    // snapshot without its blob.
    for chain in 0..PRUNE_SNAPSHOTS / PRUNE_CHAIN {
        let mut parent = None;
        for depth in 0..PRUNE_CHAIN {
            let n = chain * PRUNE_CHAIN + depth;
            let time = now - month_ms + n as i64 * step_ms;
            let layer = strata_cas::LayerId::of(format!("fabricated layer {n}").as_bytes());
            let snapshot = engine
                .fabricate_snapshot(parent, layer, 4 << 20, 1 << 20, time)
                .context("fabricating snapshots")?;
            parent = Some(snapshot.id);
        }
    }
    Ok(())
}
