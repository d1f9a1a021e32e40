//! Local users for the slots: made with `NetUserAdd` as plain members of Users, given a
//! fresh password before each job (`NetUserSetInfo`), removed with their profile
//! (`DeleteProfileW`, then `NetUserDel`). All of it needs an administrator.

use std::io;

use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_MEMBER_IN_ALIAS};
use windows_sys::Win32::NetworkManagement::NetManagement::{
    LOCALGROUP_MEMBERS_INFO_0, NERR_Success as NERR_SUCCESS, NERR_UserExists as NERR_USER_EXISTS,
    NERR_UserNotFound as NERR_USER_NOT_FOUND, NetLocalGroupAddMembers, NetUserAdd, NetUserDel,
    NetUserSetInfo, UF_DONT_EXPIRE_PASSWD, UF_PASSWD_CANT_CHANGE, UF_SCRIPT, USER_INFO_1,
    USER_INFO_1003, USER_PRIV_USER,
};
use windows_sys::Win32::Security::LookupAccountSidW;
use windows_sys::Win32::UI::Shell::DeleteProfileW;

use super::{Sid, wide, win32};
use crate::windows_user::UserRequest;

/// Makes the user `request` describes unless it exists, with `password`, and adds it to
/// its groups. Returns whether it was made.
pub(crate) fn ensure_user(request: &UserRequest, password: &str) -> io::Result<bool> {
    let mut name = wide(&request.name);
    let mut password = wide(password);
    let mut comment = wide(&request.comment);
    let info = USER_INFO_1 {
        usri1_name: name.as_mut_ptr(),
        usri1_password: password.as_mut_ptr(),
        usri1_password_age: 0,
        usri1_priv: USER_PRIV_USER,
        usri1_home_dir: std::ptr::null_mut(),
        usri1_comment: comment.as_mut_ptr(),
        usri1_flags: UF_SCRIPT | UF_DONT_EXPIRE_PASSWD | UF_PASSWD_CANT_CHANGE,
        usri1_script_path: std::ptr::null_mut(),
    };
    let mut bad_field = 0u32;
    // SAFETY: `info` and the strings it points to live until the call returns.
    let status = unsafe {
        NetUserAdd(
            std::ptr::null(),
            1,
            (&info as *const USER_INFO_1).cast(),
            &mut bad_field,
        )
    };
    let made = match status {
        NERR_SUCCESS => true,
        NERR_USER_EXISTS => false,
        code => return Err(win32(code)),
    };
    let sid = Sid::of_account(&request.name)?
        .ok_or_else(|| io::Error::other(format!("user {} has no SID", request.name)))?;
    for group in &request.groups {
        add_to_group(&sid, &Sid::parse(group)?)?;
    }
    Ok(made)
}

/// Adds `member` to the local group whose SID is `group` (groups are named in the system's
/// language, so they are looked up by SID).
fn add_to_group(member: &Sid, group: &Sid) -> io::Result<()> {
    let mut name = vec![0u16; 256];
    let mut name_len = name.len() as u32;
    let mut domain = vec![0u16; 256];
    let mut domain_len = domain.len() as u32;
    let mut kind = 0;
    // SAFETY: both buffers have the lengths passed; `group` is a valid SID.
    let ok = unsafe {
        LookupAccountSidW(
            std::ptr::null(),
            group.as_psid(),
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    name.truncate(name_len as usize);
    name.push(0);
    let info = LOCALGROUP_MEMBERS_INFO_0 {
        lgrmi0_sid: member.as_psid(),
    };
    // SAFETY: `name` is NUL-terminated; `info` points at `member`, which outlives the call.
    let status = unsafe {
        NetLocalGroupAddMembers(
            std::ptr::null(),
            name.as_ptr(),
            0,
            (&info as *const LOCALGROUP_MEMBERS_INFO_0).cast(),
            1,
        )
    };
    match status {
        NERR_SUCCESS | ERROR_MEMBER_IN_ALIAS => Ok(()),
        code => Err(win32(code)),
    }
}

/// Gives `user` a new password.
pub(crate) fn set_password(user: &str, password: &str) -> io::Result<()> {
    let name = wide(user);
    let mut password = wide(password);
    let info = USER_INFO_1003 {
        usri1003_password: password.as_mut_ptr(),
    };
    let mut bad_field = 0u32;
    // SAFETY: `name`, `info` and the password it points to live until the call returns.
    let status = unsafe {
        NetUserSetInfo(
            std::ptr::null(),
            name.as_ptr(),
            1003,
            (&info as *const USER_INFO_1003).cast(),
            &mut bad_field,
        )
    };
    // The password stays in memory no longer than needed.
    password.iter_mut().for_each(|c| *c = 0);
    match status {
        NERR_SUCCESS => Ok(()),
        code => Err(win32(code)),
    }
}

/// Removes `user` and its profile (`C:\Users\<user>` and its registry hive). Returns
/// whether the user existed.
pub(crate) fn remove_user(user: &str) -> io::Result<bool> {
    let Some(sid) = Sid::of_account(user)? else {
        return Ok(false);
    };
    let sid_text = wide(sid.to_text()?);
    // SAFETY: `sid_text` is NUL-terminated; null profile path and computer mean "look it up
    // on this machine".
    let ok = unsafe { DeleteProfileW(sid_text.as_ptr(), std::ptr::null(), std::ptr::null()) };
    if ok == 0 {
        let err = io::Error::last_os_error();
        // A user that never logged on has no profile.
        if err.raw_os_error() != Some(ERROR_FILE_NOT_FOUND as i32) {
            return Err(err);
        }
    }
    let name = wide(user);
    // SAFETY: `name` is NUL-terminated.
    match unsafe { NetUserDel(std::ptr::null(), name.as_ptr()) } {
        NERR_SUCCESS | NERR_USER_NOT_FOUND => Ok(true),
        code => Err(win32(code)),
    }
}
