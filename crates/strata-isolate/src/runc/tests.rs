//! Unit tests of the runc plans: the OCI config, the bundle files and the argv, as data.

use serde_json::{Value, json};

use super::*;
use crate::{BindMount, SecretMount};

fn driver() -> RuncDriver {
    RuncDriver::new(RuncOptions {
        slots: 2,
        ..RuncOptions::new("/state")
    })
}

fn job() -> Job {
    Job {
        name: "strata-1-1".to_owned(),
        root: PathBuf::from("/snap/rootfs"),
        argv: ["/usr/bin/env", "bash", "-c", "make"]
            .map(str::to_owned)
            .to_vec(),
        cwd: "/src".to_owned(),
        env: vec![
            ("PATH".to_owned(), "/bin".to_owned()),
            ("A".to_owned(), "b=c".to_owned()),
        ],
        user: User::Unix {
            uid: 1000,
            gid: 100,
        },
        network: NetworkMode::None,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "builder".to_owned(),
    }
}

fn config(driver: &RuncDriver, job: &Job) -> Value {
    driver.plan(job).unwrap().detail
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

fn mount_at<'a>(config: &'a Value, destination: &str) -> Option<&'a Value> {
    config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == destination)
}

#[test]
fn process_matches_obuilder() {
    let config = config(&driver(), &job());
    let process = &config["process"];
    assert_eq!(process["terminal"], false);
    assert_eq!(process["user"], json!({"uid": 1000, "gid": 100}));
    assert_eq!(
        strings(&process["args"]),
        ["/usr/bin/env", "bash", "-c", "make"]
    );
    assert_eq!(strings(&process["env"]), ["PATH=/bin", "A=b=c"]);
    assert_eq!(process["cwd"], "/src");
    assert_eq!(process["noNewPrivileges"], false);
    assert_eq!(
        process["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
    );
    assert_eq!(
        config["root"],
        json!({"path": "/snap/rootfs", "readonly": false})
    );
    assert_eq!(config["hostname"], "builder");
    assert!(process.get("apparmorProfile").is_none());
}

#[test]
fn capabilities_are_dockers_minus_net_raw_and_bind_sorted_none_inheritable() {
    let config = config(&driver(), &job());
    let caps = config["process"]["capabilities"].as_object().unwrap();
    let expected = [
        "CAP_AUDIT_WRITE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_MKNOD",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    ];
    let sets: Vec<&String> = caps.keys().collect();
    assert_eq!(sets.len(), 4, "{sets:?}");
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(strings(&caps[set]), expected, "{set}");
    }
    // CVE-2022-24769: nothing inheritable, no ambient set at all.
    assert_eq!(caps["inheritable"], json!([]));
    assert!(caps.get("ambient").is_none());
}

#[test]
fn namespaces_depend_on_the_network() {
    let namespaces = |network| {
        let config = config(&driver(), &Job { network, ..job() });
        config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        namespaces(NetworkMode::None),
        ["pid", "ipc", "uts", "mount", "network"]
    );
    assert_eq!(
        namespaces(NetworkMode::Host),
        ["pid", "ipc", "uts", "mount"]
    );
}

