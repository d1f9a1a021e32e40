//! The host side of the macOS driver: users and slot directories, the job's process and its
//! user's processes, secrets, the Homebrew prefix, and giving files back before the commit.
//! The decisions are the plan's ([`RunDetail`]); this carries them out. It builds on every
//! Unix (so CI compiles and lints it on Linux) but only means anything on macOS.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{PermissionsExt, chown, lchown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, geteuid, kill_process_group};

use super::{
    GROUP, Homebrew, MacosUserDriver, RunDetail, SlotPaths, group_commands, remove_user_commands,
    user_commands,
};
use crate::supervise::{Watched, exit_outcome, supervise};
use crate::{Cancel, Error, Outcome, Result, SlotUsers};

/// The `PATH` the host commands (`su`, `dscl`, `pkill`) are found with.
const SYSTEM_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

fn command_error(program: &str, message: String) -> Error {
    Error::Command {
        program: program.to_owned(),
        message,
    }
}

/// Runs a host command to completion, failing with its stderr.
fn run_command(argv: &[String]) -> Result<()> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .env("PATH", SYSTEM_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::call("run", &argv[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(command_error(
            &argv.join(" "),
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// Whether the directory service has `record` (`/Users/x`, `/Groups/x`).
fn dscl_has(record: &str) -> bool {
    Command::new("/usr/bin/dscl")
        .args([".", "-read", record])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(target_os = "macos")]
pub(super) fn check(users: SlotUsers) -> Result<()> {
    if users == SlotUsers::Dedicated && !geteuid().is_root() {
        return Err(Error::Unavailable {
            driver: super::NAME.to_owned(),
            reason: "making slot users and running jobs as them needs root (sudo)".to_owned(),
        });
    }
    Ok(())
}

/// Gives the directory `path` to `uid:gid` with group write, unless it has them already.
fn own_for_group(path: &str, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(Error::io("inspect", path))?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        chown(path, Some(uid), Some(gid)).map_err(Error::io("change the owner of", path))?;
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o070 != 0o070 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o070))
            .map_err(Error::io("change the mode of", path))?;
    }
    Ok(())
}

/// Makes `path` a directory (if missing) with this owner and mode.
fn dir_with(path: &str, owner: Option<(u32, u32)>, mode: u32) -> Result<()> {
    fs::create_dir_all(path).map_err(Error::io("create", path))?;
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid)).map_err(Error::io("change the owner of", path))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(Error::io("change the mode of", path))
}

pub(super) fn prepare_slot(driver: &MacosUserDriver, slot: &SlotPaths) -> Result<()> {
    let options = &driver.options;
    let user = match options.users {
        SlotUsers::Dedicated => {
            if !dscl_has(&format!("/Groups/{GROUP}")) {
                group_commands(options.gid)
                    .iter()
                    .try_for_each(|c| run_command(c))?;
            }
            if !dscl_has(&format!("/Users/{}", slot.user)) {
                user_commands(slot, options.gid)
                    .iter()
                    .try_for_each(|c| run_command(c))?;
            }
            Some((slot.uid, options.gid))
        }
        SlotUsers::Current => None,
    };
    dir_with(&options.base, None, 0o755)?;
    // Private to the slot's user: other slots' jobs cannot reach its home, tmp or secrets.
    dir_with(&slot.dir, user, 0o700)?;
    dir_with(&slot.tmp, user, 0o700)?;
    match fs::create_dir(&slot.root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create the slot", &slot.root)(e)),
    }
}

/// The job's first process, leader of its own group, and the slot user whose processes
/// all go when the job stops.
#[derive(Debug)]
struct MacJob {
    child: Child,
    pgid: Pid,
    uid: Option<u32>,
}

