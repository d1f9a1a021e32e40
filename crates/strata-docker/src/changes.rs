//! A container's changes as a Strata layer: the engine's change list (`GET
//! /containers/{id}/changes`) picks the entries of the container's exported filesystem that
//! the step added or modified, and its deletions become OCI `.wh.` whiteouts. The export is
//! read with Strata's strict tar reader, so a hostile container cannot smuggle anything past
//! the checks every stored layer goes through.

use std::collections::HashSet;
use std::io::{Read, Write};

use strata_cas::tar::{TarReader, TarWriter, WHITEOUT_PREFIX};
use strata_cas::{Entry, EntryKind, Limits, Metadata};

use crate::{Error, Result};

/// What the engine says happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Modified,
    Added,
    Deleted,
}

/// The paths a step changed, relative to the root (`a/b`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    keep: HashSet<Vec<u8>>,
    deleted: Vec<Vec<u8>>,
}

fn relative(path: &str) -> &str {
    path.trim_start_matches('/').trim_end_matches('/')
}

impl ChangeSet {
    /// From the engine's list, leaving out `exclude` (secret mount points) and the parents
    /// the engine added for them only.
    pub fn new<'a>(changes: impl IntoIterator<Item = (&'a str, Kind)>, exclude: &[String]) -> Self {
        let mut keep = HashSet::new();
        let mut added = HashSet::new();
        let mut deleted = Vec::new();
        for (path, kind) in changes {
            let path = relative(path);
            if path.is_empty() {
                continue;
            }
            match kind {
                Kind::Deleted => deleted.push(path.as_bytes().to_vec()),
                Kind::Added => {
                    added.insert(path.as_bytes().to_vec());
                    keep.insert(path.as_bytes().to_vec());
                }
                Kind::Modified => {
                    keep.insert(path.as_bytes().to_vec());
                }
            }
        }
        for target in exclude {
            let mut path = relative(target).as_bytes().to_vec();
            keep.remove(&path);
            // Parents the engine made for the mount point, and nothing else under them.
            while let Some(cut) = path.iter().rposition(|&b| b == b'/') {
                path.truncate(cut);
                let mut prefix = path.clone();
                prefix.push(b'/');
                let used = keep.iter().any(|k| k.starts_with(&prefix))
                    || deleted.iter().any(|d| d.starts_with(&prefix));
                if !added.contains(&path) || used {
                    break;
                }
                keep.remove(&path);
            }
        }
        // A deletion under a deleted directory is implied by the directory's.
        deleted.sort();
        let mut kept: Vec<Vec<u8>> = Vec::new();
        for d in deleted {
            let implied = kept
                .last()
                .is_some_and(|p| d.len() > p.len() && d.starts_with(p) && d[p.len()] == b'/');
            if !implied {
                kept.push(d);
            }
        }
        ChangeSet {
            keep,
            deleted: kept,
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.keep.is_empty() && self.deleted.is_empty()
    }
}

/// Writes the entries of `export` (a whole filesystem as a tar) that `set` keeps, then a
/// whiteout per deletion, to `out` as a layer. `container` names the export in errors.
pub fn filter(export: impl Read, set: &ChangeSet, out: impl Write, container: &str) -> Result<()> {
    let bad = |source| Error::Changes {
        container: container.to_owned(),
        source,
    };
    let mut reader = TarReader::new(export, &Limits::default());
    let mut tar = TarWriter::new(out);
    let mut written: HashSet<Vec<u8>> = HashSet::new();
    let mut buf = vec![0u8; 64 << 10];
    let write_err = Error::io("write the layer of changes");
    while let Some(entry) = reader.next_entry().map_err(bad)? {
        if !set.keep.contains(&entry.path) {
            continue;
        }
        if let EntryKind::Hardlink(target) = &entry.kind
            && !written.contains(target)
        {
            return Err(Error::HardLink {
                container: container.to_owned(),
                path: String::from_utf8_lossy(&entry.path).into_owned(),
                target: String::from_utf8_lossy(target).into_owned(),
            });
        }
        tar.append(&entry)
            .map_err(Error::io("write the layer of changes"))?;
        loop {
            let n = reader.read_data(&mut buf).map_err(bad)?;
            if n == 0 {
                break;
            }
            tar.write_data(&buf[..n])
                .map_err(Error::io("write the layer of changes"))?;
        }
        written.insert(entry.path);
    }
    reader.finish().map_err(bad)?;
    for path in &set.deleted {
        let (parent, name) = strata_cas::tar::split_parent(path);
        let mut wh = parent.to_vec();
        if !wh.is_empty() {
            wh.push(b'/');
        }
        wh.extend_from_slice(WHITEOUT_PREFIX);
        wh.extend_from_slice(name);
        let entry = Entry {
            path: wh,
            kind: EntryKind::File,
            meta: Metadata::default(),
            size: 0,
        };
        tar.append(&entry)
            .map_err(Error::io("write the layer of changes"))?;
    }
    tar.finish().map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, EntryKind, &[u8])]) -> Vec<u8> {
        let mut t = TarWriter::new(Vec::new());
        for (path, kind, data) in entries {
            t.append(&Entry {
                path: path.as_bytes().to_vec(),
                kind: kind.clone(),
                meta: Metadata {
                    mode: 0o644,
                    ..Metadata::default()
                },
                size: data.len() as u64,
            })
            .unwrap();
            t.write_data(data).unwrap();
        }
        t.finish().unwrap()
    }

    fn names(layer: &[u8]) -> Vec<String> {
        let mut r = TarReader::new(layer, &Limits::default());
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            out.push(String::from_utf8(e.path).unwrap());
        }
        out
    }

    #[test]
    fn only_changes_are_kept_and_deletions_become_whiteouts() {
        let export = tar(&[
            ("bin", EntryKind::Dir, b""),
            ("bin/sh", EntryKind::File, b"old"),
            ("etc", EntryKind::Dir, b""),
            ("etc/new", EntryKind::File, b"new"),
            ("etc/hosts", EntryKind::File, b"engine's"),
            ("run", EntryKind::Dir, b""),
            ("run/secrets", EntryKind::Dir, b""),
            ("run/secrets/t", EntryKind::File, b""),
        ]);
        let set = ChangeSet::new(
            [
                ("/etc", Kind::Modified),
                ("/etc/new", Kind::Added),
                ("/gone", Kind::Deleted),
                ("/gone/child", Kind::Deleted),
                ("/usr/old", Kind::Deleted),
                ("/run", Kind::Modified),
                ("/run/secrets", Kind::Added),
                ("/run/secrets/t", Kind::Added),
            ],
            &["/run/secrets/t".to_owned()],
        );
        let mut out = Vec::new();
        filter(&export[..], &set, &mut out, "c").unwrap();
        assert_eq!(
            names(&out),
            ["etc", "etc/new", "run", ".wh.gone", "usr/.wh.old"]
        );
    }

    #[test]
    fn a_hard_link_to_an_unchanged_file_is_refused() {
        let export = tar(&[
            ("a", EntryKind::File, b"x"),
            ("b", EntryKind::Hardlink(b"a".to_vec()), b""),
        ]);
        let set = ChangeSet::new([("/b", Kind::Added)], &[]);
        let e = filter(&export[..], &set, Vec::new(), "c").unwrap_err();
        assert!(e.to_string().contains("`b`"), "{e}");
        // Both new: fine.
        let set = ChangeSet::new([("/a", Kind::Added), ("/b", Kind::Added)], &[]);
        filter(&export[..], &set, Vec::new(), "c").unwrap();
    }
}
