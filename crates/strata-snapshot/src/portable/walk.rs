//! The stat walk of a tree, spread over a few threads: every entry's stat, in depth-first
//! byte order, as a manifest records them.
//!
//! A walk is one `lstat` per entry plus one listing per directory, all system calls: on a
//! 19k-entry tree they are nearly all of a portable commit's time, and the kernel serves
//! them in parallel. Each directory is listed and its children statted by one worker; the
//! listings are joined into depth-first order at the end. A job holds its parent directory's
//! handle, not its own, so only the directories whose children are still queued stay open.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::{EntryStat, Error, ManifestEntry, Result, WalkDir, child_path, sorted_names, walk_err};

/// The most threads a walk uses: the kernel's directory lookups stop scaling before this.
const MAX_WORKERS: usize = 4;

/// Stats every entry below `dir` (which is `root`), depth-first with children in byte
/// order. Entries that vanish meanwhile are left out.
pub(super) fn entries<D: WalkDir>(root: &Path, dir: D) -> Result<Vec<ManifestEntry>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_WORKERS);
    let shared = Shared {
        state: Mutex::new(State {
            queue: vec![Job {
                dir: Source::Root(dir),
                path: Vec::new(),
                slot: 0,
            }],
            listings: vec![None],
            busy: 0,
            error: None,
        }),
        wake: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 1..workers {
            // A worker that cannot be started leaves the work to the others.
            let _ = std::thread::Builder::new()
                .name("strata-walk".to_owned())
                .spawn_scoped(s, || work(root, &shared));
        }
        work(root, &shared);
    });
    let state = shared
        .state
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = state.error {
        return Err(e);
    }
    Ok(join_listings(state.listings))
}

/// Where a job's directory comes from: the root is open already; any other directory is
/// opened from its parent by the worker that lists it.
enum Source<D> {
    Root(D),
    Child(Arc<D>, Vec<u8>),
}

struct Job<D> {
    dir: Source<D>,
    /// The directory's path below the root (`""` for the root).
    path: Vec<u8>,
    /// Where its listing goes in [`State::listings`].
    slot: usize,
}

/// One directory's children in byte order; a child directory names its own listing.
type Listing = Vec<(Vec<u8>, EntryStat, Option<usize>)>;

struct State<D> {
    /// Directories to list, taken from the end (depth first, which keeps few handles open).
    queue: Vec<Job<D>>,
    /// Every directory's listing, by slot; `None` until listed (or if it vanished).
    listings: Vec<Option<Listing>>,
    /// Workers listing a directory now: while any is, more jobs may come.
    busy: usize,
    /// The first failure; the walk stops at it.
    error: Option<Error>,
}

struct Shared<D> {
    state: Mutex<State<D>>,
    wake: Condvar,
}

fn work<D: WalkDir>(root: &Path, shared: &Shared<D>) {
    let lock = || shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    let mut state = lock();
    loop {
        if state.error.is_some() {
            break;
        }
        let Some(job) = state.queue.pop() else {
            if state.busy == 0 {
                break;
            }
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        state.busy += 1;
        drop(state);
        let listed = list(root, job.dir, &job.path);
        state = lock();
        state.busy -= 1;
        match listed {
            Ok(Some((dir, mut listing))) => {
                let dir = Arc::new(dir);
                let start = state.queue.len();
                for (name, stat, child) in &mut listing {
                    if stat.is_dir() {
                        let slot = state.listings.len();
                        state.listings.push(None);
                        *child = Some(slot);
                        let path = child_path(&job.path, name);
                        state.queue.push(Job {
                            dir: Source::Child(dir.clone(), name.clone()),
                            path,
                            slot,
                        });
                    }
                }
                // Last pushed is first taken: put the first child on top, for locality.
                state.queue[start..].reverse();
                state.listings[job.slot] = Some(listing);
            }
            Ok(None) => {}
            Err(e) => {
                state.error.get_or_insert(e);
            }
        }
        shared.wake.notify_all();
    }
    shared.wake.notify_all();
}

/// Opens a job's directory and stats its children; `None` if it vanished.
fn list<D: WalkDir>(root: &Path, dir: Source<D>, path: &[u8]) -> Result<Option<(D, Listing)>> {
    let dir = match dir {
        Source::Root(dir) => dir,
        Source::Child(parent, name) => {
            match parent.open(&name).map_err(walk_err("open", root, path))? {
                Some(dir) => dir,
                None => return Ok(None),
            }
        }
    };
    let names = sorted_names(&dir).map_err(walk_err("list", root, path))?;
    let mut listing = Vec::with_capacity(names.len());
    for name in names {
        let stat = dir
            .stat(&name)
            .map_err(|source| walk_err("stat", root, &child_path(path, &name))(source))?;
        if let Some(stat) = stat {
            listing.push((name, stat, None));
        }
    }
    Ok(Some((dir, listing)))
}

/// The listings, from the root's (slot 0), as one list of paths in depth-first order.
fn join_listings(mut listings: Vec<Option<Listing>>) -> Vec<ManifestEntry> {
    let total = listings.iter().flatten().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    // (listing, next child, its path): a stack instead of recursion, for deep trees.
    let mut stack = vec![(
        listings[0].take().unwrap_or_default().into_iter(),
        Vec::new(),
    )];
    while let Some((children, prefix)) = stack.last_mut() {
        let Some((name, stat, child)) = children.next() else {
            stack.pop();
            continue;
        };
        let path = child_path(prefix, &name);
        let below = child.and_then(|slot| listings[slot].take());
        out.push(ManifestEntry {
            path: path.clone(),
            stat,
        });
        if let Some(below) = below {
            stack.push((below.into_iter(), path));
        }
    }
    out
}
