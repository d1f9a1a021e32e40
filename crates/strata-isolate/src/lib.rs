//! Strata's isolation drivers: one [`Driver`] trait for every way a step can be sandboxed.
//!
//! A driver first turns a [`Job`] into a [`Plan`]: plain data (the host command, the files
//! to write, the OCI config or Docker request) that tests check on every platform. Running
//! the plan is the thin, OS-specific part. The builder only ever sees `dyn Driver`.
//!
//! Drivers: [`runc`] (Linux, the default there) and [`host`] (Unix, no isolation, for
//! development and tests, only when asked for by name); [`windows_user`] and
//! [`windows_sandbox`] (Windows) and [`macos_user`] (macOS) run jobs in [`Slot`]s: fixed
//! directories of equal length, one job each at a time, into which the builder checks
//! snapshots out relocated (see [`Layout::Slots`] and `docs/windows.md`). Their plans are
//! computed, and tested, on every platform. [`driver`] builds one by name; [`busybox`] makes
//! a minimal Linux rootfs offline for a default base image and for tests.

use std::fmt;
use std::io::Write;
use std::num::NonZero;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[cfg(target_os = "linux")]
pub mod busybox;
mod error;
#[cfg(unix)]
pub mod host;
pub mod macos_user;
#[cfg(target_os = "linux")]
pub mod runc;
pub mod slot;
#[cfg(any(unix, windows))]
mod supervise;
#[cfg(windows)]
mod win;
pub mod wincmd;
pub mod windows_sandbox;
pub mod windows_user;

pub use error::{Error, Result};

/// The drivers this build of the crate can make, in order of preference.
#[cfg(target_os = "linux")]
pub const DRIVERS: &[&str] = &["runc", "host"];
/// The drivers this build of the crate can make, in order of preference.
#[cfg(target_os = "macos")]
pub const DRIVERS: &[&str] = &["macos-user", "host"];
/// The drivers this build of the crate can make, in order of preference.
#[cfg(all(unix, not(any(target_os = "linux", target_os = "macos"))))]
pub const DRIVERS: &[&str] = &["host"];
/// The drivers this build of the crate can make, in order of preference.
#[cfg(windows)]
pub const DRIVERS: &[&str] = &["windows-user", "windows-sandbox"];
/// The drivers this build of the crate can make, in order of preference.
#[cfg(not(any(unix, windows)))]
pub const DRIVERS: &[&str] = &[];

/// What every driver is made from; each driver ignores what it has no use for.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverOptions {
    /// Where a driver keeps its state (runc's `--root`, bundle dirs). Created on demand.
    pub state_dir: PathBuf,
    /// How many jobs may run at once; `None` means [`default_slots`].
    pub slots: Option<usize>,
    /// Make the fsync family of syscalls no-ops inside jobs (runc only): a crashed build is
    /// thrown away anyway, and syncs are slow on some filesystems.
    pub fast_sync: bool,
    /// The resources each job may use (runc only).
    pub limits: Limits,
    /// Where the slot drivers keep their slot directories; `None`: the driver's default
    /// (`C:\strata` on Windows, `/Users/strata` on macOS). Shared by every store on the host.
    pub slot_dir: Option<PathBuf>,
    /// Who the slot drivers run jobs as.
    pub slot_users: SlotUsers,
    /// macOS: the Homebrew prefix (`/opt/homebrew`, `/usr/local`) jobs may own in turn.
    pub homebrew_prefix: Option<PathBuf>,
}

impl DriverOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> DriverOptions {
        DriverOptions {
            state_dir: state_dir.into(),
            slots: None,
            fast_sync: false,
            limits: Limits::default(),
            slot_dir: None,
            slot_users: SlotUsers::default(),
            homebrew_prefix: None,
        }
    }
}

