//! The report: `target/bench/report.json` (this module's types, serialized) and
//! `target/bench/report.md` (the same, as tables).

use std::fmt::{self, Write as _};
use std::process::Command;

use serde::Serialize;

use super::fixture::{FixtureInfo, mb};
use super::machine::Machine;
use super::micro::MicroResult;
use super::scratch::FilesystemInfo;
use super::util::Paths;

/// A case's goal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The ratio must be at least this.
    AtLeast(f64),
    /// The ratio must be at most this.
    AtMost(f64),
    /// The value, in MiB, must be below this.
    Below(f64),
    /// The value, in seconds, must be below this.
    UnderSeconds(f64),
    /// No target: the figure is reported for comparison only (shown as `–`, always passes).
    None,
}

/// How a case without a target shows its target.
pub(crate) const NO_TARGET: &str = "–";

impl Target {
    pub(crate) fn pass(self, value: f64) -> bool {
        match self {
            Target::AtLeast(t) => value >= t,
            Target::AtMost(t) => value <= t,
            Target::Below(t) | Target::UnderSeconds(t) => value < t,
            Target::None => true,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::AtLeast(t) => write!(f, ">= {t}"),
            Target::AtMost(t) => write!(f, "<= {t}"),
            Target::Below(t) => write!(f, "< {t} MiB"),
            Target::UnderSeconds(t) if *t < 1.0 => write!(f, "< {} ms", t * 1e3),
            Target::UnderSeconds(t) => write!(f, "< {t} s"),
            Target::None => f.write_str(NO_TARGET),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Case {
    Time(TimeCase),
    Size(SizeCase),
    Memory(MemoryCase),
    Latency(LatencyCase),
}

impl Case {
    fn name(&self) -> &str {
        match self {
            Case::Time(c) => &c.name,
            Case::Size(c) => &c.name,
            Case::Memory(c) => &c.name,
            Case::Latency(c) => &c.name,
        }
    }

    /// Whether the case has a target (rather than a figure reported for comparison).
    fn has_target(&self) -> bool {
        let target = match self {
            Case::Time(c) => &c.target,
            Case::Size(c) => &c.target,
            Case::Memory(c) => &c.target,
            Case::Latency(c) => &c.target,
        };
        target != NO_TARGET
    }

    fn pass(&self) -> bool {
        match self {
            Case::Time(c) => c.pass,
            Case::Size(c) => c.pass,
            Case::Memory(c) => c.pass,
            Case::Latency(c) => c.pass,
        }
    }
}

/// One of our commands timed on its own: the time it reports for its library work
/// (`seconds` in its JSON: from before the store is opened to the result) next to the
/// whole-process wall-clock time.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyCase {
    pub(crate) name: String,
    pub(crate) command: String,
    /// Median of the in-process seconds the command reported.
    pub(crate) in_process_seconds: f64,
    pub(crate) in_process_samples: Vec<f64>,
    /// Median whole-process wall-clock seconds.
    pub(crate) process_seconds: f64,
    pub(crate) process_samples: Vec<f64>,
    /// The target applies to `in_process_seconds`.
    pub(crate) target: String,
    pub(crate) pass: bool,
    /// What the figure is compared with, or what to know when reading it.
    pub(crate) note: Option<String>,
    pub(crate) other_cpu_share: Option<f64>,
}

/// A timed comparison; `ratio` is baseline / ours (higher is better for us).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TimeCase {
    pub(crate) name: String,
    pub(crate) ours_command: String,
    /// Median wall-clock seconds.
    pub(crate) ours_seconds: f64,
    pub(crate) ours_samples: Vec<f64>,
    pub(crate) baseline_command: String,
    pub(crate) baseline_seconds: f64,
    pub(crate) baseline_samples: Vec<f64>,
    pub(crate) ratio: f64,
    pub(crate) target: String,
    pub(crate) pass: bool,
    /// Share of all cores' time used by other processes while the case ran (noise gauge).
    pub(crate) other_cpu_share: Option<f64>,
}

/// A size comparison; `ratio` is ours / baseline (lower is better for us).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SizeCase {
    pub(crate) name: String,
    pub(crate) ours_bytes: u64,
    pub(crate) baseline_command: String,
    pub(crate) baseline_bytes: u64,
    pub(crate) uncompressed_bytes: u64,
    pub(crate) ratio: f64,
    pub(crate) target: String,
    pub(crate) pass: bool,
}