#[test]
fn standard_mounts_and_hosts() {
    let config = config(&driver(), &job());
    let destinations: Vec<&str> = config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        destinations,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/dev/mqueue",
            "/etc/hosts"
        ]
    );
    let dev = mount_at(&config, "/dev").unwrap();
    assert_eq!(dev["type"], "tmpfs");
    assert!(strings(&dev["options"]).contains(&"mode=755"));
    assert!(strings(&dev["options"]).contains(&"size=65536k"));
    let pts = strings(&mount_at(&config, "/dev/pts").unwrap()["options"]);
    for option in ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] {
        assert!(pts.contains(&option), "{option}");
    }
    assert!(strings(&mount_at(&config, "/sys").unwrap()["options"]).contains(&"ro"));
    let cgroup = mount_at(&config, "/sys/fs/cgroup").unwrap();
    assert_eq!(cgroup["type"], "cgroup");
    assert!(strings(&cgroup["options"]).contains(&"ro"));
    assert!(strings(&mount_at(&config, "/dev/shm").unwrap()["options"]).contains(&"size=65536k"));
    let hosts = mount_at(&config, "/etc/hosts").unwrap();
    assert_eq!(hosts["source"], "/state/bundles/strata-1-1/hosts");
    assert_eq!(hosts["type"], "bind");
    assert!(strings(&hosts["options"]).contains(&"ro"));
    assert!(mount_at(&config, "/etc/resolv.conf").is_none());
    assert_eq!(
        strings(&config["linux"]["maskedPaths"]),
        [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi"
        ]
    );
    assert_eq!(
        strings(&config["linux"]["readonlyPaths"]),
        [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]
    );
    assert_eq!(
        config["linux"]["resources"],
        json!({"pids": {"limit": crate::DEFAULT_PIDS_LIMIT}}),
        "by default, processes only; runc's own device rules"
    );
}

#[test]
fn limits_become_cgroup_settings() {
    let limited = |limits, limit_swap| {
        let mut driver = RuncDriver::new(RuncOptions {
            limits,
            ..RuncOptions::new("/state")
        });
        driver.limit_swap = limit_swap;
        config(&driver, &job())["linux"].get("resources").cloned()
    };
    let limits = Limits {
        memory: Some(512 << 20),
        cpus: Some(0.5),
        pids: Some(100),
    };
    assert_eq!(
        limited(limits, false),
        Some(json!({
            "memory": {"limit": 512 << 20},
            "cpu": {"quota": 50_000, "period": 100_000},
            "pids": {"limit": 100},
        }))
    );
    // Where swap can be limited, the memory limit covers it: no swap for the job.
    assert_eq!(
        limited(limits, true).unwrap()["memory"],
        json!({"limit": 512 << 20, "swap": 512 << 20})
    );
    assert_eq!(limited(Limits::unlimited(), true), None);
    assert_eq!(
        limited(
            Limits {
                cpus: Some(1.0 / 3.0),
                ..Limits::unlimited()
            },
            false
        ),
        Some(json!({"cpu": {"quota": 33_333, "period": 100_000}}))
    );
}

#[test]
fn invalid_limits_are_refused_naming_the_limit() {
    let cases = [
        (
            "memory",
            Limits {
                memory: Some(1 << 20),
                ..Limits::default()
            },
        ),
        (
            "memory",
            Limits {
                memory: Some(u64::MAX),
                ..Limits::default()
            },
        ),
        (
            "cpus",
            Limits {
                cpus: Some(0.001),
                ..Limits::default()
            },
        ),
        (
            "cpus",
            Limits {
                cpus: Some(f64::NAN),
                ..Limits::default()
            },
        ),
        (
            "cpus",
            Limits {
                cpus: Some(crate::default_slots() as f64 + 1.0),
                ..Limits::default()
            },
        ),
        (
            "pids",
            Limits {
                pids: Some(0),
                ..Limits::default()
            },
        ),
    ];
    for (what, limits) in cases {
        let driver = RuncDriver::new(RuncOptions {
            limits,
            ..RuncOptions::new("/state")
        });
        match driver.plan(&job()) {
            Err(Error::InvalidLimit { limit, reason }) => {
                assert_eq!(limit, what, "{reason}");
            }
            other => panic!("{limits:?}: {other:?}"),
        }
        let options = crate::DriverOptions {
            limits,
            ..crate::DriverOptions::new("/state")
        };
        let err = crate::driver("runc", &options).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("invalid {what} limit: ")),
            "{err}"
        );
    }
}

