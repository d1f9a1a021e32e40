//! The whole-process cases: create, extract (cold), compressed size and peak memory, and the
//! context every case family runs in; the snapshot cases live in `snapshots.rs`, the
//! builder's in `build.rs`, and `mod.rs` runs them all.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::fixture::{self, Fixture};
use super::report::{Case, Check, MemoryCase, Report, SizeCase, Target, TimeCase};
use super::runner::{self, Contender, Samples};
use super::util::{Paths, sh_path};

/// Memory ceiling for `strata layer create` and `strata layer apply`.
const MEMORY_LIMIT_MIB: f64 = 256.0;

pub(crate) struct Context<'a> {
    pub(crate) paths: &'a Paths,
    pub(crate) strata: &'a Path,
    pub(crate) fixture: &'a Fixture,
    /// Scratch directory on the benchmark filesystem.
    pub(crate) work: &'a Path,
    pub(crate) runs: usize,
}

impl Context<'_> {
    pub(crate) fn strata(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(self.strata.to_string_lossy().into_owned())
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect()
    }

    pub(crate) fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        runner::remove(&dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    pub(crate) fn show(&self, command: &str) -> String {
        self.paths.show_command(command)
    }
}

pub(crate) fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub(crate) fn sh(script: String) -> Vec<String> {
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// `create`: ours against `tar | zstd -T0 && b3sum`, plain and with reproducibility flags.
/// Returns the layer ours wrote, for the following cases.
pub(super) fn create(ctx: &Context<'_>, report: &mut Report) -> anyhow::Result<PathBuf> {
    let dir = ctx.dir("create")?;
    let root = &ctx.fixture.root;
    let ours_out = dir.join("ours.tar.zst");
    let tar_out = dir.join("tar.tar.zst");
    let repro_out = dir.join("tar-repro.tar.zst");

    let ours = ctx.strata(&["layer", "create", &s(root), "-o", &s(&ours_out), "--json"]);
    let plain = sh(format!(
        "tar -C {root} -cf - . | zstd -q -3 -T0 -f -o {out} && b3sum {out}",
        root = sh_path(root),
        out = sh_path(&tar_out)
    ));
    let repro = sh(format!(
        "tar --sort=name --format=posix --pax-option=delete=atime,delete=ctime --numeric-owner \
         -C {root} -cf - . | zstd -q -3 -T0 -f -o {out} && b3sum {out}",
        root = sh_path(root),
        out = sh_path(&repro_out)
    ));
    let prep = runner::clear_before;
    let (p_ours, p_plain, p_repro) = (prep(&ours_out), prep(&tar_out), prep(&repro_out));
    let contenders = [
        Contender {
            label: "strata",
            argv: ours,
            prepare: &p_ours,
        },
        Contender {
            label: "tar|zstd",
            argv: plain,
            prepare: &p_plain,
        },
        Contender {
            label: "tar --sort|zstd",
            argv: repro,
            prepare: &p_repro,
        },
    ];
    let (samples, other_cpu) = runner::side_by_side("create", &contenders, ctx.runs)?;

    let info: serde_json::Value =
        serde_json::from_str(samples[0].stdout.trim()).with_context(|| {
            format!(
                "parsing `strata layer create --json` output {:?}",
                samples[0].stdout
            )
        })?;
    report.ours_layer = Some(info.clone());
    let target = Target::AtLeast(1.6);
    let side = |i: usize| (&contenders[i], &samples[i]);
    report.cases.push(time_case(
        ctx,
        "create",
        side(0),
        side(1),
        target,
        other_cpu,
    ));
    report.cases.push(time_case(
        ctx,
        "create (reproducible tar)",
        side(0),
        side(2),
        target,
        other_cpu,
    ));

    // The layer id must be the blake3 of the uncompressed tar, as any zstd sees it.
    let id = info
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let (_, out) = runner::timed(&sh(format!(
        "zstd -dc {} | b3sum --no-names",
        sh_path(&ours_out)
    )))?;
    let hashed = out.trim().to_owned();
    report.checks.push(Check {
        name: "layer id = b3sum of `zstd -dc layer`".to_owned(),
        ok: !id.is_empty() && id == hashed,
        detail: format!("id {id}, b3sum {hashed}"),
    });
    Ok(ours_out)
}

/// `extract (cold)`: ours against `zstd -dc | tar -x`, both into an empty directory.
pub(super) fn extract(ctx: &Context<'_>, report: &mut Report, layer: &Path) -> anyhow::Result<()> {
    let dir = ctx.dir("extract")?;
    let ours_dst = dir.join("ours");
    let tar_dst = dir.join("tar");
    let ours = ctx.strata(&[
        "layer",
        "apply",
        &s(layer),
        &s(&ours_dst),
        "--json",
        "--devices",
        "skip",
        "--setuid",
        "keep",
    ]);
    let tar = sh(format!(
        "zstd -dc {} | tar -xf - -C {}",
        sh_path(layer),
        sh_path(&tar_dst)
    ));
    let (p_ours, p_tar) = (
        runner::empty_before(&ours_dst),
        runner::empty_before(&tar_dst),
    );
    let contenders = [
        Contender {
            label: "strata",
            argv: ours,
            prepare: &p_ours,
        },
        Contender {
            label: "zstd|tar",
            argv: tar,
            prepare: &p_tar,
        },
    ];
    let (samples, other_cpu) = runner::side_by_side("extract", &contenders, ctx.runs)?;
    report.cases.push(time_case(
        ctx,
        "extract (cold)",
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        Target::AtLeast(2.0),
        other_cpu,
    ));

    let ours_counts = fixture::count_tree(&ours_dst)?;
    let tar_counts = fixture::count_tree(&tar_dst)?;
    let src = &ctx.fixture.info.counts;
    report.checks.push(Check {
        name: "extracted trees match the fixture (entries, file bytes)".to_owned(),
        ok: ours_counts.entries == tar_counts.entries
            && ours_counts.bytes == tar_counts.bytes
            && ours_counts.entries == src.entries
            && ours_counts.bytes == src.bytes,
        detail: format!(
            "fixture {} entries / {} B, strata {} / {} B, tar {} / {} B",
            src.entries,
            src.bytes,
            ours_counts.entries,
            ours_counts.bytes,
            tar_counts.entries,
            tar_counts.bytes
        ),
    });
    Ok(())
}

/// `compressed size`: ours against `zstd -3` of the same uncompressed tar.
pub(super) fn size(ctx: &Context<'_>, report: &mut Report, layer: &Path) -> anyhow::Result<()> {
    let ours_bytes = std::fs::metadata(layer)?.len();
    let baseline = sh(format!("zstd -dc {} | zstd -3 -c | wc -c", sh_path(layer)));
    say!("size: zstd -3 of the uncompressed layer");
    let (_, out) = runner::timed(&baseline)?;
    let baseline_bytes: u64 = out
        .trim()
        .parse()
        .with_context(|| format!("`wc -c` printed {out:?}"))?;
    let (_, out) = runner::timed(&sh(format!("zstd -dc {} | wc -c", sh_path(layer))))?;
    let uncompressed: u64 = out
        .trim()
        .parse()
        .with_context(|| format!("`wc -c` printed {out:?}"))?;
    let ratio = ours_bytes as f64 / baseline_bytes as f64;
    let target = Target::AtMost(1.03);
    report.cases.push(Case::Size(SizeCase {
        name: "compressed size".to_owned(),
        ours_bytes,
        baseline_command: ctx.show(&runner::command_line(&baseline)),
        baseline_bytes,
        uncompressed_bytes: uncompressed,
        ratio,
        target: target.to_string(),
        pass: target.pass(ratio),
    }));
    Ok(())
}

/// `peak memory`: max RSS of `strata layer create` and `strata layer apply` on `tree`.
pub(super) fn memory(
    ctx: &Context<'_>,
    report: &mut Report,
    tree: &Path,
    what: &str,
    tree_bytes: u64,
) -> anyhow::Result<()> {
    let slug = if what == "fixture" {
        "memory-fixture"
    } else {
        "memory-big"
    };
    let dir = ctx.dir(slug)?;
    // The big layer (~2 GiB, incompressible) goes next to its tree, not on the scratch image.
    let layer = if what == "fixture" {
        dir.join("layer.tar.zst")
    } else {
        tree.parent().unwrap_or(tree).join("layer.tar.zst")
    };
    let dst = dir.join("dst");
    runner::remove(&layer)?;
    runner::sync()?;

    let target = Target::Below(MEMORY_LIMIT_MIB);
    let create = ctx.strata(&["layer", "create", &s(tree), "-o", &s(&layer), "--json"]);
    say!("memory: strata layer create ({what})");
    let kib = runner::max_rss_kib(&create, ctx.work)?;
    let layer_bytes = std::fs::metadata(&layer)?.len();
    report.cases.push(memory_case(
        ctx,
        format!("peak memory: create ({what})"),
        &create,
        kib,
        tree_bytes,
        layer_bytes,
        target,
    ));

    std::fs::create_dir_all(&dst)?;
    runner::sync()?;
    let apply = ctx.strata(&[
        "layer",
        "apply",
        &s(&layer),
        &s(&dst),
        "--json",
        "--devices",
        "skip",
        "--setuid",
        "keep",
    ]);
    say!("memory: strata layer apply ({what})");
    let kib = runner::max_rss_kib(&apply, ctx.work)?;
    report.cases.push(memory_case(
        ctx,
        format!("peak memory: apply ({what})"),
        &apply,
        kib,
        tree_bytes,
        layer_bytes,
        target,
    ));
    runner::remove(&dst)?;
    runner::remove(&layer)?;
    Ok(())
}

fn memory_case(
    ctx: &Context<'_>,
    name: String,
    argv: &[String],
    kib: u64,
    tree_bytes: u64,
    layer_bytes: u64,
    target: Target,
) -> Case {
    let mib = kib as f64 / 1024.0;
    Case::Memory(MemoryCase {
        name,
        command: ctx.show(&runner::command_line(argv)),
        max_rss_kib: kib,
        max_rss_mib: mib,
        tree_bytes,
        layer_bytes,
        target: target.to_string(),
        pass: target.pass(mib),
    })
}

pub(crate) fn time_case(
    ctx: &Context<'_>,
    name: &str,
    ours: (&Contender<'_>, &Samples),
    baseline: (&Contender<'_>, &Samples),
    target: Target,
    other_cpu_share: Option<f64>,
) -> Case {
    time_case_at(ctx.paths, name, ours, baseline, target, other_cpu_share)
}

/// Runs two contenders side by side, ours first, and reports them as one case against
/// `target`: the whole of most cases that run without the fixture's [`Context`].
pub(crate) fn pair_case(
    paths: &Paths,
    report: &mut Report,
    name: &str,
    contenders: &[Contender<'_>; 2],
    runs: usize,
    target: Target,
) -> anyhow::Result<()> {
    let (samples, share) = runner::side_by_side(name, contenders, runs)?;
    report.cases.push(time_case_at(
        paths,
        name,
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        target,
        share,
    ));
    Ok(())
}

/// [`time_case`] for cases that run without the fixture's [`Context`].
pub(crate) fn time_case_at(
    paths: &Paths,
    name: &str,
    (ours, ours_samples): (&Contender<'_>, &Samples),
    (baseline, baseline_samples): (&Contender<'_>, &Samples),
    target: Target,
    other_cpu_share: Option<f64>,
) -> Case {
    let ours_seconds = ours_samples.median();
    let baseline_seconds = baseline_samples.median();
    let ratio = baseline_seconds / ours_seconds;
    Case::Time(TimeCase {
        name: name.to_owned(),
        ours_command: paths.show_command(&ours.command_line()),
        ours_seconds,
        ours_samples: ours_samples.seconds.clone(),
        baseline_command: paths.show_command(&baseline.command_line()),
        baseline_seconds,
        baseline_samples: baseline_samples.seconds.clone(),
        ratio,
        target: target.to_string(),
        pass: target.pass(ratio),
        other_cpu_share,
    })
}
