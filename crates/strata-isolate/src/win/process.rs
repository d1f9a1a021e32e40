//! A job's process: created suspended, assigned to a job object that kills every process in
//! it when it is closed or terminated, then resumed, so nothing the job starts escapes a
//! cancel, a timeout or the end of the job. Its stdout and stderr are one pipe's write end.
//!
//! Three ways to create it: `CreateProcessWithLogonW` as a slot's user (the Secondary Logon
//! service does the logon, so no privilege is needed, but it cannot be called from
//! LocalSystem); `LogonUserW` + `LoadUserProfileW` + `CreateProcessAsUserW` as a slot's user
//! from a service (LocalSystem holds the privileges these need:
//! `SeAssignPrimaryTokenPrivilege`, `SeIncreaseQuotaPrivilege`, and `SeBackupPrivilege` and
//! `SeRestorePrivilege` for the profile); or `CreateProcessW` as this process's own user
//! (development, and Wine).

use std::fs::File;
use std::io::{self, PipeWriter};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::path::Path;
use std::sync::Mutex;

use windows_sys::Win32::Foundation::{
    DUPLICATE_SAME_ACCESS, DuplicateHandle, HANDLE, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Security::{
    LOGON32_LOGON_INTERACTIVE, LOGON32_PROVIDER_DEFAULT, LogonUserW,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NO_WINDOW, CREATE_SUSPENDED, CREATE_UNICODE_ENVIRONMENT, CreateProcessAsUserW,
    CreateProcessW, CreateProcessWithLogonW, GetCurrentProcess, GetExitCodeProcess, INFINITE,
    LOGON_WITH_PROFILE, PROCESS_INFORMATION, ResumeThread, STARTF_USESTDHANDLES, STARTUPINFOW,
    TerminateProcess, WaitForSingleObject,
};
use windows_sys::Win32::UI::Shell::{LoadUserProfileW, PROFILEINFOW, UnloadUserProfile};

use super::wide;
use crate::Outcome;
use crate::supervise::Watched;

/// Who the process runs as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Logon<'a> {
    /// A local account, logged on with its password and profile by the Secondary Logon
    /// service.
    Password { user: &'a str, password: &'a str },
    /// A local account, logged on with its password and profile by this process (a service
    /// running as LocalSystem).
    Service { user: &'a str, password: &'a str },
    /// This process's own user.
    Current,
}

/// What to start.
#[derive(Debug)]
pub(crate) struct Spawn<'a> {
    pub(crate) command_line: &'a str,
    /// The whole environment, as [`crate::wincmd::env_block`] takes it.
    pub(crate) env: &'a [(String, String)],
    pub(crate) cwd: &'a Path,
    pub(crate) logon: Logon<'a>,
}

/// The exit code the job object's processes get when it is terminated.
const KILLED: u32 = 1;

/// Only one process is created at a time by this module: inheritable copies of a job's pipe
/// exist only then, so another job's process cannot inherit them and hold the pipe open.
static SPAWNING: Mutex<()> = Mutex::new(());

/// A running job: its first process and the job object holding it and its descendants,
/// and the profile loaded for it, if this process loaded one (unloaded last, once the job
/// object has gone and taken every process with it).
#[derive(Debug)]
pub(crate) struct JobProcess {
    process: OwnedHandle,
    job: OwnedHandle,
    /// Held only to be dropped (unloaded) after the fields above.
    _profile: Option<Profile>,
}

/// A user's logon token and the profile loaded for it; unloaded when dropped.
#[derive(Debug)]
struct Profile {
    token: OwnedHandle,
    profile: HANDLE,
}

impl Drop for Profile {
    fn drop(&mut self) {
        // SAFETY: both handles came from LoadUserProfileW for this token and are unloaded
        // once, here.
        unsafe { UnloadUserProfile(self.token.as_raw_handle(), self.profile) };
    }
}

/// Logs `user` on with `password` and loads its profile (`C:\Users\<user>`, HKCU).
fn log_on(user: &str, password: &str) -> io::Result<Profile> {
    let name = wide(user);
    let domain = wide(".");
    let mut secret = wide(password);
    let mut raw: HANDLE = std::ptr::null_mut();
    // SAFETY: the strings are NUL-terminated and outlive the call; `raw` receives a token
    // handle owned below.
    let ok = unsafe {
        LogonUserW(
            name.as_ptr(),
            domain.as_ptr(),
            secret.as_ptr(),
            LOGON32_LOGON_INTERACTIVE,
            LOGON32_PROVIDER_DEFAULT,
            &mut raw,
        )
    };
    secret.iter_mut().for_each(|c| *c = 0);
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle nothing else owns.
    let token = unsafe { OwnedHandle::from_raw_handle(raw) };
    let mut user_name = wide(user);
    let mut info = PROFILEINFOW {
        dwSize: size_of::<PROFILEINFOW>() as u32,
        // PI_NOUI (in windows-sys's GroupPolicy module): no dialog from a service.
        dwFlags: 1,
        lpUserName: user_name.as_mut_ptr(),
        lpProfilePath: std::ptr::null_mut(),
        lpDefaultPath: std::ptr::null_mut(),
        lpServerName: std::ptr::null_mut(),
        lpPolicyPath: std::ptr::null_mut(),
        hProfile: std::ptr::null_mut(),
    };
    // SAFETY: `token` is a logon token, `info` a PROFILEINFOW of the size it says whose
    // name outlives the call.
    if unsafe { LoadUserProfileW(token.as_raw_handle(), &mut info) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Profile {
        token,
        profile: info.hProfile,
    })
}

