//! `strata du|prune|gc|fsck`: keeping a store's size in check and its contents sound.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use strata_snapshot::Engine;
use strata_snapshot::maintenance::{GcReport, PruneOptions};

use crate::cli::{FsckArgs, GcArgs, GlobalArgs, PruneArgs};
use crate::output;

fn open(global: &GlobalArgs) -> Result<Engine> {
    crate::store::open(&crate::cas::store_root(global.store.as_deref())?)
}

#[derive(Serialize)]
struct DuOut {
    snapshots: u64,
    blobs: u64,
    compressed_bytes: u64,
    uncompressed_bytes: u64,
    unpacked_layers: u64,
    /// Relocated variants and twins of unpacked layers.
    layer_variants: u64,
    checkouts: u64,
}

/// `strata du`.
pub(crate) fn du(global: &GlobalArgs) -> Result<()> {
    let engine = open(global)?;
    let usage = engine
        .du()
        .with_context(|| format!("cannot measure the store at {}", engine.root().display()))?;
    let out = DuOut {
        snapshots: usage.snapshots,
        blobs: usage.blobs,
        compressed_bytes: usage.blob_bytes,
        uncompressed_bytes: usage.layer_bytes,
        unpacked_layers: usage.unpacked,
        layer_variants: usage.variants,
        checkouts: usage.checkouts,
    };
    if global.json {
        return output::print_json(&out);
    }
    output::print_text(&format!(
        "store              {}\n\
         snapshots          {}\n\
         layers             {}, {} stored, {} uncompressed ({})\n\
         unpacked layers    {} (and {} relocated variants or twins)\n\
         tracked checkouts  {}",
        engine.root().display(),
        out.snapshots,
        output::count(out.blobs, "blob", "blobs"),
        output::bytes(out.compressed_bytes),
        output::bytes(out.uncompressed_bytes),
        output::ratio(out.uncompressed_bytes, out.compressed_bytes),
        out.unpacked_layers,
        out.layer_variants,
        out.checkouts,
    ))
}

#[derive(Serialize)]
struct GcOut {
    layers: u64,
    bytes: u64,
    orphans: u64,
    /// Relocated variants of unpacked layers for roots no checkout uses any more.
    variants: u64,
    /// Trees deleted from the trash that no background deletion had finished.
    trash: u64,
    /// Recorded build steps whose snapshot is gone, forgotten with their logs.
    steps: u64,
}

impl GcOut {
    /// The engine's gc, plus the builder's step records that now name nothing.
    fn new(report: &GcReport, engine: &Engine) -> Result<Self> {
        let steps = strata_build::forget_missing(engine).with_context(|| {
            format!("cannot clean the step cache of {}", engine.root().display())
        })?;
        Ok(GcOut {
            layers: report.layers,
            bytes: report.bytes,
            orphans: report.orphans,
            variants: report.variants,
            trash: report.trash,
            steps,
        })
    }
}

/// `removed 3 layers (1.2 MiB), 1 orphan, 2 relocated variants and 2 build steps`.
fn describe_gc(gc: &GcOut) -> String {
    format!(
        "removed {} ({}), {}, {} and {}",
        output::count(gc.layers, "layer", "layers"),
        output::bytes(gc.bytes),
        output::count(gc.orphans, "orphan", "orphans"),
        output::count(gc.variants, "relocated variant", "relocated variants"),
        output::count(gc.steps, "build step", "build steps")
    )
}

#[derive(Serialize)]
struct PruneOut {
    deleted: u64,
    snapshots: Vec<String>,
    gc: GcOut,
    seconds: f64,
}

