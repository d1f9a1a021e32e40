//! The `windows-user` driver: every job runs as the local user of a slot, in that slot's
//! directory, and N slots run N jobs at once.
//!
//! Slot `sNN` is the user `strata-sNN` (a plain member of Users, made with `NetUserAdd` on
//! first use) and the directory `<base>\sNN` (`C:\strata\s01` by default), which only that
//! user, the administrators, LocalSystem and the builder's own user may open: a protected
//! DACL set on the empty directory before the checkout, so every file the checkout and the
//! job create inherits it. The builder checks snapshots out there portably and relocated
//! (every slot's path has the same length; see `docs/windows.md` for why drive letters and
//! `subst` cannot stand in for this).
//!
//! A job starts as the slot's user with `CreateProcessWithLogonW`, with a password the
//! driver sets afresh just before (random, held only in memory while the builder holds the
//! slot's lock), its profile loaded, and `USERPROFILE`, `HOME`, `APPDATA`, `LOCALAPPDATA`,
//! `TEMP`, `TMP` and `OPAMROOT` inside the slot. It is created suspended, put in a job object
//! that kills every process in it when closed, then resumed: a cancel, a timeout or the end
//! of the job leaves nothing running. Its stdout and stderr are one pipe, read into the log.
//!
//! Privileges: making and removing users, and setting their passwords, needs an
//! administrator (an elevated token). `CreateProcessWithLogonW` needs no privilege (the
//! Secondary Logon service does the logon, so it must be running) but cannot be called from
//! LocalSystem. A builder running as a LocalSystem service logs the user on itself instead:
//! `LogonUserW`, `LoadUserProfileW` (which needs `SeBackupPrivilege` and
//! `SeRestorePrivilege`) and `CreateProcessAsUserW` (`SeAssignPrimaryTokenPrivilege` and
//! `SeIncreaseQuotaPrivilege`); LocalSystem holds all four.
//!
//! The job sees the host's network whatever it asks for (there is no per-user network
//! isolation without firewall rules), and cannot have caches or secrets mounted.
//! [`SlotUsers::Current`] runs every job as the builder's own user instead (for development,
//! and for Wine, which has no user accounts): same slots, same job objects, no isolation.

#[cfg(windows)]
mod run;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::slot::{self, cwd_components, normalise_windows_dir, slot_name, windows_join};
use crate::{
    Cancel, Capabilities, Driver, DriverOptions, Error, Job, Layout, NetworkMode, Outcome, Plan,
    Result, Slot, SlotUsers, TargetOs, User, wincmd,
};

/// The driver's name.
pub const NAME: &str = "windows-user";

/// Where the slot directories go unless told otherwise.
pub const DEFAULT_BASE: &str = r"C:\strata";

/// The user a spec's context names by default: "the slot's user", whichever slot runs the
/// step. Specs cannot choose another.
pub const SLOT_USER: &str = "slot";

/// Slot users are `strata-` and the slot's name.
pub const USER_PREFIX: &str = "strata-";

/// LocalSystem.
pub const SYSTEM_SID: &str = "S-1-5-18";
/// BUILTIN\Administrators.
pub const ADMINISTRATORS_SID: &str = "S-1-5-32-544";
/// BUILTIN\Users.
pub const USERS_SID: &str = "S-1-5-32-545";

/// How long a slot user's password is (letters, digits and symbols).
pub const PASSWORD_LEN: usize = 32;

/// How the driver is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WindowsUserOptions {
    /// How many slots, hence jobs at once: 1 to 99.
    pub slots: usize,
    /// The directory holding the slots, e.g. `C:\strata`.
    pub base: String,
    /// Who jobs run as.
    pub users: SlotUsers,
    /// The environment the builder runs in: jobs keep its system variables
    /// ([`wincmd::SYSTEM_VARIABLES`]).
    pub host_env: Vec<(String, String)>,
    /// The builder runs as LocalSystem (a service): slot users are logged on with
    /// [`Logon::ServiceLogon`] rather than [`Logon::SecondaryLogon`].
    pub service: bool,
}

impl WindowsUserOptions {
    /// `slots` slots under [`DEFAULT_BASE`], one user each, the host environment from this
    /// process.
    pub fn new(slots: usize) -> WindowsUserOptions {
        WindowsUserOptions {
            slots,
            base: DEFAULT_BASE.to_owned(),
            users: SlotUsers::Dedicated,
            host_env: host_env(),
            service: running_as_system(),
        }
    }

