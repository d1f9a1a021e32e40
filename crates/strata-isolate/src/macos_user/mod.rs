//! The `macos-user` driver: OBuilder's macOS sandbox without ZFS. Every job runs as the
//! local user of a slot, in that user's home, and N slots run N jobs at once.
//!
//! Slot `sNN` is the user `strata-sNN` (made with `dscl`, uid `uid_base + NN`, in the group
//! `strata`) and the directory `<base>/sNN` (`/Users/strata/s01` by default), private to
//! that user (mode 0700). Its `home` is the user's home and the checkout root: the builder
//! checks snapshots out there portably (clonefile on APFS) and relocated, every slot's path
//! having the same length. Beside it, `tmp` is the job's `TMPDIR` and `secrets` holds the
//! step's secrets (mode 0400, the user's, removed after the job; `STRATA_SECRETS_DIR` names
//! the directory, each secret under its target's file name), neither part of a snapshot.
//!
//! A job runs as `su -l strata-sNN -c 'cd … && umask 002 && exec env -i … "$0" "$@"' argv…`
//! from root, in its own process group. Cancelling, a timeout and the end of the job kill
//! every process of the slot's user (`pkill -9 -U uid`). The home (the checkout's root) is
//! the builder's user's and the group `strata`'s, group-writable; files the job made are
//! given back to them before the commit, so a snapshot does not depend on which slot built
//! it, and the group may write them (umask 002) from any slot.
//!
//! Homebrew's prefix is one per machine (`/opt/homebrew`, `/usr/local`), so it is a second
//! target a job owns in turn: a snapshot that holds `.strata-homebrew` in its home (a base
//! made with an empty one opts in) has it moved to the prefix for the job, under a
//! machine-wide lock, and back afterwards; jobs of snapshots without it never wait.
//!
//! The job sees the host's network whatever it asks for, and cannot have caches mounted.
//! [`SlotUsers::Current`] runs every job as the builder's user (for development): same
//! slots, no isolation, and the job's process group rather than a user's processes is killed.

#[cfg(unix)]
mod run;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::slot::{self, cwd_components, slot_name, unix_join};
use crate::{
    Cancel, Capabilities, Driver, DriverOptions, Error, Job, Layout, NetworkMode, Outcome, Plan,
    Result, Slot, SlotUsers, TargetOs, User,
};

/// The driver's name.
pub const NAME: &str = "macos-user";

/// Where the slot directories go unless told otherwise.
pub const DEFAULT_BASE: &str = "/Users/strata";

/// The first slot user's uid is this plus one.
pub const DEFAULT_UID_BASE: u32 = 600;

/// The group of every slot user, and of what their jobs made.
pub const GROUP: &str = "strata";

/// The default gid of [`GROUP`].
pub const DEFAULT_GID: u32 = 600;

/// Where a snapshot keeps the Homebrew prefix, in the slot's home.
pub const HOMEBREW_STASH: &str = ".strata-homebrew";

/// How the driver is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MacosUserOptions {
    /// How many slots, hence jobs at once: 1 to 99.
    pub slots: usize,
    /// The directory holding the slots.
    pub base: String,
    pub users: SlotUsers,
    /// Slot `n`'s user gets uid `uid_base + n`.
    pub uid_base: u32,
    /// The gid of [`GROUP`].
    pub gid: u32,
    /// Homebrew's prefix, if jobs may use it.
    pub homebrew_prefix: Option<String>,
}

impl MacosUserOptions {
    pub fn new(slots: usize) -> MacosUserOptions {
        MacosUserOptions {
            slots,
            base: DEFAULT_BASE.to_owned(),
            users: SlotUsers::Dedicated,
            uid_base: DEFAULT_UID_BASE,
            gid: DEFAULT_GID,
            homebrew_prefix: None,
        }
    }

