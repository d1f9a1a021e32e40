//! The `windows-sandbox` driver: every job runs inside Windows Sandbox, a throwaway VM.
//!
//! Windows allows one sandbox at a time on a machine, so the driver has one slot
//! (`<base>\w01`, `C:\strata\w01` by default) and its capabilities say so: the builder
//! queues steps for it. A machine-wide lock (`%ProgramData%\strata\windows-sandbox.lock`)
//! keeps builders of other stores out too.
//!
//! A job is a `.wsb` configuration ([`wsb_xml`]): the slot mapped read-write at the same
//! path inside the sandbox (so paths the job embeds are the slot's, and relocate like the
//! `windows-user` driver's), a control folder mapped at [`CONTROL_DIR`] holding a wrapper
//! script ([`wrapper_script`]), networking off unless the step asks for the host's network,
//! and no GPU, audio, video, printer or clipboard. The wrapper sets the job's environment
//! (profile folders inside the slot, as `windows-user` does), runs the command with its
//! output in the control folder, and records the exit status there, since the sandbox
//! reports none. The driver streams the output into the log as it grows, and stops the
//! sandbox once the status appears, or on cancel or timeout.
//!
//! Two launchers ([`Launcher`]): the `wsb` command-line tool where present (Windows 11
//! 24H2: `wsb start --config`, `wsb exec`, `wsb stop`), else `WindowsSandbox.exe job.wsb`
//! with the wrapper as the logon command. The job runs as `WDAGUtilityAccount`, the
//! sandbox's only user.

#[cfg(windows)]
mod run;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::slot::{cwd_components, normalise_windows_dir, slot_name, windows_join};
use crate::windows_user::{SlotPaths, windows_dir};
use crate::{
    Cancel, Capabilities, Driver, DriverOptions, Error, Job, Layout, NetworkMode, Outcome, Plan,
    PlannedFile, Result, Slot, TargetOs, User, wincmd,
};

/// The driver's name.
pub const NAME: &str = "windows-sandbox";

/// Where the job's control folder appears inside the sandbox.
pub const CONTROL_DIR: &str = r"C:\strata-control";

/// The user jobs run as, the sandbox's own.
pub const SANDBOX_USER: &str = "WDAGUtilityAccount";

/// The files of the control folder.
pub const WSB_FILE: &str = "job.wsb";
pub const SCRIPT_FILE: &str = "run.cmd";
pub const OUTPUT_FILE: &str = "output.log";
pub const STATUS_FILE: &str = "status";
pub const STARTED_FILE: &str = "started";

/// How the driver starts a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "tool")]
pub enum Launcher {
    /// `WindowsSandbox.exe <job.wsb>`; the wrapper runs as the logon command.
    Classic { exe: String },
    /// The `wsb` tool: `start --config <xml>`, `exec` of the wrapper, `stop`.
    Wsb { exe: String },
}

/// How the driver is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxOptions {
    /// The directory holding the slot, e.g. `C:\strata`.
    pub base: String,
    /// Where the control folders of jobs go (the driver's state under the store).
    pub state_dir: PathBuf,
    /// The machine-wide lock file.
    pub lock: String,
    pub launcher: Launcher,
}

impl SandboxOptions {
    /// The default setup: slot under [`crate::windows_user::DEFAULT_BASE`], the lock under
    /// `%ProgramData%`, `wsb` if it is on `PATH`, else the classic launcher.
    pub fn new(state_dir: impl Into<PathBuf>) -> SandboxOptions {
        let env = crate::windows_user::host_env();
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let program_data = get("ProgramData").unwrap_or_else(|| r"C:\ProgramData".to_owned());
        let system_root = get("SystemRoot").unwrap_or_else(|| r"C:\Windows".to_owned());
        let launcher = match find_on_path(get("PATH").as_deref().unwrap_or(""), "wsb.exe") {
            Some(exe) => Launcher::Wsb { exe },
            None => Launcher::Classic {
                exe: windows_join(&system_root, &["System32", "WindowsSandbox.exe"]),
            },
        };
        SandboxOptions {
            base: crate::windows_user::DEFAULT_BASE.to_owned(),
            state_dir: state_dir.into(),
            lock: windows_join(&program_data, &["strata", "windows-sandbox.lock"]),
            launcher,
        }
    }