#[test]
fn resolv_conf_only_with_the_host_network() {
    let config = config(
        &driver(),
        &Job {
            network: NetworkMode::Host,
            ..job()
        },
    );
    let resolv = mount_at(&config, "/etc/resolv.conf").unwrap();
    assert_eq!(resolv["source"], "/etc/resolv.conf");
    assert!(strings(&resolv["options"]).contains(&"ro"));
}

#[test]
fn secrets_and_caches_are_binds() {
    let job = Job {
        secrets: vec![SecretMount {
            source: "/keys/token".into(),
            target: "/run/secrets/token".to_owned(),
        }],
        mounts: vec![
            BindMount {
                source: "/caches/opam".into(),
                target: "/home/opam/.opam/download-cache".to_owned(),
                readonly: false,
            },
            BindMount {
                source: "/caches/ro".into(),
                target: "/ro".to_owned(),
                readonly: true,
            },
        ],
        ..job()
    };
    let config = config(&driver(), &job);
    let secret = mount_at(&config, "/run/secrets/token").unwrap();
    assert_eq!(secret["source"], "/keys/token");
    assert_eq!(secret["type"], "bind");
    let options = strings(&secret["options"]);
    for option in ["ro", "nosuid", "nodev"] {
        assert!(options.contains(&option), "{option}");
    }
    let cache = mount_at(&config, "/home/opam/.opam/download-cache").unwrap();
    assert_eq!(cache["source"], "/caches/opam");
    assert_eq!(strings(&cache["options"]), ["bind", "nosuid", "nodev"]);
    assert_eq!(
        strings(&mount_at(&config, "/ro").unwrap()["options"]),
        ["bind", "nosuid", "nodev", "ro"]
    );
    // Secrets and caches come after the sandbox's own mounts, in the job's order.
    let last: Vec<&str> = config["mounts"].as_array().unwrap()[8..]
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        last,
        [
            "/run/secrets/token",
            "/home/opam/.opam/download-cache",
            "/ro"
        ]
    );
}

