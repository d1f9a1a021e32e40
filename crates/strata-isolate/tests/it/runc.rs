//! The runc driver against real runc, as root, with a busybox rootfs in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use strata_isolate::busybox::{busybox_rootfs, static_busybox};
use strata_isolate::runc::{RuncDriver, RuncOptions};
use strata_isolate::{
    BindMount, Cancel, Driver, Error, Job, Limits, NetworkMode, Outcome, SecretMount, User,
};
use strata_test_support::require;
use tempfile::TempDir;

use crate::{BrokenLog, eventually, process_exists};

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// A busybox rootfs and a runc driver with its own state dir.
struct Sandbox {
    dir: TempDir,
    rootfs: PathBuf,
    driver: RuncDriver,
}

impl Sandbox {
    /// `None` (the test skips) without runc, root or a static busybox, except under CI.
    fn new() -> Option<Sandbox> {
        Sandbox::with(|_| {})
    }

    fn with(configure: impl FnOnce(&mut RuncOptions)) -> Option<Sandbox> {
        let dir = tempfile::tempdir().unwrap();
        let mut options = RuncOptions::new(dir.path().join("state"));
        configure(&mut options);
        let driver = RuncDriver::new(options);
        if !require("runc as root", driver.check().err().map(|e| e.to_string()))
            || !require(
                "a static busybox",
                static_busybox().err().map(|e| e.to_string()),
            )
        {
            return None;
        }
        let rootfs = dir.path().join("rootfs");
        busybox_rootfs(&rootfs).unwrap();
        Some(Sandbox {
            dir,
            rootfs,
            driver,
        })
    }

