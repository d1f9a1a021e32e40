//! The `host` driver: runs a job as a plain host process, with no isolation at all.
//!
//! For development and tests only, and only when asked for by name. The job's root is NOT
//! chrooted into: the process runs in `root` joined with the job's `cwd`, sees the whole host
//! filesystem, the host's network (whatever the job asks for) and the host's hostname. The
//! environment is exactly the job's. Secrets and bind mounts cannot be placed without a
//! mount namespace, and the process cannot change user, so such jobs are refused.
//!
//! The job runs in its own process group; cancelling kills the group, and so does the end
//! of the job, so that background processes it started do not outlive it.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::process::{Pid, Signal, getegid, geteuid, kill_process_group};
use serde_json::json;

use crate::supervise::{Watched, exit_outcome, supervise};
use crate::{
    Cancel, Capabilities, Driver, Error, Job, Layout, NetworkMode, Outcome, Plan, Result, TargetOs,
    User,
};

/// The driver's name.
pub const HOST: &str = "host";

/// Runs jobs directly on the host; see the module docs for what that means.
#[derive(Debug)]
pub struct HostDriver {
    capabilities: Capabilities,
}

impl HostDriver {
    pub fn new(slots: usize) -> HostDriver {
        let os = if cfg!(target_os = "macos") {
            TargetOs::Macos
        } else {
            TargetOs::Linux
        };
        HostDriver {
            capabilities: Capabilities {
                slots,
                layout: Layout::FullRootfs,
                networks: vec![NetworkMode::Host],
                // Only the current user: the process cannot switch to another one.
                unix_users: true,
                named_users: false,
                os,
                default_shell: vec!["/bin/sh".to_owned(), "-c".to_owned()],
                default_workdir: "/".to_owned(),
                default_user: current_user(),
            },
        }
    }

    fn unsupported(reason: impl Into<String>) -> Error {
        Error::Unsupported {
            driver: HOST.to_owned(),
            reason: reason.into(),
        }
    }
}

fn current_user() -> User {
    User::Unix {
        uid: geteuid().as_raw(),
        gid: getegid().as_raw(),
    }
}

/// `root` joined with the absolute, `..`-free `cwd`.
fn job_dir(job: &Job) -> Result<PathBuf> {
    let cwd = Path::new(&job.cwd);
    if !cwd.is_absolute() {
        return Err(HostDriver::unsupported(format!(
            "working directory `{}` is not absolute",
            job.cwd
        )));
    }
    if cwd.components().any(|c| c == Component::ParentDir) {
        return Err(HostDriver::unsupported(format!(
            "working directory `{}` contains `..`",
            job.cwd
        )));
    }
    Ok(job.root.join(cwd.strip_prefix("/").unwrap_or(cwd)))
}

