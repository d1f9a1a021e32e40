//! Tidy checks, run as xtask's tests: the conventions and architecture invariants of
//! `docs/architecture.md` that a tool can check.

#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
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
        for concrete in [
            "RuncDriver",
            "HostDriver",
            "WindowsUserDriver",
            "WindowsSandboxDriver",
            "MacosUserDriver",
            "isolate::runc",
            "isolate::host",
            "isolate::windows_user",
            "isolate::windows_sandbox",
            "isolate::macos_user",
            "DockerDriver",
            "strata_docker",
        ] {
            assert!(
                !text.contains(concrete),
                "{} names the concrete driver `{concrete}`",
                file.display()
            );
        }
    }
}

/// Failpoints abort the process when `STRATA_FAILPOINT` names one, and the test hooks bypass
/// the engine's invariants: only strata-snapshot's own tests (and, for the hooks, xtask's
/// benchmarks) may build them. Checked on what cargo resolves for the crates that embedders and
/// the `strata` binary build, and on the source: whatever reads the variable or aborts lives
/// in a module compiled only with the `failpoints` feature.
#[test]
fn failpoints_are_built_only_for_the_snapshot_crates_tests() {
    for package in ["strata-snapshot", "strata-build", "strata-cli"] {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
            .args(["-f", "{p}|{f}", "-p", package])
            .current_dir(project_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8(out.stdout).unwrap();
        let snapshot = tree
            .lines()
            .find(|l| l.starts_with("strata-snapshot "))
            .unwrap_or_else(|| panic!("{package} does not build strata-snapshot:\n{tree}"));
        assert!(
            !snapshot.contains("failpoints"),
            "a plain build of {package} turns strata-snapshot's failpoints on: {snapshot}"
        );
        assert!(
            !snapshot.contains("testing"),
            "a plain build of {package} turns strata-snapshot's test hooks on: {snapshot}"
        );
    }
    let src = project_root().join("crates/strata-snapshot/src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(
        lib.contains("#[cfg(feature = \"failpoints\")]\nmod failpoints;"),
        "strata-snapshot's lib.rs must declare `mod failpoints` behind the feature"
    );
    assert!(
        lib.contains("#[cfg(feature = \"testing\")]\npub mod testing;"),
        "strata-snapshot's lib.rs must declare its test hooks (`mod testing`) behind the feature"
    );
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        if file.file_name().is_some_and(|n| n == "failpoints.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for needle in ["STRATA_FAILPOINT", "process::abort"] {
            assert!(
                !code.iter().any(|l| l.contains(needle)),
                "{} has `{needle}`: failpoint code belongs in failpoints.rs, behind the feature",
                file.display()
            );
        }
    }
}

/// Direct dependencies of a crate, by name, from its manifest (every `[dependencies]` and
/// `[target.'…'.dependencies]` table; not dev- or build-dependencies).
fn manifest_dependencies(krate: &str) -> Vec<String> {
    let manifest =
        fs::read_to_string(project_root().join("crates").join(krate).join("Cargo.toml")).unwrap();
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]"
                || (line.starts_with("[target.") && line.ends_with(".dependencies]"));
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name.to_owned());
            }
        }
    }
    deps
}

/// Strata has its own tar codec and worker pools (`docs/architecture.md`, "The design card's
/// crates" says why): the `tar` crate and `rayon` are dependencies of the `benches` crate
/// only, which compares them with ours, and reach no published crate, even transitively.
#[test]
fn the_tar_crate_and_rayon_stay_in_the_benches() {
    for krate in ["strata", "strata-cli"] {
        let deps = dependencies(krate);
        for replaced in ["tar", "tokio-tar", "rayon", "rayon-core"] {
            assert!(
                !deps.iter().any(|d| d == replaced),
                "{krate} must not depend on {replaced}: strata-cas does that job itself"
            );
        }
    }
}

