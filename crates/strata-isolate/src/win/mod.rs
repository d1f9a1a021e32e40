//! Thin wrappers over the Win32 calls of the Windows drivers: processes in job objects
//! ([`process`]), local users and their profiles ([`users`]), directory ACLs ([`acl`]), and
//! the security identifiers, random bytes and token queries they share (here).
//!
//! Everything a driver decides is data made elsewhere (plans, ACL and user requests); these
//! functions only carry it out. Each `unsafe` block says why the call is sound: buffers are
//! owned Rust values that outlive the call, sizes are their lengths, and every handle or
//! allocation the system returns is closed or freed on every path.
#![allow(unsafe_code, reason = "Win32 FFI: std has no wrappers for these calls")]

pub(crate) mod acl;
pub(crate) mod process;
pub(crate) mod users;

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::{
    ERROR_INSUFFICIENT_BUFFER, ERROR_NONE_MAPPED, HANDLE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{ConvertSidToStringSidW, ConvertStringSidToSidW};
use windows_sys::Win32::Security::Cryptography::{
    BCRYPT_USE_SYSTEM_PREFERRED_RNG, BCryptGenRandom,
};
use windows_sys::Win32::Security::{
    CopySid, GetLengthSid, GetTokenInformation, LookupAccountNameW, PSID, SID_NAME_USE,
    TOKEN_ELEVATION, TOKEN_QUERY, TOKEN_USER, TokenElevation, TokenUser,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// `s` as a NUL-terminated UTF-16 string.
pub(crate) fn wide(s: impl AsRef<OsStr>) -> Vec<u16> {
    s.as_ref().encode_wide().chain(Some(0)).collect()
}

/// The error of a Win32 call that returned a status code.
pub(crate) fn win32(code: u32) -> io::Error {
    io::Error::from_raw_os_error(code as i32)
}

/// Fills `buf` from the system's preferred random number generator.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    for chunk in buf.chunks_mut(u32::MAX as usize) {
        // SAFETY: `chunk` is a live, writable buffer of exactly the length passed; a null
        // algorithm handle is what BCRYPT_USE_SYSTEM_PREFERRED_RNG requires.
        let status = unsafe {
            BCryptGenRandom(
                std::ptr::null_mut(),
                chunk.as_mut_ptr(),
                chunk.len() as u32,
                BCRYPT_USE_SYSTEM_PREFERRED_RNG,
            )
        };
        if status != 0 {
            return Err(io::Error::other(format!(
                "BCryptGenRandom failed with status {status:#x}"
            )));
        }
    }
    Ok(())
}

/// A security identifier, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sid(Vec<u8>);

impl Sid {
    /// The pointer the API takes; valid while `self` is.
    pub(crate) fn as_psid(&self) -> PSID {
        self.0.as_ptr() as PSID
    }

    /// Copies the SID at `psid`.
    ///
    /// # Safety
    /// `psid` must point to a valid SID.
    unsafe fn copy_from(psid: PSID) -> io::Result<Sid> {
        // SAFETY: the caller guarantees a valid SID.
        let len = unsafe { GetLengthSid(psid) };
        let mut buf = vec![0u8; len as usize];
        // SAFETY: `buf` has the SID's length; `psid` is valid (caller).
        if unsafe { CopySid(len, buf.as_mut_ptr() as PSID, psid) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Sid(buf))
    }

    /// Parses `S-1-5-…`.
    pub(crate) fn parse(text: &str) -> io::Result<Sid> {
        let text = wide(text);
        let mut psid: PSID = std::ptr::null_mut();
        // SAFETY: `text` is NUL-terminated and outlives the call; `psid` receives a
        // LocalAlloc'd SID that is copied, then freed below.
        if unsafe { ConvertStringSidToSidW(text.as_ptr(), &mut psid) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the call succeeded, so `psid` is a valid SID.
        let sid = unsafe { Sid::copy_from(psid) };
        // SAFETY: `psid` was allocated by ConvertStringSidToSidW with LocalAlloc.
        unsafe { LocalFree(psid) };
        sid
    }

    /// `S-1-5-…`.
    pub(crate) fn to_text(&self) -> io::Result<String> {
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: `self` holds a valid SID; `text` receives a LocalAlloc'd string freed below.
        if unsafe { ConvertSidToStringSidW(self.as_psid(), &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the call succeeded: `text` is a NUL-terminated UTF-16 string.
        let out = unsafe {
            let len = (0..).take_while(|&i| *text.add(i) != 0).count();
            String::from_utf16_lossy(std::slice::from_raw_parts(text, len))
        };
        // SAFETY: allocated by ConvertSidToStringSidW with LocalAlloc.
        unsafe { LocalFree(text.cast()) };
        Ok(out)
    }

    /// The SID of the local account `name`; `None` if there is no such account.
    pub(crate) fn of_account(name: &str) -> io::Result<Option<Sid>> {
        let name = wide(name);
        let mut sid_len = 0u32;
        let mut domain_len = 0u32;
        let mut kind: SID_NAME_USE = 0;
        // The first call only asks for the sizes.
        // SAFETY: null buffers with zero sizes are how the sizes are queried.
        let ok = unsafe {
            LookupAccountNameW(
                std::ptr::null(),
                name.as_ptr(),
                std::ptr::null_mut(),
                &mut sid_len,
                std::ptr::null_mut(),
                &mut domain_len,
                &mut kind,
            )
        };
        if ok == 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error().map(|c| c as u32) {
                Some(ERROR_INSUFFICIENT_BUFFER) => {}
                Some(ERROR_NONE_MAPPED) => return Ok(None),
                _ => return Err(err),
            }
        }
        let mut sid = vec![0u8; sid_len as usize];
        let mut domain = vec![0u16; domain_len.max(1) as usize];
        // SAFETY: both buffers have the sizes the first call asked for.
        let ok = unsafe {
            LookupAccountNameW(
                std::ptr::null(),
                name.as_ptr(),
                sid.as_mut_ptr() as PSID,
                &mut sid_len,
                domain.as_mut_ptr(),
                &mut domain_len,
                &mut kind,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(Sid(sid)))
    }
}

/// The current process's token, for queries.
fn process_token() -> io::Result<OwnedHandle> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of the current process needs no closing; `token` receives a
    // handle owned below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(token) })
}

/// The user this process runs as.
pub(crate) fn current_user_sid() -> io::Result<Sid> {
    let token = process_token()?;
    let mut len = 0u32;
    // SAFETY: a null buffer of size 0 asks for the size.
    unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            std::ptr::null_mut(),
            0,
            &mut len,
        )
    };
    // u64s keep the buffer aligned for TOKEN_USER.
    let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
    // SAFETY: `buf` holds at least `len` bytes, aligned for TOKEN_USER.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call filled `buf` with a TOKEN_USER whose SID points into `buf`.
    unsafe {
        let user = &*(buf.as_ptr() as *const TOKEN_USER);
        Sid::copy_from(user.User.Sid)
    }
}

/// Whether this process runs elevated (an administrator's full token, or LocalSystem).
pub(crate) fn is_elevated() -> io::Result<bool> {
    let token = process_token()?;
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut len = 0u32;
    // SAFETY: `elevation` is a TOKEN_ELEVATION of the size passed.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenElevation,
            (&mut elevation as *mut TOKEN_ELEVATION).cast(),
            size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(elevation.TokenIsElevated != 0)
}
