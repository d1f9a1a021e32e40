//! macOS: state and start time from `proc_pidinfo(PROC_PIDTBSDINFO)`, which also reports
//! zombies; signal 0 where it may not be asked.

use crate::State;

#[allow(
    unsafe_code,
    reason = "proc_pidinfo has no safe wrapper in std or rustix"
)]
pub(crate) fn state(pid: u32) -> State {
    let Ok(id) = libc::c_int::try_from(pid) else {
        return State::Gone;
    };
    let size = std::mem::size_of::<libc::proc_bsdinfo>();
    let Ok(len) = libc::c_int::try_from(size) else {
        return State::Unknown;
    };
    // SAFETY: `proc_bsdinfo` is plain old data, valid when zeroed.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    // SAFETY: the buffer is a live `proc_bsdinfo` and `len` is its size, as
    // PROC_PIDTBSDINFO expects; the call writes at most that many bytes.
    let written = unsafe {
        libc::proc_pidinfo(
            id,
            libc::PROC_PIDTBSDINFO,
            0,
            (&raw mut info).cast::<libc::c_void>(),
            len,
        )
    };
    if written == len {
        if info.pbi_status == libc::SZOMB {
            return State::Gone;
        }
        let start_time = info
            .pbi_start_tvsec
            .saturating_mul(1_000_000)
            .saturating_add(info.pbi_start_tvusec);
        return State::Running { start_time };
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => State::Gone,
        // Not ours to inspect (EPERM), say: whether it exists is all we can learn.
        _ => super::unix::state(pid),
    }
}
