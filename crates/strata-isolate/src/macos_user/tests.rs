//! The macOS driver's plans, checked on every platform against expected values.

use serde_json::json;

use super::*;
use crate::{BindMount, SecretMount};

fn job(root: &str) -> Job {
    Job {
        name: "strata-1-1".to_owned(),
        root: PathBuf::from(root),
        argv: vec![
            "/bin/bash".to_owned(),
            "-c".to_owned(),
            "brew install opam && echo 'done'".to_owned(),
        ],
        cwd: "/src".to_owned(),
        env: vec![(
            "PATH".to_owned(),
            "/opt/homebrew/bin:/usr/bin:/bin".to_owned(),
        )],
        user: User::Name(crate::windows_user::SLOT_USER.to_owned()),
        network: NetworkMode::None,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "builder".to_owned(),
    }
}

fn driver(homebrew: bool) -> MacosUserDriver {
    let mut options = MacosUserOptions::new(3);
    if homebrew {
        options.homebrew_prefix = Some("/opt/homebrew".to_owned());
    }
    MacosUserDriver::new(options).unwrap()
}

#[test]
fn slots_are_users_with_private_directories_of_equal_length() {
    let d = driver(false);
    assert_eq!(
        d.slots()[1],
        SlotPaths {
            name: "s02".to_owned(),
            user: "strata-s02".to_owned(),
            uid: 602,
            dir: "/Users/strata/s02".to_owned(),
            root: "/Users/strata/s02/home".to_owned(),
            tmp: "/Users/strata/s02/tmp".to_owned(),
            secrets: "/Users/strata/s02/secrets".to_owned(),
            lock: "/Users/strata/s02.lock".to_owned(),
        }
    );
    let Layout::Slots { slots } = &d.capabilities().layout else {
        panic!();
    };
    assert_eq!(slots[2].root, PathBuf::from("/Users/strata/s03/home"));
    assert_eq!(d.capabilities().os, TargetOs::Macos);
}

#[test]
fn users_are_made_and_removed_with_dscl() {
    let d = driver(false);
    let cmds: Vec<String> = user_commands(&d.slots()[0], DEFAULT_GID)
        .iter()
        .map(|c| c.join(" "))
        .collect();
    assert_eq!(
        cmds,
        [
            "/usr/bin/dscl . -create /Users/strata-s01",
            "/usr/bin/dscl . -create /Users/strata-s01 UniqueID 601",
            "/usr/bin/dscl . -create /Users/strata-s01 PrimaryGroupID 600",
            "/usr/bin/dscl . -create /Users/strata-s01 UserShell /bin/bash",
            "/usr/bin/dscl . -create /Users/strata-s01 NFSHomeDirectory /Users/strata/s01/home",
            "/usr/bin/dscl . -create /Users/strata-s01 RealName Strata build slot s01",
            "/usr/bin/dscl . -create /Users/strata-s01 IsHidden 1",
            "/usr/bin/dscl . -create /Users/strata-s01 Password *",
        ]
    );
    assert_eq!(
        group_commands(600)[1],
        [
            "/usr/bin/dscl",
            ".",
            "-create",
            "/Groups/strata",
            "PrimaryGroupID",
            "600"
        ]
    );
    assert_eq!(
        remove_user_commands(&d.slots()[2]),
        [["/usr/bin/dscl", ".", "-delete", "/Users/strata-s03"]]
    );
}

#[test]
fn a_job_runs_through_su_with_exactly_its_environment() {
    let mut j = job("/Users/strata/s01/home");
    j.secrets.push(SecretMount {
        source: "/run/token".into(),
        target: "/run/secrets/token".to_owned(),
    });
    let plan = driver(true).plan(&j).unwrap();
    let script = "cd '/Users/strata/s01/home/src' && umask 002 && exec /usr/bin/env -i \
                  'HOME=/Users/strata/s01/home' 'TMPDIR=/Users/strata/s01/tmp/' \
                  'USER=strata-s01' 'LOGNAME=strata-s01' \
                  'STRATA_SECRETS_DIR=/Users/strata/s01/secrets' \
                  'PATH=/opt/homebrew/bin:/usr/bin:/bin' \"$0\" \"$@\"";
    assert_eq!(
        plan.argv,
        [
            "/usr/bin/su",
            "-l",
            "strata-s01",
            "-c",
            script,
            "/bin/bash",
            "-c",
            "brew install opam && echo 'done'",
        ]
    );
    assert_eq!(plan.detail["cwd"], "/Users/strata/s01/home/src");
    assert_eq!(
        plan.detail["secrets"],
        json!([{"source": "/run/token", "path": "/Users/strata/s01/secrets/token"}])
    );
    assert_eq!(
        plan.detail["homebrew"],
        json!({
            "prefix": "/opt/homebrew",
            "stash": "/Users/strata/s01/home/.strata-homebrew",
            "lock": "/Users/strata/homebrew.lock",
            "owner": "/Users/strata/homebrew.owner",
        })
    );
    assert_eq!(
        plan.detail["dirs"],
        json!(["/Users/strata/s01/tmp", "/Users/strata/s01/home/src"])
    );
}

#[test]
fn quotes_survive_the_shell() {
    assert_eq!(sh_quote("it's"), r"'it'\''s'");
    assert_eq!(sh_quote(""), "''");
}

#[test]
fn the_current_user_runs_through_sh() {
    let mut options = MacosUserOptions::new(1);
    options.users = SlotUsers::Current;
    let d = MacosUserDriver::new(options).unwrap();
    let plan = d.plan(&job("/Users/strata/s01/home")).unwrap();
    assert_eq!(plan.argv[..2], ["/bin/sh", "-c"]);
    assert!(!plan.argv[2].contains("USER="), "{}", plan.argv[2]);
    assert_eq!(plan.detail["homebrew"], json!(null));
}

#[test]
fn it_refuses_what_it_cannot_do() {
    let d = driver(false);
    let root = "/Users/strata/s01/home";
    let mut cache = job(root);
    cache.mounts.push(BindMount {
        source: "/c".into(),
        target: "/c".to_owned(),
        readonly: false,
    });
    let mut same_name = job(root);
    for target in ["/a/token", "/b/token"] {
        same_name.secrets.push(SecretMount {
            source: "/s".into(),
            target: target.to_owned(),
        });
    }
    let mut unix = job(root);
    unix.user = User::Unix { uid: 501, gid: 20 };
    for (what, job, needle) in [
        ("cache", cache, "caches"),
        ("same name", same_name, "token"),
        ("unix user", unix, "501"),
        ("not a slot", job("/Users/strata/s01"), "/Users/strata/s01"),
    ] {
        let err = d.plan(&job).unwrap_err().to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
}
