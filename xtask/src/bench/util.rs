//! What every benchmark module shares: where things live, progress lines, and quoting for
//! `sh -c`. A leaf: it uses no other benchmark module.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where things live; every path is absolute.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// The workspace root.
    pub(crate) root: PathBuf,
    /// Cargo's target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
    pub(crate) target: PathBuf,
    /// `<target>/bench`: fixture, scratch filesystem, reports.
    pub(crate) bench: PathBuf,
}

impl Paths {
    pub(crate) fn new() -> Self {
        let root = crate::project_root();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ => root.join("target"),
        };
        let bench = target.join("bench");
        Paths {
            root,
            target,
            bench,
        }
    }

    /// `path` for humans: relative to the workspace root when under it.
    pub(crate) fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// A command line for humans: absolute paths under the workspace root made relative.
    pub(crate) fn show_command(&self, command: &str) -> String {
        let prefix = format!("{}/", self.root.display());
        command.replace(&prefix, "")
    }
}

pub(crate) fn progress(args: std::fmt::Arguments<'_>) {
    // Progress is best effort: a closed stderr must not abort a long benchmark run.
    let _ = writeln!(std::io::stderr().lock(), "[bench] {args}");
}

/// The first line of `program args…` (stdout, else stderr), or `None` when it does not run.
pub(crate) fn tool_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// Quotes `s` for `sh -c`.
pub(crate) fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes a path for `sh -c`.
pub(crate) fn sh_path(p: &Path) -> String {
    sh_quote(&p.to_string_lossy())
}