    /// The options [`crate::driver`] makes the driver with.
    pub fn from_driver_options(options: &DriverOptions) -> Result<WindowsUserOptions> {
        let mut out = WindowsUserOptions::new(
            options
                .slots
                .unwrap_or_else(crate::default_slots)
                .min(slot::MAX_SLOTS),
        );
        if let Some(dir) = &options.slot_dir {
            out.base = windows_dir(NAME, dir)?;
        }
        out.users = options.slot_users;
        Ok(out)
    }
}

/// Whether this process runs as LocalSystem.
fn running_as_system() -> bool {
    #[cfg(windows)]
    return crate::win::current_user_sid()
        .and_then(|sid| sid.to_text())
        .is_ok_and(|sid| sid == SYSTEM_SID);
    #[cfg(not(windows))]
    false
}

/// This process's environment, without the variables that are not Unicode.
pub(crate) fn host_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// `dir` as a Windows path string.
pub(crate) fn windows_dir(driver: &str, dir: &Path) -> Result<String> {
    let text = dir.to_str().ok_or_else(|| Error::Unsupported {
        driver: driver.to_owned(),
        reason: format!("the slot directory {} is not Unicode", dir.display()),
    })?;
    let ok = matches!(text.as_bytes(), [d, b':', b'\\' | b'/', ..] if d.is_ascii_alphabetic());
    if !ok {
        return Err(Error::Unsupported {
            driver: driver.to_owned(),
            reason: format!(
                "the slot directory `{text}` is not a path on a drive, like C:\\strata"
            ),
        });
    }
    Ok(normalise_windows_dir(text))
}

/// One slot's names and paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPaths {
    /// `s01`.
    pub name: String,
    /// `strata-s01`.
    pub user: String,
    /// `C:\strata\s01`: the checkout root, and the user's home.
    pub root: String,
    /// `C:\strata\s01.lock`.
    pub lock: String,
}

/// The names and paths of slot `n` (1-based) under `base`.
pub fn slot_paths(base: &str, n: usize) -> SlotPaths {
    let name = slot_name('s', n);
    SlotPaths {
        user: format!("{USER_PREFIX}{name}"),
        root: windows_join(base, &[&name]),
        lock: windows_join(base, &[&format!("{name}.lock")]),
        name,
    }
}

/// Who an ACL entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trustee {
    /// A well-known SID, such as [`SYSTEM_SID`] (names of built-in groups are translated).
    Sid(String),
    /// A local account by name.
    Account(String),
    /// The user the builder runs as (an administrator's token may be filtered, so the
    /// Administrators entry alone would not let a non-elevated builder in).
    CurrentUser,
}

/// A directory's access rules, as data: full control of it and everything created below it
/// for `full_control`, and nothing for anyone else when `protected` (the parent's entries
/// are not inherited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRequest {
    pub path: String,
    pub protected: bool,
    pub full_control: Vec<Trustee>,
}

/// The base directory's rules: the builder and the system only.
pub fn base_acl(base: &str) -> AclRequest {
    AclRequest {
        path: base.to_owned(),
        protected: true,
        full_control: vec![
            Trustee::Sid(SYSTEM_SID.to_owned()),
            Trustee::Sid(ADMINISTRATORS_SID.to_owned()),
            Trustee::CurrentUser,
        ],
    }
}

/// A slot directory's rules: as the base's, plus the slot's user when it has its own.
pub fn slot_acl(slot: &SlotPaths, users: SlotUsers) -> AclRequest {
    let mut acl = base_acl(&slot.root);
    if users == SlotUsers::Dedicated {
        acl.full_control.push(Trustee::Account(slot.user.clone()));
    }
    acl
}

/// A slot user to make, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRequest {
    pub name: String,
    pub comment: String,
    /// The SIDs of the local groups it joins: Users only, never Administrators (whose
    /// members get a filtered token from a logon anyway).
    pub groups: Vec<String>,
}

/// The user of `slot`.
pub fn user_request(slot: &SlotPaths) -> UserRequest {
    UserRequest {
        name: slot.user.clone(),
        comment: format!(
            "Strata build slot {} (jobs only; no interactive use)",
            slot.name
        ),
        groups: vec![USERS_SID.to_owned()],
    }
}