/// Starts `spawn` with stdout and stderr going to `output` and stdin reading nothing.
pub(crate) fn spawn(spawn: &Spawn<'_>, output: &PipeWriter) -> io::Result<JobProcess> {
    let job = kill_on_close_job()?;
    let mut command_line = wide(spawn.command_line);
    let env = crate::wincmd::env_block(spawn.env);
    let cwd = wide(spawn.cwd);
    let null = File::open("NUL")?;
    let flags = CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | CREATE_NO_WINDOW;
    let mut info = PROCESS_INFORMATION {
        hProcess: std::ptr::null_mut(),
        hThread: std::ptr::null_mut(),
        dwProcessId: 0,
        dwThreadId: 0,
    };
    let profile = match spawn.logon {
        Logon::Service { user, password } => Some(log_on(user, password)?),
        Logon::Password { .. } | Logon::Current => None,
    };
    let created = {
        let _one_at_a_time = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
        let stdout = inheritable(output.as_raw_handle())?;
        let stdin = inheritable(null.as_raw_handle())?;
        let startup = STARTUPINFOW {
            cb: size_of::<STARTUPINFOW>() as u32,
            dwFlags: STARTF_USESTDHANDLES,
            hStdInput: stdin.as_raw_handle(),
            hStdOutput: stdout.as_raw_handle(),
            hStdError: stdout.as_raw_handle(),
            ..empty_startup_info()
        };
        let ok = match spawn.logon {
            // SAFETY: every buffer is NUL-terminated (the environment block double-NUL
            // terminated, as CREATE_UNICODE_ENVIRONMENT requires) and outlives the call;
            // `command_line` is writable, as the call requires; `info` receives two
            // handles, owned below.
            Logon::Current => unsafe {
                CreateProcessW(
                    std::ptr::null(),
                    command_line.as_mut_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    1,
                    flags,
                    env.as_ptr().cast(),
                    cwd.as_ptr(),
                    &startup,
                    &mut info,
                )
            },
            Logon::Password { user, password } => {
                let user = wide(user);
                let domain = wide(".");
                let mut password = wide(password);
                // SAFETY: as above; the credentials are NUL-terminated and outlive the call.
                let ok = unsafe {
                    CreateProcessWithLogonW(
                        user.as_ptr(),
                        domain.as_ptr(),
                        password.as_ptr(),
                        LOGON_WITH_PROFILE,
                        std::ptr::null(),
                        command_line.as_mut_ptr(),
                        flags,
                        env.as_ptr().cast(),
                        cwd.as_ptr(),
                        &startup,
                        &mut info,
                    )
                };
                password.iter_mut().for_each(|c| *c = 0);
                ok
            }
            // SAFETY: as for CreateProcessW; the token is the logged-on user's, held by
            // `profile` until the job ends.
            Logon::Service { .. } => unsafe {
                CreateProcessAsUserW(
                    profile
                        .as_ref()
                        .map_or(std::ptr::null_mut(), |p| p.token.as_raw_handle()),
                    std::ptr::null(),
                    command_line.as_mut_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    1,
                    flags,
                    env.as_ptr().cast(),
                    cwd.as_ptr(),
                    &startup,
                    &mut info,
                )
            },
        };
        // Read before anything else runs: closing the handles below may reset it.
        if ok == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
        // The inheritable copies close here, before another process can be created.
    };
    created?;
    // SAFETY: the call succeeded: both handles are fresh and owned by nothing else.
    let (process, thread) = unsafe {
        (
            OwnedHandle::from_raw_handle(info.hProcess),
            OwnedHandle::from_raw_handle(info.hThread),
        )
    };
    // SAFETY: both handles are valid; the process is suspended, so it has started nothing
    // that could escape the job.
    if unsafe { AssignProcessToJobObject(job.as_raw_handle(), process.as_raw_handle()) } == 0 {
        let err = io::Error::last_os_error();
        // SAFETY: a valid process handle.
        unsafe { TerminateProcess(process.as_raw_handle(), KILLED) };
        return Err(err);
    }
    // SAFETY: a valid thread handle.
    if unsafe { ResumeThread(thread.as_raw_handle()) } == u32::MAX {
        let err = io::Error::last_os_error();
        // SAFETY: a valid job handle.
        unsafe { TerminateJobObject(job.as_raw_handle(), KILLED) };
        return Err(err);
    }
    Ok(JobProcess {
        process,
        job,
        _profile: profile,
    })
}