/// The Engine API client and its async runtime stay in strata-docker: only it names bollard
/// or tokio directly, and strata-isolate (whose runc path must stay synchronous) depends on
/// neither it nor them. Only the facade makes the Docker driver for embedders; that the
/// builder's sources never name it is checked with the other concrete drivers, in
/// `specs_and_the_builder_stay_independent_of_drivers_and_stores`.
#[test]
fn the_engine_api_and_its_runtime_stay_in_the_docker_crate() {
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let krate = entry.unwrap().file_name().to_string_lossy().into_owned();
        if krate == "strata-docker" {
            continue;
        }
        let deps = manifest_dependencies(&krate);
        for async_dep in ["bollard", "tokio", "futures-util"] {
            assert!(
                !deps.iter().any(|d| d == async_dep),
                "{krate} must not depend on {async_dep}: the Docker driver keeps it"
            );
        }
    }
    let isolate = dependencies("strata-isolate");
    for forbidden in ["strata-docker", "bollard", "tokio"] {
        assert!(
            !isolate.iter().any(|d| d == forbidden),
            "strata-isolate must not depend on {forbidden}"
        );
    }
}

/// The snapshot engine builds on the CAS and on process liveness only: no sandbox, spec,
/// builder, command line or async runtime.
#[test]
fn the_snapshot_engine_sits_on_the_cas_and_process_liveness_only() {
    let deps = dependencies("strata-snapshot");
    let strata: Vec<&String> = deps
        .iter()
        .filter(|d| d.starts_with("strata-") && *d != "strata-snapshot")
        .collect();
    for dep in &strata {
        assert!(
            ["strata-cas", "strata-process"].contains(&dep.as_str()),
            "strata-snapshot must not depend on {dep}"
        );
    }
    for forbidden in ["tokio", "bollard", "clap", "anyhow", "oci-spec"] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "strata-snapshot must not depend on {forbidden}"
        );
    }
}

/// Process liveness (pid plus start time) is written once, in strata-process, which depends
/// on nothing of Strata's; the CAS and the spec reader do not depend on it, and no other crate
/// asks the OS about a process's liveness itself.
#[test]
fn process_liveness_is_one_crate() {
    let deps = dependencies("strata-process");
    assert!(
        !deps
            .iter()
            .any(|d| d.starts_with("strata-") && d != "strata-process"),
        "strata-process depends on nothing of Strata's: {deps:?}"
    );
    for krate in ["strata-cas", "strata-spec"] {
        assert!(
            !dependencies(krate).iter().any(|d| d == "strata-process"),
            "{krate} must not depend on strata-process"
        );
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.file_name().is_some_and(|n| n != "strata-process") {
            rust_files(&dir.join("src"), &mut files);
        }
    }
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for needle in [
            "test_kill_process",
            "OpenProcess",
            "GetProcessTimes",
            "proc_pidinfo",
            "/stat\"",
            "tasklist",
        ] {
            // A whole identifier only: `OpenProcessToken` (a token query) is not liveness.
            let whole = text.match_indices(needle).any(|(at, _)| {
                !text[at + needle.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            });
            assert!(
                !whole,
                "{} has `{needle}`: process liveness belongs in strata-process",
                file.display()
            );
        }
    }
}

/// Images and registries are one crate's business: the registry client (ureq) stays in
/// strata-oci, and neither the builder nor the engine knows about it; the CLI wires them.
#[test]
fn registries_stay_in_strata_oci() {
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let krate = dir.file_name().unwrap().to_string_lossy().into_owned();
        let deps = manifest_dependencies(&krate);
        if krate != "strata-oci" {
            assert!(
                !deps.iter().any(|d| d == "ureq"),
                "{krate} must not depend on ureq: registries are strata-oci's"
            );
        }
        if [
            "strata-cas",
            "strata-snapshot",
            "strata-build",
            "strata-spec",
            "strata-isolate",
        ]
        .contains(&krate.as_str())
        {
            assert!(
                !deps.iter().any(|d| d == "strata-oci"),
                "{krate} must not depend on strata-oci"
            );
        }
    }
    let oci = dependencies("strata-oci");
    for forbidden in ["strata-build", "strata-isolate", "tokio", "clap", "anyhow"] {
        assert!(
            !oci.iter().any(|d| d == forbidden),
            "strata-oci must not depend on {forbidden}"
        );
    }
}