/// The per-user directories of a job in `slot`, inside the slot, named as its environment
/// names them; made before the job starts, since a profile's folders must exist.
pub fn slot_env(slot: &SlotPaths, users: SlotUsers) -> Vec<(String, String)> {
    let root = &slot.root;
    let local = windows_join(root, &["AppData", "Local"]);
    let temp = windows_join(&local, &["Temp"]);
    let (drive, path) = root.split_at(2);
    let mut env = vec![
        ("USERPROFILE".to_owned(), root.clone()),
        ("HOME".to_owned(), root.clone()),
        ("HOMEDRIVE".to_owned(), drive.to_owned()),
        ("HOMEPATH".to_owned(), path.to_owned()),
        (
            "APPDATA".to_owned(),
            windows_join(root, &["AppData", "Roaming"]),
        ),
        ("LOCALAPPDATA".to_owned(), local.clone()),
        ("TEMP".to_owned(), temp.clone()),
        ("TMP".to_owned(), temp),
        ("OPAMROOT".to_owned(), windows_join(&local, &["opam"])),
    ];
    if users == SlotUsers::Dedicated {
        env.push(("USERNAME".to_owned(), slot.user.clone()));
    }
    env
}

/// The directories [`slot_env`] names that must exist before a job starts.
pub fn job_dirs(slot: &SlotPaths) -> Vec<String> {
    vec![
        windows_join(&slot.root, &["AppData", "Roaming"]),
        windows_join(&slot.root, &["AppData", "Local", "Temp"]),
    ]
}

/// A job's whole environment: the host's system variables, then the slot's, then the
/// job's own (names compared without regard to case).
pub fn job_env(
    slot: &SlotPaths,
    users: SlotUsers,
    host: &[(String, String)],
    job: &[(String, String)],
) -> Vec<(String, String)> {
    let base = wincmd::merge_env(&wincmd::system_env(host), &slot_env(slot, users));
    wincmd::merge_env(&base, job)
}

/// A password from `random` bytes (at least [`PASSWORD_LEN`]): mixed letters, digits and
/// symbols, so any complexity policy accepts it.
pub fn password_from(random: &[u8]) -> String {
    const CLASSES: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"!#%+-.:=?@_~",
    ];
    random
        .iter()
        .take(PASSWORD_LEN)
        .enumerate()
        .map(|(i, &b)| {
            // The first four characters cover every class; the rest pick one by byte.
            let class = if i < CLASSES.len() {
                CLASSES[i]
            } else {
                CLASSES[usize::from(b >> 6)]
            };
            char::from(class[usize::from(b) % class.len()])
        })
        .collect()
}

/// How the driver starts a job's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "as")]
pub enum Logon {
    /// `CreateProcessWithLogonW(LOGON_WITH_PROFILE)` as this user with a fresh password:
    /// the Secondary Logon service logs it on (a builder run by an administrator).
    SecondaryLogon { user: String },
    /// `LogonUserW`, `LoadUserProfileW` and `CreateProcessAsUserW` as this user with a
    /// fresh password: the builder logs it on itself (a builder running as a LocalSystem
    /// service, from which `CreateProcessWithLogonW` cannot be called).
    ServiceLogon { user: String },
    /// `CreateProcessW` as the builder's own user.
    CurrentUser,
}

/// What running a job means, as the plan's detail: everything [`Driver::run`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetail {
    pub slot: String,
    pub logon: Logon,
    /// The command line `CreateProcess` gets (see [`wincmd::command_line`]).
    pub command_line: String,
    pub cwd: String,
    /// The whole environment, in order; the block passed is sorted as Windows keeps it.
    pub env: Vec<(String, String)>,
    /// Directories made before the job starts (the profile's and the working directory).
    pub dirs: Vec<String>,
    /// Always true: the process starts suspended, joins a job object that kills its
    /// processes when closed, then runs.
    pub job_object: bool,
}

/// Runs jobs as slot users; see the module docs.
#[derive(Debug)]
pub struct WindowsUserDriver {
    options: WindowsUserOptions,
    slots: Vec<SlotPaths>,
    capabilities: Capabilities,
    /// Users known to exist, and whether the base directory is set up, in this process.
    #[cfg_attr(
        not(windows),
        allow(dead_code, reason = "used by the Windows side only")
    )]
    made: Mutex<HashSet<String>>,
}

