//! The host driver: plain processes in their own process group.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use strata_isolate::host::HostDriver;
use strata_isolate::{Cancel, Driver, Error, Job, NetworkMode, Outcome, User};

use crate::BrokenLog;

fn job(root: &Path, script: &str) -> Job {
    Job {
        name: strata_isolate::job_name(0),
        root: root.to_owned(),
        argv: ["/bin/sh", "-c", script].map(str::to_owned).to_vec(),
        cwd: "/".to_owned(),
        env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
        user: HostDriver::new(1).capabilities().default_user.clone(),
        network: NetworkMode::None,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "builder".to_owned(),
    }
}

fn run(job: &Job, cancel: &Cancel) -> (Outcome, String) {
    let driver = HostDriver::new(1);
    let plan = driver.plan(job).unwrap();
    let mut log = Vec::new();
    let outcome = driver.run(&plan, &mut log, cancel).unwrap();
    (outcome, String::from_utf8(log).unwrap())
}

#[test]
fn output_is_merged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
    let (outcome, log) = run(&job(dir.path(), script), &Cancel::new());
    assert_eq!(outcome, Outcome::Exited(0));
    let expected: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(log, expected);
}

#[test]
fn exit_status_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        run(&job(dir.path(), "exit 7"), &Cancel::new()).0,
        Outcome::Exited(7)
    );
    assert_eq!(
        run(&job(dir.path(), "kill -9 $$"), &Cancel::new()).0,
        Outcome::Signalled(9)
    );
}

#[test]
fn missing_program_is_the_jobs_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = job(dir.path(), "");
    job.argv = vec!["/nonexistent/program".to_owned()];
    let (outcome, log) = run(&job, &Cancel::new());
    assert_eq!(outcome, Outcome::Exited(127));
    assert!(log.contains("/nonexistent/program"), "{log}");
}

#[test]
fn runs_in_root_joined_with_cwd_with_only_the_jobs_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = job(dir.path(), "pwd; env | sort");
    job.cwd = "/src/sub".to_owned();
    job.env.push(("FOO".to_owned(), "bar baz".to_owned()));
    let (outcome, log) = run(&job, &Cancel::new());
    assert_eq!(outcome, Outcome::Exited(0));
    let mut lines = log.lines();
    let pwd = lines.next().unwrap();
    assert_eq!(
        Path::new(pwd).canonicalize().unwrap(),
        dir.path().join("src/sub").canonicalize().unwrap()
    );
    let env: Vec<&str> = lines
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .collect();
    assert_eq!(env, ["FOO=bar baz", "PATH=/usr/bin:/bin"]);
}

#[test]
fn cancel_kills_the_whole_process_group_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = Cancel::new();
    let canceller = {
        let cancel = cancel.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            cancel.cancel();
            Instant::now()
        })
    };
    let (outcome, log) = run(
        &job(dir.path(), "sleep 1006 & echo started; sleep 1003"),
        &cancel,
    );
    let cancelled_at = canceller.join().unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(log, "started\n");
    #[cfg(target_os = "linux")]
    assert!(crate::eventually(Duration::from_secs(2), || {
        !crate::process_exists(&["sleep", "1006"]) && !crate::process_exists(&["sleep", "1003"])
    }));
}

#[test]
fn background_processes_do_not_outlive_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let (outcome, log) = run(
        &job(dir.path(), "sleep 1007 & echo started"),
        &Cancel::new(),
    );
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(log, "started\n");
    // Killed with the group, not waited for through the still-open pipe.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    #[cfg(target_os = "linux")]
    assert!(crate::eventually(Duration::from_secs(2), || {
        !crate::process_exists(&["sleep", "1007"])
    }));
}

#[test]
fn timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = Cancel::new().with_timeout(Duration::from_millis(300));
    let start = Instant::now();
    let (outcome, _) = run(&job(dir.path(), "sleep 1008"), &cancel);
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn already_cancelled_jobs_do_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = Cancel::new();
    cancel.cancel();
    let (outcome, log) = run(&job(dir.path(), "echo ran"), &cancel);
    assert_eq!(outcome, Outcome::Cancelled);
    assert_eq!(log, "");
}

#[test]
fn a_failing_log_stops_the_job_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let driver = HostDriver::new(1);
    let plan = driver
        .plan(&job(dir.path(), "echo hi; sleep 1009"))
        .unwrap();
    let start = Instant::now();
    let err = driver
        .run(&plan, &mut BrokenLog, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, Error::Os { .. }), "{err}");
    assert!(err.to_string().contains("log"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn refuses_other_users() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = job(dir.path(), "true");
    job.user = User::Unix {
        uid: 12345,
        gid: 12345,
    };
    assert!(matches!(
        HostDriver::new(1).plan(&job),
        Err(Error::Unsupported { .. })
    ));
}