/// OS bindings stay where the OS-specific code is: `windows-sys` in strata-process (process
/// identity) and strata-snapshot (file identity and block cloning of portable checkouts),
/// `libc` in strata-process (macOS process identity); drivers may add theirs in
/// strata-isolate. No other crate names them.
#[test]
fn os_bindings_stay_in_the_crates_that_need_them() {
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let krate = dir.file_name().unwrap().to_string_lossy().into_owned();
        let deps = manifest_dependencies(&krate);
        for (binding, allowed) in [
            (
                "windows-sys",
                &["strata-process", "strata-snapshot", "strata-isolate"][..],
            ),
            ("libc", &["strata-process", "strata-isolate"][..]),
        ] {
            if deps.iter().any(|d| d == binding) {
                assert!(
                    allowed.contains(&krate.as_str()),
                    "{krate} must not depend on {binding} (allowed in {allowed:?})"
                );
            }
        }
    }
}

/// The Rust files of every crate's integration tests (`crates/*/tests`), but those of
/// strata-test-support, which holds the shared helpers.
fn integration_test_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("tests").is_dir() && dir.file_name().is_some_and(|n| n != "strata-test-support")
        {
            rust_files(&dir.join("tests"), &mut files);
        }
    }
    assert!(files.len() > 10, "found only {} test files", files.len());
    files
}

/// A test that cannot run here (no root, runc, overlayfs, a tool) skips only through
/// `strata_test_support::require`, which fails it under CI instead: no test prints that it
/// skipped, nor reads `CI`, itself.
#[test]
fn tests_skip_only_through_the_shared_helper_that_fails_under_ci() {
    for file in integration_test_files() {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            let prints_skip = ["println!(\"skip", "eprintln!(\"skip"]
                .iter()
                .any(|p| lower.contains(p));
            let reads_ci = ["var_os(\"CI\")", "var(\"CI\")"]
                .iter()
                .any(|p| line.contains(p));
            assert!(
                !prints_skip && !reads_ci,
                "{}:{}: skip through `strata_test_support::require`, which fails under CI: {}",
                file.display(),
                n + 1,
                line.trim()
            );
        }
    }
}

/// Child processes of multi-process tests (this test binary run again on one test) are
/// ignored tests named `child*`, started through `strata_test_support::child_test`, so they
/// never count as passes on their own.
#[test]
fn child_process_tests_never_pass_on_their_own() {
    let mut children = 0;
    for file in integration_test_files() {
        let text = fs::read_to_string(&file).unwrap();
        for needle in ["current_exe", "/proc/self/exe", "\"--exact\""] {
            assert!(
                !text.contains(needle),
                "{} has `{needle}`: start child tests with `strata_test_support::child_test`",
                file.display()
            );
        }
        // Each test's attributes, from `#[test]` to its `fn`.
        for (at, _) in text.match_indices("#[test]") {
            let rest = &text[at..];
            let Some(fn_at) = rest.find("fn ") else {
                continue;
            };
            let attributes = &rest[..fn_at];
            let name: String = rest[fn_at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let ignored_child = attributes.contains("#[ignore = \"child process of ");
            assert_eq!(
                name.starts_with("child"),
                ignored_child,
                "{}: test `{name}`: child processes are named `child*` and marked \
                 `#[ignore = \"child process of <parent test>\"]`, and only they",
                file.display()
            );
            children += usize::from(ignored_child);
        }
    }
    assert!(children >= 5, "found only {children} child process tests");
}

/// strata-test-support serves tests only: never published, and no crate's normal
/// dependency.
#[test]
fn test_support_is_a_dev_dependency_only() {
    let manifest =
        fs::read_to_string(project_root().join("crates/strata-test-support/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("\npublish = false\n"),
        "strata-test-support must not be published"
    );
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let krate = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !manifest_dependencies(&krate)
                .iter()
                .any(|d| d == "strata-test-support"),
            "{krate} may use strata-test-support as a dev-dependency only"
        );
    }
}