impl WindowsUserDriver {
    /// The driver for `options`; nothing on the host changes until a slot is prepared.
    pub fn new(mut options: WindowsUserOptions) -> Result<WindowsUserDriver> {
        slot::check_count(NAME, options.slots)?;
        options.base = windows_dir(NAME, Path::new(&options.base))?;
        let slots: Vec<SlotPaths> = (1..=options.slots)
            .map(|n| slot_paths(&options.base, n))
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
            os: TargetOs::Windows,
            default_shell: vec!["cmd".to_owned(), "/S".to_owned(), "/C".to_owned()],
            default_workdir: "/".to_owned(),
            default_user: User::Name(SLOT_USER.to_owned()),
        };
        Ok(WindowsUserDriver {
            options,
            slots,
            capabilities,
            made: Mutex::new(HashSet::new()),
        })
    }

    pub fn options(&self) -> &WindowsUserOptions {
        &self.options
    }

    /// Every slot's names and paths.
    pub fn slots(&self) -> &[SlotPaths] {
        &self.slots
    }

    fn unsupported(reason: impl Into<String>) -> Error {
        Error::Unsupported {
            driver: NAME.to_owned(),
            reason: reason.into(),
        }
    }

    /// The slot whose root `root` is.
    fn slot_at(&self, root: &Path) -> Result<&SlotPaths> {
        let text = root.to_str().unwrap_or_default();
        self.slots
            .iter()
            .find(|s| s.root.eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                WindowsUserDriver::unsupported(format!(
                    "the job's root {} is not one of its slots ({}\\sNN)",
                    root.display(),
                    self.options.base
                ))
            })
    }

    /// The run detail of `job`, refusing what the driver cannot do.
    pub fn run_detail(&self, job: &Job) -> Result<RunDetail> {
        if job.argv.is_empty() {
            return Err(WindowsUserDriver::unsupported("the command is empty"));
        }
        if !job.secrets.is_empty() {
            return Err(WindowsUserDriver::unsupported("it cannot mount secrets"));
        }
        if !job.mounts.is_empty() {
            return Err(WindowsUserDriver::unsupported("it cannot mount caches"));
        }
        match &job.user {
            User::Name(name) if name == SLOT_USER => {}
            other => {
                return Err(WindowsUserDriver::unsupported(format!(
                    "every job runs as its slot's user, so the spec cannot choose {other:?}"
                )));
            }
        }
        crate::check_env(NAME, &job.env)?;
        let slot = self.slot_at(&job.root)?;
        let cwd = windows_join(&slot.root, &cwd_components(NAME, &job.cwd)?);
        let command_line =
            wincmd::command_line(&job.argv).map_err(WindowsUserDriver::unsupported)?;
        let mut dirs = job_dirs(slot);
        dirs.push(cwd.clone());
        Ok(RunDetail {
            slot: slot.name.clone(),
            logon: match (self.options.users, self.options.service) {
                (SlotUsers::Dedicated, false) => Logon::SecondaryLogon {
                    user: slot.user.clone(),
                },
                (SlotUsers::Dedicated, true) => Logon::ServiceLogon {
                    user: slot.user.clone(),
                },
                (SlotUsers::Current, _) => Logon::CurrentUser,
            },
            command_line,
            cwd,
            env: job_env(slot, self.options.users, &self.options.host_env, &job.env),
            dirs,
            job_object: true,
        })
    }
}

impl Driver for WindowsUserDriver {
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
            argv: job.argv.clone(),
            detail: crate::encode_detail(NAME, &detail)?,
        })
    }

    fn run(&self, plan: &Plan, log: &mut dyn std::io::Write, cancel: &Cancel) -> Result<Outcome> {
        let detail: RunDetail = crate::plan_detail(NAME, plan)?;
        #[cfg(windows)]
        return run::run(&detail, log, cancel);
        #[cfg(not(windows))]
        {
            let _ = (detail, log, cancel);
            Err(unavailable())
        }
    }

    fn cleanup(&self) -> Result<Vec<String>> {
        // A job's processes die with its job object, which dies with the builder.
        Ok(Vec::new())
    }

    fn check(&self) -> Result<()> {
        #[cfg(windows)]
        return run::check(self.options.users);
        #[cfg(not(windows))]
        Err(unavailable())
    }

    fn prepare_slot(&self, slot: &Slot) -> Result<()> {
        let paths = self.slot_at(&slot.root)?.clone();
        #[cfg(windows)]
        return run::prepare_slot(self, &paths);
        #[cfg(not(windows))]
        {
            let _ = paths;
            Err(unavailable())
        }
    }

    fn remove_slots(&self) -> Result<Vec<String>> {
        #[cfg(windows)]
        return run::remove_slots(self);
        #[cfg(not(windows))]
        Err(unavailable())
    }
}

#[cfg(not(windows))]
fn unavailable() -> Error {
    Error::Unavailable {
        driver: NAME.to_owned(),
        reason: "it runs on Windows only".to_owned(),
    }
}

#[cfg(test)]
mod tests;
