//! Tidy checks, run as xtask's tests: the conventions and architecture invariants of
//! `docs/architecture.md` that a tool can check.

#![cfg(test)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::project_root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let root = project_root();
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "benches", "fuzz"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(files.len() > 10, "found only {} Rust files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = fs::read_to_string(f).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:?}"
    );
}

/// Normal (non-dev) dependencies of a package, by name, transitively.
fn dependencies(package: &str) -> Vec<String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(project_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_cas_knows_nothing_about_sandboxes_clis_or_async() {
    let deps = dependencies("strata-cas");
    for forbidden in [
        "tokio",
        "bollard",
        "clap",
        "anyhow",
        "rusqlite",
        "oci-spec",
        "windows-sys",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "strata-cas must not depend on {forbidden}"
        );
    }
    assert!(
        !deps
            .iter()
            .any(|d| d.starts_with("strata-") && d != "strata-cas"),
        "strata-cas is the bottom of the stack: {deps:?}"
    );
}

#[test]
fn only_binaries_use_anyhow() {
    let root = project_root();
    for entry in fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let is_binary = dir.join("src/main.rs").exists();
        let deps = manifest
            .split("[dependencies]")
            .nth(1)
            .map(|rest| rest.split("\n[").next().unwrap_or(""))
            .unwrap_or("");
        if !is_binary {
            assert!(
                !deps.contains("anyhow"),
                "{} is a library and must use thiserror, not anyhow",
                dir.display()
            );
        }
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{} must inherit the workspace lints",
            dir.display()
        );
    }
}

#[test]
fn specs_and_the_builder_stay_independent_of_drivers_and_stores() {
    let spec = dependencies("strata-spec");
    assert!(
        !spec
            .iter()
            .any(|d| d.starts_with("strata-") && d != "strata-spec"),
        "strata-spec depends on nothing of Strata's: {spec:?}"
    );
    // Direct dependencies only: the drivers' own (oci-spec, later bollard) come in through
    // strata-isolate, and must not leak into the builder's manifest.
    let manifest =
        fs::read_to_string(project_root().join("crates/strata-build/Cargo.toml")).unwrap();
    for forbidden in ["oci-spec", "tokio", "bollard", "windows-sys", "clap"] {
        assert!(
            !manifest.contains(forbidden),
            "strata-build must not depend on {forbidden}: drivers keep their dependencies"
        );
    }
    // The builder reaches drivers only through the trait.
    let mut files = Vec::new();
    rust_files(&project_root().join("crates/strata-build/src"), &mut files);
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for concrete in ["RuncDriver", "HostDriver", "isolate::runc", "isolate::host"] {
            assert!(
                !text.contains(concrete),
                "{} names the concrete driver `{concrete}`",
                file.display()
            );
        }
    }
}