fn empty_startup_info() -> STARTUPINFOW {
    STARTUPINFOW {
        cb: 0,
        lpReserved: std::ptr::null_mut(),
        lpDesktop: std::ptr::null_mut(),
        lpTitle: std::ptr::null_mut(),
        dwX: 0,
        dwY: 0,
        dwXSize: 0,
        dwYSize: 0,
        dwXCountChars: 0,
        dwYCountChars: 0,
        dwFillAttribute: 0,
        dwFlags: 0,
        wShowWindow: 0,
        cbReserved2: 0,
        lpReserved2: std::ptr::null_mut(),
        hStdInput: std::ptr::null_mut(),
        hStdOutput: std::ptr::null_mut(),
        hStdError: std::ptr::null_mut(),
    }
}

/// A job object whose processes all die when its last handle closes.
fn kill_on_close_job() -> io::Result<OwnedHandle> {
    // SAFETY: null attributes and name make an unnamed job with default security.
    let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle nothing else owns.
    let job = unsafe { OwnedHandle::from_raw_handle(raw) };
    // SAFETY: all-zero is a valid JOBOBJECT_EXTENDED_LIMIT_INFORMATION (no limits).
    let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    // SAFETY: `limits` has the size passed and the class it is declared as.
    let ok = unsafe {
        SetInformationJobObject(
            job.as_raw_handle(),
            JobObjectExtendedLimitInformation,
            (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
            size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(job)
}

/// An inheritable duplicate of `handle`, closed when dropped.
fn inheritable(handle: RawHandle) -> io::Result<OwnedHandle> {
    let mut copy: HANDLE = std::ptr::null_mut();
    // SAFETY: `handle` is valid (borrowed from a live owner) and this process's
    // pseudo-handle needs no closing; `copy` receives a new handle owned below.
    let ok = unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            handle,
            GetCurrentProcess(),
            &mut copy,
            0,
            1,
            DUPLICATE_SAME_ACCESS,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(copy) })
}

impl JobProcess {
    fn terminate(&self) {
        // SAFETY: a valid job handle; failing (the job is already empty) changes nothing.
        unsafe { TerminateJobObject(self.job.as_raw_handle(), KILLED) };
    }

    /// How many processes of the job are still alive.
    #[cfg(test)]
    pub(crate) fn active_processes(&self) -> io::Result<u32> {
        use windows_sys::Win32::System::JobObjects::{
            JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JobObjectBasicAccountingInformation,
            QueryInformationJobObject,
        };
        // SAFETY: all-zero is a valid value of this plain struct.
        let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: `info` has the size passed and the class it is declared as.
        let ok = unsafe {
            QueryInformationJobObject(
                self.job.as_raw_handle(),
                JobObjectBasicAccountingInformation,
                (&mut info as *mut JOBOBJECT_BASIC_ACCOUNTING_INFORMATION).cast(),
                size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.ActiveProcesses)
    }
}

impl Watched for JobProcess {
    fn try_wait(&mut self) -> io::Result<Option<Outcome>> {
        // SAFETY: a valid process handle; a zero timeout only polls.
        match unsafe { WaitForSingleObject(self.process.as_raw_handle(), 0) } {
            WAIT_OBJECT_0 => {
                let mut code = 0u32;
                // SAFETY: a valid process handle and a live u32.
                if unsafe { GetExitCodeProcess(self.process.as_raw_handle(), &mut code) } == 0 {
                    return Err(io::Error::last_os_error());
                }
                // NTSTATUS codes (0xC0000005…) read as negative, as cmd's %ERRORLEVEL% does.
                Ok(Some(Outcome::Exited(code as i32)))
            }
            WAIT_TIMEOUT => Ok(None),
            _ => Err(io::Error::last_os_error()),
        }
    }

    fn stop(&mut self) {
        self.terminate();
    }

    fn reap(&mut self) {
        // What the job left running in the background goes with it.
        self.terminate();
    }

    fn abandon(&mut self) {
        self.terminate();
        // SAFETY: a valid process handle; the job was just terminated, so this returns.
        unsafe { WaitForSingleObject(self.process.as_raw_handle(), INFINITE) };
    }
}
