//! Process identity and liveness, per platform.

use serde::Serialize;

/// A process, identified so that a recycled pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    /// The process id.
    pub pid: u32,
    /// On Linux, the process's start time in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`); 0 where unknown, which matches any process with this pid.
    pub start_time: u64,
}

impl Owner {
    /// The calling process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner::of(pid).unwrap_or(Owner { pid, start_time: 0 })
    }

    /// The running process `pid`, or none if there is no such process.
    pub fn of(pid: u32) -> Option<Owner> {
        owner_of(pid)
    }

    /// Whether this process still runs. A zombie, or a different process that reused the
    /// pid, counts as dead. When liveness cannot be determined the answer is `true`, so a
    /// lease is kept rather than its snapshot pruned. On Unix and Windows it asks the
    /// kernel; elsewhere it is always `true` (leases there only end by
    /// [`Index::release_lease`]).
    pub fn is_alive(&self) -> bool {
        is_alive(self)
    }
}

/// `(state, start time)` from the text of `/proc/<pid>/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last `)`.
#[cfg_attr(
    not(any(target_os = "linux", target_os = "android")),
    allow(
        dead_code,
        reason = "only Linux reads /proc; the unit tests run everywhere"
    )
)]
pub(crate) fn parse_proc_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?; // field 3
    let start = fields.nth(18)?.parse().ok()?; // field 22
    Some((state, start))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn read_stat(pid: u32) -> std::io::Result<Option<(char, u64)>> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| parse_proc_stat(&s))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn owner_of(pid: u32) -> Option<Owner> {
    match read_stat(pid) {
        Ok(Some((state, start_time))) if !is_dead_state(state) => Some(Owner { pid, start_time }),
        Ok(Some(_)) => None,
        // Unparsable: the process exists, its start time is unknown.
        Ok(None) => Some(Owner { pid, start_time: 0 }),
        Err(_) if !proc_mounted() => pid_exists(pid).then_some(Owner { pid, start_time: 0 }),
        Err(_) => None,
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn is_alive(owner: &Owner) -> bool {
    match read_stat(owner.pid) {
        Ok(Some((state, start))) => {
            !is_dead_state(state) && (owner.start_time == 0 || start == owner.start_time)
        }
        Ok(None) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Without /proc (a chroot) absence proves nothing; ask the kernel instead.
            !proc_mounted() && pid_exists(owner.pid)
        }
        // Unsure (permissions, say): keep the lease.
        Err(_) => true,
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn proc_mounted() -> bool {
    std::path::Path::new("/proc/self/stat").exists()
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) fn owner_of(pid: u32) -> Option<Owner> {
    pid_exists(pid).then_some(Owner { pid, start_time: 0 })
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) fn is_alive(owner: &Owner) -> bool {
    pid_exists(owner.pid)
}

/// Whether a process `pid` exists, by sending it signal 0.
#[cfg(unix)]
fn pid_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // EPERM: it exists but belongs to someone else.
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

#[cfg(windows)]
pub(crate) fn owner_of(pid: u32) -> Option<Owner> {
    match win32::process_state(pid) {
        win32::State::Running { created } => Some(Owner {
            pid,
            start_time: created,
        }),
        win32::State::Unknown => Some(Owner { pid, start_time: 0 }),
        win32::State::Gone => None,
    }
}

/// A process that exited, or a new process with a recycled pid (another creation
/// time), is dead; one we may not inspect counts as alive.
#[cfg(windows)]
pub(crate) fn is_alive(owner: &Owner) -> bool {
    match win32::process_state(owner.pid) {
        win32::State::Running { created } => owner.start_time == 0 || created == owner.start_time,
        win32::State::Unknown => true,
        win32::State::Gone => false,
    }
}

#[cfg(windows)]
pub(crate) mod win32 {
    //! Process liveness from `OpenProcess`, `GetExitCodeProcess` and `GetProcessTimes`.

    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_INVALID_PARAMETER, FILETIME, GetLastError, STILL_ACTIVE,
    };
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };

    pub(crate) enum State {
        /// Running, created at this FILETIME (100 ns ticks since 1601).
        Running { created: u64 },
        /// No such process, or it has exited.
        Gone,
        /// It exists but may not be inspected.
        Unknown,
    }

    #[allow(unsafe_code, reason = "Win32 process queries; std has no equivalent")]
    pub(crate) fn process_state(pid: u32) -> State {
        // SAFETY: OpenProcess takes plain values and returns a handle or null; every
        // handle we get is closed below, and the out-pointers passed to
        // GetExitCodeProcess and GetProcessTimes point at live locals of the right types.
        unsafe {
            let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if handle.is_null() {
                return if GetLastError() == ERROR_INVALID_PARAMETER {
                    State::Gone
                } else {
                    State::Unknown
                };
            }
            let mut code = 0u32;
            let mut times = [FILETIME {
                dwLowDateTime: 0,
                dwHighDateTime: 0,
            }; 4];
            let state = if GetExitCodeProcess(handle, &mut code) == 0 {
                State::Unknown
            } else if code != STILL_ACTIVE as u32 {
                State::Gone
            } else if GetProcessTimes(
                handle,
                &mut times[0],
                &mut times[1],
                &mut times[2],
                &mut times[3],
            ) == 0
            {
                State::Running { created: 0 }
            } else {
                let created =
                    (u64::from(times[0].dwHighDateTime) << 32) | u64::from(times[0].dwLowDateTime);
                State::Running { created }
            };
            CloseHandle(handle);
            state
        }
    }
}

#[cfg(not(any(unix, windows)))]
pub(crate) fn owner_of(pid: u32) -> Option<Owner> {
    Some(Owner { pid, start_time: 0 })
}

#[cfg(not(any(unix, windows)))]
pub(crate) fn is_alive(_owner: &Owner) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_after_the_last_paren() {
        // Field 22 is 4242; the command name has spaces and a `)`.
        let stat = "123 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 19 20";
        assert_eq!(parse_proc_stat(stat), Some(('S', 4242)));
        let zombie = "9 (true) Z 1 9 9 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert_eq!(parse_proc_stat(zombie), Some(('Z', 77)));
        assert_eq!(parse_proc_stat("9 (x) S 1 2"), None);
        assert_eq!(parse_proc_stat("no paren"), None);
    }

    #[test]
    fn the_current_process_is_alive_and_an_impostor_is_not() {
        let me = Owner::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
        #[cfg(target_os = "linux")]
        {
            assert_ne!(me.start_time, 0);
            let impostor = Owner {
                start_time: me.start_time + 1,
                ..me
            };
            assert!(!impostor.is_alive());
        }
    }
}