    /// The options [`crate::driver`] makes the driver with.
    pub fn from_driver_options(options: &DriverOptions) -> Result<SandboxOptions> {
        let mut out = SandboxOptions::new(&options.state_dir);
        if let Some(dir) = &options.slot_dir {
            out.base = windows_dir(NAME, dir)?;
        }
        Ok(out)
    }
}

/// The first `dir\name` of a `;`-separated search path that exists.
fn find_on_path(path: &str, name: &str) -> Option<String> {
    path.split(';')
        .filter(|d| !d.is_empty())
        .map(|d| windows_join(d, &[name]))
        .find(|p| Path::new(p).is_file())
}

/// The sandbox's one slot under `base`.
pub fn sandbox_slot(base: &str) -> SlotPaths {
    let name = slot_name('w', 1);
    SlotPaths {
        user: SANDBOX_USER.to_owned(),
        root: windows_join(base, &[&name]),
        lock: windows_join(base, &[&format!("{name}.lock")]),
        name,
    }
}

/// `text` with XML's special characters escaped.
fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The sandbox's configuration: the slot and the control folder mapped read-write at
/// `slot` and [`CONTROL_DIR`], networking only with `network`, every other device off, and
/// the wrapper as logon command when `logon_command` (the classic launcher).
pub fn wsb_xml(slot: &str, control: &str, network: bool, logon_command: bool) -> String {
    let mapped = |host: &str, inside: &str| {
        format!(
            "    <MappedFolder>\n      <HostFolder>{}</HostFolder>\n      \
             <SandboxFolder>{}</SandboxFolder>\n      <ReadOnly>false</ReadOnly>\n    \
             </MappedFolder>\n",
            xml_text(host),
            xml_text(inside)
        )
    };
    let mut xml = String::from("<Configuration>\n");
    xml.push_str(&format!(
        "  <Networking>{}</Networking>\n",
        if network { "Default" } else { "Disable" }
    ));
    for device in [
        "VGpu",
        "AudioInput",
        "VideoInput",
        "PrinterRedirection",
        "ClipboardRedirection",
    ] {
        xml.push_str(&format!("  <{device}>Disable</{device}>\n"));
    }
    xml.push_str("  <MappedFolders>\n");
    xml.push_str(&mapped(slot, slot));
    xml.push_str(&mapped(control, CONTROL_DIR));
    xml.push_str("  </MappedFolders>\n");
    if logon_command {
        xml.push_str(&format!(
            "  <LogonCommand>\n    <Command>{}</Command>\n  </LogonCommand>\n",
            xml_text(&wrapper_command())
        ));
    }
    xml.push_str("</Configuration>\n");
    xml
}

/// How the wrapper is started inside the sandbox.
pub fn wrapper_command() -> String {
    format!(r"cmd.exe /c {}", windows_join(CONTROL_DIR, &[SCRIPT_FILE]))
}