    /// The options [`crate::driver`] makes the driver with.
    pub fn from_driver_options(options: &DriverOptions) -> Result<MacosUserOptions> {
        let mut out = MacosUserOptions::new(
            options
                .slots
                .unwrap_or_else(crate::default_slots)
                .min(slot::MAX_SLOTS),
        );
        let text = |p: &Path| {
            p.to_str()
                .filter(|s| s.starts_with('/'))
                .map(|s| s.trim_end_matches('/').to_owned())
                .ok_or_else(|| {
                    MacosUserDriver::unsupported(format!(
                        "{} is not an absolute Unicode path",
                        p.display()
                    ))
                })
        };
        if let Some(dir) = &options.slot_dir {
            out.base = text(dir)?;
        }
        if let Some(prefix) = &options.homebrew_prefix {
            out.homebrew_prefix = Some(text(prefix)?);
        }
        out.users = options.slot_users;
        Ok(out)
    }
}

/// One slot's names and paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPaths {
    /// `s01`.
    pub name: String,
    /// `strata-s01`.
    pub user: String,
    pub uid: u32,
    /// `/Users/strata/s01`: private to the user, not part of any snapshot.
    pub dir: String,
    /// `/Users/strata/s01/home`: the user's home and the checkout root.
    pub root: String,
    /// `/Users/strata/s01/tmp`.
    pub tmp: String,
    /// `/Users/strata/s01/secrets`.
    pub secrets: String,
    /// `/Users/strata/s01.lock`.
    pub lock: String,
}

/// The names and paths of slot `n` (1-based).
pub fn slot_paths(options: &MacosUserOptions, n: usize) -> SlotPaths {
    let name = slot_name('s', n);
    let dir = unix_join(&options.base, &[&name]);
    SlotPaths {
        user: format!("strata-{name}"),
        uid: options.uid_base + n as u32,
        root: unix_join(&dir, &["home"]),
        tmp: unix_join(&dir, &["tmp"]),
        secrets: unix_join(&dir, &["secrets"]),
        lock: unix_join(&options.base, &[&format!("{name}.lock")]),
        dir,
        name,
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The `dscl` commands that make the group of the slot users.
pub fn group_commands(gid: u32) -> Vec<Vec<String>> {
    let group = format!("/Groups/{GROUP}");
    vec![
        argv(&["/usr/bin/dscl", ".", "-create", &group]),
        argv(&[
            "/usr/bin/dscl",
            ".",
            "-create",
            &group,
            "PrimaryGroupID",
            &gid.to_string(),
        ]),
        argv(&[
            "/usr/bin/dscl",
            ".",
            "-create",
            &group,
            "RealName",
            "Strata build slots",
        ]),
    ]
}

/// The `dscl` commands that make a slot's user: hidden, no password (`*` logs no one in),
/// bash as shell, home in the slot.
pub fn user_commands(slot: &SlotPaths, gid: u32) -> Vec<Vec<String>> {
    let user = format!("/Users/{}", slot.user);
    let set = |key: &str, value: &str| argv(&["/usr/bin/dscl", ".", "-create", &user, key, value]);
    vec![
        argv(&["/usr/bin/dscl", ".", "-create", &user]),
        set("UniqueID", &slot.uid.to_string()),
        set("PrimaryGroupID", &gid.to_string()),
        set("UserShell", "/bin/bash"),
        set("NFSHomeDirectory", &slot.root),
        set("RealName", &format!("Strata build slot {}", slot.name)),
        set("IsHidden", "1"),
        set("Password", "*"),
    ]
}

/// The commands that remove a slot's user.
pub fn remove_user_commands(slot: &SlotPaths) -> Vec<Vec<String>> {
    vec![argv(&[
        "/usr/bin/dscl",
        ".",
        "-delete",
        &format!("/Users/{}", slot.user),
    ])]
}

/// `text` quoted for `sh`: in single quotes, a quote written `'\''`.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A secret as placed for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedSecret {
    pub source: PathBuf,
    /// In the slot's `secrets` directory, named as the target's file name.
    pub path: String,
}

/// Homebrew's prefix for a job whose snapshot has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Homebrew {
    pub prefix: String,
    /// `<home>/.strata-homebrew`: moved to `prefix` for the job and back, if present.
    pub stash: String,
    /// Held while the prefix is the job's.
    pub lock: String,
    /// Names the slot whose stash is at the prefix, so a crashed job's is given back.
    pub owner: String,
}

