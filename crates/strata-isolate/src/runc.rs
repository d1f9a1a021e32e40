//! The `runc` driver: each job runs in a fresh OCI container, configured as OBuilder does.
//!
//! [`RuncDriver::plan`] builds the OCI `config.json` (with oci-spec) and the `hosts` file;
//! [`Driver::run`] writes them into a private bundle dir and runs
//! `runc --root <state>/runc run --detach --pid-file … --bundle <state>/bundles/<name> <name>`.
//!
//! Why detached: in the foreground, runc gives the container a pipe per stream and copies
//! each with its own goroutine, so stdout and stderr reach the log out of order. Detached,
//! the container inherits runc's stdio, our single pipe, and order is kept. runc then
//! returns once the container has started; the container's init is reparented to this
//! process, which therefore makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`, once,
//! process-wide) and collects the init's real exit status with `waitpid` (so a signal death
//! is `Outcome::Signalled`, not runc's `128 + n`). A side effect for the embedding process:
//! orphans of its other children are reparented to it too, and stay zombies unless reaped.
//! Cancelling is `runc kill <name> KILL`, retried; every run ends with
//! `runc delete --force <name>`.
//!
//! Mount points runc creates in the rootfs for secrets (the file and missing parent dirs)
//! are removed after the run, so no trace of a secret stays in the snapshot. Those for
//! caches stay, as in OBuilder.
//!
//! The container: no user namespace (runc runs as root; rootless is out of scope), pid, ipc,
//! uts and mount namespaces plus a network namespace (loopback only) unless the job asks for
//! the host's network; Docker's default capabilities minus `NET_RAW` and `NET_BIND_SERVICE`
//! in the bounding, effective and permitted sets, none inheritable or ambient
//! (CVE-2022-24769); Docker's default seccomp profile (see `runc/seccomp.rs`;
//! `fast_sync` adds no-op rules for the fsync family on top of it); `RLIMIT_NOFILE` 1024;
//! Docker's masked and read-only paths; and the [`Limits`] as cgroup limits (by default
//! [`crate::DEFAULT_PIDS_LIMIT`] processes). Working directories and mount targets under
//! `/proc` are refused (CVE-2024-21626 used `/proc/self/fd/N` as a working directory).
//! The job's root is mounted read-write: what the job writes is the next snapshot.
//!
//! State layout under `state_dir`: `runc/` is runc's `--root`, `bundles/<name>/` a job's
//! bundle while it runs. Job names made by [`crate::job_name`] carry the owning process (pid
//! and start time), which lets [`Driver::cleanup`] remove what dead builders left without
//! touching live jobs.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpu, LinuxMemory,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPids, LinuxResources, LinuxSeccomp, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder, get_default_maskedpaths, get_default_readonly_paths,
};
use rustix::process::{
    Pid, Signal, WaitOptions, geteuid, getpid, kill_process, set_child_subreaper, waitpid,
};

use crate::supervise::{Watched, exit_outcome, supervise};
use crate::{
    Cancel, Capabilities, Driver, Error, Job, Layout, Limits, NetworkMode, Outcome, Plan,
    PlannedFile, Result, TargetOs, User,
};

mod seccomp;

/// The driver's name.
pub const RUNC: &str = "runc";

/// Docker's default capabilities minus `NET_RAW` and `NET_BIND_SERVICE`, as OBuilder.
const CAPABILITIES: [Capability; 12] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Where `runc run --detach` writes the container's init pid, in the bundle.
const PID_FILE: &str = "init.pid";

/// How long `runc kill` is retried before the processes are killed directly.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// The CFS period a CPU limit is a quota of, in microseconds: Docker's 100 ms.
const CPU_PERIOD: u64 = 100_000;

/// How a [`RuncDriver`] is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct RuncOptions {
    /// runc's `--root` and the bundle dirs live under here.
    pub state_dir: PathBuf,
    /// The runc binary; a bare name is looked up in `PATH`.
    pub runc: PathBuf,
    pub slots: usize,
    /// Make fsync, fdatasync, msync, sync, syncfs and sync_file_range succeed without
    /// doing anything (runc >= 1.0.0-rc92).
    pub fast_sync: bool,
    /// The resources each job may use.
    pub limits: Limits,
}