/// The wrapper: sets `env`, makes `dirs`, runs `command_line` in `cwd` with its output in
/// the control folder, then writes its exit status there (through a rename, so the driver
/// never reads half of it); with `shutdown`, it then shuts the sandbox down.
pub fn wrapper_script(
    env: &[(String, String)],
    dirs: &[String],
    cwd: &str,
    command_line: &str,
    shutdown: bool,
) -> std::result::Result<String, String> {
    let control = |file: &str| windows_join(CONTROL_DIR, &[file]);
    let mut lines = vec![
        "@echo off".to_owned(),
        "rem Written by strata: runs one step in Windows Sandbox, then records its status."
            .to_owned(),
        format!("> \"{}\" echo started", control(STARTED_FILE)),
    ];
    for (name, value) in env {
        lines.push(wincmd::batch_set(name, value)?);
    }
    for dir in dirs {
        let dir = wincmd::batch_line(dir)?;
        lines.push(format!("if not exist \"{dir}\" mkdir \"{dir}\""));
    }
    lines.push(format!("cd /d \"{}\"", wincmd::batch_line(cwd)?));
    lines.push(format!(
        "{} > \"{}\" 2>&1",
        wincmd::batch_line(command_line)?,
        control(OUTPUT_FILE)
    ));
    // Redirection first: `echo 3> file` would redirect stream 3.
    lines.push(format!(
        "> \"{}\" echo %ERRORLEVEL%",
        control(&format!("{STATUS_FILE}.tmp"))
    ));
    lines.push(format!(
        "move /y \"{}\" \"{}\" > nul",
        control(&format!("{STATUS_FILE}.tmp")),
        control(STATUS_FILE)
    ));
    if shutdown {
        lines.push("shutdown /s /t 0".to_owned());
    }
    Ok(lines.join("\r\n") + "\r\n")
}

#[cfg_attr(
    not(windows),
    allow(dead_code, reason = "used by the Windows launcher; tested everywhere")
)]
/// The first GUID in `wsb start --raw`'s output.
pub(crate) fn sandbox_id(text: &str) -> Option<String> {
    let is_guid = |s: &str| {
        s.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|s| is_guid(s))
        .map(str::to_owned)
}

/// What running a job means, as the plan's detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetail {
    pub slot: String,
    /// The control folder on the host, mapped at [`CONTROL_DIR`]; the plan's files go there.
    pub control: String,
    pub launcher: Launcher,
    pub networking: bool,
}

/// Runs jobs in Windows Sandbox; see the module docs.
#[derive(Debug)]
pub struct WindowsSandboxDriver {
    options: SandboxOptions,
    slot: SlotPaths,
    capabilities: Capabilities,
}

impl WindowsSandboxDriver {
    pub fn new(mut options: SandboxOptions) -> WindowsSandboxDriver {
        options.base = normalise_windows_dir(&options.base);
        let slot = sandbox_slot(&options.base);
        let capabilities = Capabilities {
            // One sandbox per machine: the builder queues the rest.
            slots: 1,
            layout: Layout::Slots {
                slots: vec![Slot {
                    root: PathBuf::from(&slot.root),
                    lock: PathBuf::from(&slot.lock),
                }],
            },
            networks: vec![NetworkMode::None, NetworkMode::Host],
            unix_users: false,
            named_users: false,
            os: TargetOs::Windows,
            default_shell: vec!["cmd".to_owned(), "/S".to_owned(), "/C".to_owned()],
            default_workdir: "/".to_owned(),
            default_user: User::Name(crate::windows_user::SLOT_USER.to_owned()),
        };
        WindowsSandboxDriver {
            options,
            slot,
            capabilities,
        }
    }

    pub fn options(&self) -> &SandboxOptions {
        &self.options
    }

    fn unsupported(reason: impl Into<String>) -> Error {
        Error::Unsupported {
            driver: NAME.to_owned(),
            reason: reason.into(),
        }
    }

    /// The control folder of a job: `<state>\jobs\<job name>`.
    fn control_dir(&self, job: &Job) -> Result<String> {
        let state = self.options.state_dir.to_str().ok_or_else(|| {
            WindowsSandboxDriver::unsupported(format!(
                "its state directory {} is not Unicode",
                self.options.state_dir.display()
            ))
        })?;
        if job.name.is_empty() || job.name.contains(['\\', '/', ':', '.']) {
            return Err(WindowsSandboxDriver::unsupported(format!(
                "invalid job name `{}`",
                job.name
            )));
        }
        Ok(windows_join(
            &state.replace('/', "\\"),
            &["jobs", &job.name],
        ))
    }
}

