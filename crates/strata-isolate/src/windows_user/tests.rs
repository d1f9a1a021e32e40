//! The driver's plans, checked on every platform against expected values; under Windows
//! (Wine in CI) also its process path, with the current user standing in for slot users.

use serde_json::json;

use super::*;
use crate::{BindMount, SecretMount};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn host() -> Vec<(String, String)> {
    env(&[
        ("SystemRoot", r"C:\Windows"),
        ("Path", r"C:\Windows\system32;C:\Windows"),
        ("USERPROFILE", r"C:\Users\admin"),
        ("TEMP", r"C:\Users\admin\AppData\Local\Temp"),
        ("ComSpec", r"C:\Windows\system32\cmd.exe"),
        ("SECRET_TOKEN", "do-not-leak"),
    ])
}

fn driver(slots: usize) -> WindowsUserDriver {
    let mut options = WindowsUserOptions::new(slots);
    options.host_env = host();
    options.service = false;
    WindowsUserDriver::new(options).unwrap()
}

fn job(root: &str) -> Job {
    Job {
        name: "strata-1-1".to_owned(),
        root: PathBuf::from(root),
        argv: vec![
            "cmd".to_owned(),
            "/S".to_owned(),
            "/C".to_owned(),
            r#"opam init -y && echo "done""#.to_owned(),
        ],
        cwd: "/src".to_owned(),
        env: env(&[("PATH", r"C:\cygwin64\bin;C:\Windows\system32"), ("A", "1")]),
        user: User::Name(SLOT_USER.to_owned()),
        network: NetworkMode::None,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "builder".to_owned(),
    }
}

#[test]
fn slots_are_equally_long_users_and_directories() {
    let d = driver(12);
    assert_eq!(
        d.slots()[0],
        SlotPaths {
            name: "s01".to_owned(),
            user: "strata-s01".to_owned(),
            root: r"C:\strata\s01".to_owned(),
            lock: r"C:\strata\s01.lock".to_owned(),
        }
    );
    assert_eq!(d.slots()[11].root, r"C:\strata\s12");
    let Layout::Slots { slots } = &d.capabilities().layout else {
        panic!("{:?}", d.capabilities().layout);
    };
    assert_eq!(slots.len(), 12);
    assert!(
        slots
            .iter()
            .all(|s| s.root.as_os_str().len() == slots[0].root.as_os_str().len())
    );
    assert_eq!(slots[1].lock, PathBuf::from(r"C:\strata\s02.lock"));
    let caps = d.capabilities();
    assert_eq!(caps.slots, 12);
    assert_eq!(caps.os, TargetOs::Windows);
    assert_eq!(caps.default_shell, ["cmd", "/S", "/C"]);
    assert_eq!(caps.default_user, User::Name("slot".to_owned()));
    assert!(WindowsUserDriver::new(WindowsUserOptions::new(100)).is_err());
}

#[test]
fn a_job_runs_as_its_slot_user_with_its_profile_in_the_slot() {
    let plan = driver(2).plan(&job(r"C:\strata\s02")).unwrap();
    assert_eq!(plan.driver, NAME);
    assert_eq!(plan.argv, job("x").argv);
    assert_eq!(
        plan.detail,
        json!({
            "slot": "s02",
            "logon": {"as": "secondary_logon", "user": "strata-s02"},
            "command_line": r#"cmd /S /C "opam init -y && echo "done"""#,
            "cwd": r"C:\strata\s02\src",
            "env": [
                ["SystemRoot", r"C:\Windows"],
                ["PATH", r"C:\cygwin64\bin;C:\Windows\system32"],
                ["ComSpec", r"C:\Windows\system32\cmd.exe"],
                ["USERPROFILE", r"C:\strata\s02"],
                ["HOME", r"C:\strata\s02"],
                ["HOMEDRIVE", "C:"],
                ["HOMEPATH", r"\strata\s02"],
                ["APPDATA", r"C:\strata\s02\AppData\Roaming"],
                ["LOCALAPPDATA", r"C:\strata\s02\AppData\Local"],
                ["TEMP", r"C:\strata\s02\AppData\Local\Temp"],
                ["TMP", r"C:\strata\s02\AppData\Local\Temp"],
                ["OPAMROOT", r"C:\strata\s02\AppData\Local\opam"],
                ["USERNAME", "strata-s02"],
                ["A", "1"],
            ],
            "dirs": [
                r"C:\strata\s02\AppData\Roaming",
                r"C:\strata\s02\AppData\Local\Temp",
                r"C:\strata\s02\src",
            ],
            "job_object": true,
        })
    );
}

#[test]
fn a_service_logs_slot_users_on_itself() {
    let mut options = WindowsUserOptions::new(1);
    options.service = true;
    let d = WindowsUserDriver::new(options).unwrap();
    assert_eq!(
        d.run_detail(&job(r"C:\strata\s01")).unwrap().logon,
        Logon::ServiceLogon {
            user: "strata-s01".to_owned()
        }
    );
}

