//! The Windows side of the sandbox driver: the machine-wide lock, the control folder, the
//! launcher, and following the job's output and status files until it ends.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Launcher, OUTPUT_FILE, RunDetail, STARTED_FILE, STATUS_FILE, SandboxOptions, WSB_FILE,
    sandbox_id, wrapper_command,
};
use crate::{Cancel, Error, Outcome, Plan, Result};

/// How often the status and output files are looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long a sandbox may take to run the wrapper before the driver gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(300);

fn command_error(program: &str, message: String) -> Error {
    Error::Command {
        program: program.to_owned(),
        message,
    }
}

/// Takes the machine-wide lock, waiting while another builder's sandbox runs.
fn lock(path: &str, cancel: &Cancel) -> Result<Option<File>> {
    if let Some(dir) = Path::new(path).parent() {
        fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io("open", path))?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => {
                if cancel.wait(Duration::from_millis(500)).is_some() {
                    return Ok(None);
                }
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", path)(e)),
        }
    }
}

/// A started sandbox and how to stop it.
struct Sandbox {
    launcher: Launcher,
    /// The `wsb` id, once started with `wsb`.
    id: Option<String>,
    /// `WindowsSandbox.exe`, or `wsb exec`.
    child: Option<Child>,
}

impl Sandbox {
    fn start(launcher: &Launcher, control: &Path, wsb: &str) -> Result<Sandbox> {
        match launcher {
            Launcher::Classic { exe } => {
                let child = Command::new(exe)
                    .arg(control.join(WSB_FILE))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(Error::call("start", exe))?;
                Ok(Sandbox {
                    launcher: launcher.clone(),
                    id: None,
                    child: Some(child),
                })
            }
            Launcher::Wsb { exe } => {
                let out = Command::new(exe)
                    .args(["start", "--raw", "--config", wsb])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(Error::call("run", format!("{exe} start")))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let id = sandbox_id(&text).filter(|_| out.status.success());
                let Some(id) = id else {
                    return Err(command_error(
                        exe,
                        format!(
                            "`wsb start` gave no sandbox id ({}): {}{}",
                            out.status,
                            text.trim(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ));
                };
                let mut sandbox = Sandbox {
                    launcher: launcher.clone(),
                    id: Some(id.clone()),
                    child: None,
                };
                let child = Command::new(exe)
                    .args([
                        "exec",
                        "--id",
                        &id,
                        "--run-as",
                        "ExistingLogin",
                        "--command",
                    ])
                    .arg(wrapper_command())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                match child {
                    Ok(child) => sandbox.child = Some(child),
                    Err(e) => {
                        sandbox.stop();
                        return Err(Error::call("run", format!("{exe} exec"))(e));
                    }
                }
                Ok(sandbox)
            }
        }
    }

    /// Stops the sandbox, whatever it is doing; its disk is thrown away with it.
    fn stop(&mut self) {
        match (&self.launcher, &self.id) {
            (Launcher::Wsb { exe }, Some(id)) => {
                let _ = Command::new(exe)
                    .args(["stop", "--id", id])
                    .stdin(Stdio::null())
                    .output();
            }
            _ => {
                // The sandbox window's processes: closing them ends the VM.
                for image in [
                    "WindowsSandboxRemoteSession.exe",
                    "WindowsSandboxClient.exe",
                ] {
                    let _ = Command::new("taskkill")
                        .args(["/F", "/T", "/IM", image])
                        .stdin(Stdio::null())
                        .output();
                }
            }
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies what `file` gained since `offset` into `log`.
fn follow(file: &Path, offset: &mut u64, log: &mut dyn Write) -> Result<()> {
    let Ok(mut f) = File::open(file) else {
        return Ok(());
    };
    f.seek(SeekFrom::Start(*offset))
        .map_err(Error::io("read", file))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(Error::io("read", file))?;
    *offset += buf.len() as u64;
    log.write_all(&buf).map_err(Error::os("write the job log"))
}

pub(super) fn run(
    options: &SandboxOptions,
    plan: &Plan,
    detail: &RunDetail,
    log: &mut dyn Write,
    cancel: &Cancel,
) -> Result<Outcome> {
    let Some(_machine) = lock(&options.lock, cancel)? else {
        return Ok(cancel.wait(Duration::ZERO).unwrap_or(Outcome::Cancelled));
    };
    let control = PathBuf::from(&detail.control);
    let _ = fs::remove_dir_all(&control);
    fs::create_dir_all(&control).map_err(Error::io("create", &control))?;
    for file in &plan.files {
        let path = control.join(&file.path);
        fs::write(&path, &file.contents).map_err(Error::io("write", &path))?;
    }
    let wsb = plan
        .files
        .iter()
        .find(|f| f.path == Path::new(WSB_FILE))
        .map(|f| String::from_utf8_lossy(&f.contents).into_owned())
        .unwrap_or_default();
    let result = watch(&detail.launcher, &control, &wsb, log, cancel);
    let _ = fs::remove_dir_all(&control);
    result
}

fn watch(
    launcher: &Launcher,
    control: &Path,
    wsb: &str,
    log: &mut dyn Write,
    cancel: &Cancel,
) -> Result<Outcome> {
    let mut sandbox = Sandbox::start(launcher, control, wsb)?;
    let started = Instant::now();
    let mut offset = 0;
    let output = control.join(OUTPUT_FILE);
    let status = control.join(STATUS_FILE);
    let outcome = loop {
        if let Some(stopped) = cancel.wait(POLL) {
            break Ok(stopped);
        }
        if let Err(e) = follow(&output, &mut offset, log) {
            break Err(e);
        }
        if let Ok(text) = fs::read_to_string(&status) {
            let _ = follow(&output, &mut offset, log);
            break text
                .trim()
                .parse::<i32>()
                .map(Outcome::Exited)
                .map_err(|_| {
                    command_error(
                        "the sandbox's wrapper",
                        format!("it recorded a status that is no number: {text:?}"),
                    )
                });
        }
        if !control.join(STARTED_FILE).exists() && started.elapsed() > START_TIMEOUT {
            break Err(command_error(
                "Windows Sandbox",
                format!(
                    "the sandbox did not run the step within {} s",
                    START_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    sandbox.stop();
    outcome
}

/// Removes the control folders crashed runs left (their sandbox died with its launcher or
/// is stopped by the next run's lock holder).
pub(super) fn cleanup(options: &SandboxOptions) -> Result<Vec<String>> {
    let jobs = options.state_dir.join("jobs");
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(&jobs) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dead = crate::parse_job_name(&name).is_some_and(|(owner, _)| !owner.is_alive());
        if dead && fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(name);
        }
    }
    Ok(removed)
}