/// Who the user-isolation drivers (`windows-user`, `macos-user`) run a slot's jobs as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotUsers {
    /// Each slot's own local user, `strata-sNN`, made on first use: jobs cannot touch each
    /// other's files or processes. Needs an administrator (Windows) or root (macOS).
    #[default]
    Dedicated,
    /// The builder's own user, in every slot: no isolation between jobs or from the
    /// builder. For development, and for Wine, which has no user accounts.
    Current,
}

/// The default [`Limits::pids`]: podman's (`pids_limit` in containers.conf). Docker and
/// Kubernetes set none, which lets one fork bomb take the host down; 2048 processes and
/// threads leave room for a parallel build.
pub const DEFAULT_PIDS_LIMIT: u64 = 2048;

/// The smallest memory limit: Docker's, below which runc itself cannot start a container.
pub const MIN_MEMORY_LIMIT: u64 = 6 << 20;

/// The smallest CPU limit, Docker's: 1% of a CPU, the kernel's smallest quota (1 ms per
/// 100 ms period).
pub const MIN_CPUS_LIMIT: f64 = 0.01;

/// What each job may use, enforced with cgroups. The default limits processes only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory in bytes, swap included: a job that needs more is killed by the kernel's OOM
    /// killer. At least [`MIN_MEMORY_LIMIT`]. `None`: unlimited.
    pub memory: Option<u64>,
    /// CPU time as a number of CPUs, e.g. 1.5: a quota of 150 ms per 100 ms period, spread
    /// over any CPUs. From [`MIN_CPUS_LIMIT`] to the host's CPU count. `None`: unlimited.
    pub cpus: Option<f64>,
    /// Processes and threads at once; beyond, `fork` and `clone` fail with `EAGAIN`.
    /// `None`: unlimited.
    pub pids: Option<u64>,
}

impl Default for Limits {
    /// [`DEFAULT_PIDS_LIMIT`] processes; memory and CPU unlimited.
    fn default() -> Limits {
        Limits {
            memory: None,
            cpus: None,
            pids: Some(DEFAULT_PIDS_LIMIT),
        }
    }
}

impl Limits {
    /// No limit at all.
    pub fn unlimited() -> Limits {
        Limits {
            memory: None,
            cpus: None,
            pids: None,
        }
    }

    /// Refuses limits no job could run under, or that the kernel cannot express.
    pub fn validate(&self) -> Result<()> {
        let invalid = |limit, reason: String| Err(Error::InvalidLimit { limit, reason });
        if let Some(bytes) = self.memory {
            if bytes < MIN_MEMORY_LIMIT {
                return invalid(
                    "memory",
                    format!("{bytes} bytes is below the minimum of 6 MiB"),
                );
            }
            if i64::try_from(bytes).is_err() {
                return invalid("memory", format!("{bytes} bytes is too large"));
            }
        }
        if let Some(cpus) = self.cpus {
            let host = default_slots();
            if cpus.is_nan() || cpus < MIN_CPUS_LIMIT {
                return invalid(
                    "cpus",
                    format!("{cpus} is below the minimum of {MIN_CPUS_LIMIT}"),
                );
            }
            if cpus > host as f64 {
                return invalid(
                    "cpus",
                    format!("{cpus} is more than the {host} CPUs this host has"),
                );
            }
        }
        match self.pids {
            Some(0) => invalid(
                "pids",
                "0 would not even allow the job's first process (leave it unset for no limit)"
                    .to_owned(),
            ),
            Some(n) if i64::try_from(n).is_err() => invalid("pids", format!("{n} is too large")),
            _ => Ok(()),
        }
    }
}