/// The error enums of library crates can grow without breaking embedders: every public enum
/// deriving `thiserror::Error` is `#[non_exhaustive]`. And a crate's `Io` variant reads
/// "cannot {op} {path}", so its `op` is a bare verb phrase, never "cannot …" again.
#[test]
fn library_error_enums_are_non_exhaustive_with_one_io_shape() {
    let mut enums = 0;
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("src/main.rs").exists() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                let Some(name) = line.trim_start().strip_prefix("pub enum ") else {
                    continue;
                };
                // The attributes and docs right above the enum.
                let above: Vec<&str> = lines[..n]
                    .iter()
                    .rev()
                    .take_while(|l| {
                        let l = l.trim_start();
                        l.starts_with("#[")
                            || l.starts_with("///")
                            || l.starts_with(')')
                            || l.starts_with('"')
                            || l.starts_with("reason")
                    })
                    .copied()
                    .collect();
                if !above.iter().any(|l| l.contains("thiserror::Error")) {
                    continue;
                }
                enums += 1;
                assert!(
                    above.iter().any(|l| l.trim() == "#[non_exhaustive]"),
                    "{}:{}: error enum `{}` must be #[non_exhaustive]",
                    file.display(),
                    n + 1,
                    name.trim_end_matches(" {")
                );
            }
            for (n, line) in lines.iter().enumerate() {
                for needle in [
                    "op: \"cannot ",
                    "io(\"cannot ",
                    "os(\"cannot ",
                    "err(\"cannot ",
                ] {
                    assert!(
                        !line.contains(needle),
                        "{}:{}: the Io message already says \"cannot\": {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    );
                }
            }
        }
    }
    assert!(enums >= 10, "found only {enums} error enums");
}

/// The module a Rust file under `src` is, as a path of names (`[]` for `lib.rs`/`main.rs`,
/// `["extract"]` for `extract/mod.rs` or `extract.rs`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The paths (`a::b::C`) a line names after `crate::` or `super::`, with braces expanded.
fn named_paths(line: &str, prefix: &str) -> Vec<String> {
    fn expand(base: &str, rest: &str, out: &mut Vec<String>) {
        // `rest` starts right after `base::`.
        if let Some(inner) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in inner.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_item(base, item.trim(), out);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            expand_item(base, item.trim(), out);
        } else {
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let after = &rest[path.len()..];
            if path.ends_with("::") && after.starts_with('{') {
                expand(&format!("{base}{path}"), after, out);
            } else {
                out.push(format!("{base}{}", path.trim_end_matches(':')));
            }
        }
    }
    fn expand_item(base: &str, item: &str, out: &mut Vec<String>) {
        if item.is_empty() {
            return;
        }
        match item.find("::{") {
            Some(at) => expand(&format!("{base}{}::", &item[..at]), &item[at + 2..], out),
            None => out.push(format!("{base}{item}")),
        }
    }
    let mut out = Vec::new();
    let needle = format!("{prefix}::");
    for (at, _) in line.match_indices(&needle) {
        let before = line[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        expand("", &line[at + needle.len()..], &mut out);
    }
    out
}