/// `strata prune`. The caller has checked that at least one limit (or `--all`) is given.
pub(crate) fn prune(global: &GlobalArgs, args: &PruneArgs) -> Result<()> {
    if !args.has_limit() {
        // main refuses this as a usage error before getting here.
        bail!("nothing to prune: give --older-than, --keep, --keep-bytes or --all");
    }
    let started = Instant::now();
    let engine = open(global)?;
    let older_than = match args.older_than {
        Some(age) => {
            let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            Some(strata_snapshot::now_millis().saturating_sub(age))
        }
        None => None,
    };
    let opts = PruneOptions {
        older_than,
        keep_count: args.keep,
        keep_bytes: args.keep_bytes,
    };
    let report = engine
        .prune(&opts)
        .with_context(|| format!("cannot prune the store at {}", engine.root().display()))?;
    let out = PruneOut {
        deleted: report.snapshots.len() as u64,
        snapshots: report.snapshots.iter().map(|id| id.to_hex()).collect(),
        gc: GcOut::new(&report.gc, &engine)?,
        seconds: output::seconds(started.elapsed()),
    };
    if global.json {
        return output::print_json(&out);
    }
    output::print_text(&format!(
        "deleted {}; gc {} in {}",
        output::count(out.deleted, "snapshot", "snapshots"),
        describe_gc(&out.gc),
        output::duration(started.elapsed())
    ))
}

#[derive(Serialize)]
struct GcRunOut {
    #[serde(flatten)]
    gc: GcOut,
    /// With `--docker-images`: the engine images removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_images: Option<Vec<String>>,
    seconds: f64,
}

/// `strata gc [--docker-images]`.
pub(crate) fn gc(global: &GlobalArgs, args: &GcArgs) -> Result<()> {
    let started = Instant::now();
    let engine = open(global)?;
    let report = engine
        .gc()
        .with_context(|| format!("cannot collect garbage in {}", engine.root().display()))?;
    let docker_images = if args.docker_images {
        let kept: std::collections::HashSet<String> = engine
            .snapshot_ids()?
            .iter()
            .map(|id| id.to_hex())
            .collect();
        let driver = strata::docker::DockerDriver::new(strata::docker::DockerOptions::new(1));
        Some(
            driver
                .remove_images(&|snapshot| kept.contains(snapshot))
                .context("cannot remove the docker engine's images of gone snapshots")?,
        )
    } else {
        None
    };
    let out = GcRunOut {
        gc: GcOut::new(&report, &engine)?,
        docker_images,
        seconds: output::seconds(started.elapsed()),
    };
    if global.json {
        return output::print_json(&out);
    }
    let images = out
        .docker_images
        .as_ref()
        .map_or(String::new(), |i| format!(", {} docker images", i.len()));
    output::print_text(&format!(
        "{}{images} in {}",
        describe_gc(&out.gc),
        output::duration(started.elapsed())
    ))
}

#[derive(Serialize)]
struct ProblemOut {
    what: String,
    repaired: bool,
}

#[derive(Serialize)]
struct FsckOut {
    problems: Vec<ProblemOut>,
    unrepaired: u64,
    seconds: f64,
}

/// `strata fsck [--repair]`: fails (status 1) while a problem remains.
pub(crate) fn fsck(global: &GlobalArgs, args: &FsckArgs) -> Result<()> {
    let started = Instant::now();
    let engine = open(global)?;
    let problems = engine
        .fsck(args.repair)
        .with_context(|| format!("cannot check the store at {}", engine.root().display()))?;
    let problems: Vec<ProblemOut> = problems
        .into_iter()
        .map(|p| ProblemOut {
            what: p.what,
            repaired: p.repaired,
        })
        .collect();
    let unrepaired = problems.iter().filter(|p| !p.repaired).count() as u64;
    let out = FsckOut {
        problems,
        unrepaired,
        seconds: output::seconds(started.elapsed()),
    };
    // A closed stdout must not turn "problems" into success: print, then judge.
    let printed = if global.json {
        output::print_json(&out)
    } else {
        let mut text = String::new();
        for p in &out.problems {
            let tag = if p.repaired { "repaired" } else { "problem" };
            text.push_str(&format!("{tag}: {}\n", p.what));
        }
        let repaired = out.problems.len() as u64 - unrepaired;
        if out.problems.is_empty() {
            text.push_str("no problems found");
        } else {
            text.push_str(&format!(
                "{}, {repaired} repaired",
                output::count(out.problems.len() as u64, "problem", "problems")
            ));
        }
        text.push_str(&format!(" in {}", output::duration(started.elapsed())));
        output::print_text(&text)
    };
    if unrepaired > 0 {
        let hint = if args.repair {
            ""
        } else {
            " (run `strata fsck --repair` to fix what can be fixed)"
        };
        bail!(
            "{} in {}{hint}",
            output::count(unrepaired, "problem remains", "problems remain"),
            engine.root().display()
        );
    }
    printed
}