/// Makes the driver `name` (one of [`DRIVERS`]). It is not [checked](Driver::check) yet.
pub fn driver(name: &str, options: &DriverOptions) -> Result<Box<dyn Driver>> {
    #[cfg(not(any(unix, windows)))]
    let _ = options;
    match name {
        #[cfg(target_os = "linux")]
        "runc" => {
            options.limits.validate()?;
            Ok(Box::new(runc::RuncDriver::new(runc::RuncOptions {
                state_dir: options.state_dir.clone(),
                runc: PathBuf::from("runc"),
                slots: options.slots.unwrap_or_else(default_slots),
                fast_sync: options.fast_sync,
                limits: options.limits,
            })))
        }
        #[cfg(unix)]
        "host" => Ok(Box::new(host::HostDriver::new(
            options.slots.unwrap_or_else(default_slots),
        ))),
        #[cfg(windows)]
        windows_user::NAME => Ok(Box::new(windows_user::WindowsUserDriver::new(
            windows_user::WindowsUserOptions::from_driver_options(options)?,
        )?)),
        #[cfg(windows)]
        windows_sandbox::NAME => Ok(Box::new(windows_sandbox::WindowsSandboxDriver::new(
            windows_sandbox::SandboxOptions::from_driver_options(options)?,
        ))),
        #[cfg(target_os = "macos")]
        macos_user::NAME => Ok(Box::new(macos_user::MacosUserDriver::new(
            macos_user::MacosUserOptions::from_driver_options(options)?,
        )?)),
        _ => Err(Error::UnknownDriver {
            name: name.to_owned(),
            available: available_drivers(),
        }),
    }
}

fn available_drivers() -> String {
    if DRIVERS.is_empty() {
        "none on this platform".to_owned()
    } else {
        DRIVERS.join(", ")
    }
}

/// The driver used when none is named: `runc` on Linux. Elsewhere it names the driver
/// planned for that OS, which [`driver`] rejects until it exists.
pub fn default_driver_name() -> &'static str {
    if cfg!(target_os = "linux") {
        "runc"
    } else {
        "docker"
    }
}

/// Slots when none are configured: the host's available parallelism.
pub fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(1, NonZero::get)
}

const JOB_NAME_PREFIX: &str = "strata-";

/// A job name unique on this host, `strata-<pid>.<start time>-<n>`
/// ([`strata_process::owned_name`]): it records the owning process, so that
/// [`Driver::cleanup`] in another process can tell leftovers of dead builders from live jobs
/// even once their pid is reused. `n` must be unique within this process.
pub fn job_name(n: u64) -> String {
    strata_process::owned_name(JOB_NAME_PREFIX, n)
}

/// The owning process and counter of a name made by [`job_name`], or by older versions
/// (`strata-<pid>-<n>`, whose owner's start time is unknown); `None` for any other name.
pub fn parse_job_name(name: &str) -> Option<(strata_process::Owner, u64)> {
    let owner = strata_process::name_owner(name, JOB_NAME_PREFIX)?;
    // One counter after the owner: the name's last field.
    let (head, n) = name.rsplit_once('-')?;
    if head.strip_prefix(JOB_NAME_PREFIX)?.contains('-') {
        return None;
    }
    Some((owner, n.parse().ok()?))
}

/// What a driver can do; the builder plans around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// How many jobs may run at once.
    pub slots: usize,
    /// Whether the snapshot is the whole root filesystem or is mounted into a host/base OS.
    pub layout: Layout,
    /// The network modes the driver can give a job.
    pub networks: Vec<NetworkMode>,
    /// Whether jobs may run as `uid:gid`.
    pub unix_users: bool,
    /// Whether jobs may run as a named user.
    pub named_users: bool,
    /// The OS the job sees.
    pub os: TargetOs,
    /// The defaults a spec starts from: shell argv prefix, workdir and user.
    pub default_shell: Vec<String>,
    pub default_workdir: String,
    pub default_user: User,
}

