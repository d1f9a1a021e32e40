//! A job as a container request, computed as plain data (and tested on every platform):
//! what [`crate::DockerDriver::plan`] puts in [`strata_isolate::Plan::detail`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_isolate::{Job, Limits, NetworkMode, User};

use crate::{Error, Result};

/// The label every container and image the driver makes carries (value `1`).
pub const LABEL: &str = "strata";
/// The label naming the snapshot an image was made from.
pub const SNAPSHOT_LABEL: &str = "strata.snapshot";
/// The label naming the job a container runs (its name, which holds the owning process).
pub const JOB_LABEL: &str = "strata.job";
/// The repository images made from snapshots are tagged in: `strata-snapshot:<id>`.
pub const SNAPSHOT_REPO: &str = "strata-snapshot";

/// The image tag of snapshot `id` (hex).
pub fn snapshot_image(id: &str) -> String {
    format!("{SNAPSHOT_REPO}:{id}")
}

/// The kind of containers the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Linux containers (any engine on Linux, Docker Desktop's Linux VM).
    #[default]
    Linux,
    /// Windows containers, with this isolation.
    Windows(Isolation),
}

/// How a Windows container is isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// A silo sharing the host's kernel: the host and image builds must match (the
    /// default, as in the seed's recipe).
    #[default]
    Process,
    /// A utility VM per container.
    Hyperv,
}

/// A bind mount of the container, as the engine is told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// The container a job runs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// The container's name: the job's, which records the owning process.
    pub name: String,
    /// The image, when the plan knows it (mounted state: the spec's `(from IMAGE)`); for
    /// jobs on layers it is the parent snapshot's image, known when the job runs.
    pub image: Option<String>,
    pub cmd: Vec<String>,
    /// `uid:gid` or a user name (`ContainerUser` on Windows).
    pub user: String,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub working_dir: String,
    /// None with the host's network, where the engine refuses one.
    pub hostname: Option<String>,
    /// `none` or `host` (Linux); Windows containers have `none` or the default `nat`.
    pub network_mode: String,
    pub mounts: Vec<PlannedMount>,
    pub labels: BTreeMap<String, String>,
    /// `process` or `hyperv` for Windows containers.
    pub isolation: Option<String>,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    /// Paths (absolute, in the container) that are not the step's changes: the mount points
    /// the engine makes for secrets, and parents it made for them.
    pub exclude: Vec<String>,
}

/// The shell a spec starts from on Windows containers, as in the seed.
pub const WINDOWS_SHELL: [&str; 3] = ["cmd", "/S", "/C"];

/// Turns `job` into the container request for `platform`.
pub fn container_plan(job: &Job, platform: Platform, limits: &Limits) -> Result<ContainerPlan> {
    let unsupported = |reason: String| Error::Unsupported {
        job: job.name.clone(),
        reason,
    };
    if job.argv.is_empty() {
        return Err(unsupported("it has no command".to_owned()));
    }
    for (key, value) in &job.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(unsupported(format!("invalid environment variable `{key}`")));
        }
    }
    let windows = matches!(platform, Platform::Windows(_));
    let user = match (&job.user, windows) {
        (User::Unix { uid, gid }, false) => format!("{uid}:{gid}"),
        (User::Name(name), _) if !name.is_empty() && !name.contains(['\0', ':']) => name.clone(),
        (User::Unix { .. }, true) => {
            return Err(unsupported(
                "windows containers run as a named user (ContainerUser or \
                 ContainerAdministrator), not uid:gid"
                    .to_owned(),
            ));
        }
        (User::Name(name), _) => return Err(unsupported(format!("invalid user name `{name}`"))),
    };
    let mut mounts = Vec::new();
    for m in &job.mounts {
        mounts.push(PlannedMount {
            source: path_text(&m.source, job)?,
            target: target(&m.target, windows, job)?,
            read_only: m.readonly,
        });
    }
    let mut exclude = Vec::new();
    for s in &job.secrets {
        if windows {
            // Windows binds only directories, and a secret is a file.
            return Err(unsupported(format!(
                "windows containers bind directories only, and secret {} is a file",
                s.target
            )));
        }
        let target = target(&s.target, windows, job)?;
        exclude.push(target.clone());
        mounts.push(PlannedMount {
            source: path_text(&s.source, job)?,
            target,
            read_only: true,
        });
    }
    let network_mode = match (job.network, windows) {
        (NetworkMode::None, _) => "none",
        (NetworkMode::Host, false) => "host",
        // Windows has no host network; its default NAT network is the nearest.
        (NetworkMode::Host, true) => "nat",
    };
    let mut labels = BTreeMap::new();
    labels.insert(LABEL.to_owned(), "1".to_owned());
    labels.insert(JOB_LABEL.to_owned(), job.name.clone());
    Ok(ContainerPlan {
        name: job.name.clone(),
        image: None,
        cmd: job.argv.clone(),
        user,
        env: job.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        working_dir: job.cwd.clone(),
        hostname: (job.network == NetworkMode::None && !job.hostname.is_empty())
            .then(|| job.hostname.clone()),
        network_mode: network_mode.to_owned(),
        mounts,
        labels,
        isolation: match platform {
            Platform::Linux => None,
            Platform::Windows(Isolation::Process) => Some("process".to_owned()),
            Platform::Windows(Isolation::Hyperv) => Some("hyperv".to_owned()),
        },
        // Limits are cgroup limits: Linux only (Windows job objects take others).
        memory: limits
            .memory
            .filter(|_| !windows)
            .and_then(|m| i64::try_from(m).ok()),
        nano_cpus: limits
            .cpus
            .filter(|_| !windows)
            .map(|c| (c * 1e9).round() as i64),
        pids_limit: limits
            .pids
            .filter(|_| !windows)
            .and_then(|p| i64::try_from(p).ok()),
        exclude,
    })
}

