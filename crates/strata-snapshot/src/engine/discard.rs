//! Discarding checkouts: unmounted, their state moved aside (the point of no return), their
//! trees deleted in the background, their rows removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{
    CheckoutMode, Engine, Error, Result, canonical, failpoint, failpoint_for, io_err, remove_tree,
    unique_name,
};
use crate::index::CheckoutRow;

impl Engine {
    /// Discards a tracked checkout: unmounts or deletes it and forgets it.
    pub fn release(&self, dir: &Path) -> Result<()> {
        let row = self.tracked(dir)?;
        self.discard(&row, false)
    }

    pub(super) fn tracked(&self, dir: &Path) -> Result<CheckoutRow> {
        let dir = canonical(dir).map_err(io_err("resolve", dir))?;
        self.with_index(|ix| Ok(ix.checkout(&dir)?))?
            .ok_or(Error::NotTracked { dir })
    }

    /// Removes a checkout's mount, its state, its files, and its index row, in that order.
    /// Moving the state aside is the point of no return: a crash after it leaves a row
    /// without state, which recovery finishes discarding. Every step tolerates its effect
    /// being done already (by a crashed attempt, or another process finishing it). With
    /// `detach`, mounts are detached (recovery: whoever used them is gone) rather than
    /// unmounted, which fails while they are busy.
    pub(crate) fn discard(&self, row: &CheckoutRow, detach: bool) -> Result<()> {
        let mode = row.mode;
        #[cfg(not(target_os = "linux"))]
        let _ = detach; // only overlay mounts need detaching
        #[cfg(target_os = "linux")]
        if detach {
            for point in crate::overlay::mounts_under(&row.dir)? {
                super::recovery::detach(&point)?;
            }
        } else if mode == CheckoutMode::Overlay && crate::overlay::is_mounted(&row.dir)? {
            crate::overlay::unmount(&row.dir)?;
        }
        if mode == CheckoutMode::Overlay {
            failpoint("discard.overlay.unmounted");
        }
        let trash = match &row.state_dir {
            Some(state) => {
                let trash = self.states.join(unique_name("x-"));
                match fs::rename(state, &trash) {
                    Ok(()) => Some(trash),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io_err("move aside", state)(e)),
                }
            }
            None => None,
        };
        failpoint_for(
            mode,
            "discard.overlay.abandoned",
            "discard.portable.abandoned",
        );
        // The tree joins the moved-aside state, to be deleted in the background; where it
        // cannot be moved (another filesystem) it is deleted now.
        let moved = trash.as_ref().is_some_and(|trash| {
            row.dir.exists() && fs::rename(&row.dir, trash.join("released-tree")).is_ok()
        });
        if !moved {
            remove_tree(&row.dir)?;
        }
        failpoint_for(mode, "discard.overlay.removed", "discard.portable.removed");
        let dir = row.dir.clone();
        self.with_index(|ix| Ok(ix.remove_checkout(&dir).map(|_| ())?))?;
        failpoint_for(mode, "discard.overlay.state", "discard.portable.state");
        if let Some(trash) = trash {
            self.reaper.delete(trash);
        }
        Ok(())
    }
}

/// Deletes released checkout trees on a background thread, so that `commit` and `release`
/// return once the index no longer tracks the checkout, not once 20,000 files are unlinked.
/// The trees wait in `checkouts-v1/x-<owner>-<n>` directories: if the process dies first, the
/// next `Engine::open` sweeps them like any other state of a dead process. Dropping the
/// engine waits for the deletions to finish.
#[derive(Debug, Default)]
pub(super) struct Reaper {
    queue: Mutex<Option<std::sync::mpsc::Sender<Reap>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Work for the reaper thread.
enum Reap {
    /// Delete this tree.
    Tree(PathBuf),
    /// Report when everything queued before is deleted.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl Reaper {
    fn send(&self, job: Reap) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Reap>();
            let worker = std::thread::Builder::new()
                .name("strata-reaper".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            // Best effort: what is left is swept by the next open.
                            Reap::Tree(path) => {
                                let _ = remove_tree(&path);
                            }
                            Reap::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
            match worker {
                Ok(handle) => {
                    *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                    *queue = Some(tx);
                }
                Err(_) => return Self::run_inline(job),
            }
        }
        if let Some(Err(std::sync::mpsc::SendError(job))) = queue.as_ref().map(|q| q.send(job)) {
            Self::run_inline(job);
        }
    }

    fn run_inline(job: Reap) {
        match job {
            Reap::Tree(path) => {
                let _ = remove_tree(&path);
            }
            Reap::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    pub(super) fn delete(&self, path: PathBuf) {
        self.send(Reap::Tree(path));
    }

    pub(super) fn flush(&self) {
        let started = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if started {
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            self.send(Reap::Flush(done));
            let _ = wait.recv();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}
