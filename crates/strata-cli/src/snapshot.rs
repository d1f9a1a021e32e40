//! `strata import|checkout|commit|release|snapshot`: snapshots on top of the layer store.

use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;
use strata_snapshot::{CheckoutMode, Engine};

use crate::cli::{CheckoutArgs, CommitArgs, GlobalArgs, ReleaseArgs, SnapshotCommand};
use crate::output;

pub(crate) fn open(global: &GlobalArgs) -> Result<Engine> {
    crate::store::open(&crate::cas::store_root(global.store.as_deref())?)
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    id: String,
    parent: Option<String>,
    layer: String,
    tag: Option<&'a str>,
    seconds: f64,
}

pub(crate) fn print_snapshot(
    json: bool,
    row: &strata_snapshot::Snapshot,
    tag: Option<&str>,
    started: Instant,
    verb: &str,
) -> Result<()> {
    let out = SnapshotOut {
        id: row.id.to_hex(),
        parent: row.parent.map(|p| p.to_hex()),
        layer: row.layer.to_hex(),
        tag,
        seconds: output::seconds(started.elapsed()),
    };
    if json {
        return output::print_json(&out);
    }
    let tag = tag.map(|t| format!(", tagged {t}")).unwrap_or_default();
    output::print_text(&format!(
        "{}\n{verb} in {}{tag}\n",
        out.id,
        output::duration(started.elapsed())
    ))
}

#[derive(Serialize)]
struct CheckoutOut {
    dir: String,
    snapshot: String,
    mode: String,
    seconds: f64,
}

/// `strata checkout REF DIR [--portable | --copy]`.
pub(crate) fn checkout(global: &GlobalArgs, args: &CheckoutArgs) -> Result<()> {
    let started = Instant::now();
    let engine = open(global)?;
    let id = engine.resolve(&args.reference)?;
    let mode = if args.copy {
        engine
            .copy_out(&id, &args.dir)
            .with_context(|| format!("cannot copy {} to {}", args.reference, args.dir.display()))?;
        "copy".to_owned()
    } else {
        let mode = args.portable.then_some(CheckoutMode::Portable);
        let row = engine.checkout(&id, &args.dir, mode).with_context(|| {
            format!(
                "cannot check out {} at {}",
                args.reference,
                args.dir.display()
            )
        })?;
        row.mode.to_string()
    };
    let out = CheckoutOut {
        dir: args.dir.display().to_string(),
        snapshot: id.to_hex(),
        mode,
        seconds: output::seconds(started.elapsed()),
    };
    if global.json {
        return output::print_json(&out);
    }
    output::print_text(&format!(
        "checked out {} at {} ({}) in {}\n",
        out.snapshot,
        out.dir,
        out.mode,
        output::duration(started.elapsed())
    ))
}

/// `strata commit DIR [--tag NAME]`.
pub(crate) fn commit(global: &GlobalArgs, args: &CommitArgs) -> Result<()> {
    let started = Instant::now();
    let engine = open(global)?;
    let row = engine
        .commit(&args.dir, args.tag.as_deref())
        .with_context(|| format!("cannot commit {}", args.dir.display()))?;
    print_snapshot(global.json, &row, args.tag.as_deref(), started, "committed")
}

/// `strata release DIR`.
pub(crate) fn release(global: &GlobalArgs, args: &ReleaseArgs) -> Result<()> {
    let engine = open(global)?;
    engine
        .release(&args.dir)
        .with_context(|| format!("cannot release {}", args.dir.display()))?;
    if global.json {
        return output::print_json(
            &serde_json::json!({ "released": args.dir.display().to_string() }),
        );
    }
    output::print_text(&format!("released {}\n", args.dir.display()))
}

/// `strata snapshot ls|rm`.
pub(crate) fn snapshot(global: &GlobalArgs, command: &SnapshotCommand) -> Result<()> {
    let engine = open(global)?;
    match command {
        SnapshotCommand::Ls => {
            let snapshots = engine.snapshots()?;
            if global.json {
                return output::print_json(&snapshots);
            }
            let mut text = format!("{:<64}  {:>5}  {:<64}  TAGS\n", "ID", "DEPTH", "PARENT");
            for snapshot in &snapshots {
                text.push_str(&format!(
                    "{:<64}  {:>5}  {:<64}  {}\n",
                    snapshot.id.to_hex(),
                    snapshot.depth,
                    snapshot
                        .parent
                        .map(|p| p.to_hex())
                        .unwrap_or_else(|| "-".into()),
                    snapshot.tags.join(",")
                ));
            }
            output::print_text(&text)
        }
        SnapshotCommand::Rm(args) => {
            for reference in &args.references {
                let id = engine.resolve(reference)?;
                engine
                    .remove_snapshot(&id)
                    .with_context(|| format!("cannot remove snapshot {reference}"))?;
                if !global.json {
                    output::print_text(&format!("removed {id}\n"))?;
                }
            }
            if global.json {
                return output::print_json(&args.references);
            }
            Ok(())
        }
    }
}
