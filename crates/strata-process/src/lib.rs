//! Who owns what: process identity (pid plus start time) and liveness on every OS, and the one
//! way Strata writes an owner into a name.
//!
//! Strata records which process owns a lease, a cache view, a checkout's state directory, an
//! unpack in progress or a sandbox's container, so that whatever a dead process left can be
//! cleaned up by the next one while nothing a live process still uses is touched. A pid alone
//! is not enough (pids are recycled), so an [`Owner`] is a pid plus the process's start time
//! as the OS reports it:
//!
//! - Linux: field 22 of `/proc/<pid>/stat` (clock ticks since boot);
//! - macOS: `proc_pidinfo(PROC_PIDTBSDINFO)`'s start time, in microseconds since the epoch;
//! - Windows: `GetProcessTimes`'s creation time (100 ns ticks since 1601);
//! - elsewhere: unknown (0).
//!
//! [`Owner::is_alive`] counts as dead a process that has exited, a zombie (exited, not yet
//! reaped; on Windows: exited, with handles still open), and a process with the owner's pid but
//! another start time. A start time of 0 means unknown and matches any process with the pid
//! (owners read from names written by older Strata versions, or where the OS does not tell).
//! When liveness cannot be determined (no permission to look) the answer is "alive": callers
//! keep what they would otherwise remove. All processes sharing a store must see the same pids
//! (one pid namespace, one `/proc`).
//!
//! Names: [`owned_name`] and [`unique_name`] write `<prefix><pid>.<start>-<n>`, and
//! [`name_owner`] reads the owner back, also from the older pid-only forms
//! (`<prefix><pid>-<n>` and `<prefix><pid>-<millis>-<n>`), whose start time is unknown.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

mod names;
mod sys;

pub use names::{name_owner, owned_name, unique_name};

/// A process, identified so that a recycled pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Owner {
    /// The process id.
    pub pid: u32,
    /// The process's start time, in the OS's own unit (see the crate docs); 0 where unknown,
    /// which matches any process with this pid.
    pub start_time: u64,
}

/// What the OS says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A running (or stopped, or sleeping) process, started at this time (0: unknown).
    Running { start_time: u64 },
    /// No such process, or it has exited (a zombie).
    Gone,
    /// It may exist but may not be inspected.
    Unknown,
}

impl Owner {
    /// The owner `pid` started at `start_time` (0: unknown), as recorded somewhere.
    pub fn new(pid: u32, start_time: u64) -> Owner {
        Owner { pid, start_time }
    }

    /// The calling process.
    pub fn current() -> Owner {
        // Asked for on every name and lease: read once per process (a forked child, whose
        // pid differs, asks again).
        static CURRENT: Mutex<Option<Owner>> = Mutex::new(None);
        let pid = std::process::id();
        let mut cached = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        match *cached {
            Some(owner) if owner.pid == pid => owner,
            _ => {
                let owner = Owner::of(pid).unwrap_or(Owner { pid, start_time: 0 });
                *cached = Some(owner);
                owner
            }
        }
    }

    /// The running process `pid`, or none if there is no such process (or only a zombie).
    /// Where the OS does not tell its start time, or may not be asked, the owner's start time
    /// is 0 (unknown).
    pub fn of(pid: u32) -> Option<Owner> {
        match sys::state(pid) {
            State::Running { start_time } => Some(Owner { pid, start_time }),
            State::Unknown => Some(Owner { pid, start_time: 0 }),
            State::Gone => None,
        }
    }

    /// Whether this process still runs. A process that exited (a zombie included), or another
    /// process that reused the pid (another start time), is dead. When liveness cannot be
    /// determined the answer is `true`, so that what the owner holds is kept.
    pub fn is_alive(&self) -> bool {
        let me = Owner::current();
        if self.pid == me.pid && (self.start_time == 0 || self.start_time == me.start_time) {
            return true;
        }
        match sys::state(self.pid) {
            State::Running { start_time } => {
                self.start_time == 0 || start_time == 0 || start_time == self.start_time
            }
            State::Unknown => true,
            State::Gone => false,
        }
    }
}

/// `<pid>.<start time>`, the form names carry (see [`owned_name`]).
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.pid, self.start_time)
    }
}

/// Why text is not an owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an owner (`<pid>.<start time>` or `<pid>`, in decimal)")]
#[non_exhaustive]
pub struct ParseOwnerError {
    /// The text given.
    pub text: String,
}

/// Reads `<pid>.<start time>`, or a bare `<pid>` (start time unknown, as older names have it).
impl FromStr for Owner {
    type Err = ParseOwnerError;

    fn from_str(text: &str) -> Result<Owner, ParseOwnerError> {
        let err = || ParseOwnerError {
            text: text.to_owned(),
        };
        let (pid, start) = match text.split_once('.') {
            Some((pid, start)) => (pid, Some(start)),
            None => (text, None),
        };
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u64>().ok()
        };
        let pid = number(pid)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(err)?;
        let start_time = match start {
            Some(s) => number(s).ok_or_else(err)?,
            None => 0,
        };
        Ok(Owner { pid, start_time })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_read_back_as_written_and_older_pid_only_forms_have_no_start_time() {
        let owner = Owner::new(4242, 987_654_321);
        assert_eq!(owner.to_string(), "4242.987654321");
        assert_eq!("4242.987654321".parse::<Owner>(), Ok(owner));
        assert_eq!("17".parse::<Owner>(), Ok(Owner::new(17, 0)));
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "+1",
            "1.+2",
            "1.2.3",
            "x",
            "4294967296",
            "1.18446744073709551616",
        ] {
            let err = bad.parse::<Owner>().unwrap_err();
            assert_eq!(err.text, bad);
        }
    }

    #[test]
    fn the_current_process_is_alive_and_known_by_its_start_time() {
        let me = Owner::current();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(Owner::current(), me, "asked twice, the same owner");
        assert!(me.is_alive());
        assert!(Owner::new(me.pid, 0).is_alive(), "a pid-only owner");
        if cfg!(any(target_os = "linux", target_os = "macos", windows)) {
            assert_ne!(me.start_time, 0);
            assert_eq!(Owner::of(me.pid), Some(me));
        }
    }
}
