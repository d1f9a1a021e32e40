//! Requirements of a test (root, a tool, a kernel feature): skipped with a note where they
//! are missing, a failure under CI, which installs everything and runs as root.

use std::process::Command;

/// Whether the tests run under CI (`CI` set), where every requirement must be met.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Whether a test, or the part of one that checks `what`, can run here; `problem` says why
/// not (`None`: it can). Under CI a problem fails the test; elsewhere the test says on
/// stderr what it skipped, and the caller returns (or moves on) when this is `false`.
///
/// This is the only place that decides to skip, so that no test passes in CI by skipping.
#[track_caller]
pub fn require(what: &str, problem: Option<String>) -> bool {
    match problem {
        None => true,
        Some(problem) if under_ci() => panic!("{what} must run under CI, but {problem}"),
        Some(problem) => {
            eprintln!("skipped {what}: {problem}");
            false
        }
    }
}

/// `None` when the tests run as root, else why not.
pub fn root() -> Option<String> {
    #[cfg(unix)]
    let root = rustix::process::geteuid().is_root();
    #[cfg(not(unix))]
    let root = false;
    (!root).then(|| "it needs root".to_owned())
}

/// `None` when `program --version` runs and succeeds, else why not.
pub fn tool(program: &str) -> Option<String> {
    runs(program, &["--version"])
}

/// `None` when `program args` runs and succeeds, else why not: for tools without
/// `--version`, or to check that a feature works.
pub fn runs(program: &str, args: &[&str]) -> Option<String> {
    let shown = || {
        [program]
            .iter()
            .chain(args)
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    };
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`{}` failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("`{}` cannot run: {e}", shown())),
    }
}

/// `None` where builds can run jobs under runc: runc, root and a static busybox at
/// `/bin/busybox` (the base image's one program), else why not.
pub fn runc() -> Option<String> {
    tool("runc").or_else(root).or_else(|| {
        (!std::path::Path::new("/bin/busybox").exists())
            .then(|| "/bin/busybox (busybox-static) is missing".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_requirement_holds_everywhere() {
        assert!(require("nothing", None));
    }

    #[test]
    fn a_missing_tool_is_named() {
        let problem = tool("strata-no-such-tool").unwrap();
        assert!(problem.contains("strata-no-such-tool"), "{problem}");
    }
}
