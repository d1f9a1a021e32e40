//! The store's trash: released checkout trees and the leftovers of dead processes, moved
//! into `trash-v1/` by one rename and deleted later, off the user's path: by the engine's
//! background thread, by a detached process an embedder starts when it drops the engine
//! ([`Engine::hand_off_trash`]; `strata` starts `strata empty-trash`), or by `gc`.
//!
//! Everything in `trash-v1/` is garbage from the moment its rename lands: nothing live is
//! ever moved there, and nothing is ever taken out. Deleters never race on one tree: each
//! first claims an entry by renaming it to `d-<owner>-<n>` (one rename wins), and an entry
//! claimed by a process that no longer runs (it died mid-deletion) can be claimed again. A
//! deleter told to stop halfway gives its entry back (`t-…`) for the next one.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Engine, Result, io_err, unique_name};

/// The trash directory, under the store root.
pub(crate) const TRASH_DIR: &str = "trash-v1";
/// Prefix of entries waiting for a deleter.
const WAITING: &str = "t-";
/// Prefix of entries a deleter claimed (its owner in the name).
const CLAIMED: &str = "d-";

/// Called when the engine is dropped with trash left, to delete it elsewhere (see
/// [`Engine::hand_off_trash`]); gets the store root.
pub type TrashHandoff = Box<dyn Fn(&Path) -> io::Result<()> + Send + Sync>;

impl Engine {
    /// Moves `path` (a tree nobody uses any more) into the trash; `false` if it does not
    /// exist. Fails where it cannot be renamed there (another filesystem), and the caller
    /// deletes it itself.
    pub(crate) fn move_to_trash(&self, path: &Path) -> Result<bool> {
        let to = self.trash.join(unique_name(WAITING));
        match fs::rename(path, &to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("move into the trash", path)(e)),
        }
    }

    /// Moves `path` into the trash, or deletes it now where it cannot be moved there.
    pub(crate) fn discard_tree(&self, path: &Path) -> Result<()> {
        match self.move_to_trash(path) {
            Ok(_) => Ok(()),
            Err(_) => super::remove_tree(path),
        }
    }

    /// Whether the trash holds anything this process could delete now (entries claimed by
    /// a live deleter are its business).
    pub fn trash_pending(&self) -> bool {
        fs::read_dir(&self.trash).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| claimable(&e.file_name().to_string_lossy()))
        })
    }

    /// Deletes what is in the trash, now, on this thread; returns how many trees went.
    /// Entries other live processes are deleting are left to them.
    pub fn empty_trash(&self) -> Result<u64> {
        Ok(empty(&self.trash, &AtomicBool::new(false))?.0)
    }

    /// Has `handoff` called, with the store root, when the engine is dropped with trash
    /// left: the background deletion stops (its current tree is given back to the trash)
    /// and `handoff` starts something else to finish it, so that a short-lived process
    /// exits without waiting for 20,000 files to be unlinked. `strata` starts a detached
    /// `strata empty-trash`. Without a handoff, dropping the engine waits for the deletions.
    pub fn hand_off_trash(&self, handoff: TrashHandoff) {
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(handoff);
    }
}

/// Whether a deleter may claim the trash entry `name`: anything but a claim of a live one.
fn claimable(name: &str) -> bool {
    strata_process::name_owner(name, CLAIMED).is_none_or(|owner| !owner.is_alive())
}

/// Claims and deletes the entries of the trash at `dir` until it is empty or `stop` is
/// set. Returns the trees deleted and whether it finished (not stopped).
pub(crate) fn empty(dir: &Path, stop: &AtomicBool) -> Result<(u64, bool)> {
    let names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()
            .map_err(io_err("list", dir))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, true)),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut deleted = 0;
    for name in names.iter().filter(|n| claimable(n)) {
        if stop.load(Ordering::Relaxed) {
            return Ok((deleted, false));
        }
        let claimed = dir.join(unique_name(CLAIMED));
        match fs::rename(dir.join(name), &claimed) {
            Ok(()) => {}
            // Another deleter claimed it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("claim", &dir.join(name))(e)),
        }
        super::failpoint("trash.claimed");
        if !remove_until(&claimed, stop).map_err(io_err("delete", &claimed))? {
            // Stopped halfway: give it back, for whoever deletes next.
            let _ = fs::rename(&claimed, dir.join(unique_name(WAITING)));
            return Ok((deleted, false));
        }
        deleted += 1;
    }
    Ok((deleted, true))
}

