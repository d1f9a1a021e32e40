//! What each OS says about a pid: running since when, gone, or not to be inspected.

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use linux::state;
#[cfg(target_os = "macos")]
pub(crate) use macos::state;
#[cfg(all(
    unix,
    not(any(target_os = "linux", target_os = "android", target_os = "macos"))
))]
pub(crate) use unix::state;
#[cfg(windows)]
pub(crate) use windows::state;

/// Elsewhere nothing can be asked: every owner may be alive.
#[cfg(not(any(unix, windows)))]
pub(crate) fn state(_pid: u32) -> crate::State {
    crate::State::Unknown
}
