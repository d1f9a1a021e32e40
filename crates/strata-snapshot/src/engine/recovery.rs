//! Recovery: what crashed processes left half done, found by the maker (pid and start time)
//! in an entry's name, and the health of tracked checkouts that recovery and `fsck` judge by.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{CheckoutMode, Engine, Result, io_err};
use crate::index::CheckoutRow;

/// The shape a tracked checkout is in, as recovery and `fsck` judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckoutHealth {
    /// Complete, or at least usable: `commit` and `release` work.
    Healthy,
    /// Incomplete, but its maker still runs and may be completing it.
    InProgress,
    /// Its state dir, or an overlay checkout's upper dir, is gone: a discard or commit died
    /// past its point of no return. Finishing the discard is all that is left to do.
    Abandoned,
    /// A portable checkout without a manifest, whose maker died while materialising it.
    HalfMade,
    /// Its directory is gone (removed by hand, or on a filesystem that is not mounted).
    Lost,
    /// An overlay checkout whose maker is gone and whose mount is gone too, upper dir intact
    /// (a crash before mounting or while committing, or a reboot).
    Unmounted,
}

impl Engine {
    /// Undoes or finishes what crashed processes left half done. Each item is best effort:
    /// one that cannot be cleaned up now (a mount this user may not detach, say) stays for
    /// `fsck` to report, and must not stop the store from opening.
    pub(super) fn recover(&self) -> Result<()> {
        for tmp in self.partial_unpacks()? {
            let _ = self.discard_tree(&tmp);
        }
        let rows = self.with_index(|ix| Ok(ix.checkouts()?))?;
        for row in &rows {
            if matches!(
                self.checkout_health(row, None),
                CheckoutHealth::Abandoned | CheckoutHealth::HalfMade
            ) {
                let _ = self.discard(row, true);
            }
        }
        for state in self.stray_states()? {
            let _ = self.remove_stray_state(&state);
        }
        // Cache views of dead processes would otherwise pin their snapshots forever.
        let _ = self.cache_sweep_dead_views();
        // What recovery moved into the trash, and what dead deleters left there, is deleted
        // in the background (and handed off at the end, see `Engine::hand_off_trash`).
        if self.trash_pending() {
            self.reaper.empty(self.trash.clone());
        }
        self.with_index(|ix| Ok(ix.expire_dead_leases().map(|_| ())?))
    }

    /// Unpacks in progress (`unpacked-v1/tmp-*`) of processes that no longer run.
    pub(crate) fn partial_unpacks(&self) -> Result<Vec<PathBuf>> {
        Ok(
            entries_of_dead_makers(&self.unpacked, |name| name.starts_with("tmp-"))?
                .into_iter()
                .map(|(_, path)| path)
                .collect(),
        )
    }

    /// State dirs no checkout row names, of processes that no longer run: checkouts that
    /// died before their row was written, and discards that died after moving the state
    /// aside.
    pub(crate) fn stray_states(&self) -> Result<Vec<PathBuf>> {
        // Liveness is decided before the rows are read: a maker that was dead then had
        // written every row it ever will, so a row-less state of it stays row-less.
        let dead = entries_of_dead_makers(&self.states, |_| true)?;
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let named: HashSet<String> = self
            .with_index(|ix| Ok(ix.checkouts()?))?
            .iter()
            .filter_map(|row| row.state_dir.as_deref().and_then(Path::file_name))
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        Ok(dead
            .into_iter()
            .filter(|(name, _)| !named.contains(name))
            .map(|(_, path)| path)
            .collect())
    }

    /// Moves a stray state dir into the trash, detaching any overlay mount that sits under
    /// it first.
    pub(crate) fn remove_stray_state(&self, state: &Path) -> Result<()> {
        #[cfg(target_os = "linux")]
        for point in crate::overlay::mounts_under(state)? {
            detach(&point)?;
        }
        self.discard_tree(state)
    }

    /// What shape a tracked checkout is in. `mounts` (the overlay mount points of the host)
    /// is only needed to tell [`CheckoutHealth::Unmounted`]; without it such a checkout
    /// passes as healthy.
    pub(crate) fn checkout_health(
        &self,
        row: &CheckoutRow,
        mounts: Option<&HashSet<PathBuf>>,
    ) -> CheckoutHealth {
        let Some(state) = &row.state_dir else {
            // Not made by this engine's `checkout`: nothing to judge it by but its directory.
            return if row.dir.is_dir() {
                CheckoutHealth::Healthy
            } else {
                CheckoutHealth::Lost
            };
        };
        let mode = row.mode;
        // Only a discard or a commit past its point of no return takes these away.
        if !state.is_dir() || (mode == CheckoutMode::Overlay && !state.join("upper").is_dir()) {
            return CheckoutHealth::Abandoned;
        }
        if !row.dir.is_dir() {
            return CheckoutHealth::Lost;
        }
        // Decided before looking at what the maker writes last, so a maker that finishes
        // and exits in between is not mistaken for a dead one.
        let maker_alive = state
            .file_name()
            .is_some_and(|n| maker_alive(&n.to_string_lossy()));
        match mode {
            CheckoutMode::Portable if !state.join("manifest").is_file() => {
                if maker_alive {
                    CheckoutHealth::InProgress
                } else {
                    CheckoutHealth::HalfMade
                }
            }
            CheckoutMode::Overlay => match mounts {
                Some(mounts) if !mounts.contains(&row.dir) => {
                    if maker_alive {
                        CheckoutHealth::InProgress
                    } else {
                        CheckoutHealth::Unmounted
                    }
                }
                _ => CheckoutHealth::Healthy,
            },
            _ => CheckoutHealth::Healthy,
        }
    }
}

/// The entries of `dir` that `wanted` accepts and whose maker (the owner in a
/// [`unique_name`](super::unique_name)) no longer runs, as (name, path).
fn entries_of_dead_makers(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if wanted(&name) && !maker_alive(&name) {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

/// What the engine names after their maker: unpacks in progress, checkout states, and states
/// being discarded.
const MADE_BY_A_PROCESS: [&str; 3] = ["tmp-", "c-", "x-"];

/// Whether the process that made the entry `name` may still run. Names older versions made
/// (pid only) count as alive while a process has the pid; names that carry no maker were not
/// made by this engine and count as dead.
fn maker_alive(name: &str) -> bool {
    MADE_BY_A_PROCESS
        .iter()
        .find_map(|prefix| strata_process::name_owner(name, prefix))
        .is_some_and(|maker| maker.is_alive())
}

/// The overlay mount points of the host (of this process's mount namespace).
pub(crate) fn overlay_mounts() -> Result<HashSet<PathBuf>> {
    #[cfg(target_os = "linux")]
    return Ok(crate::overlay::mounts_under(Path::new("/"))?
        .into_iter()
        .collect());
    #[cfg(not(target_os = "linux"))]
    Ok(HashSet::new())
}

/// Detaches the mount at `point`; one already gone is fine (another process got there).
#[cfg(target_os = "linux")]
pub(super) fn detach(point: &Path) -> Result<()> {
    match crate::overlay::unmount_detach(point) {
        Ok(()) | Err(crate::overlay::Error::NotMounted { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
