//! The external tools the benchmark needs, and what the report says about the machine.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use super::util::tool_line;

/// GNU time, not the shell keyword: only it prints the maximum RSS with `-f %M`.
pub(crate) const GNU_TIME: &str = "/usr/bin/time";

/// Tools needed by the whole-process cases: (program, Debian package that ships it).
const TOOLS: &[(&str, &str)] = &[
    ("sh", "dash"),
    ("tar", "tar"),
    ("zstd", "zstd"),
    ("b3sum", "b3sum"),
    ("wc", "coreutils"),
    ("sync", "coreutils"),
    ("cp", "coreutils"),
    ("rsync", "rsync"),
    (GNU_TIME, "time"),
    ("dpkg", "dpkg"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
];

/// Tools needed only as root, for the loop-mounted scratch filesystem.
const ROOT_TOOLS: &[(&str, &str)] = &[
    ("mkfs.ext4", "e2fsprogs"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("losetup", "mount"),
];

/// Fails with one message naming every missing tool and the Debian packages to install.
pub(crate) fn check_tools(compare: bool) -> anyhow::Result<()> {
    let mut needed: Vec<(&str, &str)> = if compare { TOOLS.to_vec() } else { Vec::new() };
    if is_root() {
        needed.extend_from_slice(ROOT_TOOLS);
    }
    let missing: Vec<(&str, &str)> = needed
        .into_iter()
        .filter(|(tool, _)| find_program(tool).is_none())
        .collect();
    if !missing.is_empty() {
        let tools: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
        let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        packages.sort_unstable();
        packages.dedup();
        bail!(
            "missing tools for `cargo xtask bench`: {}\ninstall them with: apt-get install {}",
            tools.join(", "),
            packages.join(" ")
        );
    }
    if !compare {
        return Ok(());
    }
    let tar = tool_line(Path::new("tar"), &["--version"]).unwrap_or_default();
    if !tar.contains("GNU tar") {
        bail!(
            "`tar` is not GNU tar (`tar --version` says {tar:?}); install it: apt-get install tar"
        );
    }
    Ok(())
}

/// `program` if it is a path, else the first match on `$PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// What the report says about the machine.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) os: Option<String>,
    pub(crate) kernel: Option<String>,
    pub(crate) nproc: usize,
    pub(crate) cpu_model: Option<String>,
    pub(crate) memory_total_kib: Option<u64>,
    pub(crate) root: bool,
    pub(crate) tar_version: Option<String>,
    pub(crate) zstd_version: Option<String>,
    pub(crate) b3sum_version: Option<String>,
    pub(crate) rustc_version: Option<String>,
    pub(crate) strata_version: Option<String>,
}

pub(crate) fn collect() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let os = read("/etc/os-release").and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
    });
    let kernel = read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned());
    let cpu_model = read("/proc/cpuinfo").and_then(|s| {
        s.lines()
            .filter(|l| l.starts_with("model name"))
            .find_map(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    });
    let memory_total_kib = read("/proc/meminfo").and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    });
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Machine {
        os,
        kernel,
        nproc: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model,
        memory_total_kib,
        root: is_root(),
        tar_version: tool_line(Path::new("tar"), &["--version"]),
        zstd_version: tool_line(Path::new("zstd"), &["--version"]).map(|v| {
            v.trim_matches(|c: char| c == '*' || c.is_whitespace())
                .to_owned()
        }),
        b3sum_version: tool_line(Path::new("b3sum"), &["--version"]),
        rustc_version: tool_line(Path::new(&rustc), &["--version"]),
        strata_version: None,
    }
}
