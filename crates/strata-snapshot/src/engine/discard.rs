//! Discarding checkouts: unmounted, their state moved aside (the point of no return), their
//! trees moved into the trash (deleted in the background), their rows removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
        // The tree joins the moved-aside state, to be deleted in the background with it; where
        // it cannot be moved (another filesystem) it is deleted now.
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
        // The state, the tree with it, joins the trash: one rename, and the deletion happens
        // off the caller's path.
        if let Some(trash) = trash {
            self.discard_tree(&trash)?;
            self.reaper.empty(self.trash.clone());
        }
        Ok(())
    }
}

/// Empties the store's trash on a background thread, so that `commit` and `release` return
/// once the index no longer tracks the checkout, not once 20,000 files are unlinked. What is
/// left when the process dies stays in the trash for the next deleter (see `trash.rs`).
/// Dropping it waits for the deletions to finish, unless [`Reaper::stop`] came first.
#[derive(Debug, Default)]
pub(super) struct Reaper {
    queue: Mutex<Option<std::sync::mpsc::Sender<Reap>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set to make the worker stop between two entries.
    stop: Arc<AtomicBool>,
}

/// Work for the reaper thread.
enum Reap {
    /// Empty this trash directory.
    Trash(PathBuf),
    /// Report when everything queued before is done.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl Reaper {
    fn send(&self, job: Reap) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Reap>();
            let stop = Arc::clone(&self.stop);
            let worker = std::thread::Builder::new()
                .name("strata-reaper".into())
                .spawn(move || {
                    for job in rx {
                        Self::run(job, &stop);
                    }
                });
            match worker {
                Ok(handle) => {
                    *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                    *queue = Some(tx);
                }
                Err(_) => return Self::run(job, &self.stop),
            }
        }
        if let Some(Err(std::sync::mpsc::SendError(job))) = queue.as_ref().map(|q| q.send(job)) {
            Self::run(job, &self.stop);
        }
    }

    fn run(job: Reap, stop: &AtomicBool) {
        match job {
            // Best effort: what is left stays in the trash for the next deleter.
            Reap::Trash(dir) => {
                if !stop.load(Ordering::Relaxed) {
                    let _ = super::trash::empty(&dir, stop);
                }
            }
            Reap::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    /// Has the trash at `dir` emptied in the background.
    pub(super) fn empty(&self, dir: PathBuf) {
        self.send(Reap::Trash(dir));
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

    /// Stops the worker between two entries (the tree it was deleting goes back to the
    /// trash) and waits for it, which takes no longer than unlinking one file.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.join();
    }

    fn join(&self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.join();
    }
}