/// The binds of a job's state (its checkout, `job.root`) at `targets`: the whole checkout at
/// the only target, else its subdirectory `<i>` at target `i`.
pub fn state_mounts(
    job: &Job,
    targets: &[String],
    platform: Platform,
) -> Result<Vec<PlannedMount>> {
    let windows = matches!(platform, Platform::Windows(_));
    let mut mounts = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let source = if targets.len() == 1 {
            job.root.clone()
        } else {
            job.root.join(i.to_string())
        };
        mounts.push(PlannedMount {
            source: path_text(&source, job)?,
            target: target(t, windows, job)?,
            read_only: false,
        });
    }
    Ok(mounts)
}

fn path_text(path: &std::path::Path, job: &Job) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Unsupported {
            job: job.name.clone(),
            reason: format!("mount source {} is not unicode", path.display()),
        })
}

/// A mount target as the engine takes it: absolute, `/` form on Linux; on Windows a drive
/// path (`C:\Users\ContainerUser\AppData\Local\opam`, `/` accepted and turned into `\`).
fn target(t: &str, windows: bool, job: &Job) -> Result<String> {
    let bad = |why: &str| Error::Unsupported {
        job: job.name.clone(),
        reason: format!("mount target `{t}` {why}"),
    };
    if t.contains('\0') || t.contains(',') {
        return Err(bad("contains a character the engine cannot take"));
    }
    if windows {
        let w = t.replace('/', "\\");
        let b = w.as_bytes();
        let drive = b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\';
        if !drive {
            return Err(bad("is not an absolute windows path (like C:\\dir)"));
        }
        if w.split('\\').any(|c| c == "..") {
            return Err(bad("goes up with `..`"));
        }
        return Ok(w);
    }
    if !t.starts_with('/') || t == "/" {
        return Err(bad("is not an absolute path below /"));
    }
    if t.split('/').any(|c| c == "..") {
        return Err(bad("goes up with `..`"));
    }
    if t == "/proc" || t.starts_with("/proc/") {
        return Err(bad("is under /proc"));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use strata_isolate::{BindMount, SecretMount};

    use super::*;

    fn job() -> Job {
        Job {
            name: "strata-1.2-3".to_owned(),
            root: PathBuf::new(),
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            cwd: "/src".to_owned(),
            env: vec![("PATH".into(), "/bin".into())],
            user: User::Unix {
                uid: 1000,
                gid: 100,
            },
            network: NetworkMode::None,
            mounts: vec![BindMount {
                source: PathBuf::from("/store/caches/c"),
                target: "/root/.cache".to_owned(),
                readonly: false,
            }],
            secrets: vec![SecretMount {
                source: PathBuf::from("/tmp/token"),
                target: "/run/secrets/token".to_owned(),
            }],
            hostname: "builder".to_owned(),
        }
    }

    #[test]
    fn a_linux_job_becomes_a_labelled_container_without_network() {
        let p = container_plan(&job(), Platform::Linux, &Limits::default()).unwrap();
        assert_eq!(p.name, "strata-1.2-3");
        assert_eq!(p.user, "1000:100");
        assert_eq!(p.env, ["PATH=/bin"]);
        assert_eq!(p.working_dir, "/src");
        assert_eq!(p.network_mode, "none");
        assert_eq!(p.hostname.as_deref(), Some("builder"));
        assert_eq!(p.labels[LABEL], "1");
        assert_eq!(p.labels[JOB_LABEL], "strata-1.2-3");
        assert_eq!(p.isolation, None);
        assert_eq!(p.pids_limit, Some(2048));
        assert_eq!(p.mounts.len(), 2);
        assert!(p.mounts[1].read_only);
        assert_eq!(p.exclude, ["/run/secrets/token"]);
    }

    #[test]
    fn state_is_mounted_whole_or_by_subdirectory() {
        let mut j = job();
        j.root = PathBuf::from("/store/roots/r1");
        let one = state_mounts(&j, &["/home/opam/.opam".to_owned()], Platform::Linux).unwrap();
        assert_eq!(one[0].source, "/store/roots/r1");
        assert_eq!(one[0].target, "/home/opam/.opam");
        let two = state_mounts(&j, &["/a".to_owned(), "/b".to_owned()], Platform::Linux).unwrap();
        assert_eq!(two[1].source, "/store/roots/r1/1");
        j.root = PathBuf::from(r"C:\strata\roots\r1");
        let win = state_mounts(
            &j,
            &[r"C:\Users\ContainerUser\AppData\Local\opam".to_owned()],
            Platform::Windows(Isolation::Process),
        )
        .unwrap();
        assert_eq!(win[0].target, r"C:\Users\ContainerUser\AppData\Local\opam");
        assert!(state_mounts(&j, &["relative".to_owned()], Platform::Linux).is_err());
    }

    #[test]
    fn the_host_network_has_no_hostname() {
        let j = Job {
            network: NetworkMode::Host,
            ..job()
        };
        let p = container_plan(&j, Platform::Linux, &Limits::unlimited()).unwrap();
        assert_eq!(p.network_mode, "host");
        assert_eq!(p.hostname, None);
        assert_eq!(p.pids_limit, None);
    }

    #[test]
    fn bad_targets_and_env_are_refused() {
        for t in ["relative", "/", "/a/../b", "/proc/self", "/a,b"] {
            let mut j = job();
            j.mounts[0].target = t.to_owned();
            let e = container_plan(&j, Platform::Linux, &Limits::default()).unwrap_err();
            assert!(e.to_string().contains(t), "{e}");
        }
        let mut j = job();
        j.env.push(("A=B".into(), "c".into()));
        assert!(container_plan(&j, Platform::Linux, &Limits::default()).is_err());
    }

    #[test]
    fn windows_plans_use_named_users_drive_paths_and_isolation() {
        let mut j = job();
        j.secrets.clear();
        j.user = User::Name("ContainerUser".to_owned());
        j.argv = WINDOWS_SHELL.iter().map(|s| s.to_string()).collect();
        j.argv.push("opam install dune".to_owned());
        j.cwd = "C:\\Users\\ContainerUser".to_owned();
        j.mounts[0] = BindMount {
            source: PathBuf::from("C:\\strata\\state\\s1"),
            target: "C:/Users/ContainerUser/AppData/Local/opam".to_owned(),
            readonly: false,
        };
        let p = container_plan(
            &j,
            Platform::Windows(Isolation::Process),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(p.isolation.as_deref(), Some("process"));
        assert_eq!(p.user, "ContainerUser");
        assert_eq!(p.cmd[..3], ["cmd", "/S", "/C"]);
        assert_eq!(
            p.mounts[0].target,
            "C:\\Users\\ContainerUser\\AppData\\Local\\opam"
        );
        assert_eq!(p.pids_limit, None);
        let h =
            container_plan(&j, Platform::Windows(Isolation::Hyperv), &Limits::default()).unwrap();
        assert_eq!(h.isolation.as_deref(), Some("hyperv"));
        // Administrator works too; uid:gid does not.
        j.user = User::Name("ContainerAdministrator".to_owned());
        assert!(
            container_plan(
                &j,
                Platform::Windows(Isolation::Process),
                &Limits::default()
            )
            .is_ok()
        );
        j.user = User::Unix { uid: 0, gid: 0 };
        let e = container_plan(
            &j,
            Platform::Windows(Isolation::Process),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("named user"), "{e}");
        // Unix targets, and file binds (secrets), are refused.
        let mut j2 = job();
        j2.user = User::Name("ContainerUser".to_owned());
        j2.secrets.clear();
        let e = container_plan(
            &j2,
            Platform::Windows(Isolation::Process),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("windows path"), "{e}");
        let mut j3 = j.clone();
        j3.user = User::Name("ContainerUser".to_owned());
        j3.secrets = job().secrets;
        let e = container_plan(
            &j3,
            Platform::Windows(Isolation::Process),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("directories only"), "{e}");
    }
}