/// How a snapshot reaches the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// The checkout is the job's root filesystem (runc, Docker on Linux).
    FullRootfs,
    /// The host or a base image supplies the OS; the checkout is mounted at these fixed
    /// paths (Docker on Windows).
    MountedState { targets: Vec<String> },
    /// The host supplies the OS and jobs run in fixed directories of the host, one job per
    /// directory at a time (Windows and macOS user isolation, Windows Sandbox). The builder
    /// takes a free slot, holding its lock across processes and stores, lets the driver
    /// [prepare](Driver::prepare_slot) it, makes a portable checkout at its root (relocated
    /// from wherever the snapshot was committed) and runs the job with that root. As many
    /// jobs run at once as there are slots (and [`Capabilities::slots`] allows).
    Slots { slots: Vec<Slot> },
    /// The driver makes the job's root itself from the parent snapshot's layers (an engine
    /// image, for Docker on Linux), and hands the step's changes back as a layer with OCI
    /// whiteouts: the builder checks nothing out, calls [`Driver::run_on_layers`] with the
    /// parent's [`LayerChain`] and records the changes it is given as the step's snapshot.
    Layers,
}

/// A snapshot's stack of layers, as a driver with [`Layout::Layers`] reads it. Implemented by
/// the builder over its store, so drivers never depend on the store.
pub trait LayerChain: Send + Sync {
    /// The snapshot's id (hex): what a driver caches the image it makes from the chain by.
    fn snapshot(&self) -> &str;
    /// The layers, the base's first: each one's blake3 id (hex) and uncompressed size.
    fn layers(&self) -> &[(String, u64)];
    /// The sha256 `diff_id` (`sha256:<hex>`) of layer `index`, as an image config names it.
    fn diff_id(&self, index: usize) -> std::io::Result<String>;
    /// Layer `index` as an uncompressed tar with OCI whiteouts.
    fn open(&self, index: usize) -> std::io::Result<Box<dyn std::io::Read + Send>>;
    /// The snapshot under this one's chain of `depth` layers (`depth` < `layers().len()`),
    /// as its id (hex): lets a driver reuse the image of an ancestor.
    fn ancestor(&self, depth: usize) -> Option<String>;
}

/// Receives a step's changes as an uncompressed tar stream with OCI whiteouts (see
/// [`Driver::run_on_layers`]); its error is kept as the source of the driver's.
pub type ChangesSink<'a> = dyn FnMut(
        &mut dyn std::io::Read,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// A directory a slot driver runs jobs in, one at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    /// The checkout root. Every slot of a driver has a root of the same length, so a
    /// snapshot committed in one is relocated into another even in binary files.
    pub root: PathBuf,
    /// The file whose exclusive lock the holder of the slot keeps: a path fixed on the
    /// host, so builders of different stores never share a slot.
    pub lock: PathBuf,
}

/// A job's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// The host's network.
    Host,
}

/// The OS a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetOs {
    Linux,
    Windows,
    Macos,
}

/// Who a job runs as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum User {
    Unix { uid: u32, gid: u32 },
    Name(String),
}

/// A host directory bind-mounted into the job (shared caches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub readonly: bool,
}

/// A secret: a host file exposed read-only at `target`, never part of the snapshot (a
/// driver that makes a mount point for it in the job's root removes it afterwards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    pub source: PathBuf,
    pub target: String,
}

/// One step to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique among running jobs on this host (container name, state dir name).
    pub name: String,
    /// The checkout: the root filesystem, or the state mounted at the layout's targets.
    pub root: PathBuf,
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub user: User,
    pub network: NetworkMode,
    pub mounts: Vec<BindMount>,
    pub secrets: Vec<SecretMount>,
    pub hostname: String,
}

/// What a driver will do for a job, as data. Written before anything runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The driver that made the plan and will run it.
    pub driver: String,
    pub job: Job,
    /// Files the driver writes into its private bundle dir before running.
    pub files: Vec<PlannedFile>,
    /// The host command it runs (empty for API drivers such as Docker).
    pub argv: Vec<String>,
    /// Driver-specific detail: the OCI config, a Docker request, `.wsb` XML...
    pub detail: serde_json::Value,
}

/// A file in a plan's bundle dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    /// Relative to the bundle dir.
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Exited(i32),
    /// Killed by this signal (Unix).
    Signalled(i32),
    /// Stopped because [`Cancel::cancel`] was called.
    Cancelled,
    /// Stopped because the deadline passed.
    TimedOut,
}