impl Driver for WindowsSandboxDriver {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn plan(&self, job: &Job) -> Result<Plan> {
        if job.argv.is_empty() {
            return Err(WindowsSandboxDriver::unsupported("the command is empty"));
        }
        if !job.secrets.is_empty() {
            return Err(WindowsSandboxDriver::unsupported("it cannot mount secrets"));
        }
        if !job.mounts.is_empty() {
            return Err(WindowsSandboxDriver::unsupported("it cannot mount caches"));
        }
        if job.user != User::Name(crate::windows_user::SLOT_USER.to_owned()) {
            return Err(WindowsSandboxDriver::unsupported(format!(
                "every job runs as {SANDBOX_USER}, so the spec cannot choose {:?}",
                job.user
            )));
        }
        crate::check_env(NAME, &job.env)?;
        let root = job.root.to_str().unwrap_or_default();
        if !root.eq_ignore_ascii_case(&self.slot.root) {
            return Err(WindowsSandboxDriver::unsupported(format!(
                "the job's root {} is not its slot {}",
                job.root.display(),
                self.slot.root
            )));
        }
        let cwd = windows_join(&self.slot.root, &cwd_components(NAME, &job.cwd)?);
        let command_line =
            wincmd::command_line(&job.argv).map_err(WindowsSandboxDriver::unsupported)?;
        let env = wincmd::merge_env(
            &crate::windows_user::slot_env(&self.slot, crate::SlotUsers::Current),
            &job.env,
        );
        let mut dirs = crate::windows_user::job_dirs(&self.slot);
        dirs.push(cwd.clone());
        let classic = matches!(self.options.launcher, Launcher::Classic { .. });
        let script = wrapper_script(&env, &dirs, &cwd, &command_line, classic)
            .map_err(WindowsSandboxDriver::unsupported)?;
        let control = self.control_dir(job)?;
        let networking = job.network == NetworkMode::Host;
        let wsb = wsb_xml(&self.slot.root, &control, networking, classic);
        let detail = RunDetail {
            slot: self.slot.root.clone(),
            control,
            launcher: self.options.launcher.clone(),
            networking,
        };
        Ok(Plan {
            driver: NAME.to_owned(),
            job: job.clone(),
            files: vec![
                PlannedFile {
                    path: PathBuf::from(WSB_FILE),
                    contents: wsb.into_bytes(),
                    mode: 0o600,
                },
                PlannedFile {
                    path: PathBuf::from(SCRIPT_FILE),
                    contents: script.into_bytes(),
                    mode: 0o600,
                },
            ],
            argv: job.argv.clone(),
            detail: crate::encode_detail(NAME, &detail)?,
        })
    }

    fn run(&self, plan: &Plan, log: &mut dyn std::io::Write, cancel: &Cancel) -> Result<Outcome> {
        let detail: RunDetail = crate::plan_detail(NAME, plan)?;
        #[cfg(windows)]
        return run::run(&self.options, plan, &detail, log, cancel);
        #[cfg(not(windows))]
        {
            let _ = (detail, log, cancel);
            Err(unavailable("it runs on Windows only".to_owned()))
        }
    }

    fn cleanup(&self) -> Result<Vec<String>> {
        #[cfg(windows)]
        return run::cleanup(&self.options);
        #[cfg(not(windows))]
        Ok(Vec::new())
    }

    fn check(&self) -> Result<()> {
        let exe = match &self.options.launcher {
            Launcher::Classic { exe } | Launcher::Wsb { exe } => exe,
        };
        if cfg!(windows) && Path::new(exe).is_file() {
            Ok(())
        } else if cfg!(windows) {
            Err(unavailable(format!(
                "{exe} is missing: enable Windows Sandbox (the optional feature \
                 Containers-DisposableClientVM, on Pro, Enterprise or Education with \
                 virtualization on)"
            )))
        } else {
            Err(unavailable("it runs on Windows only".to_owned()))
        }
    }

    fn remove_slots(&self) -> Result<Vec<String>> {
        match std::fs::remove_dir_all(&self.slot.root) {
            Ok(()) => Ok(vec![format!("directory {}", self.slot.root)]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(Error::Io {
                op: "remove",
                path: PathBuf::from(&self.slot.root),
                source,
            }),
        }
    }
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        driver: NAME.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests;