    fn job(&self, script: &str) -> Job {
        Job {
            name: strata_isolate::job_name(NEXT_JOB.fetch_add(1, Ordering::Relaxed)),
            root: self.rootfs.clone(),
            argv: ["/bin/sh", "-c", script].map(str::to_owned).to_vec(),
            cwd: "/".to_owned(),
            env: vec![(
                "PATH".to_owned(),
                "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            )],
            user: User::Unix { uid: 0, gid: 0 },
            network: NetworkMode::None,
            mounts: Vec::new(),
            secrets: Vec::new(),
            hostname: "builder".to_owned(),
        }
    }

    fn run_with(&self, job: &Job, cancel: &Cancel) -> (Outcome, String) {
        let plan = self.driver.plan(job).unwrap();
        let mut log = Vec::new();
        let outcome = self.driver.run(&plan, &mut log, cancel).unwrap();
        (outcome, String::from_utf8(log).unwrap())
    }

    fn run(&self, job: &Job) -> (Outcome, String) {
        self.run_with(job, &Cancel::new())
    }

    /// Runs a script that must succeed; its log.
    fn ok(&self, job: &Job) -> String {
        let (outcome, log) = self.run(job);
        assert_eq!(outcome, Outcome::Exited(0), "{log}");
        log
    }

    /// What `runc list` says about our root.
    fn runc_list(&self) -> String {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.driver.runc_root())
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// Nothing of job `name` is left: no container, no bundle.
    fn assert_gone(&self, name: &str) {
        self.driver.wait_for_deletes();
        assert_eq!(self.runc_list(), "");
        assert_eq!(self.driver.containers().unwrap(), Vec::<String>::new());
        assert!(!self.driver.bundle_dir(name).exists());
    }
}

#[test]
fn output_is_merged_in_order() {
    let Some(sb) = Sandbox::new() else { return };
    let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
    let job = sb.job(script);
    let log = sb.ok(&job);
    let expected: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(log, expected);
    sb.assert_gone(&job.name);
}

#[test]
fn large_output_arrives_whole() {
    let Some(sb) = Sandbox::new() else { return };
    let log = sb.ok(&sb.job("seq 1 200000"));
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(
        log == expected,
        "{} bytes, expected {}",
        log.len(),
        expected.len()
    );
}

#[test]
fn exit_status_and_signals() {
    let Some(sb) = Sandbox::new() else { return };
    assert_eq!(sb.run(&sb.job("exit 3")).0, Outcome::Exited(3));
    // The container's init is this process's child: a signal death is told apart from
    // an exit status. (Inside, pid 1 cannot be killed, so it is signalled from outside.)
    let job = sb.job("sleep 1010");
    let outcome = thread::scope(|s| {
        let run = s.spawn(|| sb.run(&job).0);
        let runc = |args: &[&str]| {
            Command::new("runc")
                .arg("--root")
                .arg(sb.driver.runc_root())
                .args(args)
                .stderr(Stdio::null())
                .output()
                .unwrap()
        };
        // Killed while merely created, runc's start would fail instead.
        let running = eventually(Duration::from_secs(5), || {
            String::from_utf8_lossy(&runc(&["state", &job.name]).stdout)
                .contains("\"status\": \"running\"")
        });
        assert!(running);
        let killed = runc(&["kill", &job.name, "KILL"]).status.success();
        assert!(killed);
        run.join().unwrap()
    });
    assert_eq!(outcome, Outcome::Signalled(9));
}

#[test]
fn missing_program_fails_with_runcs_message() {
    let Some(sb) = Sandbox::new() else { return };
    let mut job = sb.job("");
    job.argv = vec!["/no/such/program".to_owned()];
    let (outcome, log) = sb.run(&job);
    assert!(!outcome.success());
    assert!(log.contains("/no/such/program"), "{log}");
    sb.assert_gone(&job.name);
}

#[test]
fn obuilders_default_shell_works_with_busybox() {
    let Some(sb) = Sandbox::new() else { return };
    let mut job = sb.job("");
    job.argv = sb.driver.capabilities().default_shell.clone();
    job.argv.push("echo $0 ok".to_owned());
    assert_eq!(sb.ok(&job), "/bin/sh ok\n");
}

#[test]
fn runs_as_the_jobs_user() {
    let Some(sb) = Sandbox::new() else { return };
    assert_eq!(sb.ok(&sb.job("id -u; id -g")), "0\n0\n");
    let mut job = sb.job("id -u; id -g; touch /root/x 2>/dev/null && echo writable || echo denied");
    job.user = User::Unix {
        uid: 1000,
        gid: 1001,
    };
    assert_eq!(sb.ok(&job), "1000\n1001\ndenied\n");
}

#[test]
fn capabilities_are_the_twelve_none_inheritable() {
    let Some(sb) = Sandbox::new() else { return };
    let log = sb.ok(&sb.job("grep -E '^Cap(Bnd|Eff|Inh|Prm|Amb)' /proc/self/status"));
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP SYS_CHROOT MKNOD
    // AUDIT_WRITE SETFCAP; Docker's a80425fb minus NET_BIND_SERVICE and NET_RAW.
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        assert!(log.contains(&format!("{set}:\t00000000a80401fb")), "{log}");
    }
    // CVE-2022-24769: an inheritable set would let file capabilities raise a user's.
    for set in ["CapInh", "CapAmb"] {
        assert!(log.contains(&format!("{set}:\t0000000000000000")), "{log}");
    }
}

#[test]
fn seccomp_filter_is_active_and_denies_namespaces() {
    let Some(sb) = Sandbox::new() else { return };
    let script = "grep '^Seccomp:' /proc/self/status; \
        unshare -U true 2>&1 && echo userns-made; \
        unshare -m true 2>&1 && echo mountns-made; \
        unshare -p -f true 2>&1 && echo pidns-made; \
        echo end";
    let log = sb.ok(&sb.job(script));
    assert!(log.starts_with("Seccomp:\t2\n"), "{log}");
    assert!(!log.contains("-made"), "{log}");
    assert!(log.contains("Operation not permitted"), "{log}");
    assert!(log.ends_with("end\n"), "{log}");
}

#[test]
fn seccomp_leaves_ordinary_work_alone() {
    let Some(sb) = Sandbox::new() else { return };
    // Processes, pipes, files, signals, chroot (CAP_SYS_CHROOT) and sockets: a refused
    // connection means socket() and connect() were allowed.
    let script = "set -e; mkdir -p /tmp/w; cd /tmp/w; \
        seq 1 1000 | sort -rn | head -n 1 > top; cat top; \
        ln -s top link; chmod 600 top; touch -d '2000-01-01' top; \
        (sleep 30 & kill $!; wait $!) 2>/dev/null || true; \
        chroot / true && echo chroot-ok; \
        nc 127.0.0.1 1 </dev/null 2>&1 | grep -o 'Connection refused'";
    assert_eq!(
        sb.ok(&sb.job(script)),
        "1000\nchroot-ok\nConnection refused\n"
    );
}

/// How many processes (zombies included) the tree under `root` has, seen from the host.
fn tree_size(root: u32) -> usize {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            // `pid (comm) state ppid ...`; comm may hold anything but ends at the last `)`.
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| c));
        i += 1;
    }
    if parents.iter().any(|(pid, _)| *pid == root) {
        tree.len()
    } else {
        0
    }
}