/// Module dependencies of a crate's source: which modules each module names. A module
/// naming its ancestors (the items they declare for their children) or its descendants is
/// the usual shape and not counted; root re-exports (`pub use a::X` in `lib.rs`) count as
/// the module they come from.
fn module_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    // Root re-exports: name → module.
    let mut reexports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for root in ["lib.rs", "main.rs"] {
        let Ok(text) = fs::read_to_string(src.join(root)) else {
            continue;
        };
        for line in text.lines().filter(|l| l.starts_with("pub use ")) {
            let path = line["pub use ".len()..].trim_end_matches(';');
            for full in named_paths(&format!("crate::{path}"), "crate") {
                let parts: Vec<&str> = full.split("::").collect();
                if let Some((name, module)) = parts.split_last() {
                    reexports.insert(
                        name.to_string(),
                        module.iter().map(|s| s.to_string()).collect(),
                    );
                }
            }
        }
    }
    let resolve = |path: Vec<String>| -> Vec<String> {
        if path.len() == 1
            && let Some(module) = reexports.get(&path[0])
        {
            return module.clone();
        }
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p))
            .unwrap_or_default()
    };
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let text = fs::read_to_string(file).unwrap();
        // Unit tests (a `#[cfg(test)] mod` at the end) may use any module.
        let code = match text.find("#[cfg(test)]\nmod ") {
            Some(at) => &text[..at],
            None => &text[..],
        };
        let deps = graph.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let mut named: Vec<Vec<String>> = named_paths(line, "crate")
                .into_iter()
                .map(|p| p.split("::").map(str::to_owned).collect())
                .collect();
            for p in named_paths(line, "super") {
                let mut full = module[..module.len().saturating_sub(1)].to_vec();
                full.extend(p.split("::").map(str::to_owned));
                named.push(full);
            }
            for path in named {
                let target = resolve(path);
                let related = target.starts_with(&module) || module.starts_with(&target);
                if !related {
                    deps.insert(target);
                }
            }
        }
    }
    graph
}

/// Modules depend on each other one way: no import cycles between the modules of any crate
/// or of xtask (`builder.rs`↔`log.rs`, the benchmark modules and `ci.rs`↔`wine.rs` had some).
#[test]
fn module_imports_go_one_way() {
    let root = project_root();
    let mut srcs = vec![root.join("xtask/src")];
    for entry in fs::read_dir(root.join("crates")).unwrap() {
        srcs.push(entry.unwrap().path().join("src"));
    }
    let mut cycles = Vec::new();
    for src in srcs {
        let graph = module_graph(&src);
        // Depth-first search for a back edge.
        fn visit(
            node: &Vec<String>,
            graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
            stack: &mut Vec<Vec<String>>,
            done: &mut BTreeSet<Vec<String>>,
        ) -> Option<Vec<Vec<String>>> {
            if let Some(at) = stack.iter().position(|n| n == node) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            if !done.insert(node.clone()) {
                return None;
            }
            stack.push(node.clone());
            for next in graph.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, stack, done) {
                    return Some(cycle);
                }
            }
            stack.pop();
            None
        }
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
                let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
                cycles.push(format!("{}: {}", src.display(), names.join(" -> ")));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules import each other in cycles:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn named_paths_expand_braces() {
    assert_eq!(
        named_paths("use crate::a::{b::{C, D}, e};", "crate"),
        ["a::b::C", "a::b::D", "a::e"]
    );
    assert_eq!(named_paths("x(super::y::z(1))", "super"), ["y::z"]);
    assert!(named_paths("$crate::bench::util::x", "crate").is_empty());
}

