//! The Windows tree walker behind [`create`](super): the same depth-first walk as on Unix,
//! through paths (std has no handle-relative calls on Windows), so the tree must not change
//! while it is read.
//!
//! What a Windows file becomes in a layer (the counterpart of `extract/windows.rs`, and the
//! same modes as the portable checkout's manifest):
//! - names must be valid Unicode (they are stored as UTF-8); one that is not is an error
//!   naming it. Children are written in byte order of their UTF-8 names, as on Unix;
//! - modes are synthesised: directories 0755, files 0644, or 0555 and 0444 with the
//!   read-only attribute. There is no executable bit: Windows decides by extension, and a
//!   guess from names would change a file's mode when it is renamed;
//! - symlinks and junctions (std reports both as symlinks) keep their target with `\` turned
//!   into `/`; other reparse points are read as the files or directories they present;
//! - owners are 0, there are no extended attributes, mtimes are whole seconds;
//! - hard links are not detected (std exposes no stable file id): every name of a file is
//!   stored with its data, which a checkout then restores as separate files.

use std::fs::{self, File, Metadata as FsMetadata, OpenOptions};
use std::io;
use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Change, CreateOptions, Item, Sink, Source, plan_changes};
use crate::tar::TarWriter;
use crate::{Entry, EntryKind, Error, Metadata, Result};

/// Open a symlink itself rather than its target (`CreateFile`).
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
const FILE_ATTRIBUTE_READONLY: u32 = 0x1;

pub(super) fn write_entries<S: Sink>(
    dir: &Path,
    tar: &mut TarWriter<S>,
    opts: &CreateOptions,
    source: Source<'_>,
) -> Result<u64> {
    let meta = fs::metadata(dir).map_err(|e| Error::io("open the directory", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            "open the directory",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut walker = Walker {
        root: dir,
        tar,
        clamp: opts.mtime_clamp,
        entries: 0,
    };
    match source {
        Source::Tree => walker.visit(dir, &mut Vec::new())?,
        Source::Changes(changes) => walker.changes(changes)?,
    }
    Ok(walker.entries)
}

struct Walker<'a, S> {
    root: &'a Path,
    tar: &'a mut TarWriter<S>,
    clamp: Option<i64>,
    entries: u64,
}

/// `root` joined with a layer path, one component at a time (a verbatim `\\?\` root does
/// not take `/` as a separator).
fn join(root: &Path, rel: &[u8]) -> PathBuf {
    let mut out = root.to_path_buf();
    for part in String::from_utf8_lossy(rel)
        .split('/')
        .filter(|p| !p.is_empty())
    {
        out.push(part);
    }
    out
}

fn not_unicode(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} is not valid Unicode, so a layer cannot record it"),
    )
}

impl<S: Sink> Walker<'_, S> {
    fn full_path(&self, rel: &[u8]) -> PathBuf {
        join(self.root, rel)
    }

    fn visit(&mut self, dir: &Path, prefix: &mut Vec<u8>) -> Result<()> {
        let mut names: Vec<(Vec<u8>, std::ffi::OsString)> = Vec::new();
        let listing = fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
        for item in listing {
            let item = item.map_err(|e| Error::io("list", dir, e))?;
            let name = item.file_name();
            let text = name.to_str().ok_or_else(|| {
                Error::io("read the name of", item.path(), not_unicode("the name"))
            })?;
            names.push((text.as_bytes().to_vec(), name));
        }
        names.sort_unstable();
        for (name, os_name) in names {
            let len = prefix.len();
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(&name);
            super::check_name(&name, prefix)?;
            let path = dir.join(&os_name);
            if self.emit(&path, prefix)? {
                self.visit(&path, prefix)?;
            }
            prefix.truncate(len);
        }
        Ok(())
    }

    fn changes(&mut self, changes: &[Change]) -> Result<()> {
        for (tar_path, item) in plan_changes(changes)? {
            match item {
                Item::Marker => self.append(&Entry {
                    path: tar_path,
                    kind: EntryKind::File,
                    meta: Metadata::default(),
                    size: 0,
                })?,
                Item::Path(path) => {
                    std::str::from_utf8(&path).map_err(|_| {
                        Error::io(
                            "stat a changed path",
                            self.full_path(&path),
                            not_unicode("the path"),
                        )
                    })?;
                    let full = self.full_path(&path);
                    self.emit(&full, &path)?;
                }
            }
        }
        Ok(())
    }

    fn append(&mut self, entry: &Entry) -> Result<()> {
        self.entries += 1;
        self.tar
            .append(entry)
            .map_err(|e| Error::io("write the layer entry for", self.full_path(&entry.path), e))
    }

    /// The mtime a layer records for `meta`: whole seconds since the epoch, clamped.
    fn mtime(&self, meta: &FsMetadata) -> i64 {
        let secs = meta.modified().map_or(0, unix_seconds);
        self.clamp.map_or(secs, |c| secs.min(c))
    }

    /// Writes the entry for the file at `full` (layer path `path`). Returns whether it is a
    /// directory, for the caller to descend into.
    fn emit(&mut self, full: &Path, path: &[u8]) -> Result<bool> {
        let meta = fs::symlink_metadata(full).map_err(|e| Error::io("stat", full, e))?;
        let readonly = meta.file_attributes() & FILE_ATTRIBUTE_READONLY != 0;
        let mut entry = Entry {
            path: path.to_vec(),
            kind: EntryKind::File,
            meta: Metadata {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: self.mtime(&meta),
                mtime_nsec: 0,
                xattrs: Vec::new(),
            },
            size: 0,
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(full).map_err(|e| Error::io("read the symlink", full, e))?;
            let target = target
                .to_str()
                .ok_or_else(|| Error::io("read the symlink", full, not_unicode("its target")))?;
            entry.kind = EntryKind::Symlink(target.replace('\\', "/").into_bytes());
            entry.meta.mode = 0o777;
            self.append(&entry)?;
            Ok(false)
        } else if ft.is_dir() {
            entry.kind = EntryKind::Dir;
            entry.meta.mode = if readonly { 0o555 } else { 0o755 };
            self.append(&entry)?;
            Ok(true)
        } else if ft.is_file() {
            // Opened without following a link, and checked again on the handle: what is
            // read is what was stat'ed, even if the name changed meanwhile.
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
                .open(full)
                .map_err(|e| Error::io("open", full, e))?;
            let handle_meta = file.metadata().map_err(|e| Error::io("stat", full, e))?;
            if !handle_meta.file_type().is_file() || handle_meta.file_type().is_symlink() {
                return Err(Error::io(
                    "read",
                    full,
                    io::Error::other("it stopped being a regular file while being read"),
                ));
            }
            if readonly {
                entry.meta.mode = 0o444;
            }
            entry.size = handle_meta.len();
            self.append(&entry)?;
            self.copy_data(file, entry.size, full)?;
            Ok(false)
        } else {
            // Nothing else has a tar form here (std reports devices and pipes as neither).
            Ok(false)
        }
    }

    fn copy_data(&mut self, mut file: File, size: u64, full: &Path) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let n = self
                .tar
                .inner_mut()
                .fill_from(&mut file, left)
                .map_err(|e| Error::io("read", full, e))?;
            if n == 0 {
                return Err(Error::io(
                    "read",
                    full,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the file shrank while being read ({left} of {size} bytes missing)"
                        ),
                    ),
                ));
            }
            self.tar.data_written(n as u64);
            left -= n as u64;
        }
        Ok(())
    }
}

/// Whole seconds since the Unix epoch, rounded down (negative before 1970).
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -secs - i64::from(d.subsec_nanos() > 0)
        }
    }
}