/// What running a job means, as the plan's detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetail {
    pub slot: SlotPaths,
    pub users: SlotUsers,
    /// The host command: `su -l` (or `sh -c` as the current user), the script, the argv.
    pub argv: Vec<String>,
    pub cwd: String,
    /// Directories made (as the slot's user) before the job starts.
    pub dirs: Vec<String>,
    pub secrets: Vec<PlacedSecret>,
    pub homebrew: Option<Homebrew>,
    /// The gid files the job made are given, with the builder's uid, before the commit.
    pub gid: u32,
}

/// Runs jobs as slot users; see the module docs.
#[derive(Debug)]
pub struct MacosUserDriver {
    options: MacosUserOptions,
    slots: Vec<SlotPaths>,
    capabilities: Capabilities,
}

impl MacosUserDriver {
    pub fn new(options: MacosUserOptions) -> Result<MacosUserDriver> {
        slot::check_count(NAME, options.slots)?;
        let slots: Vec<SlotPaths> = (1..=options.slots)
            .map(|n| slot_paths(&options, n))
            .collect();
        let capabilities = Capabilities {
            slots: options.slots,
            layout: Layout::Slots {
                slots: slots
                    .iter()
                    .map(|s| Slot {
                        root: PathBuf::from(&s.root),
                        lock: PathBuf::from(&s.lock),
                    })
                    .collect(),
            },
            networks: vec![NetworkMode::Host],
            unix_users: false,
            named_users: false,
            os: TargetOs::Macos,
            default_shell: vec!["/bin/bash".to_owned(), "-c".to_owned()],
            default_workdir: "/".to_owned(),
            default_user: User::Name(crate::windows_user::SLOT_USER.to_owned()),
        };
        Ok(MacosUserDriver {
            options,
            slots,
            capabilities,
        })
    }

    pub fn options(&self) -> &MacosUserOptions {
        &self.options
    }

    pub fn slots(&self) -> &[SlotPaths] {
        &self.slots
    }

    fn unsupported(reason: impl Into<String>) -> Error {
        Error::Unsupported {
            driver: NAME.to_owned(),
            reason: reason.into(),
        }
    }

    fn slot_at(&self, root: &Path) -> Result<&SlotPaths> {
        self.slots
            .iter()
            .find(|s| Path::new(&s.root) == root)
            .ok_or_else(|| {
                MacosUserDriver::unsupported(format!(
                    "the job's root {} is not one of its slots ({}/sNN/home)",
                    root.display(),
                    self.options.base
                ))
            })
    }