/// The peak resident memory of one of our commands.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemoryCase {
    pub(crate) name: String,
    pub(crate) command: String,
    pub(crate) max_rss_kib: u64,
    pub(crate) max_rss_mib: f64,
    /// File bytes of the tree the layer holds.
    pub(crate) tree_bytes: u64,
    /// Size of the compressed layer.
    pub(crate) layer_bytes: u64,
    pub(crate) target: String,
    pub(crate) pass: bool,
}

/// A sanity check on the outputs (not a performance target).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// `quick` or `full`.
    pub(crate) mode: String,
    /// Runs per whole-process case; the seconds reported are their median.
    pub(crate) runs_per_case: usize,
    /// UTC, as `date -u` gives it.
    pub(crate) date: Option<String>,
    /// Wall-clock time of the whole `cargo xtask bench` run.
    pub(crate) duration_seconds: f64,
    pub(crate) machine: Machine,
    pub(crate) filesystem: Option<FilesystemInfo>,
    pub(crate) fixture: Option<FixtureInfo>,
    /// What `strata layer create --json` printed for the fixture.
    pub(crate) ours_layer: Option<serde_json::Value>,
    pub(crate) cases: Vec<Case>,
    pub(crate) checks: Vec<Check>,
    /// Cases skipped and why, and how the snapshot cases were set up.
    pub(crate) notes: Vec<String>,
    /// Criterion estimates of `benches/benches/cas.rs`.
    pub(crate) micro: Vec<MicroResult>,
}