#[test]
fn a_fork_bomb_is_contained_by_the_pids_limit() {
    const LIMIT: usize = 32;
    let Some(sb) = Sandbox::with(|o| o.limits.pids = Some(LIMIT as u64)) else {
        return;
    };
    // Each shell forks another and recurses: 2^9 sleeps without a limit (bounded, so that
    // this test cannot hurt the host even when the limit fails). Pid 1 becomes a sleep that
    // reaps nobody, so exited shells stay as zombies, which count too; the timeout ends it.
    let script = "bomb() { if [ $1 -gt 0 ]; then bomb $(($1 - 1)) & bomb $(($1 - 1)); \
        else sleep 1006; fi; }; bomb 9 & exec sleep 1007";
    let job = sb.job(script);
    let pid_file = sb.driver.bundle_dir(&job.name).join("init.pid");
    // Stopped a few seconds after the bomb nears the limit, however long a loaded machine
    // takes to get it there; the timeout only ends a bomb that never does.
    let cancel = Cancel::new().with_timeout(Duration::from_secs(120));
    let (most, host_forked, (outcome, log)) = thread::scope(|s| {
        let run = s.spawn(|| sb.run_with(&job, &cancel));
        let mut most = 0;
        let mut host_forked = true;
        let mut near_since = None;
        while !run.is_finished() {
            if let Some(init) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                most = most.max(tree_size(init));
            }
            if most >= LIMIT / 2
                && near_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    > Duration::from_secs(3)
            {
                cancel.cancel();
            }
            // The host can still start processes while the job is at its limit.
            host_forked &= Command::new("true").status().is_ok_and(|s| s.success());
            thread::sleep(Duration::from_millis(10));
        }
        (most, host_forked, run.join().unwrap())
    });
    assert_eq!(outcome, Outcome::Cancelled, "{log}");
    assert!(most <= LIMIT, "{most} processes at once, limit {LIMIT}");
    assert!(
        most >= LIMIT / 2,
        "the bomb never got near the limit: {most}"
    );
    assert!(log.contains("can't fork"), "no fork ever failed: {log}");
    assert!(host_forked);
    sb.assert_gone(&job.name);
    assert!(eventually(Duration::from_secs(5), || {
        !process_exists(&["sleep", "1006"]) && !process_exists(&["sleep", "1007"])
    }));
}

#[test]
fn a_job_beyond_its_memory_limit_is_oom_killed() {
    let Some(sb) = Sandbox::with(|o| o.limits.memory = Some(64 << 20)) else {
        return;
    };
    // dd allocates its block and reads zeros into it, touching every page.
    let script = "dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null; echo small $?; \
        dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null; echo large $?";
    // 137: killed by SIGKILL, the OOM killer's signal.
    assert_eq!(sb.ok(&sb.job(script)), "small 0\nlarge 137\n");
}

#[test]
fn limits_reach_the_jobs_cgroups() {
    let Some(sb) = Sandbox::with(|o| {
        o.limits = Limits {
            memory: Some(100 << 20),
            cpus: Some(0.5),
            pids: Some(50),
        }
    }) else {
        return;
    };
    // cgroup v1 mounts each controller under /sys/fs/cgroup; v2 has one directory.
    let script = "cd /sys/fs/cgroup; \
        cat pids/pids.max 2>/dev/null || cat pids.max; \
        cat memory/memory.limit_in_bytes 2>/dev/null || cat memory.max; \
        cat cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us 2>/dev/null || cat cpu.max";
    let log = sb.ok(&sb.job(script));
    let words: Vec<&str> = log.split_whitespace().collect();
    assert_eq!(words, ["50", "104857600", "50000", "100000"], "{log}");
}

