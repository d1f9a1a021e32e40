//! Any Unix: whether a pid exists, by sending it signal 0. Says nothing of start times or
//! zombies; Linux and macOS ask more precisely, and fall back on this.

use crate::State;

/// Whether a process `pid` exists: running, with an unknown start time, or gone.
pub(crate) fn state(pid: u32) -> State {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return State::Gone;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => State::Running { start_time: 0 },
        // It exists but belongs to someone else.
        Err(rustix::io::Errno::PERM) => State::Running { start_time: 0 },
        Err(rustix::io::Errno::SRCH) => State::Gone,
        Err(_) => State::Unknown,
    }
}