impl MacJob {
    fn kill_all(&self) {
        let _ = kill_process_group(self.pgid, Signal::KILL);
        if let Some(uid) = self.uid {
            let _ = Command::new("/usr/bin/pkill")
                .args(["-9", "-U", &uid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Watched for MacJob {
    fn try_wait(&mut self) -> io::Result<Option<Outcome>> {
        Ok(self.child.try_wait()?.map(exit_outcome))
    }

    fn stop(&mut self) {
        self.kill_all();
    }

    fn reap(&mut self) {
        self.kill_all();
    }

    fn abandon(&mut self) {
        self.kill_all();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The builder's own uid, which files the job made are given back to.
fn builder_uid() -> u32 {
    geteuid().as_raw()
}

pub(super) fn run(detail: &RunDetail, log: &mut dyn Write, cancel: &Cancel) -> Result<Outcome> {
    if let Some(outcome) = cancel.wait(Duration::ZERO) {
        return Ok(outcome);
    }
    let slot = &detail.slot;
    let dedicated = detail.users == SlotUsers::Dedicated;
    let user = dedicated.then_some((slot.uid, detail.gid));
    if dedicated {
        // The home is the checkout's root, owned as the snapshot says (a base imported from
        // a tarball: root's, 0755); the slot's user must be able to write it. Changed only
        // where it differs, so a snapshot made in a slot keeps an unchanged root.
        own_for_group(&slot.root, builder_uid(), detail.gid)?;
    }
    for dir in &detail.dirs {
        if dir == &slot.tmp {
            dir_with(dir, user, 0o700)?;
        } else if !Path::new(dir).is_dir() {
            // The group may write what the builder makes for the job.
            let owner = dedicated.then_some((builder_uid(), detail.gid));
            dir_with(dir, owner, 0o775)?;
        }
    }
    let placed = place_secrets(detail, user);
    let result = placed.and_then(|()| {
        let brew = match &detail.homebrew {
            Some(h) if Path::new(&h.stash).is_dir() => match lend_homebrew(h, slot, cancel)? {
                Some(lock) => Some((h, lock)),
                None => return Ok(cancel.wait(Duration::ZERO).unwrap_or(Outcome::Cancelled)),
            },
            _ => None,
        };
        let outcome = spawn_and_watch(detail, log, cancel);
        if let Some((h, _lock)) = brew {
            let back = take_homebrew_back(h);
            // The job's outcome matters more, but a prefix left lent must not go unnoticed.
            return outcome.and_then(|o| back.map(|()| o));
        }
        outcome
    });
    let _ = fs::remove_dir_all(&slot.secrets);
    if dedicated {
        give_back(Path::new(&slot.root), slot.uid, builder_uid(), detail.gid)?;
    }
    result
}

fn spawn_and_watch(detail: &RunDetail, log: &mut dyn Write, cancel: &Cancel) -> Result<Outcome> {
    let (reader, writer) = io::pipe().map_err(Error::os("create a pipe"))?;
    let mut cmd = Command::new(&detail.argv[0]);
    cmd.args(&detail.argv[1..])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(Error::os("create a pipe"))?)
        .stderr(writer);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let spawned = cmd.spawn();
    drop(cmd);
    let child = spawned.map_err(Error::call("run", &detail.argv[0]))?;
    let pgid = Pid::from_child(&child);
    let uid = (detail.users == SlotUsers::Dedicated).then_some(detail.slot.uid);
    supervise(&mut MacJob { child, pgid, uid }, reader, log, cancel)
}

/// Copies the secrets into the slot's private `secrets` directory, readable by its user only.
fn place_secrets(detail: &RunDetail, user: Option<(u32, u32)>) -> Result<()> {
    if detail.secrets.is_empty() {
        return Ok(());
    }
    let dir = &detail.slot.secrets;
    let _ = fs::remove_dir_all(dir);
    dir_with(dir, user, 0o700)?;
    for secret in &detail.secrets {
        let data = fs::read(&secret.source).map_err(Error::io("read", &secret.source))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&secret.path)
            .map_err(Error::io("create", &secret.path))?;
        file.write_all(&data)
            .map_err(Error::io("write", &secret.path))?;
        if let Some((uid, gid)) = user {
            chown(&secret.path, Some(uid), Some(gid))
                .map_err(Error::io("change the owner of", &secret.path))?;
        }
        fs::set_permissions(&secret.path, fs::Permissions::from_mode(0o400))
            .map_err(Error::io("change the mode of", &secret.path))?;
    }
    Ok(())
}

/// Takes the Homebrew lock (waiting for another slot's job) and moves the slot's stash to
/// the prefix. `None` if cancelled while waiting.
fn lend_homebrew(h: &Homebrew, slot: &SlotPaths, cancel: &Cancel) -> Result<Option<File>> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&h.lock)
        .map_err(Error::io("open", &h.lock))?;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) => {
                if cancel.wait(Duration::from_millis(200)).is_some() {
                    return Ok(None);
                }
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &h.lock)(e)),
        }
    }
    recover_homebrew(h)?;
    // An empty prefix (a fresh machine's) makes way; anything else is not ours to move.
    if Path::new(&h.prefix).exists() {
        fs::remove_dir(&h.prefix).map_err(|e| {
            command_error(
                "homebrew",
                format!("the prefix {} is in use outside Strata: {e}", h.prefix),
            )
        })?;
    }
    fs::write(&h.owner, &slot.root).map_err(Error::io("write", &h.owner))?;
    fs::rename(&h.stash, &h.prefix).map_err(Error::io("move the Homebrew stash to", &h.prefix))?;
    Ok(Some(lock))
}