impl RuncOptions {
    /// `runc` from `PATH`, [`crate::default_slots`] slots, no fast sync, default limits.
    pub fn new(state_dir: impl Into<PathBuf>) -> RuncOptions {
        RuncOptions {
            state_dir: state_dir.into(),
            runc: PathBuf::from("runc"),
            slots: crate::default_slots(),
            fast_sync: false,
            limits: Limits::default(),
        }
    }
}

/// Runs jobs in runc containers; see the module docs.
#[derive(Debug)]
pub struct RuncDriver {
    options: RuncOptions,
    capabilities: Capabilities,
    /// What the seccomp profile depends on, from `uname`.
    host: seccomp::Host,
    /// Whether a memory limit also caps swap (see [`can_limit_swap`]).
    limit_swap: bool,
    /// `runc delete`s of finished containers, run off the critical path (a Go process
    /// start costs ~10 ms). Dropping the driver does not wait for them: a `runc delete`
    /// outlives this process if it must, and finishes on its own.
    deleting: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl RuncDriver {
    pub fn new(options: RuncOptions) -> RuncDriver {
        let capabilities = Capabilities {
            slots: options.slots,
            layout: Layout::FullRootfs,
            networks: vec![NetworkMode::None, NetworkMode::Host],
            unix_users: true,
            named_users: false,
            os: TargetOs::Linux,
            // OBuilder's defaults.
            default_shell: ["/usr/bin/env", "bash", "-c"].map(str::to_owned).to_vec(),
            default_workdir: "/".to_owned(),
            default_user: User::Unix { uid: 0, gid: 0 },
        };
        RuncDriver {
            options,
            capabilities,
            host: seccomp::Host::current(),
            limit_swap: can_limit_swap(),
            deleting: Mutex::new(Vec::new()),
        }
    }

    /// Every job's seccomp filter: Docker's default profile for this host and [`CAPABILITIES`].
    fn seccomp(&self) -> Result<LinuxSeccomp> {
        seccomp::profile(&self.host, &CAPABILITIES, self.options.fast_sync).map_err(oci_error)
    }

    pub fn options(&self) -> &RuncOptions {
        &self.options
    }

    /// runc's `--root`: its state for our containers.
    pub fn runc_root(&self) -> PathBuf {
        self.options.state_dir.join("runc")
    }

    /// Where the bundle of job `name` is written while it runs.
    pub fn bundle_dir(&self, name: &str) -> PathBuf {
        self.options.state_dir.join("bundles").join(name)
    }

    /// The containers runc knows under our root, running or not, sorted.
    pub fn containers(&self) -> Result<Vec<String>> {
        list_dir(&self.runc_root())
    }

    fn unsupported(reason: impl Into<String>) -> Error {
        Error::Unsupported {
            driver: RUNC.to_owned(),
            reason: reason.into(),
        }
    }

    fn validate(&self, job: &Job) -> Result<()> {
        let name = &job.name;
        // runc's own rule for container ids; the name is also a directory name.
        let valid_name = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
        if !valid_name {
            return Err(Self::unsupported(format!(
                "job name `{name}` is not a valid container id"
            )));
        }
        if job.argv.is_empty() {
            return Err(Self::unsupported("the command is empty"));
        }
        if let User::Name(user) = &job.user {
            return Err(Self::unsupported(format!(
                "named user `{user}`: only uid:gid users are supported"
            )));
        }
        if !Path::new(&job.cwd).is_absolute() {
            return Err(Self::unsupported(format!(
                "working directory `{}` is not absolute",
                job.cwd
            )));
        }
        if under_proc(&job.cwd) {
            return Err(Self::unsupported(format!(
                "working directory `{}` is under /proc",
                job.cwd
            )));
        }
        if !job.root.is_absolute() {
            return Err(Self::unsupported(format!(
                "root {} is not absolute",
                job.root.display()
            )));
        }
        if job
            .hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Self::unsupported(format!(
                "invalid hostname `{}`",
                job.hostname
            )));
        }
        crate::check_env(RUNC, &job.env)?;
        let binds = job.mounts.iter().map(|m| (&m.source, &m.target, "mount"));
        let secrets = job.secrets.iter().map(|s| (&s.source, &s.target, "secret"));
        for (source, target, what) in binds.chain(secrets) {
            if !source.is_absolute() {
                return Err(Self::unsupported(format!(
                    "{what} source {} is not absolute",
                    source.display()
                )));
            }
            if !is_clean_absolute(target) {
                return Err(Self::unsupported(format!(
                    "{what} target `{target}` is not an absolute path without `..`"
                )));
            }
            // runc refuses most of /proc too, but would allow a few files there.
            if under_proc(target) {
                return Err(Self::unsupported(format!(
                    "{what} target `{target}` is under /proc"
                )));
            }
            if Path::new(target) == Path::new("/") {
                return Err(Self::unsupported(format!(
                    "{what} target `/` would hide the job's root filesystem"
                )));
            }
        }
        self.options.limits.validate()
    }

    /// The OCI runtime config for `job`, whose bundle is `bundle`.
    fn spec(&self, job: &Job, bundle: &Path) -> Result<Spec> {
        let User::Unix { uid, gid } = job.user else {
            return Err(Self::unsupported("named users are not supported"));
        };
        let caps = || {
            CAPABILITIES
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
        };
        // Nothing inheritable: with inheritable capabilities, a job's file capabilities
        // could grant a non-root user more than it had (CVE-2022-24769).
        let mut capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(caps())
            .effective(caps())
            .inheritable(std::collections::HashSet::new())
            .permitted(caps())
            .build()
            .map_err(oci_error)?;
        // The builder fills unset fields from oci-spec's defaults, which grant ambient caps.
        capabilities.set_ambient(None);
        let mut process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(uid)
                    .gid(gid)
                    .build()
                    .map_err(oci_error)?,
            )
            .args(job.argv.clone())
            .env(
                job.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            )
            .cwd(&job.cwd)
            .capabilities(capabilities)
            .rlimits(vec![
                PosixRlimitBuilder::default()
                    .typ(PosixRlimitType::RlimitNofile)
                    .hard(1024u64)
                    .soft(1024u64)
                    .build()
                    .map_err(oci_error)?,
            ])
            .no_new_privileges(false)
            .build()
            .map_err(oci_error)?;
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);

        let mut namespaces = vec![
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ];
        if job.network != NetworkMode::Host {
            namespaces.push(LinuxNamespaceType::Network);
        }
        let namespaces = namespaces
            .into_iter()
            .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(oci_error)?;

        let mut linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths())
            .build()
            .map_err(oci_error)?;
        linux.set_seccomp(Some(self.seccomp()?));
        // No device rules: runc's defaults deny every device but the usual few.
        linux.set_resources(self.resources());

        let mut spec = SpecBuilder::default()
            .version("1.0.2")
            .process(process)
            .root(
                RootBuilder::default()
                    .path(&job.root)
                    .readonly(false)
                    .build()
                    .map_err(oci_error)?,
            )
            .hostname(job.hostname.clone())
            .mounts(self.mounts(job, bundle)?)
            .linux(linux)
            .build()
            .map_err(oci_error)?;
        spec.set_annotations(None);
        Ok(spec)
    }

    /// The [`Limits`] as cgroup settings; `None` if there are none.
    fn resources(&self) -> Option<LinuxResources> {
        let limits = &self.options.limits;
        if *limits == Limits::unlimited() {
            return None;
        }
        // The limits were validated: they fit in an i64.
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut resources = LinuxResources::default();
        if let Some(pids) = limits.pids {
            let mut limit = LinuxPids::default();
            limit.set_limit(signed(pids));
            resources.set_pids(Some(limit));
        }
        if let Some(bytes) = limits.memory {
            let mut memory = LinuxMemory::default();
            memory.set_limit(Some(signed(bytes)));
            // `swap` is memory plus swap: equal to the limit, the job gets no swap.
            if self.limit_swap {
                memory.set_swap(Some(signed(bytes)));
            }
            resources.set_memory(Some(memory));
        }
        if let Some(cpus) = limits.cpus {
            let mut cpu = LinuxCpu::default();
            cpu.set_period(Some(CPU_PERIOD));
            // Validated: between 0.01 and the host's CPU count.
            let quota = (cpus * CPU_PERIOD as f64).round() as i64;
            cpu.set_quota(Some(quota));
            resources.set_cpu(Some(cpu));
        }
        Some(resources)
    }

    fn mounts(&self, job: &Job, bundle: &Path) -> Result<Vec<Mount>> {
        let mut mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            )?,
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            )?,
            // Docker's way; runc's own default differs.
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            )?,
            mount(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["ro", "nosuid", "noexec", "nodev"],
            )?,
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            )?,
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            )?,
            mount(
                "/etc/hosts",
                "bind",
                bundle.join("hosts"),
                &["ro", "rbind", "rprivate"],
            )?,
        ];
        if job.network == NetworkMode::Host {
            // Without a network there is nothing to resolve with.
            mounts.push(mount(
                "/etc/resolv.conf",
                "bind",
                "/etc/resolv.conf",
                &["ro", "rbind", "rprivate"],
            )?);
        }
        for secret in &job.secrets {
            mounts.push(mount(
                &secret.target,
                "bind",
                &secret.source,
                &["rbind", "rprivate", "ro", "nosuid", "nodev"],
            )?);
        }
        for bind in &job.mounts {
            let mut options = vec!["bind", "nosuid", "nodev"];
            if bind.readonly {
                options.push("ro");
            }
            mounts.push(mount(&bind.target, "bind", &bind.source, &options)?);
        }
        Ok(mounts)
    }

    /// Writes the plan's files into a fresh private bundle dir.
    fn write_bundle(&self, bundle: &Path, files: &[PlannedFile]) -> Result<()> {
        let bundles = bundle.parent().unwrap_or(bundle);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(bundles)
            .map_err(Error::io("create bundle dir", bundles))?;
        // A leftover of a crashed run with a recycled pid; names are unique among live jobs.
        match fs::remove_dir_all(bundle) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io("remove stale bundle", bundle)(err));
            }
            _ => {}
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(bundle)
            .map_err(Error::io("create bundle dir", bundle))?;
        for file in files {
            if file
                .path
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(Self::unsupported(format!(
                    "bundle file {} escapes the bundle",
                    file.path.display()
                )));
            }
            let path = bundle.join(&file.path);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file.mode)
                .open(&path)
                .map_err(Error::io("create", &path))?;
            f.write_all(&file.contents)
                .map_err(Error::io("write", &path))?;
            // Exactly the planned mode, whatever the umask.
            f.set_permissions(fs::Permissions::from_mode(file.mode))
                .map_err(Error::io("chmod", &path))?;
        }
        Ok(())
    }

    fn run_in_bundle(
        &self,
        plan: &Plan,
        bundle: &Path,
        log: &mut dyn Write,
        cancel: &Cancel,
    ) -> Result<Outcome> {
        self.write_bundle(bundle, &plan.files)?;
        // The container's init is adopted by this process once `runc run --detach` returns,
        // so that its exit status can be collected (see the module docs).
        set_child_subreaper(Some(getpid())).map_err(|e| Error::Os {
            op: "become a child subreaper",
            source: e.into(),
        })?;
        let (reader, writer) = io::pipe().map_err(Error::os("create a pipe"))?;
        let mut cmd = Command::new(&plan.argv[0]);
        cmd.args(&plan.argv[1..])
            .current_dir(bundle)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(Error::os("create a pipe"))?)
            .stderr(writer);
        let spawned = cmd.spawn();
        // The command holds the pipe's write ends: drop them or the log never ends.
        drop(cmd);
        let child = spawned.map_err(Error::io("run", &plan.argv[0]))?;
        let mut container = Container {
            runc: PathBuf::from(&plan.argv[0]),
            root: self.runc_root(),
            name: plan.job.name.clone(),
            pid_file: bundle.join(PID_FILE),
            phase: Phase::Starting(child),
            stopping_since: None,
        };
        supervise(&mut container, reader, log, cancel)
    }

    /// `runc delete --force` if runc has the container. When a run went as planned the
    /// container has stopped and this only frees its state.
    fn delete(&self, name: &str) -> Result<()> {
        delete_container(&self.options.runc, &self.runc_root(), name)
    }

    /// Waits for the containers of finished jobs to be deleted.
    pub fn wait_for_deletes(&self) {
        let handles = std::mem::take(&mut *self.deleting.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// [`delete`](Self::delete) on a thread: the container has stopped, so only its state
    /// and cgroups are left, and nothing the caller does next depends on them.
    fn delete_in_background(&self, name: &str) {
        let (runc, root, owned) = (self.options.runc.clone(), self.runc_root(), name.to_owned());
        let spawned = thread::Builder::new()
            .name("strata-runc-delete".to_owned())
            .spawn(move || {
                // A failure leaves state that `cleanup` removes once this process is gone.
                let _ = delete_container(&runc, &root, &owned);
            });
        match spawned {
            Ok(handle) => {
                let mut deleting = self.deleting.lock().unwrap_or_else(|e| e.into_inner());
                // A long-lived builder must not pile up finished handles.
                deleting.retain(|h| !h.is_finished());
                deleting.push(handle);
            }
            // No thread: delete here and now.
            Err(_) => {
                let _ = self.delete(name);
            }
        }
    }
}

/// `program` itself if it is a path, else the first executable of that name on `PATH`.
fn find_executable(program: &Path) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return is_exec(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
}

impl Drop for RuncDriver {
    fn drop(&mut self) {
        for handle in self
            .deleting
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = handle.join();
        }
    }
}

