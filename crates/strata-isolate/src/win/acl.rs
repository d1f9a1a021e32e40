//! Directory ACLs: a protected DACL giving full control, inherited by everything created
//! below, to the trustees of an [`AclRequest`] and no one else.

use std::io;

use windows_sys::Win32::Foundation::{ERROR_SUCCESS, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    EXPLICIT_ACCESS_W, NO_MULTIPLE_TRUSTEE, SE_FILE_OBJECT, SET_ACCESS, SetEntriesInAclW,
    SetNamedSecurityInfoW, TRUSTEE_IS_SID, TRUSTEE_IS_UNKNOWN, TRUSTEE_W,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION,
    SUB_CONTAINERS_AND_OBJECTS_INHERIT, UNPROTECTED_DACL_SECURITY_INFORMATION,
};
use windows_sys::Win32::Storage::FileSystem::FILE_ALL_ACCESS;

use super::{Sid, current_user_sid, wide, win32};
use crate::windows_user::{AclRequest, Trustee};

/// The SID a trustee names.
fn sid_of(trustee: &Trustee) -> io::Result<Sid> {
    match trustee {
        Trustee::Sid(text) => Sid::parse(text),
        Trustee::CurrentUser => current_user_sid(),
        Trustee::Account(name) => Sid::of_account(name)?
            .ok_or_else(|| io::Error::other(format!("there is no account named {name}"))),
    }
}

/// Replaces the DACL of the directory `request.path` as the request says.
pub(crate) fn apply(request: &AclRequest) -> io::Result<()> {
    let sids = request
        .full_control
        .iter()
        .map(sid_of)
        .collect::<io::Result<Vec<Sid>>>()?;
    let entries: Vec<EXPLICIT_ACCESS_W> = sids
        .iter()
        .map(|sid| EXPLICIT_ACCESS_W {
            grfAccessPermissions: FILE_ALL_ACCESS,
            grfAccessMode: SET_ACCESS,
            grfInheritance: SUB_CONTAINERS_AND_OBJECTS_INHERIT,
            Trustee: TRUSTEE_W {
                pMultipleTrustee: std::ptr::null_mut(),
                MultipleTrusteeOperation: NO_MULTIPLE_TRUSTEE,
                TrusteeForm: TRUSTEE_IS_SID,
                TrusteeType: TRUSTEE_IS_UNKNOWN,
                ptstrName: sid.as_psid().cast(),
            },
        })
        .collect();
    let mut acl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `entries` and the SIDs they point to outlive the call; a null old ACL makes
    // a new one, LocalAlloc'd into `acl` and freed below.
    let status = unsafe {
        SetEntriesInAclW(
            entries.len() as u32,
            entries.as_ptr(),
            std::ptr::null(),
            &mut acl,
        )
    };
    if status != ERROR_SUCCESS {
        return Err(win32(status));
    }
    let path = wide(&request.path);
    let protection = if request.protected {
        PROTECTED_DACL_SECURITY_INFORMATION
    } else {
        UNPROTECTED_DACL_SECURITY_INFORMATION
    };
    // SAFETY: `path` is NUL-terminated, `acl` a valid ACL; owner and group stay as they are.
    let status = unsafe {
        SetNamedSecurityInfoW(
            path.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | protection,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            acl,
            std::ptr::null(),
        )
    };
    // SAFETY: allocated by SetEntriesInAclW with LocalAlloc.
    unsafe { LocalFree(acl.cast()) };
    if status != ERROR_SUCCESS {
        return Err(win32(status));
    }
    Ok(())
}