#[test]
fn devices_stay_denied() {
    let Some(sb) = Sandbox::new() else { return };
    // CAP_MKNOD makes the node, the device cgroup refuses opening it (Docker's rule).
    let script = "mknod /tmp/mem c 1 1 && echo made; head -c 1 /tmp/mem >/dev/null 2>&1 \
        && echo opened || echo refused; rm -f /tmp/mem";
    assert_eq!(sb.ok(&sb.job(script)), "made\nrefused\n");
}

#[test]
fn a_working_directory_under_proc_is_refused() {
    let Some(sb) = Sandbox::new() else { return };
    let mut job = sb.job("pwd");
    job.cwd = "/tmp/../proc/self/fd/3".to_owned();
    let err = sb.driver.plan(&job).unwrap_err();
    assert!(
        err.to_string()
            .contains("`/tmp/../proc/self/fd/3` is under /proc"),
        "{err}"
    );
}

#[test]
fn working_directory_is_created() {
    let Some(sb) = Sandbox::new() else { return };
    let mut job = sb.job("pwd");
    job.cwd = "/work/dir".to_owned();
    assert_eq!(sb.ok(&job), "/work/dir\n");
}

#[test]
fn environment_is_the_jobs() {
    let Some(sb) = Sandbox::new() else { return };
    let mut job = sb.job("echo \"$FOO\"; env");
    job.env.push(("FOO".to_owned(), "bar baz".to_owned()));
    let log = sb.ok(&job);
    assert!(log.starts_with("bar baz\n"), "{log}");
    assert!(
        log.contains("PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{log}"
    );
    assert!(!log.contains("CARGO"), "host environment leaked: {log}");
}

#[test]
fn hostname_and_hosts() {
    let Some(sb) = Sandbox::new() else { return };
    assert_eq!(
        sb.ok(&sb.job("hostname; cat /etc/hosts")),
        "builder\n127.0.0.1 localhost builder\n"
    );
}

#[test]
fn no_network_by_default_host_network_on_request() {
    let Some(sb) = Sandbox::new() else { return };
    assert_eq!(sb.ok(&sb.job("ls /sys/class/net")), "lo\n");
    let devices = sb.ok(&sb.job("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"));
    assert_eq!(devices, "lo\n");
    assert_eq!(
        sb.ok(&sb.job("cat /etc/resolv.conf")),
        "",
        "the rootfs's own (empty) file"
    );

    let mut job = sb.job("ls /sys/class/net; cat /etc/resolv.conf");
    job.network = NetworkMode::Host;
    let mut host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    host.sort();
    let expected = host.join("\n") + "\n" + &fs::read_to_string("/etc/resolv.conf").unwrap();
    assert_eq!(sb.ok(&job), expected);
}

#[test]
fn secret_is_readable_read_only_and_leaves_no_trace() {
    let Some(sb) = Sandbox::new() else { return };
    let secret = sb.dir.path().join("token");
    fs::write(&secret, "s3cret").unwrap();
    assert!(!sb.rootfs.join("run/secrets").exists());
    let mut job = sb.job(
        "cat /run/secrets/deep/token; echo; echo x > /run/secrets/deep/token || echo read-only",
    );
    job.secrets.push(SecretMount {
        source: secret.clone(),
        target: "/run/secrets/deep/token".to_owned(),
    });
    let log = sb.ok(&job);
    assert!(log.starts_with("s3cret\n"), "{log}");
    assert!(log.ends_with("read-only\n"), "{log}");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "s3cret");
    // runc created the mount point and its parents; none of it stays in the snapshot.
    assert!(!sb.rootfs.join("run/secrets").exists());
    assert!(sb.rootfs.join("run").is_dir());
    sb.assert_gone(&job.name);
}