#[test]
fn the_current_user_stands_in_when_asked() {
    let mut options = WindowsUserOptions::new(1);
    options.host_env = Vec::new();
    options.users = SlotUsers::Current;
    options.base = "d:/builds/".to_owned();
    let d = WindowsUserDriver::new(options).unwrap();
    let detail = d.run_detail(&job(r"D:\builds\s01")).unwrap();
    assert_eq!(detail.logon, Logon::CurrentUser);
    assert!(detail.env.iter().all(|(k, _)| k != "USERNAME"));
    assert_eq!(detail.cwd, r"D:\builds\s01\src");
    assert_eq!(
        slot_acl(&d.slots()[0], SlotUsers::Current),
        base_acl(r"D:\builds\s01")
    );
}

#[test]
fn it_refuses_what_it_cannot_do_naming_it() {
    let d = driver(2);
    let root = r"C:\strata\s01";
    let mut with_secret = job(root);
    with_secret.secrets.push(SecretMount {
        source: "/s".into(),
        target: "/run/s".to_owned(),
    });
    let mut with_cache = job(root);
    with_cache.mounts.push(BindMount {
        source: "/c".into(),
        target: "/c".to_owned(),
        readonly: false,
    });
    let mut other_user = job(root);
    other_user.user = User::Name("ContainerAdministrator".to_owned());
    let mut unix_user = job(root);
    unix_user.user = User::Unix { uid: 0, gid: 0 };
    let mut drive_cwd = job(root);
    drive_cwd.cwd = r"C:\src".to_owned();
    let mut nul = job(root);
    nul.argv[3] = "a\0b".to_owned();
    let mut bad_env = job(root);
    bad_env.env.push(("A=B".to_owned(), "c".to_owned()));
    for (what, job, needle) in [
        ("secret", with_secret, "secrets"),
        ("cache", with_cache, "caches"),
        ("other user", other_user, "ContainerAdministrator"),
        ("unix user", unix_user, "Unix"),
        ("drive cwd", drive_cwd, r"C:\src"),
        ("nul", nul, "NUL"),
        ("bad env", bad_env, "A=B"),
        ("not a slot", job(r"C:\strata\s03"), r"C:\strata\s03"),
        (
            "not a slot either",
            job(r"C:\elsewhere"),
            "not one of its slots",
        ),
    ] {
        match d.plan(&job) {
            Err(e @ Error::Unsupported { .. }) => {
                assert!(e.to_string().contains(needle), "{what}: {e}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn slot_directories_are_for_their_user_and_the_administrators_only() {
    let slot = slot_paths(r"C:\strata", 3);
    assert_eq!(
        serde_json::to_value(slot_acl(&slot, SlotUsers::Dedicated)).unwrap(),
        json!({
            "path": r"C:\strata\s03",
            "protected": true,
            "full_control": [
                {"sid": "S-1-5-18"},
                {"sid": "S-1-5-32-544"},
                "current_user",
                {"account": "strata-s03"},
            ],
        })
    );
    assert_eq!(
        user_request(&slot),
        UserRequest {
            name: "strata-s03".to_owned(),
            comment: "Strata build slot s03 (jobs only; no interactive use)".to_owned(),
            groups: vec!["S-1-5-32-545".to_owned()],
        }
    );
}

#[test]
fn passwords_mix_every_class() {
    let zeros = password_from(&[0; PASSWORD_LEN]);
    assert_eq!(zeros.len(), PASSWORD_LEN);
    assert!(zeros.starts_with("Aa2!"), "{zeros}");
    let varied: Vec<u8> = (0..=255u8).step_by(7).collect();
    let p = password_from(&varied);
    assert_eq!(p.len(), PASSWORD_LEN);
    assert!(p.chars().any(|c| c.is_ascii_uppercase()));
    assert!(p.chars().any(|c| c.is_ascii_lowercase()));
    assert!(p.chars().any(|c| c.is_ascii_digit()));
    assert!(p.chars().any(|c| !c.is_ascii_alphanumeric()));
}

#[test]
fn slot_directories_must_be_on_a_drive() {
    let mut options = DriverOptions::new("/tmp/state");
    options.slot_dir = Some(PathBuf::from("/srv/strata"));
    let err = WindowsUserOptions::from_driver_options(&options).unwrap_err();
    assert!(err.to_string().contains("/srv/strata"), "{err}");
    options.slot_dir = Some(PathBuf::from(r"e:\ci\"));
    options.slots = Some(500);
    let o = WindowsUserOptions::from_driver_options(&options).unwrap();
    assert_eq!((o.base.as_str(), o.slots), (r"E:\ci", 99));
}

/// The process path under Windows, as the current user: output capture, exit status,
/// environment and working directory, and the whole tree killed on cancel.
#[cfg(windows)]
mod process {
    use std::fs;
    use std::io;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::supervise::supervise;
    use crate::win::process::{self, Spawn};

    /// A driver whose one slot lies in a fresh temporary directory, run as the current user.
    fn local_driver(tmp: &Path) -> WindowsUserDriver {
        let mut options = WindowsUserOptions::new(1);
        options.users = SlotUsers::Current;
        options.base = tmp.join("slots").to_str().unwrap().to_owned();
        WindowsUserDriver::new(options).unwrap()
    }

    fn run(d: &WindowsUserDriver, command: &str, cancel: &Cancel) -> (Outcome, String) {
        let slot = match &d.capabilities().layout {
            Layout::Slots { slots } => slots[0].clone(),
            other => panic!("{other:?}"),
        };
        d.prepare_slot(&slot).unwrap();
        let mut job = job(slot.root.to_str().unwrap());
        job.argv[3] = command.to_owned();
        let plan = d.plan(&job).unwrap();
        let mut log = Vec::new();
        let outcome = d.run(&plan, &mut log, cancel).unwrap();
        (outcome, String::from_utf8_lossy(&log).into_owned())
    }

    #[test]
    fn a_job_runs_in_its_slot_with_its_output_and_exit_status() {
        let tmp = tempfile::tempdir().unwrap();
        let d = local_driver(tmp.path());
        let root = &d.slots()[0].root;
        let (outcome, log) = run(
            &d,
            "echo hello& echo home=%USERPROFILE%& echo opam=%OPAMROOT%& cd& echo oops 1>&2& exit 3",
            &Cancel::new(),
        );
        assert_eq!(outcome, Outcome::Exited(3), "{log}");
        assert!(log.contains("hello"), "{log}");
        assert!(log.contains(&format!("home={root}")), "{log}");
        assert!(
            log.contains(&format!(r"opam={root}\AppData\Local\opam")),
            "{log}"
        );
        assert!(
            log.to_lowercase()
                .contains(&format!(r"{root}\src").to_lowercase()),
            "{log}"
        );
        assert!(log.contains("oops"), "stderr is captured too: {log}");
        assert!(
            fs::metadata(format!(r"{root}\AppData\Local\Temp"))
                .unwrap()
                .is_dir()
        );
    }

    #[test]
    fn a_missing_program_fails_the_job_not_the_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let d = local_driver(tmp.path());
        let slot = match &d.capabilities().layout {
            Layout::Slots { slots } => slots[0].clone(),
            other => panic!("{other:?}"),
        };
        d.prepare_slot(&slot).unwrap();
        let mut job = job(slot.root.to_str().unwrap());
        job.argv = vec![r"C:\no\such\program.exe".to_owned()];
        let plan = d.plan(&job).unwrap();
        let mut log = Vec::new();
        let outcome = d.run(&plan, &mut log, &Cancel::new()).unwrap();
        assert_eq!(outcome, Outcome::Exited(9009));
        assert!(String::from_utf8_lossy(&log).contains("program.exe"));
    }

    /// Starts a job whose child writes a heartbeat file as fast as it can, and supervises
    /// it under `cancel`; returns how it ended, its log, the job and the heartbeat file.
    fn beating_job(tmp: &Path, cancel: &Cancel) -> (Outcome, String, process::JobProcess, PathBuf) {
        let beat = tmp.join("beat.txt");
        let command = format!(
            r#"cmd /S /C "echo started& cmd /c "for /L %i in (1,1,100000000) do @echo %i> {}"""#,
            beat.display()
        );
        let (reader, writer) = io::pipe().unwrap();
        let cwd = tmp.to_path_buf();
        let mut job = process::spawn(
            &Spawn {
                command_line: &command,
                env: &host_env(),
                cwd: &cwd,
                logon: process::Logon::Current,
            },
            &writer,
        )
        .unwrap();
        drop(writer);
        let mut log = Vec::new();
        let started = Instant::now();
        let outcome = supervise(&mut job, reader, &mut log, cancel).unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        (
            outcome,
            String::from_utf8_lossy(&log).into_owned(),
            job,
            beat,
        )
    }

    /// Every process of the job is gone, the child's heartbeat included.
    fn assert_tree_dead(job: &process::JobProcess, beat: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while job.active_processes().unwrap() != 0 {
            assert!(Instant::now() < deadline, "the job's processes outlived it");
            std::thread::sleep(Duration::from_millis(50));
        }
        let before = fs::read(beat).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(fs::read(beat).unwrap(), before, "the child still runs");
    }

    /// A job that started a child of its own is stopped by a timeout, child included: the
    /// child's heartbeat file stops changing and the job object has no process left.
    #[test]
    fn a_timeout_kills_the_whole_process_tree() {
        let tmp = tempfile::tempdir().unwrap();
        // Let the child write a few beats before the deadline.
        let cancel = Cancel::new().with_timeout(Duration::from_secs(3));
        let (outcome, log, job, beat) = beating_job(tmp.path(), &cancel);
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(log.contains("started"), "{log}");
        assert_tree_dead(&job, &beat);
    }

    /// The same, with a cancel (Ctrl-C) from another thread.
    #[test]
    fn a_cancel_kills_the_whole_process_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let cancel = Cancel::new();
        let (outcome, log, job, beat) = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_secs(3));
                cancel.cancel();
            });
            beating_job(tmp.path(), &cancel)
        });
        assert_eq!(outcome, Outcome::Cancelled);
        assert!(log.contains("started"), "{log}");
        assert_tree_dead(&job, &beat);
    }
}