impl Outcome {
    pub fn success(self) -> bool {
        self == Outcome::Exited(0)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {code}"),
            Outcome::Signalled(sig) => write!(f, "killed by signal {sig}"),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::TimedOut => f.write_str("timed out"),
        }
    }
}

/// A cancellation flag a running job watches, with an optional deadline. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    inner: Arc<(Mutex<bool>, Condvar)>,
    deadline: Option<Instant>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// A clone of this flag that also stops the job once `timeout` has passed.
    pub fn with_timeout(&self, timeout: Duration) -> Cancel {
        Cancel {
            inner: self.inner.clone(),
            deadline: Some(Instant::now() + timeout),
        }
    }

    pub fn cancel(&self) {
        let (flag, cv) = &*self.inner;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Waits up to `d` (and never past the deadline). Returns why the job must stop, if it must.
    pub fn wait(&self, d: Duration) -> Option<Outcome> {
        let (flag, cv) = &*self.inner;
        let mut d = d;
        if let Some(deadline) = self.deadline {
            d = d.min(deadline.saturating_duration_since(Instant::now()));
        }
        let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, d, |cancelled| !*cancelled)
            .unwrap_or_else(|e| e.into_inner());
        if *guard {
            Some(Outcome::Cancelled)
        } else if self.deadline.is_some_and(|t| Instant::now() >= t) {
            Some(Outcome::TimedOut)
        } else {
            None
        }
    }
}

/// An isolation driver. The builder holds `Box<dyn Driver>` and never names a concrete one.
pub trait Driver: Send + Sync + fmt::Debug {
    /// The name `--sandbox` selects it by.
    fn name(&self) -> &str;

    fn capabilities(&self) -> &Capabilities;

    /// Checks the job against the capabilities and says, as data, what running it means.
    fn plan(&self, job: &Job) -> Result<Plan>;

    /// Runs a plan made by this driver, sending the job's stdout and stderr (merged, in
    /// order) to `log`. Returns once the job and everything it started are gone.
    fn run(&self, plan: &Plan, log: &mut dyn Write, cancel: &Cancel) -> Result<Outcome>;

    /// Removes what crashed earlier runs left behind (containers, bundle dirs); returns
    /// their names. Safe to call while other processes run jobs with this driver.
    fn cleanup(&self) -> Result<Vec<String>>;

    /// Whether the driver can run here at all, and if not, why.
    fn check(&self) -> Result<()>;

    /// The engine's id of `image` for a driver with [`Layout::MountedState`], whose `(from
    /// IMAGE)` names an image that supplies the OS: the builder keys the chain's steps by it,
    /// so a rebuilt image invalidates them. Other drivers refuse.
    fn resolve_image(&self, image: &str) -> Result<String> {
        Err(Error::Unsupported {
            driver: self.name().to_owned(),
            reason: format!("it takes no engine images (asked for `{image}`)"),
        })
    }

    /// Plans `job` on the engine image `image` (an id from
    /// [`resolve_image`](Driver::resolve_image)), its checkout mounted at the layout's
    /// targets. The default ignores the image.
    fn plan_on_image(&self, job: &Job, image: &str) -> Result<Plan> {
        let _ = image;
        self.plan(job)
    }

    /// Runs a plan made by this driver on top of `parent` ([`Layout::Layers`]): like
    /// [`run`](Driver::run), and when the job exited with status 0, gives its changes to
    /// `changes` before the job's remains are removed. Drivers with another layout refuse.
    fn run_on_layers(
        &self,
        plan: &Plan,
        parent: &dyn LayerChain,
        log: &mut dyn Write,
        cancel: &Cancel,
        changes: &mut ChangesSink<'_>,
    ) -> Result<Outcome> {
        let _ = (plan, parent, log, cancel, changes);
        Err(Error::Unsupported {
            driver: self.name().to_owned(),
            reason: "it runs jobs in checkouts, not on layers".to_owned(),
        })
    }