/// Moves the prefix back into the slot it was lent to.
fn take_homebrew_back(h: &Homebrew) -> Result<()> {
    fs::rename(&h.prefix, &h.stash)
        .map_err(Error::io("move the Homebrew prefix back to", &h.stash))?;
    fs::remove_file(&h.owner).map_err(Error::io("remove", &h.owner))
}

/// Gives back a prefix a crashed job left lent (the caller holds the lock). Returns the slot
/// it went back to, if any.
fn recover_homebrew(h: &Homebrew) -> Result<Option<String>> {
    let Ok(root) = fs::read_to_string(&h.owner) else {
        return Ok(None);
    };
    let stash = PathBuf::from(&root).join(super::HOMEBREW_STASH);
    if Path::new(&h.prefix).exists() {
        if Path::new(&root).is_dir() && !stash.exists() {
            fs::rename(&h.prefix, &stash)
                .map_err(Error::io("move the Homebrew prefix back to", &stash))?;
        } else {
            // That slot's checkout is gone: the prefix was a dead job's, and goes too.
            fs::remove_dir_all(&h.prefix).map_err(Error::io("remove", &h.prefix))?;
        }
    }
    fs::remove_file(&h.owner).map_err(Error::io("remove", &h.owner))?;
    Ok(Some(root))
}

/// Gives every file under `root` that `from` owns to `to:gid`, not following symlinks: what
/// the job made. Only those change, so the checkout's manifest still matches the rest.
fn give_back(root: &Path, from: u32, to: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(Error::io("inspect", &path))?;
            if meta.uid() == from {
                lchown(&path, Some(to), Some(gid))
                    .map_err(Error::io("change the owner of", &path))?;
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

pub(super) fn cleanup(driver: &MacosUserDriver) -> Result<Vec<String>> {
    let Some(prefix) = &driver.options.homebrew_prefix else {
        return Ok(Vec::new());
    };
    let h = Homebrew {
        prefix: prefix.clone(),
        stash: String::new(),
        lock: crate::slot::unix_join(&driver.options.base, &["homebrew.lock"]),
        owner: crate::slot::unix_join(&driver.options.base, &["homebrew.owner"]),
    };
    let Ok(lock) = File::open(&h.lock) else {
        return Ok(Vec::new());
    };
    // A lock someone holds is a live job's lend.
    if lock.try_lock().is_err() {
        return Ok(Vec::new());
    }
    Ok(recover_homebrew(&h)?
        .map(|root| format!("Homebrew prefix {prefix} lent to {root}"))
        .into_iter()
        .collect())
}

pub(super) fn remove_slots(driver: &MacosUserDriver) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for slot in &driver.slots {
        if driver.options.users == SlotUsers::Dedicated
            && dscl_has(&format!("/Users/{}", slot.user))
        {
            remove_user_commands(slot)
                .iter()
                .try_for_each(|c| run_command(c))?;
            removed.push(format!("user {}", slot.user));
        }
        match fs::remove_dir_all(&slot.dir) {
            Ok(()) => removed.push(format!("directory {}", slot.dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &slot.dir)(e)),
        }
    }
    if driver.options.users == SlotUsers::Dedicated && dscl_has(&format!("/Groups/{GROUP}")) {
        run_command(&[
            "/usr/bin/dscl".to_owned(),
            ".".to_owned(),
            "-delete".to_owned(),
            format!("/Groups/{GROUP}"),
        ])?;
        removed.push(format!("group {GROUP}"));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only what the job's user owns changes hands; symlinks are not followed.
    #[test]
    fn files_the_job_made_are_given_back() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let me = builder_uid();
        let gid = rustix::process::getegid().as_raw();
        fs::create_dir(tmp.path().join("d")).unwrap();
        fs::write(tmp.path().join("d/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("d/link")).unwrap();
        // Everything is ours: "the job's" files are ours too, and stay so.
        give_back(tmp.path(), me, me, gid).unwrap();
        for p in ["d", "d/f", "d/link"] {
            let m = fs::symlink_metadata(tmp.path().join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (me, gid), "{p}");
        }
        assert_ne!(
            fs::metadata("/etc/passwd").unwrap().gid(),
            u32::MAX,
            "the link's target is untouched"
        );
    }
}
