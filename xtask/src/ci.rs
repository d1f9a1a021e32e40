//! `cargo xtask ci`: exactly what CI checks, runnable locally.
//!
//! Formatting, clippy with warnings as errors, the whole test suite (the tidy checks in
//! `tidy.rs` run as xtask's own tests), in that order, stopping at the first failure.

use std::process::Command;

use anyhow::{Context, bail};

use crate::project_root;

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask ci` takes no arguments, got `{arg}`");
    }
    step("format", &["fmt", "--all", "--check"])?;
    step(
        "lint",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("test", &["test", "--workspace", "--locked"])?;
    Ok(())
}

fn step(name: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("==> {name}: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(project_root())
        .status()
        .with_context(|| format!("cannot run cargo for the {name} step"))?;
    if !status.success() {
        bail!("the {name} step failed ({status})");
    }
    Ok(())
}