impl Driver for HostDriver {
    fn name(&self) -> &str {
        HOST
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn plan(&self, job: &Job) -> Result<Plan> {
        if job.argv.is_empty() {
            return Err(HostDriver::unsupported("the command is empty"));
        }
        if !job.secrets.is_empty() {
            return Err(HostDriver::unsupported("it cannot mount secrets"));
        }
        if !job.mounts.is_empty() {
            return Err(HostDriver::unsupported("it cannot bind-mount caches"));
        }
        if job.user != current_user() {
            return Err(HostDriver::unsupported(format!(
                "it runs jobs only as the current user {:?}, not {:?}",
                current_user(),
                job.user
            )));
        }
        crate::check_env(HOST, &job.env)?;
        let dir = job_dir(job)?;
        let detail = json!({
            "isolation": "none",
            "cwd": dir,
            "env": job.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "process_group": true,
        });
        Ok(Plan {
            driver: HOST.to_owned(),
            job: job.clone(),
            files: Vec::new(),
            argv: job.argv.clone(),
            detail,
        })
    }

    fn run(&self, plan: &Plan, log: &mut dyn io::Write, cancel: &Cancel) -> Result<Outcome> {
        crate::check_plan(HOST, plan)?;
        if let Some(outcome) = cancel.wait(std::time::Duration::ZERO) {
            return Ok(outcome);
        }
        let job = &plan.job;
        let dir = job_dir(job)?;
        // runc creates a missing working directory; do the same.
        std::fs::create_dir_all(&dir).map_err(Error::io("create working directory", &dir))?;
        let (reader, writer) = io::pipe().map_err(Error::os("create a pipe"))?;
        let mut cmd = Command::new(&plan.argv[0]);
        cmd.args(&plan.argv[1..])
            .env_clear()
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(Error::os("create a pipe"))?)
            .stderr(writer);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let spawned = cmd.spawn();
        // The command holds the pipe's write ends: drop them or the log never ends.
        drop(cmd);
        let child = match spawned {
            Ok(child) => child,
            // A missing or non-executable program is the job's failure, as in a shell.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                writeln!(log, "strata: cannot run `{}`: {err}", plan.argv[0])
                    .map_err(Error::os("write the job log"))?;
                return Ok(Outcome::Exited(127));
            }
            Err(err) => {
                return Err(Error::Io {
                    op: "run",
                    path: plan.argv[0].clone().into(),
                    source: err,
                });
            }
        };
        let pgid = Pid::from_child(&child);
        supervise(&mut HostProcess { child, pgid }, reader, log, cancel)
    }

    fn cleanup(&self) -> Result<Vec<String>> {
        // Nothing outlives a run: the process group is killed when the job ends.
        Ok(Vec::new())
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// The job's process, leader of its own process group: killing the group kills the job
/// and everything it started that did not leave the group.
#[derive(Debug)]
struct HostProcess {
    child: Child,
    pgid: Pid,
}

impl HostProcess {
    fn kill_group(&self) {
        let _ = kill_process_group(self.pgid, Signal::KILL);
    }
}

impl Watched for HostProcess {
    fn try_wait(&mut self) -> io::Result<Option<Outcome>> {
        Ok(self.child.try_wait()?.map(exit_outcome))
    }

    fn stop(&mut self) {
        self.kill_group();
    }

    fn reap(&mut self) {
        self.kill_group();
    }

    fn abandon(&mut self) {
        self.kill_group();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BindMount, SecretMount};

    fn job() -> Job {
        Job {
            name: "strata-1-1".to_owned(),
            root: PathBuf::from("/tmp/root"),
            argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), "true".to_owned()],
            cwd: "/src".to_owned(),
            env: vec![("PATH".to_owned(), "/bin".to_owned())],
            user: current_user(),
            network: NetworkMode::None,
            mounts: Vec::new(),
            secrets: Vec::new(),
            hostname: "builder".to_owned(),
        }
    }

    #[test]
    fn a_plan_detail_of_the_wrong_shape_keeps_the_parser_error_as_its_source() {
        #[derive(Debug, serde::Deserialize)]
        struct Detail {
            #[allow(dead_code, reason = "only its type matters")]
            cwd: String,
        }
        let mut plan = HostDriver::new(1).plan(&job()).unwrap();
        plan.detail = serde_json::json!({ "cwd": 5 });
        let err = crate::plan_detail::<Detail>(HOST, &plan).unwrap_err();
        assert!(matches!(err, Error::PlanDetail { .. }), "{err}");
        assert!(err.to_string().starts_with("driver `host`: "), "{err}");
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.is::<serde_json::Error>(), "{source}");
    }

    #[test]
    fn plan_runs_in_root_joined_with_cwd() {
        let plan = HostDriver::new(1).plan(&job()).unwrap();
        assert_eq!(plan.driver, "host");
        assert_eq!(plan.argv, job().argv);
        assert!(plan.files.is_empty());
        assert_eq!(plan.detail["cwd"], "/tmp/root/src");
        assert_eq!(plan.detail["env"], json!(["PATH=/bin"]));
    }

    #[test]
    fn capabilities() {
        let caps = HostDriver::new(4).capabilities().clone();
        assert_eq!(caps.slots, 4);
        assert_eq!(caps.networks, vec![NetworkMode::Host]);
        assert_eq!(caps.default_shell, ["/bin/sh", "-c"]);
        assert_eq!(caps.default_user, current_user());
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let driver = HostDriver::new(1);
        let mut with_secret = job();
        with_secret.secrets.push(SecretMount {
            source: "/s".into(),
            target: "/run/s".to_owned(),
        });
        let mut with_mount = job();
        with_mount.mounts.push(BindMount {
            source: "/c".into(),
            target: "/c".to_owned(),
            readonly: false,
        });
        let mut other_user = job();
        other_user.user = User::Unix {
            uid: geteuid().as_raw().wrapping_add(1),
            gid: 0,
        };
        let mut named = job();
        named.user = User::Name("opam".to_owned());
        let mut relative = job();
        relative.cwd = "src".to_owned();
        let mut escaping = job();
        escaping.cwd = "/../etc".to_owned();
        let mut empty = job();
        empty.argv.clear();
        let mut bad_env = job();
        bad_env.env.push(("A=B".to_owned(), "c".to_owned()));
        for (what, job) in [
            ("secret", with_secret),
            ("mount", with_mount),
            ("other user", other_user),
            ("named user", named),
            ("relative cwd", relative),
            ("escaping cwd", escaping),
            ("empty argv", empty),
            ("bad env", bad_env),
        ] {
            match driver.plan(&job) {
                Err(Error::Unsupported { driver, .. }) => assert_eq!(driver, "host", "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}
