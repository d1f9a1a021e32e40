//! The pool of checkout roots: equal-length directories that steps check out into, each held
//! by one checkout at a time.
//!
//! Why a pool rather than a fresh directory per step: a snapshot records the root it was
//! committed at, and a checkout at another root gets a relocated variant of the layers that
//! mention the old one (`strata-snapshot`'s relocation). Fresh names would make a variant per
//! step; a pool bounds them by the number of roots, which is the peak number of checkouts
//! held at once, and reuses them from build to build. Equal lengths keep relocation possible
//! in binaries too.
//!
//! A root is `build-v1/roots/r<NNNN>`, held through an exclusive `flock` on `r<NNNN>.lock`.
//! Locks taken by separate opens conflict within one process as across processes, so threads
//! and processes share the pool alike; a lock dies with its process, so a root whose lock
//! is free belongs to nobody, whatever it still holds: acquiring it releases the checkout a
//! dead holder left there.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use strata_snapshot::Engine;

use crate::error::{Error, Result, io_err};

/// How many roots a store may have: the names stay four digits wide, hence equally long.
const MAX_ROOTS: usize = 10_000;

/// A checkout root held by this process until dropped.
#[derive(Debug)]
pub(crate) struct Root {
    path: PathBuf,
    /// Holds the root: dropping it closes the file, which releases the lock.
    _lock: File,
}

impl Root {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the first free root under `dir`, making it ready for a checkout: whatever a dead
/// holder left there is released through `engine` (tracked checkouts) or removed.
pub(crate) fn acquire(dir: &Path, engine: &Engine) -> Result<Root> {
    for n in 0..MAX_ROOTS {
        let lock_path = dir.join(format!("r{n:04}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => continue,
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let path = dir.join(format!("r{n:04}"));
        clear(&path, engine)?;
        return Ok(Root { path, _lock: lock });
    }
    Err(Error::Io {
        op: "find a free checkout root in",
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("all {MAX_ROOTS} roots are in use")),
    })
}

/// Makes a root nobody holds empty: a checkout left tracked there is released (which also
/// unmounts it), anything else removed.
pub(crate) fn clear(path: &Path, engine: &Engine) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match engine.release(path) {
        Ok(()) => {}
        Err(strata_snapshot::Error::NotTracked { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("clear the checkout root", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_equally_long_reused_and_never_shared() {
        let store = tempfile::tempdir().unwrap();
        let engine = Engine::open(&store.path().join("store")).unwrap();
        let dir = store.path().join("roots");
        fs::create_dir(&dir).unwrap();
        let a = acquire(&dir, &engine).unwrap();
        let b = acquire(&dir, &engine).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(a.path().as_os_str().len(), b.path().as_os_str().len());
        let first = a.path().to_path_buf();
        fs::create_dir(&first).unwrap();
        fs::write(first.join("left-behind"), "x").unwrap();
        drop(a);
        // The freed root is handed out again, emptied.
        let c = acquire(&dir, &engine).unwrap();
        assert_eq!(c.path(), first);
        assert!(!first.exists());
    }
}
