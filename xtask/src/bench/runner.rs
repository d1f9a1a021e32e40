//! Runs whole processes side by side: ours and the baselines interleaved (A B A B …), each
//! run preceded by an untimed prepare step, timed with [`Instant`] around [`Command`], after
//! one untimed warm-up round.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use super::machine::GNU_TIME;

/// One side of a comparison.
pub(crate) struct Contender<'a> {
    /// Short name for progress lines.
    pub(crate) label: &'a str,
    /// The program and its arguments.
    pub(crate) argv: Vec<String>,
    /// Untimed step run before every run of this contender (e.g. `rm -rf DST; sync`).
    pub(crate) prepare: &'a dyn Fn() -> anyhow::Result<()>,
}

impl Contender<'_> {
    /// The command line, shell-quoted.
    pub(crate) fn command_line(&self) -> String {
        command_line(&self.argv)
    }
}

/// The timings of one contender.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    pub(crate) seconds: Vec<f64>,
    /// Standard output of the last run.
    pub(crate) stdout: String,
    /// Standard output of every timed run, in order (for commands that report their own
    /// in-process time).
    pub(crate) outputs: Vec<String>,
}

impl Samples {
    pub(crate) fn median(&self) -> f64 {
        median(&self.seconds)
    }
}

/// Runs every contender `runs` times, interleaved; fails on the first failing run.
///
/// Also returns the share of the machine's CPU time (all cores, during the timed runs only)
/// spent by anything but this process and its children: other users' builds, kernel
/// writeback. Above a few percent, the timings are noisy.
pub(crate) fn side_by_side(
    case: &str,
    contenders: &[Contender<'_>],
    runs: usize,
) -> anyhow::Result<(Vec<Samples>, Option<f64>)> {
    side_by_side_with(case, contenders, runs, true)
}

/// [`side_by_side`], with or without the untimed warm-up round (cases whose inputs were
/// just written, hence already in the page cache, can skip it to save time).
pub(crate) fn side_by_side_with(
    case: &str,
    contenders: &[Contender<'_>],
    runs: usize,
    warm_up: bool,
) -> anyhow::Result<(Vec<Samples>, Option<f64>)> {
    let mut samples = vec![Samples::default(); contenders.len()];
    // One untimed round first: it warms the page cache with the inputs and the binaries,
    // which would otherwise penalise whoever runs first.
    if warm_up {
        for contender in contenders {
            (contender.prepare)()
                .with_context(|| format!("preparing {case} / {}", contender.label))?;
            timed(&contender.argv)?;
        }
        say!("{case}: warm-up round done");
    }
    let mut cpu = CpuTimes::default();
    for run in 1..=runs {
        let mut line = format!("{case} {run}/{runs}:");
        for (contender, samples) in contenders.iter().zip(&mut samples) {
            (contender.prepare)()
                .with_context(|| format!("preparing {case} / {}", contender.label))?;
            let before = CpuTimes::now();
            let (seconds, stdout) = timed(&contender.argv)?;
            if let Some((before, after)) = before.zip(CpuTimes::now()) {
                cpu.add_delta(&before, &after);
            }
            samples.seconds.push(seconds);
            samples.outputs.push(stdout.clone());
            samples.stdout = stdout;
            line.push_str(&format!(" {} {seconds:.3}s", contender.label));
        }
        say!("{line}");
    }
    let other = cpu.other_share();
    if let Some(share) = other
        && share > 0.05
    {
        say!(
            "warning: {:.0}% of the CPU went to other processes during {case}; timings are noisy",
            share * 100.0
        );
    }
    Ok((samples, other))
}

/// CPU time counters, in clock ticks (`USER_HZ`, 100 on Linux).
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    /// Busy time of all CPUs (`/proc/stat`: everything but idle and iowait).
    busy: u64,
    /// Total time of all CPUs.
    total: u64,
    /// This process and its waited-for children (`/proc/self/stat`).
    ours: u64,
}

impl CpuTimes {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest times are inside user).
        let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
        let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        let total = busy + field(3) + field(4);
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_comm = &own[own.rfind(')')? + 1..];
        let fields: Vec<u64> = after_comm
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // utime stime cutime cstime are fields 14-17, i.e. 11-14 after the command name.
        let ours = fields.get(11..15)?.iter().sum();
        Some(CpuTimes { busy, total, ours })
    }

    /// Adds the counters' increase from `before` to `after`.
    fn add_delta(&mut self, before: &CpuTimes, after: &CpuTimes) {
        self.busy += after.busy.saturating_sub(before.busy);
        self.total += after.total.saturating_sub(before.total);
        self.ours += after.ours.saturating_sub(before.ours);
    }

    /// For accumulated deltas: the share of CPU time that was busy but not ours.
    fn other_share(&self) -> Option<f64> {
        (self.total > 0).then(|| self.busy.saturating_sub(self.ours) as f64 / self.total as f64)
    }
}

/// Runs `argv` once; returns the wall-clock seconds and its standard output.
pub(crate) fn timed(argv: &[String]) -> anyhow::Result<(f64, String)> {
    let (program, args) = argv.split_first().context("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("starting `{}`", command_line(argv)))?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            command_line(argv),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok((seconds, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Runs `argv` once under GNU time; returns its maximum resident set size in KiB.
pub(crate) fn max_rss_kib(argv: &[String], scratch: &Path) -> anyhow::Result<u64> {
    let out_file = scratch.join("time.out");
    let mut full = vec![
        GNU_TIME.to_owned(),
        "-f".to_owned(),
        "%M".to_owned(),
        "-o".to_owned(),
        out_file.to_string_lossy().into_owned(),
    ];
    full.extend_from_slice(argv);
    timed(&full)?;
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    let _ = std::fs::remove_file(&out_file);
    text.lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .with_context(|| format!("no max RSS in GNU time's output {text:?}"))
}

/// The untimed step before a run: `sync`, so that no run pays for the previous one's
/// writeback. Twice: on a loop-mounted image the first pass turns the image's dirty blocks
/// into dirty pages of the backing file, which the second pass writes out.
pub(crate) fn sync() -> anyhow::Result<()> {
    for _ in 0..2 {
        let status = Command::new("sync").status().context("running sync")?;
        if !status.success() {
            bail!("sync failed ({status})");
        }
    }
    Ok(())
}

/// A contender's prepare step: `path` removed and the removal synced, so every timed run
/// writes into the same empty place without paying for the previous run's deletion.
pub(crate) fn clear_before(path: &Path) -> impl Fn() -> anyhow::Result<()> + use<> {
    let path = path.to_path_buf();
    move || {
        remove(&path)?;
        sync()
    }
}

/// A contender's prepare step for tools that extract into an existing directory (`tar -C`):
/// `path` removed, made again empty, and synced.
pub(crate) fn empty_before(path: &Path) -> impl Fn() -> anyhow::Result<()> + use<> {
    let path = path.to_path_buf();
    move || {
        remove(&path)?;
        std::fs::create_dir_all(&path)?;
        sync()
    }
}

/// Removes `path` (file or tree) if it exists.
pub(crate) fn remove(path: &Path) -> anyhow::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("removing {}", path.display()))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

pub(crate) fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| super::util::sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
