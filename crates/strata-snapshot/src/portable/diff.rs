//! What changed in a portable checkout since its manifest: the tree's stats now, compared
//! with the manifest's, both in depth-first byte order.

use std::cmp::Ordering;
use std::path::Path;

use strata_cas::{Change, ChangeKind};

use super::{EntryStat, Manifest, ManifestEntry, Result, Timestamp, WalkDir, is_under, walk};

/// What changed under `root` (reached as `dir`) since `manifest`.
pub(super) fn diff_walk<D: WalkDir>(
    root: &Path,
    dir: D,
    manifest: &Manifest,
) -> Result<Vec<Change>> {
    let now = walk::entries(root, dir)?;
    Ok(compare(&manifest.entries, &now, manifest.taken))
}

/// Whether an entry changed since the manifest taken at `taken` recorded it as `old`.
fn changed(old: &EntryStat, now: &EntryStat, taken: Timestamp) -> bool {
    old.mode != now.mode
        || old.ino != now.ino
        || old.size != now.size
        || old.uid != now.uid
        || old.gid != now.gid
        || old.mtime != now.mtime
        || old.ctime != now.ctime
        // Racy: a change within the manifest's timestamp could leave the stat as is.
        || old.mtime >= taken
}

/// The changes from `old` (a manifest taken at `taken`) to `now` (a walk of the same tree),
/// both in depth-first byte order: one pass with a cursor in each. A deleted directory is
/// reported alone, without its recorded children; an added one with all of its entries.
pub(super) fn compare(
    old: &[ManifestEntry],
    now: &[ManifestEntry],
    taken: Timestamp,
) -> Vec<Change> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        let order = match (old.get(i), now.get(j)) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(o), Some(n)) => strata_cas::tar::path_order(&o.path, &n.path),
        };
        match order {
            Ordering::Equal => {
                let (o, n) = (&old[i], &now[j]);
                if changed(&o.stat, &n.stat, taken) {
                    out.push(Change::new(n.path.clone(), ChangeKind::Modified));
                }
                i += 1;
                j += 1;
                // A directory replaced by a non-directory took its children with it.
                if !n.stat.is_dir() {
                    i = skip_below(old, i, &o.path);
                }
            }
            Ordering::Less => {
                let o = &old[i];
                out.push(Change::new(o.path.clone(), ChangeKind::Deleted));
                i = skip_below(old, i + 1, &o.path);
            }
            Ordering::Greater => {
                out.push(Change::new(now[j].path.clone(), ChangeKind::Added));
                j += 1;
            }
        }
    }
    out
}

/// The first index from `from` whose entry is not below `path`.
fn skip_below(entries: &[ManifestEntry], mut from: usize, path: &[u8]) -> usize {
    while entries.get(from).is_some_and(|e| is_under(&e.path, path)) {
        from += 1;
    }
    from
}
