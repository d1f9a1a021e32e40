//! Checkout roots for drivers that run jobs in slots of their own ([`Layout::Slots`]:
//! Windows and macOS user isolation, Windows Sandbox), and the pooled roots otherwise.
//!
//! A slot is a directory fixed on the host, so it is held through an exclusive lock on the
//! file the driver names beside it: builders of every store on the host share the slots
//! that way, and a lock dies with its process. Taking a slot clears what an earlier holder
//! left (its checkout released if this store tracks it, the directory removed otherwise),
//! then lets the driver prepare it (its user, its access rights) while it is empty. The
//! step's snapshot is then checked out there portably, and the engine relocates every file
//! that recorded another root to this slot's, which is what makes N slots of equal length
//! run N jobs on one cache. When every slot is held, the step waits for one (the Windows
//! Sandbox has one slot: its steps queue).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_isolate::{Cancel, Driver, Layout, Slot};
use strata_snapshot::{CheckoutMode, Engine};

use crate::error::{Error, Result, io_err};

/// The longest wait between two looks for a free slot.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Where a step's checkout goes: a root of the store's pool, or a slot of the driver.
#[derive(Debug)]
pub(crate) enum CheckoutRoot {
    Pool(crate::roots::Root),
    Slot(HeldSlot),
}

impl CheckoutRoot {
    pub(crate) fn path(&self) -> &Path {
        match self {
            CheckoutRoot::Pool(root) => root.path(),
            CheckoutRoot::Slot(slot) => &slot.root,
        }
    }

    /// The checkout mode: the engine's default for the pool; portable in a slot, which is
    /// a plain directory the job's user must be able to write.
    pub(crate) fn mode(&self) -> Option<CheckoutMode> {
        match self {
            CheckoutRoot::Pool(_) => None,
            CheckoutRoot::Slot(_) => Some(CheckoutMode::Portable),
        }
    }
}

/// A slot this process holds until dropped.
#[derive(Debug)]
pub(crate) struct HeldSlot {
    root: PathBuf,
    /// Dropping it closes the file, which releases the lock.
    _lock: File,
}

/// A root for a step run by `driver`: one of its slots if it has them (waiting for one to
/// be free, unless `cancel` stops the wait), else a free root of the pool in `pool`.
pub(crate) fn acquire(
    driver: &dyn Driver,
    pool: &Path,
    engine: &Engine,
    cancel: &Cancel,
) -> Result<CheckoutRoot> {
    match &driver.capabilities().layout {
        Layout::Slots { slots } => Ok(CheckoutRoot::Slot(acquire_slot(
            slots, driver, engine, cancel,
        )?)),
        _ => Ok(CheckoutRoot::Pool(crate::roots::acquire(pool, engine)?)),
    }
}

/// Opens and locks a slot's lock file without waiting; `None` while another holds it.
fn try_lock(slot: &Slot) -> Result<Option<File>> {
    if let Some(dir) = slot.lock.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&slot.lock)
        .map_err(io_err("open", &slot.lock))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock", &slot.lock)(e)),
    }
}

/// Takes the first free slot, cleared and prepared; waits while all are held.
fn acquire_slot(
    slots: &[Slot],
    driver: &dyn Driver,
    engine: &Engine,
    cancel: &Cancel,
) -> Result<HeldSlot> {
    let mut wait = Duration::from_millis(5);
    loop {
        for slot in slots {
            if let Some(lock) = try_lock(slot)? {
                crate::roots::clear(&slot.root, engine)?;
                driver.prepare_slot(slot).map_err(|source| Error::Slot {
                    slot: slot.root.clone(),
                    source,
                })?;
                return Ok(HeldSlot {
                    root: slot.root.clone(),
                    _lock: lock,
                });
            }
        }
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(MAX_WAIT);
    }
}

/// Removes what `driver` made on this host for its slots (`strata slots rm`): every slot
/// is taken (refused, naming it, while a build holds one), its checkout released or its
/// directory removed, then the driver removes its users and directories. Returns what was
/// removed; nothing for a driver without slots.
pub fn remove_slots(engine: &Engine, driver: &dyn Driver) -> Result<Vec<String>> {
    let Layout::Slots { slots } = &driver.capabilities().layout else {
        return Ok(Vec::new());
    };
    let mut held = Vec::with_capacity(slots.len());
    for slot in slots {
        match try_lock(slot)? {
            Some(lock) => held.push(lock),
            None => {
                return Err(Error::SlotBusy {
                    slot: slot.root.clone(),
                });
            }
        }
    }
    for slot in slots {
        crate::roots::clear(&slot.root, engine)?;
    }
    let removed = driver.remove_slots()?;
    drop(held);
    Ok(removed)
}