#[test]
fn cache_mount_is_writable_and_persists() {
    let Some(sb) = Sandbox::new() else { return };
    let cache = sb.dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mount = BindMount {
        source: cache.clone(),
        target: "/var/cache/build".to_owned(),
        readonly: false,
    };
    let mut write = sb.job("echo first > /var/cache/build/data");
    write.mounts.push(mount.clone());
    sb.ok(&write);
    assert_eq!(fs::read_to_string(cache.join("data")).unwrap(), "first\n");
    assert!(
        !sb.rootfs.join("var/cache/build/data").exists(),
        "written to the cache, not the rootfs"
    );

    let mut read =
        sb.job("cat /var/cache/build/data; echo x > /var/cache/build/other || echo read-only");
    read.mounts.push(BindMount {
        readonly: true,
        ..mount
    });
    let log = sb.ok(&read);
    assert!(
        log.starts_with("first\n") && log.ends_with("read-only\n"),
        "{log}"
    );
    assert!(!cache.join("other").exists());
}

#[test]
fn rootfs_writes_persist() {
    let Some(sb) = Sandbox::new() else { return };
    sb.ok(&sb.job("echo hello > /tmp/out"));
    assert_eq!(
        fs::read_to_string(sb.rootfs.join("tmp/out")).unwrap(),
        "hello\n"
    );
}

#[test]
fn cancel_is_prompt_and_leaves_nothing() {
    let Some(sb) = Sandbox::new() else { return };
    let job = sb.job("echo started; sleep 1001");
    let cancel = Cancel::new();
    let canceller = {
        let cancel = cancel.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(500));
            cancel.cancel();
            Instant::now()
        })
    };
    let (outcome, log) = sb.run_with(&job, &cancel);
    let cancelled_at = canceller.join().unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(log, "started\n");
    sb.assert_gone(&job.name);
    assert!(eventually(Duration::from_secs(2), || !process_exists(&[
        "sleep", "1001"
    ])));
}

#[test]
fn timeout() {
    let Some(sb) = Sandbox::new() else { return };
    let job = sb.job("sleep 1002");
    let start = Instant::now();
    let (outcome, _) = sb.run_with(
        &job,
        &Cancel::new().with_timeout(Duration::from_millis(500)),
    );
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    sb.assert_gone(&job.name);
    assert!(eventually(Duration::from_secs(2), || !process_exists(&[
        "sleep", "1002"
    ])));
}

#[test]
fn a_failing_log_stops_the_job_and_cleans_up() {
    let Some(sb) = Sandbox::new() else { return };
    let job = sb.job("echo hi; sleep 1003");
    let plan = sb.driver.plan(&job).unwrap();
    let err = sb
        .driver
        .run(&plan, &mut BrokenLog, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, Error::Os { .. }), "{err}");
    sb.assert_gone(&job.name);
    assert!(eventually(Duration::from_secs(2), || !process_exists(&[
        "sleep", "1003"
    ])));
}

#[test]
fn fast_sync_keeps_the_filter_and_syncs_still_succeed() {
    let Some(sb) = Sandbox::with(|o| o.fast_sync = true) else {
        return;
    };
    let script = "grep '^Seccomp:' /proc/self/status; \
        echo data > /tmp/f && sync && sync /tmp/f && sync -d /tmp/f && sync -f /tmp/f \
        && echo synced; \
        unshare -U true 2>/dev/null || echo still-filtered";
    assert_eq!(
        sb.ok(&sb.job(script)),
        "Seccomp:\t2\nsynced\nstill-filtered\n"
    );
}

