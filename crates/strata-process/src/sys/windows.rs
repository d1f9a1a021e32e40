//! Windows: exit state and creation time from `OpenProcess`, `GetExitCodeProcess` and
//! `GetProcessTimes`. A process that has exited counts as gone even while handles to it keep
//! its pid taken (the zombie of Windows).

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_INVALID_PARAMETER, FILETIME, GetLastError, STILL_ACTIVE,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
};

use crate::State;

#[allow(unsafe_code, reason = "Win32 process queries; std has no equivalent")]
pub(crate) fn state(pid: u32) -> State {
    // SAFETY: OpenProcess takes plain values and returns a handle or null; every handle we
    // get is closed below, and the out-pointers passed to GetExitCodeProcess and
    // GetProcessTimes point at live locals of the right types.
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
            State::Running { start_time: 0 }
        } else {
            let created =
                (u64::from(times[0].dwHighDateTime) << 32) | u64::from(times[0].dwLowDateTime);
            State::Running {
                start_time: created,
            }
        };
        CloseHandle(handle);
        state
    }
}