/// Every job gets Docker's default profile (its contents are tested in `seccomp.rs`);
/// fast sync adds its no-op rule on top, never an allow-all filter.
#[test]
fn every_job_gets_dockers_seccomp_profile_and_fast_sync_adds_to_it() {
    let slow = config(&driver(), &job());
    let seccomp = &slow["linux"]["seccomp"];
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(seccomp["defaultErrnoRet"], 1);
    let rules = seccomp["syscalls"].as_array().unwrap();
    assert!(rules[0]["names"].as_array().unwrap().len() > 300);
    let no_op = json!({
        "names": ["fsync", "fdatasync", "msync", "sync", "syncfs", "sync_file_range"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 0,
    });
    assert!(!rules.contains(&no_op));

    let fast = RuncDriver::new(RuncOptions {
        fast_sync: true,
        ..RuncOptions::new("/state")
    });
    let fast = config(&fast, &job());
    let fast = &fast["linux"]["seccomp"];
    assert_eq!(fast["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(fast["syscalls"].as_array().unwrap().last(), Some(&no_op));
    assert_eq!(fast["architectures"], seccomp["architectures"]);
    let machine = rustix::system::uname()
        .machine()
        .to_string_lossy()
        .into_owned();
    match machine.as_str() {
        "x86_64" => assert_eq!(
            strings(&seccomp["architectures"]),
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        ),
        "aarch64" => assert_eq!(
            strings(&seccomp["architectures"]),
            ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        ),
        _ => {}
    }
}

#[test]
fn working_directories_under_proc_are_refused_naming_them() {
    for cwd in [
        "/proc",
        "/proc/self/fd/7",
        "/x/../proc/self",
        "//proc/1/cwd",
        "/./proc/",
        "/../../proc/self/fd/3",
    ] {
        match driver().plan(&Job {
            cwd: cwd.to_owned(),
            ..job()
        }) {
            Err(Error::Unsupported { reason, .. }) => {
                assert_eq!(
                    reason,
                    format!("working directory `{cwd}` is under /proc"),
                    "{cwd}"
                );
            }
            other => panic!("{cwd}: {other:?}"),
        }
    }
    for cwd in ["/processes", "/src/proc", "/proc/../tmp", "/procfs/x"] {
        let plan = driver().plan(&Job {
            cwd: cwd.to_owned(),
            ..job()
        });
        assert!(plan.is_ok(), "{cwd}: {plan:?}");
    }
}

#[test]
fn mount_and_secret_targets_under_proc_or_at_the_root_are_refused() {
    let secret = |target: &str| SecretMount {
        source: "/s".into(),
        target: target.to_owned(),
    };
    let cache = |target: &str| BindMount {
        source: "/c".into(),
        target: target.to_owned(),
        readonly: false,
    };
    for target in ["/proc", "/proc/self/attr/current", "/proc/cpuinfo", "/"] {
        for job in [
            Job {
                secrets: vec![secret(target)],
                ..job()
            },
            Job {
                mounts: vec![cache(target)],
                ..job()
            },
        ] {
            match driver().plan(&job) {
                Err(Error::Unsupported { reason, .. }) => {
                    assert!(reason.contains(&format!("target `{target}`")), "{reason}");
                }
                other => panic!("{target}: {other:?}"),
            }
        }
    }
}

#[test]
fn plan_is_deterministic_and_config_json_is_the_detail() {
    let job = Job {
        secrets: vec![SecretMount {
            source: "/s".into(),
            target: "/s".to_owned(),
        }],
        ..job()
    };
    let first = driver().plan(&job).unwrap();
    for _ in 0..20 {
        // A fresh driver and fresh HashSets each time: any hash order would show.
        assert_eq!(driver().plan(&job).unwrap(), first);
    }
    let config = &first.files[0];
    assert_eq!(config.path, Path::new("config.json"));
    assert_eq!(config.mode, 0o600);
    let parsed: Value = serde_json::from_slice(&config.contents).unwrap();
    assert_eq!(parsed, first.detail);
    assert!(config.contents.ends_with(b"}\n"));
    // oci-spec reads it back.
    let _: Spec = serde_json::from_slice(&config.contents).unwrap();
}

#[test]
fn hosts_file_names_the_hostname() {
    let plan = driver()
        .plan(&Job {
            hostname: "box".to_owned(),
            ..job()
        })
        .unwrap();
    let hosts = &plan.files[1];
    assert_eq!(hosts.path, Path::new("hosts"));
    assert_eq!(hosts.contents, b"127.0.0.1 localhost box\n");
    assert_eq!(hosts.mode, 0o644);
}

#[test]
fn argv_runs_the_bundle_detached() {
    let plan = driver().plan(&job()).unwrap();
    assert_eq!(plan.driver, "runc");
    assert_eq!(
        plan.argv,
        [
            "runc",
            "--root",
            "/state/runc",
            "run",
            "--detach",
            "--pid-file",
            "/state/bundles/strata-1-1/init.pid",
            "--bundle",
            "/state/bundles/strata-1-1",
            "strata-1-1"
        ]
    );
    assert_eq!(plan.job, job());
}

#[test]
fn capabilities_are_obuilders_defaults() {
    let caps = driver().capabilities().clone();
    assert_eq!(caps.slots, 2);
    assert_eq!(caps.layout, Layout::FullRootfs);
    assert_eq!(caps.networks, [NetworkMode::None, NetworkMode::Host]);
    assert!(caps.unix_users);
    assert!(!caps.named_users);
    assert_eq!(caps.os, TargetOs::Linux);
    assert_eq!(caps.default_shell, ["/usr/bin/env", "bash", "-c"]);
    assert_eq!(caps.default_workdir, "/");
    assert_eq!(caps.default_user, User::Unix { uid: 0, gid: 0 });
}

#[test]
fn rejects_jobs_it_cannot_run() {
    let secret = |target: &str| SecretMount {
        source: "/s".into(),
        target: target.to_owned(),
    };
    let cache = |source: &str| BindMount {
        source: source.into(),
        target: "/c".to_owned(),
        readonly: false,
    };
    let cases = [
        (
            "named user",
            Job {
                user: User::Name("opam".to_owned()),
                ..job()
            },
        ),
        (
            "relative cwd",
            Job {
                cwd: "src".to_owned(),
                ..job()
            },
        ),
        (
            "relative root",
            Job {
                root: "rootfs".into(),
                ..job()
            },
        ),
        (
            "empty argv",
            Job {
                argv: Vec::new(),
                ..job()
            },
        ),
        (
            "slash in name",
            Job {
                name: "a/b".to_owned(),
                ..job()
            },
        ),
        (
            "dot-dot name",
            Job {
                name: "..".to_owned(),
                ..job()
            },
        ),
        (
            "empty name",
            Job {
                name: String::new(),
                ..job()
            },
        ),
        (
            "env key with =",
            Job {
                env: vec![("A=B".to_owned(), String::new())],
                ..job()
            },
        ),
        (
            "hostname with space",
            Job {
                hostname: "a b".to_owned(),
                ..job()
            },
        ),
        (
            "relative secret target",
            Job {
                secrets: vec![secret("run/s")],
                ..job()
            },
        ),
        (
            "secret target with ..",
            Job {
                secrets: vec![secret("/run/../etc/shadow")],
                ..job()
            },
        ),
        (
            "relative cache source",
            Job {
                mounts: vec![cache("caches/c")],
                ..job()
            },
        ),
    ];
    for (what, job) in cases {
        match driver().plan(&job) {
            Err(Error::Unsupported { driver, reason }) => {
                assert_eq!(driver, "runc", "{what}");
                assert!(!reason.is_empty());
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn missing_secret_mount_points_are_removed_after_the_run() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    fs::create_dir_all(root.join("run")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/existing"), "keep").unwrap();
    std::os::unix::fs::symlink("/elsewhere", root.join("link")).unwrap();

    let missing = missing_paths(root, "/run/secrets/a/token");
    assert_eq!(
        missing,
        [
            root.join("run/secrets/a/token"),
            root.join("run/secrets/a"),
            root.join("run/secrets")
        ]
    );
    assert!(missing_paths(root, "/etc/existing").is_empty());
    assert!(
        missing_paths(root, "/link/secret").is_empty(),
        "symlinked trees are left alone"
    );

    // What runc would create, plus a file the job left next to a mount point.
    fs::create_dir_all(root.join("run/secrets/a")).unwrap();
    fs::write(root.join("run/secrets/a/token"), "").unwrap();
    let mut all = missing.clone();
    all.extend(missing_paths(root, "/run/secrets/other"));
    fs::write(root.join("run/secrets/other"), "").unwrap();
    fs::write(root.join("run/secrets/job-output"), "x").unwrap();
    remove_placeholders(root, all);
    assert!(!root.join("run/secrets/a").exists());
    assert!(!root.join("run/secrets/other").exists());
    assert!(
        root.join("run/secrets/job-output").exists(),
        "not empty: kept"
    );
    assert!(root.join("etc/existing").exists());

    // The job swapped a placeholder dir for a symlink to the host: nothing behind it goes.
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("token"), "").unwrap();
    let planted = missing_paths(root, "/var/secrets/token");
    fs::create_dir_all(root.join("var")).unwrap();
    std::os::unix::fs::symlink(host.path(), root.join("var/secrets")).unwrap();
    remove_placeholders(root, planted);
    assert!(
        host.path().join("token").exists(),
        "removed through a planted symlink"
    );
}

#[test]
fn only_names_of_dead_owners_are_leftovers() {
    assert!(!owner_is_dead(&crate::job_name(3)));
    assert!(!owner_is_dead("my-container"));
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(owner_is_dead(&format!("strata-{pid}-1")));
    assert!(owner_is_dead("strata-0-1"), "pid 0 owns nothing");
}