#[test]
fn jobs_run_in_parallel() {
    let Some(sb) = Sandbox::new() else { return };
    let start = Instant::now();
    thread::scope(|s| {
        let jobs: Vec<_> = (0..3)
            .map(|i| {
                s.spawn({
                    let sb = &sb;
                    move || sb.ok(&sb.job(&format!("sleep 1; echo {i}")))
                })
            })
            .collect();
        for (i, job) in jobs.into_iter().enumerate() {
            assert_eq!(job.join().unwrap(), format!("{i}\n"));
        }
    });
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

/// Starts a detached container named `name` running `sleep 1004`, as a crashed builder
/// would have left it.
fn leave_container(sb: &Sandbox, name: &str) {
    let mut job = sb.job("sleep 1004");
    job.name = name.to_owned();
    let plan = sb.driver.plan(&job).unwrap();
    let bundle = sb.driver.bundle_dir(name);
    fs::create_dir_all(&bundle).unwrap();
    for file in &plan.files {
        fs::write(bundle.join(&file.path), &file.contents).unwrap();
    }
    let status = Command::new("runc")
        .arg("--root")
        .arg(sb.driver.runc_root())
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn cleanup_removes_only_leftovers_of_dead_builders() {
    let Some(sb) = Sandbox::new() else { return };
    let dead = format!("strata-{}-1", dead_pid());
    let live = strata_isolate::job_name(NEXT_JOB.fetch_add(1, Ordering::Relaxed));
    leave_container(&sb, &dead);
    leave_container(&sb, &live);
    let stale_bundle = format!("strata-{}-2", dead_pid());
    // This process's pid with another start time: an earlier builder that had this pid.
    let me = strata_process::Owner::current();
    let recycled = format!("strata-{}.{}-3", me.pid, me.start_time + 1);
    // A builder that exited and is not reaped yet: its pid is taken, by a zombie.
    let mut zombie = Command::new("cat").stdin(Stdio::piped()).spawn().unwrap();
    let zombie_pid = zombie.id();
    drop(zombie.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(20);
    while strata_process::Owner::of(zombie_pid).is_some() {
        assert!(Instant::now() < deadline, "cat never exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    let zombie_bundle = format!("strata-{zombie_pid}-4");
    for bundle in [&stale_bundle, &recycled, &zombie_bundle, "not-ours"] {
        fs::create_dir_all(sb.driver.bundle_dir(bundle)).unwrap();
    }
    assert_eq!(
        sb.driver.containers().unwrap(),
        sorted([dead.clone(), live.clone()])
    );

    let removed = sb.driver.cleanup().unwrap();
    zombie.wait().unwrap();
    assert_eq!(
        removed,
        sorted([
            dead.clone(),
            stale_bundle.clone(),
            recycled.clone(),
            zombie_bundle.clone()
        ])
    );
    assert_eq!(sb.driver.containers().unwrap(), std::slice::from_ref(&live));
    assert_eq!(sb.runc_list(), format!("{live}\n"));
    assert!(!sb.driver.bundle_dir(&dead).exists());
    assert!(!sb.driver.bundle_dir(&stale_bundle).exists());
    assert!(sb.driver.bundle_dir(&live).exists());
    assert!(
        sb.driver.bundle_dir("not-ours").exists(),
        "names not made by job_name are kept"
    );
    assert_eq!(sb.driver.cleanup().unwrap(), Vec::<String>::new());

    let status = Command::new("runc")
        .arg("--root")
        .arg(sb.driver.runc_root())
        .args(["delete", "--force", &live])
        .status()
        .unwrap();
    assert!(status.success());
}

fn sorted<const N: usize>(mut names: [String; N]) -> Vec<String> {
    names.sort();
    names.to_vec()
}

#[test]
fn check_names_what_is_missing() {
    let driver = RuncDriver::new(RuncOptions {
        runc: PathBuf::from("/nonexistent/runc"),
        ..RuncOptions::new("/tmp/unused")
    });
    let err = driver.check().unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/runc"), "{err}");
}

#[test]
fn busybox_rootfs_has_what_jobs_expect() {
    if !require(
        "a static busybox",
        static_busybox().err().map(|e| e.to_string()),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    busybox_rootfs(root).unwrap();
    // Twice: it is idempotent.
    busybox_rootfs(root).unwrap();
    for path in [
        "bin/busybox",
        "bin/sh",
        "bin/bash",
        "usr/bin/env",
        "etc/passwd",
        "etc/group",
        "etc/hosts",
    ] {
        assert!(root.join(path).exists(), "{path}");
    }
    for dir in ["proc", "sys", "dev", "root", "home", "tmp"] {
        assert!(root.join(dir).is_dir(), "{dir}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
}