    /// The run detail of `job`, refusing what the driver cannot do.
    pub fn run_detail(&self, job: &Job) -> Result<RunDetail> {
        if job.argv.is_empty() {
            return Err(MacosUserDriver::unsupported("the command is empty"));
        }
        if !job.mounts.is_empty() {
            return Err(MacosUserDriver::unsupported("it cannot mount caches"));
        }
        if job.user != User::Name(crate::windows_user::SLOT_USER.to_owned()) {
            return Err(MacosUserDriver::unsupported(format!(
                "every job runs as its slot's user, so the spec cannot choose {:?}",
                job.user
            )));
        }
        crate::check_env(NAME, &job.env)?;
        let slot = self.slot_at(&job.root)?.clone();
        let cwd = unix_join(&slot.root, &cwd_components(NAME, &job.cwd)?);
        let mut secrets = Vec::new();
        for s in &job.secrets {
            let name = s.target.rsplit('/').next().unwrap_or_default();
            if name.is_empty() || name == "." || name == ".." {
                return Err(MacosUserDriver::unsupported(format!(
                    "secret target `{}` has no file name",
                    s.target
                )));
            }
            let path = unix_join(&slot.secrets, &[name]);
            if secrets.iter().any(|p: &PlacedSecret| p.path == path) {
                return Err(MacosUserDriver::unsupported(format!(
                    "two secrets are named `{name}`"
                )));
            }
            secrets.push(PlacedSecret {
                source: s.source.clone(),
                path,
            });
        }
        let mut env = vec![
            ("HOME".to_owned(), slot.root.clone()),
            ("TMPDIR".to_owned(), format!("{}/", slot.tmp)),
        ];
        if self.options.users == SlotUsers::Dedicated {
            env.push(("USER".to_owned(), slot.user.clone()));
            env.push(("LOGNAME".to_owned(), slot.user.clone()));
        }
        if !secrets.is_empty() {
            env.push(("STRATA_SECRETS_DIR".to_owned(), slot.secrets.clone()));
        }
        for (k, v) in &job.env {
            match env.iter_mut().find(|(n, _)| n == k) {
                Some(e) => e.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        let assignments: Vec<String> = env
            .iter()
            .map(|(k, v)| sh_quote(&format!("{k}={v}")))
            .collect();
        let script = format!(
            "cd {} && umask 002 && exec /usr/bin/env -i {} \"$0\" \"$@\"",
            sh_quote(&cwd),
            assignments.join(" ")
        );
        let mut argv = match self.options.users {
            SlotUsers::Dedicated => vec![
                "/usr/bin/su".to_owned(),
                "-l".to_owned(),
                slot.user.clone(),
                "-c".to_owned(),
                script,
            ],
            SlotUsers::Current => vec!["/bin/sh".to_owned(), "-c".to_owned(), script],
        };
        argv.extend(job.argv.iter().cloned());
        let homebrew = self
            .options
            .homebrew_prefix
            .as_ref()
            .map(|prefix| Homebrew {
                prefix: prefix.clone(),
                stash: unix_join(&slot.root, &[HOMEBREW_STASH]),
                lock: unix_join(&self.options.base, &["homebrew.lock"]),
                owner: unix_join(&self.options.base, &["homebrew.owner"]),
            });
        Ok(RunDetail {
            dirs: vec![slot.tmp.clone(), cwd.clone()],
            slot,
            users: self.options.users,
            argv,
            cwd,
            secrets,
            homebrew,
            gid: self.options.gid,
        })
    }
}

impl Driver for MacosUserDriver {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn plan(&self, job: &Job) -> Result<Plan> {
        let detail = self.run_detail(job)?;
        Ok(Plan {
            driver: NAME.to_owned(),
            job: job.clone(),
            files: Vec::new(),
            argv: detail.argv.clone(),
            detail: crate::encode_detail(NAME, &detail)?,
        })
    }

    fn run(&self, plan: &Plan, log: &mut dyn std::io::Write, cancel: &Cancel) -> Result<Outcome> {
        let detail: RunDetail = crate::plan_detail(NAME, plan)?;
        #[cfg(unix)]
        return run::run(&detail, log, cancel);
        #[cfg(not(unix))]
        {
            let _ = (detail, log, cancel);
            Err(unavailable())
        }
    }

    fn cleanup(&self) -> Result<Vec<String>> {
        #[cfg(unix)]
        return run::cleanup(self);
        #[cfg(not(unix))]
        Ok(Vec::new())
    }

    fn check(&self) -> Result<()> {
        #[cfg(target_os = "macos")]
        return run::check(self.options.users);
        #[cfg(not(target_os = "macos"))]
        Err(unavailable())
    }

    fn prepare_slot(&self, slot: &Slot) -> Result<()> {
        let paths = self.slot_at(&slot.root)?.clone();
        #[cfg(unix)]
        return run::prepare_slot(self, &paths);
        #[cfg(not(unix))]
        {
            let _ = paths;
            Err(unavailable())
        }
    }

    fn remove_slots(&self) -> Result<Vec<String>> {
        #[cfg(unix)]
        return run::remove_slots(self);
        #[cfg(not(unix))]
        Err(unavailable())
    }
}

#[cfg(not(target_os = "macos"))]
fn unavailable() -> Error {
    Error::Unavailable {
        driver: NAME.to_owned(),
        reason: "it runs on macOS only".to_owned(),
    }
}

#[cfg(test)]
mod tests;