    /// Makes a slot's root (see [`Layout::Slots`]) an empty directory ready for a checkout,
    /// and what its jobs need around it (the slot's user, the directory's access rights).
    /// The builder calls it holding the slot's lock, once whatever an earlier holder left
    /// is gone. The default only creates the directory.
    fn prepare_slot(&self, slot: &Slot) -> Result<()> {
        std::fs::create_dir_all(&slot.root).map_err(|source| Error::Io {
            op: "create the slot",
            path: slot.root.clone(),
            source,
        })
    }

    /// Removes what the driver made on this host for its slots (users, their profiles,
    /// the slot directories); returns what it removed. The caller holds every slot's lock
    /// and has emptied them. The default has nothing to remove.
    fn remove_slots(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Refuses environment entries that cannot be passed to a process.
pub(crate) fn check_env(driver: &str, env: &[(String, String)]) -> Result<()> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(Error::Unsupported {
                driver: driver.to_owned(),
                reason: format!("invalid environment variable `{key}`"),
            });
        }
    }
    Ok(())
}

/// A driver's own part of its plan (`Plan::detail`), as JSON.
pub(crate) fn encode_detail(driver: &str, detail: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(detail).map_err(|source| Error::PlanDetail {
        driver: driver.to_owned(),
        what: "cannot describe the plan",
        source,
    })
}

/// The driver's own part of a plan it made: the plan checked with [`check_plan`], then its
/// detail read back.
pub(crate) fn plan_detail<T: serde::de::DeserializeOwned>(driver: &str, plan: &Plan) -> Result<T> {
    check_plan(driver, plan)?;
    serde_json::from_value(plan.detail.clone()).map_err(|source| Error::PlanDetail {
        driver: driver.to_owned(),
        what: "the plan's detail is not this driver's",
        source,
    })
}

/// Refuses a plan another driver made, or one with nothing to run.
#[cfg_attr(
    not(any(unix, windows)),
    allow(
        dead_code,
        reason = "the drivers that run plans build on Unix and Windows"
    )
)]
pub(crate) fn check_plan(driver: &str, plan: &Plan) -> Result<()> {
    let reason = if plan.driver != driver {
        format!("the plan was made by driver `{}`", plan.driver)
    } else if plan.argv.is_empty() {
        "the plan has no command".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::Unsupported {
        driver: driver.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_round_trip() {
        use strata_process::Owner;
        let name = job_name(7);
        assert_eq!(parse_job_name(&name), Some((Owner::current(), 7)));
        assert_eq!(
            parse_job_name("strata-12.345-0"),
            Some((Owner::new(12, 345), 0))
        );
        // Made by an older version: pid only.
        assert_eq!(parse_job_name("strata-12-0"), Some((Owner::new(12, 0), 0)));
        for bad in [
            "strata-12",
            "strata--1",
            "strata-+1-2",
            "strata-1-2-3",
            "strata-1.2-3-4",
            "strata-1.2.3-4",
            "other-1-2",
            "strata-1-",
        ] {
            assert_eq!(parse_job_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn unknown_driver_lists_the_available_ones() {
        let err = driver("nope", &DriverOptions::new("/tmp/x")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`nope`"), "{msg}");
        for name in DRIVERS {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn drivers_are_made_by_name() {
        let options = DriverOptions {
            slots: Some(3),
            ..DriverOptions::new("/tmp/x")
        };
        for name in DRIVERS {
            let d = driver(name, &options).unwrap();
            assert_eq!(d.name(), *name);
            // One sandbox per machine, whatever was asked for.
            let slots = if *name == windows_sandbox::NAME { 1 } else { 3 };
            assert_eq!(d.capabilities().slots, slots, "{name}");
        }
        #[cfg(target_os = "linux")]
        assert!(DRIVERS.contains(&default_driver_name()));
    }
}
