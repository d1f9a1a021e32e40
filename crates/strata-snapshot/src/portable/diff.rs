//! The stat walk that finds what changed in a portable checkout since its manifest.

use std::cmp::Ordering;
use std::path::Path;

use strata_cas::Change;

use super::{
    EntryStat, Manifest, ManifestEntry, Result, Timestamp, WalkDir, is_under, sorted_names,
    walk_err,
};

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

/// What changed under `root` (reached as `dir`) since `manifest`.
pub(super) fn diff_walk<D: WalkDir>(
    root: &Path,
    dir: &D,
    manifest: &Manifest,
) -> Result<Vec<Change>> {
    let mut d = Differ {
        dir: root,
        entries: &manifest.entries,
        taken: manifest.taken,
        next: 0,
        out: Vec::new(),
    };
    d.walk(dir, &mut Vec::new())?;
    Ok(d.out)
}

/// Walks the directory and the manifest side by side: both are in depth-first byte order,
/// so the manifest is read through one cursor and nothing is looked up.
struct Differ<'a> {
    dir: &'a Path,
    entries: &'a [ManifestEntry],
    taken: Timestamp,
    /// The first manifest entry not yet matched or reported.
    next: usize,
    out: Vec<Change>,
}

impl Differ<'_> {
    fn walk<D: WalkDir>(&mut self, fd: &D, prefix: &mut Vec<u8>) -> Result<()> {
        let dir = self.dir;
        for name in sorted_names(fd).map_err(walk_err("list", dir, prefix))? {
            let len = prefix.len();
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(&name);
            self.deleted_before(&prefix[..len], Some(prefix));
            self.visit(fd, &name, prefix)?;
            prefix.truncate(len);
        }
        self.deleted_before(prefix, None);
        Ok(())
    }

    fn visit<D: WalkDir>(&mut self, fd: &D, name: &[u8], path: &mut Vec<u8>) -> Result<()> {
        use strata_cas::ChangeKind;
        let dir = self.dir;
        // Removed since the listing: the cursor reports it if it was recorded.
        let Some(now) = fd.stat(name).map_err(walk_err("stat", dir, path))? else {
            return Ok(());
        };
        match self.entries.get(self.next) {
            Some(e) if e.path == *path => {
                let old = e.stat;
                self.next += 1;
                if changed(&old, &now, self.taken) {
                    self.out
                        .push(Change::new(path.clone(), ChangeKind::Modified));
                }
                // A directory replaced by a non-directory took its children with it.
                if !now.is_dir() {
                    self.skip_below(path);
                }
            }
            _ => self.out.push(Change::new(path.clone(), ChangeKind::Added)),
        }
        // Removed since the stat: its recorded children are reported as deleted.
        if now.is_dir()
            && let Some(child) = fd.open(name).map_err(walk_err("open", dir, path))?
        {
            self.walk(&child, path)?;
        }
        Ok(())
    }

    /// Reports as deleted the recorded entries below `prefix` that come before `until`
    /// (all of them without it): the walk has passed their place without meeting them.
    fn deleted_before(&mut self, prefix: &[u8], until: Option<&[u8]>) {
        use strata_cas::ChangeKind;
        while let Some(e) = self.entries.get(self.next) {
            let passed =
                until.is_none_or(|u| strata_cas::tar::path_order(&e.path, u) == Ordering::Less);
            if !is_under(&e.path, prefix) || !passed {
                break;
            }
            self.out
                .push(Change::new(e.path.clone(), ChangeKind::Deleted));
            self.next += 1;
            self.skip_below(&e.path);
        }
    }

    /// Moves the cursor past the recorded entries below `path`.
    fn skip_below(&mut self, path: &[u8]) {
        while self
            .entries
            .get(self.next)
            .is_some_and(|e| is_under(&e.path, path))
        {
            self.next += 1;
        }
    }
}