impl Report {
    pub(crate) fn new(mode: &str, runs: usize, machine: Machine) -> Self {
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|d| !d.is_empty());
        Report {
            mode: mode.to_owned(),
            runs_per_case: runs,
            date,
            duration_seconds: 0.0,
            machine,
            filesystem: None,
            fixture: None,
            ours_layer: None,
            cases: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            micro: Vec::new(),
        }
    }

    pub(crate) fn to_markdown(&self, paths: &Paths) -> String {
        let mut md = String::new();
        self.write_markdown(&mut md, paths)
            .expect("writing to a String cannot fail");
        md
    }

    fn write_markdown(&self, md: &mut String, paths: &Paths) -> fmt::Result {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".to_owned());
        let m = &self.machine;
        writeln!(md, "# Strata benchmark report\n")?;
        writeln!(
            md,
            "Mode **{}**: {} runs per whole-process case (median reported, ours and baseline \
             interleaved); {}; the whole run took {:.0} s.\n",
            self.mode,
            self.runs_per_case,
            opt(&self.date),
            self.duration_seconds
        )?;

        writeln!(md, "## Machine\n")?;
        writeln!(md, "- OS: {}, kernel {}", opt(&m.os), opt(&m.kernel))?;
        writeln!(
            md,
            "- CPU: {} ({} cores available), memory {:.1} GiB, running as root: {}",
            opt(&m.cpu_model),
            m.nproc,
            m.memory_total_kib
                .map_or(0.0, |k| k as f64 / 1024.0 / 1024.0),
            m.root
        )?;
        writeln!(
            md,
            "- Tools: {}; {}; {}; {}; {}",
            opt(&m.tar_version),
            opt(&m.zstd_version),
            opt(&m.b3sum_version),
            opt(&m.rustc_version),
            opt(&m.strata_version)
        )?;
        if let Some(fs) = &self.filesystem {
            writeln!(md, "- Scratch filesystem: {}", fs.description)?;
            if let Some(mount) = &fs.mount {
                writeln!(md, "  (`{mount}`)")?;
            }
        }
        if let Some(fx) = &self.fixture {
            let pkgs: Vec<String> = fx
                .packages
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect();
            writeln!(
                md,
                "- Fixture `{}`: {} entries ({} files, {} dirs, {} symlinks), {:.1} MB of file \
                 data; Debian packages: {}",
                fx.root,
                fx.counts.entries,
                fx.counts.files,
                fx.counts.dirs,
                fx.counts.symlinks,
                mb(fx.counts.bytes),
                pkgs.join(", ")
            )?;
        }
        writeln!(md)?;

        let times: Vec<&TimeCase> = self
            .cases
            .iter()
            .filter_map(|c| if let Case::Time(t) = c { Some(t) } else { None })
            .collect();
        if !times.is_empty() {
            writeln!(md, "## Whole-process time\n")?;
            writeln!(
                md,
                "Ratio = baseline / ours (higher is better for strata).\n"
            )?;
            writeln!(
                md,
                "| Case | strata (s) | baseline (s) | ratio | target | pass | other CPU |"
            )?;
            writeln!(md, "| --- | ---: | ---: | ---: | --- | --- | ---: |")?;
            for t in &times {
                writeln!(
                    md,
                    "| {} | {:.3} | {:.3} | {:.2} | {} | {} | {} |",
                    t.name,
                    t.ours_seconds,
                    t.baseline_seconds,
                    t.ratio,
                    t.target,
                    pass_cell(&t.target, t.pass),
                    share(t.other_cpu_share)
                )?;
            }
            writeln!(
                md,
                "\n\"other CPU\": share of all cores' time used by other processes (and kernel \
                 threads) while the case ran; above ~5% the timings are disturbed."
            )?;
            writeln!(md, "\nCommands:\n")?;
            for t in &times {
                writeln!(md, "- {}: strata `{}`", t.name, t.ours_command)?;
                writeln!(md, "  vs baseline `{}`", t.baseline_command)?;
                writeln!(
                    md,
                    "  (samples, s: strata {}; baseline {})",
                    samples(&t.ours_samples),
                    samples(&t.baseline_samples)
                )?;
            }
            writeln!(md)?;
        }

        let latencies: Vec<&LatencyCase> = self
            .cases
            .iter()
            .filter_map(|c| {
                if let Case::Latency(l) = c {
                    Some(l)
                } else {
                    None
                }
            })
            .collect();
        if !latencies.is_empty() {
            writeln!(
                md,
                "## Snapshot operations
"
            )?;
            writeln!(
                md,
                "\"in-process\" is the time the command reports in its JSON `seconds` (store \
                 opened, operation done); \"process\" is the whole command's wall-clock time. \
                 Medians; targets apply to the in-process time.\n"
            )?;
            writeln!(
                md,
                "| Case | in-process | process | target | pass | other CPU |"
            )?;
            writeln!(md, "| --- | ---: | ---: | --- | --- | ---: |")?;
            for l in &latencies {
                writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    l.name,
                    seconds(l.in_process_seconds),
                    seconds(l.process_seconds),
                    l.target,
                    pass_cell(&l.target, l.pass),
                    share(l.other_cpu_share)
                )?;
            }
            writeln!(md, "\nCommands:\n")?;
            for l in &latencies {
                writeln!(md, "- {}: `{}`", l.name, l.command)?;
                if let Some(note) = &l.note {
                    writeln!(md, "  ({note})")?;
                }
                writeln!(
                    md,
                    "  (samples: in-process {}; process {})",
                    l.in_process_samples
                        .iter()
                        .map(|&v| seconds(v))
                        .collect::<Vec<_>>()
                        .join(", "),
                    l.process_samples
                        .iter()
                        .map(|&v| seconds(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                )?;
            }
            writeln!(md)?;
        }

        for c in &self.cases {
            if let Case::Size(sz) = c {
                writeln!(md, "## Compressed size\n")?;
                writeln!(
                    md,
                    "Ratio = strata / baseline (lower is better for strata).\n"
                )?;
                writeln!(
                    md,
                    "| Case | uncompressed tar (B) | strata (B) | baseline (B) | ratio | target | pass |"
                )?;
                writeln!(md, "| --- | ---: | ---: | ---: | ---: | --- | --- |")?;
                writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.4} | {} | {} |\n",
                    sz.name,
                    sz.uncompressed_bytes,
                    sz.ours_bytes,
                    sz.baseline_bytes,
                    sz.ratio,
                    sz.target,
                    yes_no(sz.pass)
                )?;
                writeln!(md, "Baseline: `{}`\n", sz.baseline_command)?;
            }
        }

        let mems: Vec<&MemoryCase> = self
            .cases
            .iter()
            .filter_map(|c| {
                if let Case::Memory(mc) = c {
                    Some(mc)
                } else {
                    None
                }
            })
            .collect();
        if !mems.is_empty() {
            writeln!(md, "## Peak memory (max RSS, GNU time %M)\n")?;
            writeln!(
                md,
                "| Case | tree (MB) | layer (MB) | max RSS (MiB) | target | pass |"
            )?;
            writeln!(md, "| --- | ---: | ---: | ---: | --- | --- |")?;
            for mc in &mems {
                writeln!(
                    md,
                    "| {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                    mc.name,
                    mb(mc.tree_bytes),
                    mb(mc.layer_bytes),
                    mc.max_rss_mib,
                    mc.target,
                    yes_no(mc.pass)
                )?;
            }
            writeln!(md)?;
        }

        if !self.checks.is_empty() {
            writeln!(md, "## Checks\n")?;
            for c in &self.checks {
                writeln!(
                    md,
                    "- {}: {} ({})",
                    c.name,
                    if c.ok { "ok" } else { "FAILED" },
                    c.detail
                )?;
            }
            writeln!(md)?;
        }

        if !self.micro.is_empty() {
            writeln!(
                md,
                "## Micro-benchmarks (criterion, `benches/benches/cas.rs`)\n"
            )?;
            writeln!(
                md,
                "Time per iteration as criterion prints it (the regression slope when it \
                 sampled linearly, else the mean), with its 95% confidence interval.\n"
            )?;
            writeln!(md, "| Benchmark | time | 95% CI | throughput |")?;
            writeln!(md, "| --- | ---: | ---: | ---: |")?;
            for r in &self.micro {
                writeln!(
                    md,
                    "| {} | {} | {} – {} | {} |",
                    r.id,
                    duration(r.estimate_ns),
                    duration(r.estimate_lower_ns),
                    duration(r.estimate_upper_ns),
                    r.throughput.clone().unwrap_or_else(|| "–".to_owned())
                )?;
            }
            writeln!(md)?;
        }

        if !self.notes.is_empty() {
            writeln!(md, "## Notes\n")?;
            for note in &self.notes {
                writeln!(md, "- {note}")?;
            }
            writeln!(md)?;
        }

        let targeted = self.cases.iter().filter(|c| c.has_target()).count();
        let failed: Vec<&str> = self
            .cases
            .iter()
            .filter(|c| c.has_target() && !c.pass())
            .map(Case::name)
            .collect();
        if self.cases.is_empty() {
            writeln!(md, "No whole-process case ran.")?;
        } else if failed.is_empty() {
            writeln!(md, "All {targeted} targets met.")?;
        } else {
            writeln!(
                md,
                "Targets missed ({} of {targeted}): {}.",
                failed.len(),
                failed.join(", ")
            )?;
        }
        writeln!(
            md,
            "\nFull data: `{}`.",
            paths.show(&paths.bench.join("report.json"))
        )?;
        Ok(())
    }
}

fn yes_no(pass: bool) -> &'static str {
    if pass { "yes" } else { "**no**" }
}

/// The pass column: `–` when there is no target.
fn pass_cell(target: &str, pass: bool) -> &'static str {
    if target == NO_TARGET {
        NO_TARGET
    } else {
        yes_no(pass)
    }
}

/// The "other CPU" column.
fn share(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| format!("{:.0}%", v * 100.0))
}

/// Seconds, in ms below one second: `4.21 ms`, `1.234 s`.
fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

fn samples(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{s:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Nanoseconds, in a readable unit.
fn duration(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
