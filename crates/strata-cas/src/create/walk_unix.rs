//! The Unix tree walker behind [`create`](super): directory handles, `O_NOFOLLOW`, one
//! `statat` and at most one `flistxattr` per entry.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};

use super::{Change, CreateOptions, Item, Sink, Source, plan_changes};
use crate::dirfd::{DIR_FLAGS, open_root};
use crate::tar::{TarWriter, overlay_xattr, split_parent};
use crate::{Entry, EntryKind, EntryProblem, Error, Metadata, Result};

pub(super) fn write_entries<S: Sink>(
    dir: &Path,
    tar: &mut TarWriter<S>,
    opts: &CreateOptions,
    source: Source<'_>,
) -> Result<u64> {
    let root = open_root(dir)?;
    let mut walker = Walker {
        root_path: dir,
        tar,
        clamp: opts.mtime_clamp,
        hardlinks: HashMap::new(),
        entries: 0,
    };
    match source {
        Source::Tree => walker.visit(&root, &mut Vec::new())?,
        Source::Changes(changes) => walker.changes(&root, changes)?,
    }
    Ok(walker.entries)
}

struct Walker<'a, S> {
    root_path: &'a Path,
    tar: &'a mut TarWriter<S>,
    clamp: Option<i64>,
    /// First path seen for each multiply-linked inode.
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
}

