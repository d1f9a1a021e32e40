//! The Windows side of the driver: setting slots up, starting jobs, removing slots. The
//! decisions are the plan's ([`RunDetail`]) and the requests' ([`super::slot_acl`],
//! [`super::user_request`]); this only carries them out through `crate::win`.

use std::io::{self, Write};
use std::time::Duration;

use super::{
    Logon, PASSWORD_LEN, RunDetail, SlotPaths, WindowsUserDriver, base_acl, password_from,
    slot_acl, user_request,
};
use crate::supervise::supervise;
use crate::win::{self, process};
use crate::{Cancel, Error, Outcome, Result, SlotUsers};

/// The exit status of a job whose program does not exist, as `cmd` reports it.
const NOT_FOUND: i32 = 9009;

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        driver: super::NAME.to_owned(),
        reason,
    }
}

pub(super) fn check(users: SlotUsers) -> Result<()> {
    if users == SlotUsers::Current {
        return Ok(());
    }
    let elevated = win::is_elevated().map_err(Error::os("query this process's token"))?;
    if !elevated {
        return Err(unavailable(
            "making slot users and setting their passwords needs an administrator: run the \
             builder from an elevated prompt"
                .to_owned(),
        ));
    }
    Ok(())
}

fn new_password() -> Result<String> {
    let mut random = [0u8; PASSWORD_LEN];
    win::random_bytes(&mut random).map_err(Error::os("make a password"))?;
    Ok(password_from(&random))
}

fn win_err(op: &'static str, path: &str) -> impl FnOnce(io::Error) -> Error {
    Error::io(op, path)
}

pub(super) fn prepare_slot(driver: &WindowsUserDriver, slot: &SlotPaths) -> Result<()> {
    let users = driver.options.users;
    let base = &driver.options.base;
    {
        let mut made = driver.made.lock().unwrap_or_else(|e| e.into_inner());
        // The empty name stands for the base directory.
        if !made.contains("") {
            std::fs::create_dir_all(base).map_err(win_err("create", base))?;
            if users == SlotUsers::Dedicated {
                win::acl::apply(&base_acl(base)).map_err(win_err("restrict access to", base))?;
            }
            made.insert(String::new());
        }
        if users == SlotUsers::Dedicated && !made.contains(&slot.user) {
            win::users::ensure_user(&user_request(slot), &new_password()?)
                .map_err(Error::call("make the slot user", &slot.user))?;
            made.insert(slot.user.clone());
        }
    }
    match std::fs::create_dir(&slot.root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(win_err("create the slot", &slot.root)(e)),
    }
    if users == SlotUsers::Dedicated {
        // On the empty directory, so everything the checkout writes inherits it: setting it
        // later would rewrite every file's security, and the checkout's manifest with it.
        win::acl::apply(&slot_acl(slot, users))
            .map_err(win_err("restrict access to", &slot.root))?;
    }
    Ok(())
}

pub(super) fn run(detail: &RunDetail, log: &mut dyn Write, cancel: &Cancel) -> Result<Outcome> {
    if let Some(outcome) = cancel.wait(Duration::ZERO) {
        return Ok(outcome);
    }
    for dir in &detail.dirs {
        std::fs::create_dir_all(dir).map_err(win_err("create", dir))?;
    }
    let password;
    let fresh_password = |user: &str| -> Result<String> {
        // A fresh password per job: nothing outlives the builder's hold on the slot.
        let password = new_password()?;
        win::users::set_password(user, &password)
            .map_err(Error::call("set the password of", user))?;
        Ok(password)
    };
    let logon = match &detail.logon {
        Logon::SecondaryLogon { user } => {
            password = fresh_password(user)?;
            process::Logon::Password {
                user,
                password: &password,
            }
        }
        Logon::ServiceLogon { user } => {
            password = fresh_password(user)?;
            process::Logon::Service {
                user,
                password: &password,
            }
        }
        Logon::CurrentUser => process::Logon::Current,
    };
    let (reader, writer) = io::pipe().map_err(Error::os("create a pipe"))?;
    let spawned = process::spawn(
        &process::Spawn {
            command_line: &detail.command_line,
            env: &detail.env,
            cwd: detail.cwd.as_ref(),
            logon,
        },
        &writer,
    );
    // Only the job may hold the write end, or the log never ends.
    drop(writer);
    let mut job = match spawned {
        Ok(job) => job,
        // A missing program is the job's failure, as in a shell.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            writeln!(log, "strata: cannot run `{}`: {e}", detail.command_line)
                .map_err(Error::os("write the job log"))?;
            return Ok(Outcome::Exited(NOT_FOUND));
        }
        Err(e) => {
            return Err(Error::call("start", &detail.command_line)(e));
        }
    };
    supervise(&mut job, reader, log, cancel)
}

pub(super) fn remove_slots(driver: &WindowsUserDriver) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for slot in &driver.slots {
        if driver.options.users == SlotUsers::Dedicated {
            let existed = win::users::remove_user(&slot.user)
                .map_err(Error::call("remove the slot user", &slot.user))?;
            if existed {
                removed.push(format!("user {} and its profile", slot.user));
            }
        }
        match std::fs::remove_dir_all(&slot.root) {
            Ok(()) => removed.push(format!("directory {}", slot.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(win_err("remove", &slot.root)(e)),
        }
    }
    driver
        .made
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    Ok(removed)
}