/// `runc delete --force NAME` under `root`, if runc has the container.
fn delete_container(runc: &Path, root: &Path, name: &str) -> Result<()> {
    let state = root.join(name);
    if !state.exists() {
        return Ok(());
    }
    let out = Command::new(runc)
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", name])
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("run", runc))?;
    if out.status.success() || !state.exists() {
        return Ok(());
    }
    // A container runc never finished creating has no state.json and cannot be deleted.
    if !state.join("state.json").exists() {
        return fs::remove_dir_all(&state).map_err(Error::io("remove", &state));
    }
    Err(Error::Command {
        program: format!("runc delete {name}"),
        message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Whether a memory limit should also cap swap: when the host has swap and runc can set
/// the limit (cgroup v2, or v1 with swap accounting). Without swap there is nothing to cap.
fn can_limit_swap() -> bool {
    let has_swap = fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    has_swap
        && (Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            || Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists())
}

fn oci_error(err: OciSpecError) -> Error {
    RuncDriver::unsupported(format!("invalid OCI config: {err}"))
}

fn mount(
    destination: &str,
    typ: &str,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(oci_error)
}

/// Whether `path` is `/proc` or lies under it once `.` and `..` are resolved lexically
/// (`/x/../proc/self` is; `..` at the root stays at the root).
fn under_proc(path: &str) -> bool {
    let mut normal = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normal.first().is_some_and(|first| *first == "proc")
}

fn is_clean_absolute(path: &str) -> bool {
    let path = Path::new(path);
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The spec as JSON with its capability sets sorted: oci-spec keeps them in a `HashSet`.
fn canonical_json(spec: &Spec) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(spec).map_err(|source| Error::PlanDetail {
        driver: RUNC.to_owned(),
        what: "cannot write the OCI config",
        source,
    })?;
    if let Some(sets) = value
        .pointer_mut("/process/capabilities")
        .and_then(|v| v.as_object_mut())
    {
        for set in sets.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    Ok(value)
}

/// The paths runc will create in `root` to mount a secret at `target`: the target and
/// its missing parents, deepest first. Empty if a component is a symlink (runc resolves it
/// inside the rootfs; leave such trees alone).
fn missing_paths(root: &Path, target: &str) -> Vec<PathBuf> {
    let mut path = root.to_path_buf();
    let mut missing = Vec::new();
    for component in Path::new(target).components() {
        let Component::Normal(part) = component else {
            continue;
        };
        path.push(part);
        if !missing.is_empty() {
            missing.push(path.clone());
            continue;
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Vec::new(),
            Ok(_) => {}
            Err(_) => missing.push(path.clone()),
        }
    }
    missing.reverse();
    missing
}

/// Removes the mount points runc created for secrets, so the snapshot does not keep an
/// empty file where a secret was. Only empty files and empty dirs go, and only while no
/// symlink sits between `root` and them: the job may have planted one pointing at the host.
fn remove_placeholders(root: &Path, mut paths: Vec<PathBuf>) {
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    paths.dedup();
    for path in paths {
        if !reached_without_symlinks(root, &path) {
            continue;
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == 0 => {
                let _ = fs::remove_file(&path);
            }
            Ok(meta) if meta.is_dir() => {
                let _ = fs::remove_dir(&path);
            }
            _ => {}
        }
    }
}

/// Whether every directory from `root` down to `path`'s parent is a real directory.
fn reached_without_symlinks(root: &Path, path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return false;
    };
    let Ok(rel) = parent.strip_prefix(root) else {
        return false;
    };
    let mut dir = root.to_path_buf();
    rel.components().all(|c| {
        dir.push(c);
        fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
    })
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(Error::io("list", dir)(err)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `name` was made by [`crate::job_name`] in a process that no longer runs: one that
/// exited (a zombie too), or whose pid now belongs to a process started at another time.
fn owner_is_dead(name: &str) -> bool {
    crate::parse_job_name(name).is_some_and(|(owner, _)| !owner.is_alive())
}

impl Driver for RuncDriver {
    fn name(&self) -> &str {
        RUNC
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn plan(&self, job: &Job) -> Result<Plan> {
        self.validate(job)?;
        let bundle = self.bundle_dir(&job.name);
        let detail = canonical_json(&self.spec(job, &bundle)?)?;
        let mut config =
            serde_json::to_vec_pretty(&detail).map_err(|source| Error::PlanDetail {
                driver: RUNC.to_owned(),
                what: "cannot write the OCI config",
                source,
            })?;
        config.push(b'\n');
        let hosts = format!("127.0.0.1 localhost {}\n", job.hostname)
            .trim_end()
            .to_owned()
            + "\n";
        let files = vec![
            PlannedFile {
                path: "config.json".into(),
                contents: config,
                mode: 0o600,
            },
            // Bind-mounted as /etc/hosts: every user in the job must read it.
            PlannedFile {
                path: "hosts".into(),
                contents: hosts.into_bytes(),
                mode: 0o644,
            },
        ];
        let argv = [
            self.options.runc.as_os_str(),
            "--root".as_ref(),
            self.runc_root().as_os_str(),
            "run".as_ref(),
            "--detach".as_ref(),
            "--pid-file".as_ref(),
            bundle.join(PID_FILE).as_os_str(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            job.name.as_ref(),
        ]
        .iter()
        .map(|s| s.to_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Self::unsupported("the state dir or runc path is not UTF-8"))?;
        Ok(Plan {
            driver: RUNC.to_owned(),
            job: job.clone(),
            files,
            argv,
            detail,
        })
    }

    fn run(&self, plan: &Plan, log: &mut dyn Write, cancel: &Cancel) -> Result<Outcome> {
        crate::check_plan(RUNC, plan)?;
        if let Some(outcome) = cancel.wait(Duration::ZERO) {
            return Ok(outcome);
        }
        let job = &plan.job;
        let bundle = self.bundle_dir(&job.name);
        let placeholders = job
            .secrets
            .iter()
            .flat_map(|s| missing_paths(&job.root, &s.target))
            .collect();
        let outcome = self.run_in_bundle(plan, &bundle, log, cancel);
        // Whatever happened, leave no container, mount point or bundle behind. A container
        // that ended on its own has only state left: that goes on a thread.
        let deleted = match &outcome {
            Ok(Outcome::Exited(_) | Outcome::Signalled(_)) => {
                self.delete_in_background(&job.name);
                Ok(())
            }
            _ => self.delete(&job.name),
        };
        remove_placeholders(&job.root, placeholders);
        let removed = fs::remove_dir_all(&bundle);
        let outcome = outcome?;
        deleted?;
        match removed {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(Error::io("remove bundle", bundle)(err))
            }
            _ => Ok(outcome),
        }
    }

    fn cleanup(&self) -> Result<Vec<String>> {
        let mut removed = BTreeSet::new();
        let mut first_error = None;
        for name in self.containers()? {
            if owner_is_dead(&name) {
                match self.delete(&name) {
                    Ok(()) => {
                        removed.insert(name);
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
        }
        let bundles = self.options.state_dir.join("bundles");
        for name in list_dir(&bundles)? {
            if owner_is_dead(&name) {
                let dir = bundles.join(&name);
                match fs::remove_dir_all(&dir) {
                    Ok(()) => {
                        removed.insert(name);
                    }
                    Err(err) => {
                        first_error.get_or_insert(Error::io("remove", dir)(err));
                    }
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(removed.into_iter().collect()),
        }
    }

    fn check(&self) -> Result<()> {
        let unavailable = |reason: String| Error::Unavailable {
            driver: RUNC.to_owned(),
            reason,
        };
        // Found and executable is enough: running `runc --version` would cost every build
        // a Go process start.
        if find_executable(&self.options.runc).is_none() {
            return Err(unavailable(format!(
                "`{}` is not an executable on PATH (apt-get install runc)",
                self.options.runc.display()
            )));
        }
        let euid = geteuid().as_raw();
        if euid != 0 {
            return Err(unavailable(format!(
                "rootless runc is not supported: strata must run as root (effective uid is {euid})"
            )));
        }
        Ok(())
    }
}

/// A container started by `runc run --detach`: first the runc process creating it, then
/// the container's init, adopted by this process when runc returns.
#[derive(Debug)]
struct Container {
    runc: PathBuf,
    root: PathBuf,
    name: String,
    pid_file: PathBuf,
    phase: Phase,
    stopping_since: Option<Instant>,
}

#[derive(Debug)]
enum Phase {
    Starting(Child),
    Running(Pid),
    Ended,
}

impl Container {
    fn runc_kill(&self) {
        // Fails while the container is still being created; the caller retries.
        let _ = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.root)
            .args(["kill", &self.name, "KILL"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Kills what this process itself can: runc while it creates, then the init.
    fn kill_directly(&mut self) {
        match &mut self.phase {
            Phase::Starting(child) => {
                let _ = child.kill();
            }
            Phase::Running(pid) => {
                let _ = kill_process(*pid, Signal::KILL);
            }
            Phase::Ended => {}
        }
    }

    fn read_pid(&self) -> io::Result<Pid> {
        let text = fs::read_to_string(&self.pid_file)?;
        text.trim()
            .parse()
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad pid file {text:?}"))
            })
    }
}

impl Watched for Container {
    fn try_wait(&mut self) -> io::Result<Option<Outcome>> {
        loop {
            match &mut self.phase {
                Phase::Starting(child) => {
                    let Some(status) = child.try_wait()? else {
                        return Ok(None);
                    };
                    if !status.success() {
                        // runc failed to create or start it; its message is in the log.
                        self.phase = Phase::Ended;
                        return Ok(Some(exit_outcome(status)));
                    }
                    self.phase = Phase::Running(self.read_pid()?);
                }
                Phase::Running(pid) => {
                    let Some((_, status)) = waitpid(Some(*pid), WaitOptions::NOHANG)? else {
                        return Ok(None);
                    };
                    self.phase = Phase::Ended;
                    let outcome = match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => Outcome::Exited(code),
                        (None, Some(sig)) => Outcome::Signalled(sig),
                        (None, None) => Outcome::Exited(-1),
                    };
                    return Ok(Some(outcome));
                }
                Phase::Ended => return Err(io::Error::other("the container has already ended")),
            }
        }
    }

    /// `runc kill <name> KILL` (killing init kills the whole pid namespace); after
    /// [`KILL_PATIENCE`] also SIGKILL directly. `runc delete --force` tidies up after.
    fn stop(&mut self) {
        let since = *self.stopping_since.get_or_insert_with(Instant::now);
        self.runc_kill();
        if since.elapsed() > KILL_PATIENCE {
            self.kill_directly();
        }
    }

    fn abandon(&mut self) {
        self.runc_kill();
        self.kill_directly();
        match &mut self.phase {
            Phase::Starting(child) => {
                let _ = child.wait();
            }
            Phase::Running(pid) => {
                let _ = waitpid(Some(*pid), WaitOptions::empty());
            }
            Phase::Ended => {}
        }
        self.phase = Phase::Ended;
    }
}

#[cfg(test)]
mod tests;
