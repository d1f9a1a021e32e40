//! The criterion micro-benchmarks: runs `cargo bench -p benches` and reads the estimates
//! criterion leaves in `target/criterion/**/new/`.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::util::Paths;

/// Criterion options in quick mode: criterion 0.8's `--quick` stops sampling once the
/// estimate is stable (at most `--measurement-time` seconds per benchmark) and skips warm-up.
const QUICK_ARGS: &[&str] = &["--quick", "--warm-up-time", "1", "--measurement-time", "2"];

/// One benchmark's estimates, in nanoseconds per iteration.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MicroResult {
    /// Criterion's full id, e.g. `tar/parse 2k files`.
    pub(crate) id: String,
    /// Criterion's headline estimate: the slope of the linear regression when criterion
    /// sampled linearly (its default), else the mean; the one it prints as `time:`.
    pub(crate) estimate_ns: f64,
    /// 95% confidence interval of `estimate_ns`.
    pub(crate) estimate_lower_ns: f64,
    pub(crate) estimate_upper_ns: f64,
    pub(crate) mean_ns: f64,
    pub(crate) median_ns: f64,
    /// Bytes (or elements) per iteration, when the benchmark declares a throughput.
    pub(crate) throughput_per_iteration: Option<u64>,
    /// e.g. `812.4 MiB/s`.
    pub(crate) throughput: Option<String>,
}

pub(crate) fn run(
    paths: &Paths,
    work: &Path,
    quick: bool,
    since: SystemTime,
) -> anyhow::Result<Vec<MicroResult>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["bench", "-p", "benches", "--bench", "cas", "--", "--noplot"]);
    if quick {
        cmd.args(QUICK_ARGS);
    }
    // The extract benchmark makes and deletes trees: keep them on the scratch filesystem.
    let tmp = work.join("criterion-tmp");
    std::fs::create_dir_all(&tmp)?;
    // Criterion's console output goes to our stderr: our stdout is for the report.
    cmd.env("STRATA_BENCH_TMPDIR", &tmp)
        .current_dir(&paths.root)
        .stdout(std::io::stderr());
    say!("running criterion: {cmd:?}");
    let status = cmd.status().context("running cargo bench")?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.success() {
        bail!("`cargo bench -p benches` failed ({status})");
    }
    collect(&paths.target.join("criterion"), since)
}

/// Reads every `new/estimates.json` under `dir` written after `since`.
fn collect(dir: &Path, since: SystemTime) -> anyhow::Result<Vec<MicroResult>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    found.push(path);
                } else {
                    stack.push(path);
                }
            }
        }
    }
    let mut results = Vec::new();
    for new in found {
        let estimates = new.join("estimates.json");
        let fresh = std::fs::metadata(&estimates)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if fresh {
            results.push(read_one(&new).with_context(|| format!("reading {}", new.display()))?);
        }
    }
    results.sort_by(|a, b| a.id.cmp(&b.id));
    if results.is_empty() {
        bail!("criterion left no fresh estimates under {}", dir.display());
    }
    Ok(results)
}

fn read_one(new: &Path) -> anyhow::Result<MicroResult> {
    let read = |name: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            new.join(name),
        )?)?)
    };
    let est = read("estimates.json")?;
    let bench = read("benchmark.json")?;
    let num = |v: &serde_json::Value, path: &[&str]| -> f64 {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let typical = if est.get("slope").is_some_and(|v| !v.is_null()) {
        "slope"
    } else {
        "mean"
    };
    let estimate_ns = num(&est, &[typical, "point_estimate"]);
    let id = bench
        .get("full_id")
        .and_then(|v| v.as_str())
        .map_or_else(|| new.display().to_string(), str::to_owned);
    let (per_iter, throughput) = match bench.get("throughput").and_then(|t| t.as_object()) {
        Some(t) => {
            let (kind, n) = t
                .iter()
                .next()
                .map_or(("", 0), |(k, v)| (k.as_str(), v.as_u64().unwrap_or(0)));
            let per_sec = n as f64 / (estimate_ns / 1e9);
            let text = match kind {
                "Bytes" | "BytesDecimal" => format!("{:.1} MiB/s", per_sec / (1 << 20) as f64),
                "Elements" => format!("{per_sec:.0} elem/s"),
                _ => format!("{per_sec:.0} {kind}/s"),
            };
            (Some(n), Some(text))
        }
        None => (None, None),
    };
    Ok(MicroResult {
        id,
        estimate_ns,
        estimate_lower_ns: num(&est, &[typical, "confidence_interval", "lower_bound"]),
        estimate_upper_ns: num(&est, &[typical, "confidence_interval", "upper_bound"]),
        mean_ns: num(&est, &["mean", "point_estimate"]),
        median_ns: num(&est, &["median", "point_estimate"]),
        throughput_per_iteration: per_iter,
        throughput,
    })
}