/// Each crate's place in the stack: the Strata crates it may depend on (directly, as a
/// normal dependency), and outside crates it must not. `docs/architecture.md` states these;
/// a new crate gets a row here, or this test fails.
const CRATE_RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "strata-process",
        &[],
        &["rusqlite", "tokio", "bollard", "clap", "anyhow"],
    ),
    (
        "strata-spec",
        &[],
        &[
            "rusqlite",
            "tokio",
            "bollard",
            "clap",
            "anyhow",
            "windows-sys",
        ],
    ),
    (
        "strata-cas",
        &[],
        &[
            "rusqlite",
            "tokio",
            "bollard",
            "clap",
            "anyhow",
            "oci-spec",
            "windows-sys",
            "ureq",
        ],
    ),
    (
        "strata-snapshot",
        &["strata-cas", "strata-process"],
        &["tokio", "bollard", "clap", "anyhow", "oci-spec", "ureq"],
    ),
    (
        "strata-isolate",
        &["strata-process"],
        &["rusqlite", "tokio", "bollard", "clap", "anyhow", "ureq"],
    ),
    (
        "strata-docker",
        &["strata-cas", "strata-isolate", "strata-process"],
        &["rusqlite", "clap", "anyhow"],
    ),
    (
        "strata-oci",
        &["strata-cas", "strata-snapshot"],
        &["tokio", "bollard", "clap", "anyhow", "rusqlite", "oci-spec"],
    ),
    (
        "strata-build",
        &[
            "strata-cas",
            "strata-snapshot",
            "strata-isolate",
            "strata-spec",
        ],
        &[
            "tokio",
            "bollard",
            "clap",
            "anyhow",
            "oci-spec",
            "windows-sys",
            "ureq",
        ],
    ),
    (
        "strata",
        &[
            "strata-build",
            "strata-cas",
            "strata-isolate",
            "strata-snapshot",
            "strata-spec",
            "strata-docker",
            "strata-oci",
        ],
        &["clap", "anyhow"],
    ),
    (
        "strata-cli",
        &[
            "strata",
            "strata-build",
            "strata-cas",
            "strata-isolate",
            "strata-snapshot",
            "strata-spec",
            "strata-docker",
            "strata-oci",
            "strata-process",
        ],
        &[],
    ),
    ("strata-test-support", &[], &["anyhow"]),
];

/// Every crate has dependency rules, and keeps them.
#[test]
fn every_crate_keeps_its_place_in_the_stack() {
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let krate = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some((_, allowed, forbidden)) = CRATE_RULES.iter().find(|(k, _, _)| *k == krate) else {
            panic!(
                "{krate} has no dependency rules: add a row to CRATE_RULES in xtask/src/tidy.rs and say where it sits in docs/architecture.md"
            );
        };
        for dep in manifest_dependencies(&krate) {
            assert!(
                !dep.starts_with("strata") || allowed.contains(&dep.as_str()),
                "{krate} must not depend on {dep} (its Strata dependencies: {allowed:?})"
            );
            assert!(
                !forbidden.contains(&dep.as_str()),
                "{krate} must not depend on {dep}"
            );
        }
    }
}

/// Every crate has a section in `docs/architecture.md`'s code map.
#[test]
fn the_code_map_names_every_crate() {
    let doc = fs::read_to_string(project_root().join("docs/architecture.md")).unwrap();
    for entry in fs::read_dir(project_root().join("crates")).unwrap() {
        let krate = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            doc.contains(&format!("### `crates/{krate}`")),
            "docs/architecture.md has no code map section for crates/{krate}"
        );
    }
}

#[test]
fn the_module_graph_sees_imports_both_ways() {
    let src = std::env::temp_dir().join(format!("strata-tidy-graph-{}", std::process::id()));
    fs::create_dir_all(src.join("bench")).unwrap();
    fs::write(
        src.join("main.rs"),
        "//! m\nmod ci;\nmod wine;\nmod bench;\n",
    )
    .unwrap();
    fs::write(src.join("ci.rs"), "//! c\nfn f() { crate::wine::run(); }\n").unwrap();
    fs::write(src.join("wine.rs"), "//! w\nuse crate::ci::{A, b::C};\n").unwrap();
    fs::write(src.join("bench/mod.rs"), "//! b\nmod a;\n").unwrap();
    fs::write(
        src.join("bench/a.rs"),
        "//! a\nuse super::Paths;\nuse super::super::ci;\n",
    )
    .unwrap();
    let graph = module_graph(&src);
    fs::remove_dir_all(&src).unwrap();
    let m = |s: &str| -> Vec<String> {
        s.split("::")
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert!(graph[&m("ci")].contains(&m("wine")), "{graph:?}");
    assert!(graph[&m("wine")].contains(&m("ci")), "{graph:?}");
    // A child naming its parent is not counted.
    assert!(!graph[&m("bench::a")].contains(&m("bench")), "{graph:?}");
}