impl<S: Sink> Walker<'_, S> {
    fn full_path(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(rel))
    }

    fn visit(&mut self, dir: &OwnedFd, prefix: &mut Vec<u8>) -> Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let listing =
            Dir::read_from(dir).map_err(|e| Error::io("list", self.full_path(prefix), e.into()))?;
        for item in listing {
            let item = item.map_err(|e| Error::io("list", self.full_path(prefix), e.into()))?;
            let name = item.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort_unstable();
        for name in names {
            let len = prefix.len();
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(&name);
            super::check_name(&name, prefix)?;
            let stat = rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io("stat", self.full_path(prefix), e.into()))?;
            if let Some(child) = self.emit(dir, &name, prefix, &stat)? {
                self.visit(&child, prefix)?;
            }
            prefix.truncate(len);
        }
        Ok(())
    }

    fn changes(&mut self, root: &OwnedFd, changes: &[Change]) -> Result<()> {
        let items = plan_changes(changes)?;
        let mut parent_fd: Option<(Vec<u8>, OwnedFd)> = None;
        for (tar_path, item) in items {
            match item {
                Item::Marker => {
                    self.append(&Entry {
                        path: tar_path,
                        kind: EntryKind::File,
                        meta: Metadata::default(),
                        size: 0,
                    })?;
                }
                Item::Path(path) => {
                    let (parent, name) = split_parent(&path);
                    let cached = parent_fd.as_ref().is_some_and(|(p, _)| p == parent);
                    if !cached {
                        let fd = if parent.is_empty() {
                            rustix::io::dup(root)
                        } else {
                            rustix::fs::openat(root, parent, DIR_FLAGS, Mode::empty())
                        }
                        .map_err(|e| Error::io("open", self.full_path(parent), e.into()))?;
                        parent_fd = Some((parent.to_vec(), fd));
                    }
                    let (_, dir) = parent_fd.as_ref().expect("set above");
                    let stat =
                        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
                            Error::io("stat a changed path", self.full_path(&path), e.into())
                        })?;
                    self.emit(dir, name, &path, &stat)?;
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

    /// Writes the entry for `name` in `dir` (at layer path `path`). Returns the directory's
    /// handle when it is one, for the caller to descend into.
    #[allow(
        clippy::unnecessary_cast,
        reason = "stat field types differ between Unix platforms"
    )]
    fn emit(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        path: &[u8],
        stat: &Stat,
    ) -> Result<Option<OwnedFd>> {
        let mtime = stat.st_mtime as i64;
        let mut meta = Metadata {
            mode: stat.st_mode as u32 & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            mtime: self.clamp.map_or(mtime, |c| mtime.min(c)),
            mtime_nsec: 0,
            xattrs: Vec::new(),
        };
        let root_path = self.root_path;
        let io_err = |op: &'static str, e: rustix::io::Errno| {
            Error::io(op, root_path.join(OsStr::from_bytes(path)), e.into())
        };
        let mut entry = Entry {
            path: path.to_vec(),
            kind: EntryKind::File,
            meta: Metadata::default(),
            size: 0,
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {
                if stat.st_nlink > 1 {
                    let key = (stat.st_dev as u64, stat.st_ino as u64);
                    if let Some(first) = self.hardlinks.get(&key) {
                        entry.kind = EntryKind::Hardlink(first.clone());
                        entry.meta = meta;
                        self.append(&entry)?;
                        return Ok(None);
                    }
                    self.hardlinks.insert(key, path.to_vec());
                }
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err("open", e))?;
                meta.xattrs = layer_xattrs(&fd).map_err(|e| e.into_error(root_path, path))?;
                entry.meta = meta;
                entry.size = stat.st_size as u64;
                self.append(&entry)?;
                self.copy_data(File::from(fd), entry.size, path)?;
                Ok(None)
            }
            FileType::Directory => {
                let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| io_err("open", e))?;
                meta.xattrs = layer_xattrs(&fd).map_err(|e| e.into_error(root_path, path))?;
                entry.kind = EntryKind::Dir;
                entry.meta = meta;
                self.append(&entry)?;
                Ok(Some(fd))
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| io_err("read the symlink", e))?;
                entry.kind = EntryKind::Symlink(target.into_bytes());
                entry.meta = meta;
                self.append(&entry)?;
                Ok(None)
            }
            FileType::CharacterDevice if stat.st_rdev == 0 => {
                Err(Error::entry(path, EntryProblem::WhiteoutDevice))
            }
            ft @ (FileType::CharacterDevice | FileType::BlockDevice) => {
                let (major, minor) = (
                    rustix::fs::major(stat.st_rdev),
                    rustix::fs::minor(stat.st_rdev),
                );
                entry.kind = if ft == FileType::CharacterDevice {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                };
                entry.meta = meta;
                self.append(&entry)?;
                Ok(None)
            }
            FileType::Fifo => {
                entry.kind = EntryKind::Fifo;
                entry.meta = meta;
                self.append(&entry)?;
                Ok(None)
            }
            // Sockets cannot be represented in a tar; like GNU tar, leave them out.
            _ => Ok(None),
        }
    }

    fn copy_data(&mut self, mut file: File, size: u64, path: &[u8]) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let n = self
                .tar
                .inner_mut()
                .fill_from(&mut file, left)
                .map_err(|e| Error::io("read", self.full_path(path), e))?;
            if n == 0 {
                return Err(Error::io(
                    "read",
                    self.full_path(path),
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
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

/// Extended attributes as a layer records them: (name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a layer makes of an extended attribute found on disk.
#[derive(Debug, PartialEq, Eq)]
enum XattrFate {
    Keep,
    /// Not the tree's own: host SELinux labels and ACLs, overlayfs's bookkeeping in an
    /// upper dir (`trusted.overlay.*`: origin, impure, and the opaque marker a commit reads
    /// as such beforehand).
    Leave,
    /// Overlayfs's, but set by a process: `user.overlay.*` (our mounts never write them)
    /// and the escaped `trusted.overlay.overlay.*` overlayfs stores when a process in a
    /// mount sets `trusted.overlay.*`. A layer cannot carry them (see
    /// [`overlay_xattr`]), nor may a commit drop what a step asked for in silence.
    Refuse,
}

fn xattr_fate(name: &[u8]) -> XattrFate {
    if overlay_xattr(name) {
        let escaped = name.starts_with(b"trusted.overlay.overlay.");
        if name.starts_with(b"trusted.overlay.") && !escaped {
            return XattrFate::Leave;
        }
        return XattrFate::Refuse;
    }
    if name.starts_with(b"user.") || name == b"security.capability" || name.starts_with(b"trusted.")
    {
        XattrFate::Keep
    } else {
        XattrFate::Leave
    }
}

/// Why the extended attributes of an entry could not go into a layer.
enum XattrError {
    Read(rustix::io::Errno),
    Refused(Vec<u8>),
}

impl XattrError {
    fn into_error(self, root: &Path, path: &[u8]) -> Error {
        match self {
            XattrError::Read(e) => Error::io(
                "list xattrs of",
                root.join(OsStr::from_bytes(path)),
                e.into(),
            ),
            XattrError::Refused(name) => {
                // Named as the process set it, not as overlayfs escaped it.
                let shown = match name.strip_prefix(b"trusted.overlay.overlay.".as_slice()) {
                    Some(rest) => [b"trusted.overlay.".as_slice(), rest].concat(),
                    None => name,
                };
                Error::entry(
                    path,
                    EntryProblem::ForbiddenXattr(String::from_utf8_lossy(&shown).into_owned()),
                )
            }
        }
    }
}

/// The attributes of `fd` that a layer records, sorted; an attribute a layer cannot carry
/// is refused ([`XattrFate::Refuse`]).
fn layer_xattrs(fd: &OwnedFd) -> Result<Xattrs, XattrError> {
    let (attrs, refused) = read_xattrs(fd).map_err(XattrError::Read)?;
    match refused {
        Some(name) => Err(XattrError::Refused(name)),
        None => Ok(attrs),
    }
}

/// The attributes of `fd` worth keeping, sorted, and the first one to refuse, if any.
fn read_xattrs(fd: &OwnedFd) -> rustix::io::Result<(Xattrs, Option<Vec<u8>>)> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::flistxattr(fd, &mut names[..]) {
            Ok(len) => break len,
            Err(rustix::io::Errno::RANGE) => {
                let want = rustix::fs::flistxattr_query(fd)?;
                names.resize(want.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok((Vec::new(), None)),
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match xattr_fate(name) {
            XattrFate::Keep => {}
            XattrFate::Leave => continue,
            XattrFate::Refuse => return Ok((Vec::new(), Some(name.to_vec()))),
        }
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => {
                    let want = rustix::fs::fgetxattr_query(fd, name)?;
                    value.resize(want.max(value.len() * 2), 0);
                }
                Err(e) => return Err(e),
            }
        };
        value.truncate(n);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok((out, None))
}
