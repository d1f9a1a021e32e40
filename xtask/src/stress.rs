//! `cargo xtask stress`: OBuilder's stress test, reproduced against real runc (or, with
//! `--sandbox docker`, the Docker driver on the local engine).
//!
//! N jobs, at most C at a time, in one builder. Job `j` runs 4 steps of `echo -n D >> output`
//! where D is the j-th base-3 digit string (so jobs share long prefixes and identical steps
//! run concurrently), each with the shared cache `stress` at /mnt, then a verify step that
//! prints the file. Every job's result file and log are checked; prints jobs per second.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use strata_build::{BuildOptions, Builder, Transcript};
use strata_isolate::{DriverOptions, Limits};
use strata_snapshot::Engine;

const STEPS: usize = 4;

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut jobs = 100;
    let mut concurrency = 10;
    let mut sandbox = "runc".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--jobs" => jobs = value("--jobs")?,
            "--concurrency" => concurrency = value("--concurrency")?,
            "--sandbox" => {
                sandbox = it.next().context("--sandbox needs runc or docker")?.clone();
                ensure!(
                    sandbox == "runc" || sandbox == "docker",
                    "--sandbox takes runc or docker, not `{sandbox}`"
                );
            }
            other => bail!(
                "unknown option `{other}`; usage: cargo xtask stress [--jobs N] [--concurrency C] \
                 [--sandbox runc|docker]"
            ),
        }
    }
    let dir = crate::project_root().join("target/stress");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("context"))?;
    let report = stress(&dir, jobs, concurrency, &sandbox)?;
    println!(
        "Ran {jobs} jobs with {sandbox} ({concurrency} at a time, {} steps run, {} from cache). Took {:.2} s ({:.2} jobs/s)",
        report.misses,
        report.hits,
        report.seconds,
        jobs as f64 / report.seconds
    );
    Ok(())
}

struct Report {
    seconds: f64,
    hits: u64,
    misses: u64,
}

fn digits(job: usize) -> String {
    (0..STEPS)
        .map(|i| char::from(b'0' + (job / 3usize.pow(i as u32) % 3) as u8))
        .collect()
}

fn spec(job: usize) -> String {
    let mut s = String::from("((from busybox) (shell /bin/sh -c)\n");
    for d in digits(job).chars() {
        s += &format!(" (run (cache (stress (target /mnt))) (shell \"echo -n {d} >> output\"))\n");
    }
    s += " (run (shell \"echo verify; cat output; echo\")))";
    s
}

fn stress(dir: &Path, jobs: usize, concurrency: usize, sandbox: &str) -> anyhow::Result<Report> {
    let store = dir.join("store");
    let engine = Engine::open(&store)?;
    strata_build::base::ensure_busybox(&engine)?;
    let driver: Box<dyn strata_isolate::Driver> = if sandbox == "docker" {
        Box::new(strata_docker::DockerDriver::new(
            strata_docker::DockerOptions::new(concurrency),
        ))
    } else {
        strata_isolate::driver(
            "runc",
            &DriverOptions {
                slots: Some(concurrency),
                fast_sync: true,
                limits: Limits::default(),
                ..DriverOptions::new(store.join("isolate-v1/runc"))
            },
        )?
    };
    driver.check()?;
    let builder = Builder::new(Arc::new(engine), driver)?;
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    if job >= jobs {
                        return;
                    }
                    if let Err(e) = one_job(&builder, dir, job) {
                        failures.lock().unwrap().push(format!("job {job}: {e:#}"));
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let failures = failures.into_inner().unwrap();
    ensure!(
        failures.is_empty(),
        "{} job(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let stats = builder.stats();
    // Every distinct step ran exactly once: 3 + 9 + 27 + 81 prefixes (capped by the job
    // count) plus one verify step per distinct digit string.
    let distinct: u64 = (1..=STEPS as u32)
        .map(|n| jobs.min(3usize.pow(n)) as u64)
        .sum::<u64>()
        + jobs.min(81) as u64;
    ensure!(
        stats.misses == distinct,
        "{} steps ran, expected {distinct}: identical steps must run once",
        stats.misses
    );
    Ok(Report {
        seconds,
        hits: stats.hits,
        misses: stats.misses,
    })
}

fn one_job(builder: &Builder, dir: &Path, job: usize) -> anyhow::Result<()> {
    let spec = strata_spec::parse(&spec(job))?;
    let log = Transcript::new();
    let opts = BuildOptions::new(dir.join("context")).reporter(log.clone());
    let id = builder.build(&spec, &opts)?;
    let text = log.text();
    let want = digits(job);
    ensure!(
        text.contains(&format!("verify\n{want}\n")),
        "log lacks `verify {want}`:\n{text}"
    );
    let out = dir.join(format!("out-{job}"));
    builder.engine().copy_out(&id, &out)?;
    let got = std::fs::read_to_string(out.join("output"))?;
    std::fs::remove_dir_all(&out)?;
    ensure!(got == want, "result holds `{got}`, expected `{want}`");
    Ok(())
}