/// Deletes the tree at `path` entry by entry, never following a symlink, checking `stop`
/// between entries; whether it is gone. Read-only directories (and on Windows read-only
/// files) are made writable as needed: the trash is ours, whatever modes its trees had.
fn remove_until(path: &Path, stop: &AtomicBool) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        retry_writable(path, || fs::remove_file(path))?;
        return Ok(true);
    }
    let entries = match fs::read_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path);
            fs::read_dir(path)?
        }
        other => other?,
    };
    for entry in entries {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let entry = entry?;
        let child = entry.path();
        if entry.file_type()?.is_dir() {
            if !remove_until(&child, stop)? {
                return Ok(false);
            }
        } else {
            retry_writable(&child, || fs::remove_file(&child))?;
        }
    }
    retry_writable(path, || fs::remove_dir(path))?;
    Ok(true)
}

/// Runs `op` on `path`; refused, makes `path` and its parent writable and tries once more.
/// Gone already counts as done.
fn retry_writable(path: &Path, op: impl Fn() -> io::Result<()>) -> io::Result<()> {
    let done = match op() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            if let Some(parent) = path.parent() {
                make_writable(parent);
            }
            make_writable(path);
            op()
        }
        other => other,
    };
    match done {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Best effort: lets the owner list, enter and change a directory (Unix), or clears the
/// read-only attribute (Windows). Never follows a symlink.
fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let mut perms = meta.permissions();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.is_dir() {
            perms.set_mode(perms.mode() | 0o700);
        } else {
            return; // a file's own mode does not stop its unlinking
        }
    }
    #[cfg(not(unix))]
    #[allow(
        clippy::permissions_set_readonly_false,
        reason = "only on Windows, for a tree about to be deleted"
    )]
    perms.set_readonly(false);
    let _ = fs::set_permissions(path, perms);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/b/c/f"), "x").unwrap();
        fs::write(root.join("a/g"), "y").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc", root.join("a/link")).unwrap();
    }

    #[test]
    fn trees_are_deleted_whole_and_read_only_directories_too() {
        let tmp = tempfile::tempdir().unwrap();
        let trash = tmp.path().join("trash");
        fs::create_dir(&trash).unwrap();
        for n in 0..3 {
            tree(&trash.join(format!("t-{n}")));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ro = trash.join("t-1/a/b");
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        }
        assert_eq!(empty(&trash, &AtomicBool::new(false)).unwrap(), (3, true));
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 0);
        // What a symlink pointed to is untouched.
        assert!(Path::new("/").is_dir());
    }

    #[test]
    fn a_stopped_deletion_gives_its_tree_back_and_live_claims_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let trash = tmp.path().join("trash");
        tree(&trash.join("t-x"));
        // Claimed by this (live) process: not ours to take.
        let live = trash.join(unique_name(CLAIMED));
        tree(&live);
        assert_eq!(empty(&trash, &AtomicBool::new(true)).unwrap(), (0, false));
        let names: Vec<String> = fs::read_dir(&trash)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.iter().any(|n| n.starts_with(WAITING)));
        assert!(live.is_dir());
        // A stop in the middle of a tree: the claim is handed back as a waiting entry.
        let stop = AtomicBool::new(true);
        let claimed = trash.join("half");
        tree(&claimed);
        assert!(!remove_until(&claimed, &stop).unwrap());
        assert!(claimed.join("a").is_dir());
        assert_eq!(empty(&trash, &AtomicBool::new(false)).unwrap(), (2, true));
        assert_eq!(
            fs::read_dir(&trash).unwrap().count(),
            1,
            "the live claim stays"
        );
        assert!(live.is_dir());
    }
}
