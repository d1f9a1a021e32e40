//! Portable checkout: materialise a stack of unpacked layers into a plain directory (any
//! filesystem, no overlayfs; Unix and Windows), and find what a build step changed there with
//! a stat walk against the [`Manifest`] taken at checkout. File data is cloned where the
//! filesystem can (`FICLONE` on Linux, `clonefile` on APFS, block cloning on ReFS) and
//! copied otherwise.
//!
//! Each layer is a read-only directory in which whiteouts appear in either encoding, and both
//! are understood in every layer:
//! - overlayfs: a deleted path is a 0/0 character device; an opaque directory carries
//!   `trusted.overlay.opaque=y` (not `user.overlay.opaque`, which the engine's overlay mounts
//!   do not read either: both views of a stack must show the same tree);
//! - OCI: a deleted `P/x` is a file `P/.wh.x`; an opaque `P` holds a file `P/.wh..wh..opq`.
//!
//! [`materialize`] merges the layers one directory at a time, walking all of them at once: for
//! each directory it lists each contributing layer top-first and decides every name once, so
//! hidden entries are never opened and each visible file is read (or reflinked) once. Every
//! path is resolved from directory handles with `O_NOFOLLOW`, in the layers and in the target
//! (on Unix; std offers no handle-relative calls on Windows, where paths are resolved, so
//! layers and targets must not change under a checkout).
//!
//! [`diff`] walks the directory in depth-first byte order next to the manifest (which is kept
//! in that order), so it costs one `lstat` per entry plus the changes, and never reads data.
//! Two rules keep a stat walk from missing a change made in the same timestamp tick as the
//! manifest: a manifest is only returned once the filesystem's clock has passed every ctime
//! it records (so any later change, even one that restores size and mtime, moves the ctime),
//! and, as in git's index, an entry whose recorded mtime is not older than the manifest
//! ("racy") counts as changed.

use std::cmp::Ordering;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_cas::Change;

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a checkout or a diff. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on a path failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb phrase.
        op: &'static str,
        /// The path involved (in a layer, the target or the directory being diffed).
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The checkout target exists and is not an empty directory.
    #[error("cannot materialise into {}: it is not an empty directory", path.display())]
    TargetNotEmpty {
        /// The target.
        path: PathBuf,
    },
    /// A name in the reserved `.wh.` space that is no valid whiteout.
    #[error("invalid whiteout {}", path.display())]
    BadWhiteout {
        /// The offending entry, inside its layer.
        path: PathBuf,
    },
    /// A layer changed type under a path while it was being read.
    #[error("layer entry {} changed while it was being read", path.display())]
    LayerChanged {
        /// The entry, inside its layer.
        path: PathBuf,
    },
    /// The manifest bytes are not a manifest this version reads.
    #[error("malformed manifest: {problem}")]
    Manifest {
        /// What is wrong, naming the entry when one is at fault.
        problem: String,
    },
    /// The operation is not available on this platform.
    #[error("{what} is not supported on this platform ({})", path.display())]
    Unsupported {
        /// What was attempted.
        what: &'static str,
        /// The path it was attempted on.
        path: PathBuf,
    },
}

/// A file timestamp, ordered as (seconds, nanoseconds).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(from = "(i64, u32)", into = "(i64, u32)")]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl From<(i64, u32)> for Timestamp {
    fn from((sec, nsec): (i64, u32)) -> Self {
        Timestamp { sec, nsec }
    }
}

impl From<Timestamp> for (i64, u32) {
    fn from(t: Timestamp) -> Self {
        (t.sec, t.nsec)
    }
}

/// What a manifest records about one path: an `lstat`, minus what a diff must ignore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct EntryStat {
    /// Device of the filesystem (recorded, not compared: it changes across mounts).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time.
    pub ctime: Timestamp,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl EntryStat {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;

/// The format tag written into every manifest, checked on reading.
const MANIFEST_FORMAT: &str = "strata-portable-manifest-v1";

/// The stat of every entry of a directory tree (the root excluded) at one moment, kept in
/// depth-first byte order ([`strata_cas::tar::path_order`]), plus that moment. Deserialising
/// checks the order, which [`diff`] relies on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ManifestRepr")]
pub struct Manifest {
    format: String,
    taken: Timestamp,
    entries: Vec<ManifestEntry>,
}

/// A manifest as read, before its checks.
#[derive(Deserialize)]
struct ManifestRepr {
    format: String,
    taken: Timestamp,
    entries: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestEntry {
    #[serde(with = "path_text")]
    path: Vec<u8>,
    stat: EntryStat,
}

impl TryFrom<ManifestRepr> for Manifest {
    type Error = String;

    fn try_from(m: ManifestRepr) -> Result<Self, String> {
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "format `{}`, expected `{MANIFEST_FORMAT}`",
                m.format
            ));
        }
        if m.entries.iter().any(|e| e.path.is_empty()) {
            return Err("an entry has an empty path".to_owned());
        }
        for w in m.entries.windows(2) {
            if strata_cas::tar::path_order(&w[0].path, &w[1].path) != Ordering::Less {
                return Err(format!(
                    "entry `{}` does not come after `{}` (entries must be unique and in \
                     depth-first byte order)",
                    path_text::encode(&w[1].path),
                    path_text::encode(&w[0].path)
                ));
            }
        }
        Ok(Manifest {
            format: m.format,
            taken: m.taken,
            entries: m.entries,
        })
    }
}

impl Manifest {
    /// Builds a manifest from entries already in depth-first byte order.
    #[cfg_attr(
        not(any(unix, windows)),
        allow(
            dead_code,
            reason = "only the Unix and Windows walkers build manifests"
        )
    )]
    fn new(taken: Timestamp, entries: Vec<ManifestEntry>) -> Self {
        debug_assert!(
            entries
                .windows(2)
                .all(|w| strata_cas::tar::path_order(&w[0].path, &w[1].path) == Ordering::Less)
        );
        Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            taken,
            entries,
        }
    }

    /// Serialises the manifest (JSON; paths as UTF-8 with `%XX` for other bytes and `%`).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// Reads a manifest written by [`Manifest::to_bytes`], checking its format and order.
    pub fn from_bytes(b: &[u8]) -> Result<Manifest> {
        serde_json::from_slice(b).map_err(|e| Error::Manifest {
            problem: e.to_string(),
        })
    }

    /// Number of entries (the root is not one).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree had nothing but its root.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the manifest was taken, on the filesystem's clock where it could be read from the
    /// filesystem: an entry whose mtime is not older than this is racy.
    pub fn taken(&self) -> Timestamp {
        self.taken
    }

    /// The recorded stat of `path` (relative, `/`-separated).
    pub fn get(&self, path: &[u8]) -> Option<&EntryStat> {
        self.entries
            .binary_search_by(|e| strata_cas::tar::path_order(&e.path, path))
            .ok()
            .map(|i| &self.entries[i].stat)
    }

    /// Every recorded path and stat, in depth-first byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &EntryStat)> {
        self.entries.iter().map(|e| (e.path.as_slice(), &e.stat))
    }
}

/// Paths as JSON strings: valid UTF-8 as is, other bytes and `%` as `%XX`, so any Unix name
/// round-trips and the common case stays readable.
mod path_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn encode(path: &[u8]) -> String {
        let mut out = String::with_capacity(path.len());
        for chunk in path.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c == '%' {
                    out.push_str("%25");
                } else {
                    out.push(c);
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn decode(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        Some(out)
    }

    pub(super) fn serialize<S: Serializer>(path: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(path))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad `%` escape in path `{text}`")))
    }
}

/// What a checkout did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MaterializeReport {
    /// Entries created in the target (its root not counted).
    pub entries: u64,
    /// File data bytes placed in the target (reflinked or copied; hard links not counted).
    pub bytes: u64,
    /// Regular files whose data was shared with the layer (`FICLONE`, `clonefile`, ReFS
    /// block cloning).
    pub reflinked: u64,
    /// Regular files whose data was copied (`copy_file_range`, else read/write); empty files
    /// count here.
    pub copied: u64,
    /// Hard links made to a file already materialised from the same layer inode.
    pub hardlinked: u64,
}

/// Builds the merged view of `layers` (BASE FIRST) in `target` (must be empty or absent),
/// preserving type, mode, owner (when root), atime and mtime, xattrs (`user.*`; also
/// `trusted.*` and `security.capability` as root; never `trusted.overlay.*` or
/// `user.overlay.*`), symlink targets, hard links within a layer, devices and fifos. Regular
/// files are reflinked where the filesystem can, else copied with `copy_file_range`, else
/// read and written. Whiteout markers are never materialised; sockets are left out.
///
/// Returns the manifest of the result: the stat of every entry taken once it was final
/// (directories' modes and mtimes are set after their contents), and as its time the target
/// root's ctime after its mtime was set last, read from the filesystem's own clock once that
/// clock has passed every recorded ctime (a few milliseconds of waiting at most, a second on
/// filesystems that keep whole seconds).
///
/// Needs about one open handle per layer holding each ancestor of the directory being merged;
/// on error the target is left partly written.
pub fn materialize(layers: &[&Path], target: &Path) -> Result<(Manifest, MaterializeReport)> {
    imp::materialize(layers, target)
}

/// What changed in `dir` since `manifest` was taken: one `lstat` per entry, no file read.
///
/// A path missing from the manifest is `Added`; a recorded path that is gone is `Deleted`
/// (only the topmost: a deleted or replaced directory's children are not listed); a path whose
/// type, inode, size, mode, owner, mtime or ctime differs, or whose recorded mtime is not
/// older than the manifest (racy), is `Modified`. Directories whose mtime changed because of
/// their children are `Modified` too. The result is in depth-first byte order.
pub fn diff(dir: &Path, manifest: &Manifest) -> Result<Vec<Change>> {
    imp::diff(dir, manifest)
}

/// A manifest of an existing tree. Its time is the system clock before the walk, less a
/// margin for the coarse clock filesystems stamp with (whole seconds on filesystems that
/// record no nanoseconds), since nothing can be written into `dir` to read the filesystem's.
/// Like [`materialize`], it returns once that clock has surely passed every recorded ctime,
/// which only waits when the tree changed in the last moments.
pub fn manifest_of(dir: &Path) -> Result<Manifest> {
    imp::manifest_of(dir)
}

// ---- shared by the platform implementations (and unit-tested on every platform) ----

/// What a layer holds at one name of a directory being merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A directory.
    Dir,
    /// Anything else that is materialised (file, symlink, device, fifo).
    Other,
    /// An overlayfs whiteout (a 0/0 character device).
    Whiteout,
}

/// The decision for one name of a merged directory.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    /// Whited out: nothing at this name.
    Hidden,
    /// A non-directory from the source at this position.
    Leaf(usize),
    /// A directory merged from the sources at these positions, top-first; `closed` once a
    /// layer hides everything further down.
    Dir { from: Vec<usize>, closed: bool },
}

/// Decides every name of one merged directory from the listings of its layers, fed top
/// layer first: each name is decided once, and hidden entries are never looked at again.
#[derive(Debug, Default)]
struct Picker {
    picks: std::collections::BTreeMap<Vec<u8>, Pick>,
}

impl Picker {
    /// Adds the listing of the next layer down, the source at position `pos`. Names in the
    /// `.wh.` space are OCI whiteouts; `opaque` says the directory is marked opaque in
    /// overlayfs's encoding. Returns whether the layers below are hidden, or the name of a
    /// malformed whiteout.
    fn add_layer(
        &mut self,
        pos: usize,
        mut opaque: bool,
        entries: Vec<(Vec<u8>, Kind)>,
    ) -> Result<bool, Vec<u8>> {
        use strata_cas::tar::{WHITEOUT_PREFIX, Whiteout, whiteout};
        let mut whiteouts = Vec::new();
        for (name, kind) in entries {
            if name.starts_with(WHITEOUT_PREFIX) {
                match whiteout(&name) {
                    Ok(Some(Whiteout::Opaque { .. })) => opaque = true,
                    Ok(Some(Whiteout::Remove { name: hidden, .. })) => {
                        whiteouts.push(hidden.to_vec());
                    }
                    Ok(None) | Err(_) => return Err(name),
                }
                continue;
            }
            if kind == Kind::Whiteout {
                whiteouts.push(name);
                continue;
            }
            match self.picks.get_mut(&name) {
                None => {
                    let pick = if kind == Kind::Dir {
                        Pick::Dir {
                            from: vec![pos],
                            closed: false,
                        }
                    } else {
                        Pick::Leaf(pos)
                    };
                    self.picks.insert(name, pick);
                }
                Some(Pick::Dir { from, closed }) if !*closed => {
                    if kind == Kind::Dir {
                        from.push(pos);
                    } else {
                        *closed = true;
                    }
                }
                Some(_) => {}
            }
        }
        // After this layer's own entries: a whiteout hides lower layers only.
        for name in whiteouts {
            match self.picks.get_mut(&name) {
                None => {
                    self.picks.insert(name, Pick::Hidden);
                }
                Some(Pick::Dir { closed, .. }) => *closed = true,
                Some(_) => {}
            }
        }
        Ok(opaque)
    }
}

/// One directory of a tree walked by [`diff`] and [`manifest_of`]: Unix reaches children
/// through handles, Windows through paths.
trait WalkDir: Sized {
    /// The names of its entries (not `.` and `..`), in any order.
    fn names(&self) -> io::Result<Vec<Vec<u8>>>;
    /// The stat of child `name`, not following a symlink; `None` if it is gone.
    fn stat(&self, name: &[u8]) -> io::Result<Option<EntryStat>>;
    /// Child directory `name`; `None` if it is gone.
    fn open(&self, name: &[u8]) -> io::Result<Option<Self>>;
}

/// `rel` (`/`-separated) under `base`, for error messages and platform calls.
fn join(base: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        return base.to_path_buf();
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        base.join(std::ffi::OsStr::from_bytes(rel))
    }
    #[cfg(not(unix))]
    {
        let mut out = base.to_path_buf();
        for component in String::from_utf8_lossy(rel).split('/') {
            out.push(component);
        }
        out
    }
}

/// An error about `rel` under `base`; the path is only built if the call failed.
fn walk_err<'s>(
    op: &'static str,
    base: &'s Path,
    rel: &'s [u8],
) -> impl FnOnce(io::Error) -> Error + 's {
    move |source| Error::Io {
        op,
        path: join(base, rel),
        source,
    }
}

fn child_path(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
    p.extend_from_slice(prefix);
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Whether `path` is strictly below `dir` (everything is below the root, `""`).
fn is_under(path: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() {
        return !path.is_empty();
    }
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

fn sorted_names<D: WalkDir>(dir: &D) -> io::Result<Vec<Vec<u8>>> {
    let mut names = dir.names()?;
    names.sort_unstable();
    Ok(names)
}

/// Stats every entry below `dir`, depth-first with children in byte order. Entries that
/// vanish meanwhile are left out.
fn collect<D: WalkDir>(
    root: &Path,
    dir: &D,
    prefix: &mut Vec<u8>,
    out: &mut Vec<ManifestEntry>,
) -> Result<()> {
    for name in sorted_names(dir).map_err(walk_err("list", root, prefix))? {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(&name);
        if let Some(stat) = dir.stat(&name).map_err(walk_err("stat", root, prefix))? {
            out.push(ManifestEntry {
                path: prefix.clone(),
                stat,
            });
            if stat.is_dir()
                && let Some(child) = dir.open(&name).map_err(walk_err("open", root, prefix))?
            {
                collect(root, &child, prefix, out)?;
            }
        }
        prefix.truncate(len);
    }
    Ok(())
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

/// What changed under `root` (reached as `dir`) since `manifest`.
fn diff_walk<D: WalkDir>(root: &Path, dir: &D, manifest: &Manifest) -> Result<Vec<Change>> {
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

/// Windows FILETIME ticks (100 ns since 1601) as a Unix timestamp.
#[cfg_attr(
    not(windows),
    allow(dead_code, reason = "used on Windows; unit-tested everywhere")
)]
fn timestamp_from_filetime(ticks: i64) -> Timestamp {
    /// 1601-01-01 to 1970-01-01 in ticks.
    const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
    let since = i128::from(ticks) - i128::from(UNIX_EPOCH_TICKS);
    Timestamp {
        sec: i64::try_from(since.div_euclid(10_000_000)).unwrap_or(i64::MIN),
        nsec: u32::try_from(since.rem_euclid(10_000_000) * 100).unwrap_or(0),
    }
}

/// A Unix-like `st_mode` for a Windows entry, so that manifests compare types and the
/// read-only attribute the same way everywhere.
#[cfg_attr(
    not(windows),
    allow(dead_code, reason = "used on Windows; unit-tested everywhere")
)]
fn mode_from_attributes(attributes: u32, directory: bool, symlink: bool) -> u32 {
    const READONLY: u32 = 0x1;
    const S_IFLNK: u32 = 0o120_000;
    const S_IFREG: u32 = 0o100_000;
    let readonly = attributes & READONLY != 0;
    if symlink {
        S_IFLNK | 0o777
    } else if directory {
        S_IFDIR | if readonly { 0o555 } else { 0o755 }
    } else {
        S_IFREG | if readonly { 0o444 } else { 0o644 }
    }
}

#[cfg(unix)]
mod imp {
    //! The Unix implementation: directory handles, `*at` calls, `O_NOFOLLOW`.

    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::path::Path;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use rustix::fs::{
        AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, Stat, Timespec, Timestamps, Uid, XattrFlags,
    };
    use rustix::io::Errno;
    use strata_cas::Change;
    use strata_cas::tar::{WHITEOUT_PREFIX, split_parent};

    use super::{
        EntryStat, Error, Kind, Manifest, ManifestEntry, MaterializeReport, Pick, Picker, Result,
        Timestamp, WalkDir, child_path, collect, diff_walk, join,
    };

    /// Directories below a handle: never through a symlink.
    const DIR_FLAGS: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::NOFOLLOW)
        .union(OFlags::CLOEXEC);

    /// How far behind the system clock a filesystem timestamp can be: Linux stamps files from
    /// a clock that advances once per scheduler tick (up to 10 ms).
    const COARSE_CLOCK_SLACK: Duration = Duration::from_millis(50);

    /// How long to wait at most for the filesystem's clock to pass the newest recorded ctime
    /// (a whole second on filesystems that keep only seconds; more means it went backwards).
    const CLOCK_WAIT_MAX: Duration = Duration::from_secs(2);
    /// How often to look at the clock meanwhile.
    const CLOCK_POLL: Duration = Duration::from_millis(1);

    /// Largest single `copy_file_range` request.
    #[cfg(target_os = "linux")]
    const COPY_CHUNK: usize = 1 << 30;

    /// An error about `rel` under `base`; the path is only built if the call failed.
    fn io_err<'s>(
        op: &'static str,
        base: &'s Path,
        rel: &'s [u8],
    ) -> impl FnOnce(Errno) -> Error + 's {
        move |e| Error::Io {
            op,
            path: join(base, rel),
            source: e.into(),
        }
    }

    /// Opens a directory the caller named (possibly through symlinks: the caller chose it).
    fn open_root(dir: &Path) -> Result<OwnedFd> {
        rustix::fs::openat(
            CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open the directory", dir, b""))
    }

    /// Permission bits of a stat as rustix wants them (`mode_t` is 16 bits on macOS).
    #[allow(
        clippy::unnecessary_cast,
        reason = "mode_t is u32 on Linux, u16 on macOS"
    )]
    fn perms(st: &Stat) -> Mode {
        Mode::from_raw_mode((st.st_mode as u32 & 0o7777) as rustix::fs::RawMode)
    }

    #[allow(
        clippy::unnecessary_cast,
        reason = "mode_t is u32 on Linux, u16 on macOS"
    )]
    fn owner_only(bits: u32) -> Mode {
        Mode::from_raw_mode(bits as rustix::fs::RawMode)
    }

    #[allow(
        clippy::unnecessary_cast,
        reason = "stat field types differ between Unix platforms"
    )]
    fn entry_stat(st: &Stat) -> EntryStat {
        EntryStat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime: Timestamp {
                sec: st.st_mtime as i64,
                nsec: st.st_mtime_nsec as u32,
            },
            ctime: Timestamp {
                sec: st.st_ctime as i64,
                nsec: st.st_ctime_nsec as u32,
            },
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    /// The access and modification times of a stat, to put on a copy.
    #[allow(
        clippy::unnecessary_cast,
        reason = "stat field types differ between Unix platforms"
    )]
    fn times_of(st: &Stat) -> Timestamps {
        Timestamps {
            last_access: Timespec {
                tv_sec: st.st_atime as i64,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtime as i64,
                tv_nsec: st.st_mtime_nsec as _,
            },
        }
    }

    #[allow(
        clippy::unnecessary_cast,
        reason = "stat field types differ between Unix platforms"
    )]
    fn link_key(layer: usize, st: &Stat) -> Option<(usize, u64, u64)> {
        (st.st_nlink as u64 > 1).then_some((layer, st.st_dev as u64, st.st_ino as u64))
    }

    /// Names in a directory, without `.` and `..`, with the type `readdir` reports.
    fn list(fd: &OwnedFd) -> rustix::io::Result<Vec<(Vec<u8>, FileType)>> {
        let mut out = Vec::new();
        for item in Dir::read_from(fd)? {
            let item = item?;
            let name = item.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push((name.to_vec(), item.file_type()));
            }
        }
        Ok(out)
    }

    /// Whether an xattr read failed only because the attribute is not there or cannot be
    /// (no xattr support, or a namespace we may not read).
    fn attr_absent(e: Errno) -> bool {
        #[cfg(target_vendor = "apple")]
        let missing = Errno::NOATTR;
        #[cfg(not(target_vendor = "apple"))]
        let missing = Errno::NODATA;
        e == missing || e == Errno::NOTSUP || e == Errno::RANGE || e == Errno::PERM
    }

    /// Whether a layer directory is marked opaque in overlayfs's encoding, as the engine's
    /// overlay mounts read it: `trusted.overlay.opaque` only (they are not `userxattr`
    /// mounts, which would read `user.overlay.opaque` instead).
    fn overlay_opaque(fd: &OwnedFd) -> rustix::io::Result<bool> {
        let mut value = [0u8; 4];
        match rustix::fs::fgetxattr(fd, "trusted.overlay.opaque", &mut value[..]) {
            Ok(n) => Ok(&value[..n] == b"y"),
            Err(e) if attr_absent(e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a checkout carries this extended attribute: what a layer can carry (see
    /// strata-cas's walker) less overlayfs's own attributes, which are whiteout encoding and
    /// would change what an overlay mount of the result shows; privileged namespaces only as
    /// root, since nobody else can set them.
    fn keep_xattr(name: &[u8], as_root: bool) -> bool {
        if strata_cas::tar::overlay_xattr(name) {
            return false;
        }
        name.starts_with(b"user.")
            || as_root && (name == b"security.capability" || name.starts_with(b"trusted."))
    }

    /// Copies the kept extended attributes of `src` onto `dst`.
    fn copy_xattrs(src: &OwnedFd, dst: &OwnedFd, as_root: bool) -> rustix::io::Result<()> {
        let mut names = vec![0u8; 1024];
        let len = loop {
            match rustix::fs::flistxattr(src, &mut names[..]) {
                Ok(len) => break len,
                Err(Errno::RANGE) => {
                    let want = rustix::fs::flistxattr_query(src)?;
                    names.resize(want.max(names.len() * 2), 0);
                }
                Err(Errno::NOTSUP) => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        let mut value = vec![0u8; 256];
        for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !keep_xattr(name, as_root) {
                continue;
            }
            let n = loop {
                match rustix::fs::fgetxattr(src, name, &mut value[..]) {
                    Ok(n) => break n,
                    Err(Errno::RANGE) => {
                        let want = rustix::fs::fgetxattr_query(src, name)?;
                        value.resize(want.max(value.len() * 2), 0);
                    }
                    Err(e) => return Err(e),
                }
            };
            rustix::fs::fsetxattr(dst, name, &value[..n], XattrFlags::empty())?;
        }
        Ok(())
    }

    /// `mknodat`, which rustix offers on Linux only.
    fn make_node(
        dir: &OwnedFd,
        name: &[u8],
        ft: FileType,
        dev: rustix::fs::Dev,
    ) -> rustix::io::Result<()> {
        #[cfg(target_os = "linux")]
        return rustix::fs::mknodat(dir, name, ft, owner_only(0o600), dev);
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (dir, name, ft, dev);
            Err(Errno::NOSYS)
        }
    }

    /// One layer's handle on the directory being merged.
    struct Source {
        layer: usize,
        fd: OwnedFd,
    }

    /// How a regular file's data reached the target.
    enum Placed {
        Reflinked,
        Copied,
    }

    struct Materializer<'a> {
        layers: &'a [&'a Path],
        target: &'a Path,
        root: OwnedFd,
        as_root: bool,
        /// Per layer: whether `FICLONE` (`fclonefileat` on macOS) and `copy_file_range` are
        /// still worth trying.
        #[cfg_attr(
            not(any(target_os = "linux", target_vendor = "apple")),
            allow(dead_code, reason = "only Linux and macOS clone files")
        )]
        reflink: Vec<bool>,
        #[cfg_attr(
            not(target_os = "linux"),
            allow(dead_code, reason = "only Linux clones or copies in the kernel")
        )]
        copy_range: Vec<bool>,
        /// Manifest entries of the names materialised from each multiply-linked layer inode
        /// (layer, dev, ino): later names link to the first.
        links: HashMap<(usize, u64, u64), Vec<usize>>,
        entries: Vec<ManifestEntry>,
        report: MaterializeReport,
        buf: Vec<u8>,
    }

    pub(super) fn materialize(
        layers: &[&Path],
        target: &Path,
    ) -> Result<(Manifest, MaterializeReport)> {
        let root = prepare_target(target)?;
        let mut sources = Vec::with_capacity(layers.len());
        for (layer, path) in layers.iter().enumerate().rev() {
            sources.push(Source {
                layer,
                fd: open_root(path)?,
            });
        }
        let out = root.try_clone().map_err(|e| Error::Io {
            op: "open the directory",
            path: target.to_path_buf(),
            source: e,
        })?;
        let mut m = Materializer {
            layers,
            target,
            root,
            as_root: rustix::process::geteuid().is_root(),
            reflink: vec![true; layers.len()],
            copy_range: vec![true; layers.len()],
            links: HashMap::new(),
            entries: Vec::new(),
            report: MaterializeReport::default(),
            buf: Vec::new(),
        };
        let top = match sources.first() {
            Some(src) => {
                let st =
                    rustix::fs::fstat(&src.fd).map_err(io_err("stat", layers[src.layer], b""))?;
                m.set_owner_and_xattrs(src, &out, &st, b"")?;
                Some(st)
            }
            None => None,
        };
        m.merge_dir(sources, &out, &mut Vec::new())?;
        // The root goes last: its new ctime, on the filesystem's clock, is the manifest's time.
        let times = match &top {
            Some(st) => {
                rustix::fs::fchmod(&out, perms(st)).map_err(io_err(
                    "set the mode of",
                    target,
                    b"",
                ))?;
                times_of(st)
            }
            None => {
                let now = Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                };
                Timestamps {
                    last_access: now,
                    last_modification: now,
                }
            }
        };
        // Return only once the filesystem's clock has passed every recorded ctime, so any
        // later change gives its entry a ctime the manifest cannot hold. The root's ctime,
        // set by this futimens, reads that clock.
        let newest = m.entries.iter().map(|e| e.stat.ctime).max();
        let deadline = Instant::now() + CLOCK_WAIT_MAX;
        let taken = loop {
            rustix::fs::futimens(&out, &times).map_err(io_err("set the times of", target, b""))?;
            let st = rustix::fs::fstat(&out).map_err(io_err("stat", target, b""))?;
            let now = entry_stat(&st).ctime;
            if newest.is_none_or(|c| now > c) || Instant::now() >= deadline {
                break now;
            }
            std::thread::sleep(CLOCK_POLL);
        };
        m.report.entries = m.entries.len() as u64;
        Ok((Manifest::new(taken, m.entries), m.report))
    }

    /// Creates the target or checks that it is an empty directory, and makes it writable by
    /// us alone until the end (its final mode comes from the top layer).
    fn prepare_target(target: &Path) -> Result<OwnedFd> {
        match rustix::fs::mkdir(target, owner_only(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err("create the directory", target, b"")(e)),
        }
        let root = rustix::fs::openat(
            CWD,
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => Error::TargetNotEmpty {
                path: target.to_path_buf(),
            },
            e => io_err("open the directory", target, b"")(e),
        })?;
        if !list(&root).map_err(io_err("list", target, b""))?.is_empty() {
            return Err(Error::TargetNotEmpty {
                path: target.to_path_buf(),
            });
        }
        rustix::fs::fchmod(&root, owner_only(0o700)).map_err(io_err(
            "set the mode of",
            target,
            b"",
        ))?;
        Ok(root)
    }

    impl Materializer<'_> {
        /// Merges one directory: `sources` are the layers contributing to it, top-first;
        /// `out` is its copy in the target and `prefix` its path.
        fn merge_dir(
            &mut self,
            mut sources: Vec<Source>,
            out: &OwnedFd,
            prefix: &mut Vec<u8>,
        ) -> Result<()> {
            let mut picker = Picker::default();
            let mut used = sources.len();
            for (pos, src) in sources.iter().enumerate() {
                let base = self.layers[src.layer];
                let opaque = overlay_opaque(&src.fd).map_err(io_err(
                    "read the extended attributes of",
                    base,
                    prefix,
                ))?;
                let mut entries = Vec::new();
                for (name, ft) in list(&src.fd).map_err(io_err("list", base, prefix))? {
                    let kind = match ft {
                        _ if name.starts_with(WHITEOUT_PREFIX) => Kind::Other,
                        FileType::Directory => Kind::Dir,
                        // Only a stat tells an overlay whiteout (rdev 0/0) from a device.
                        FileType::CharacterDevice | FileType::Unknown => {
                            let st = rustix::fs::statat(
                                &src.fd,
                                name.as_slice(),
                                AtFlags::SYMLINK_NOFOLLOW,
                            )
                            .map_err(|e| io_err("stat", base, &child_path(prefix, &name))(e))?;
                            match FileType::from_raw_mode(st.st_mode) {
                                FileType::CharacterDevice if st.st_rdev == 0 => Kind::Whiteout,
                                FileType::Directory => Kind::Dir,
                                _ => Kind::Other,
                            }
                        }
                        _ => Kind::Other,
                    };
                    entries.push((name, kind));
                }
                let hides_below =
                    picker
                        .add_layer(pos, opaque, entries)
                        .map_err(|name| Error::BadWhiteout {
                            path: join(base, &child_path(prefix, &name)),
                        })?;
                if hides_below {
                    used = pos + 1;
                    break;
                }
            }
            // Handles of layers below an opaque one are not needed any more.
            sources.truncate(used);

            for (name, pick) in picker.picks {
                let len = prefix.len();
                if !prefix.is_empty() {
                    prefix.push(b'/');
                }
                prefix.extend_from_slice(&name);
                match pick {
                    Pick::Hidden => {}
                    Pick::Leaf(pos) => self.leaf(&sources[pos], &name, out, prefix)?,
                    Pick::Dir { from, .. } => self.dir(&sources, &from, &name, out, prefix)?,
                }
                prefix.truncate(len);
            }
            Ok(())
        }

        fn dir(
            &mut self,
            parents: &[Source],
            from: &[usize],
            name: &[u8],
            out: &OwnedFd,
            path: &mut Vec<u8>,
        ) -> Result<()> {
            let target = self.target;
            let mut children = Vec::with_capacity(from.len());
            for &pos in from {
                let layer = parents[pos].layer;
                let base = self.layers[layer];
                let fd = rustix::fs::openat(&parents[pos].fd, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| match e {
                        Errno::NOTDIR | Errno::LOOP | Errno::NOENT => Error::LayerChanged {
                            path: join(base, path),
                        },
                        e => io_err("open", base, path)(e),
                    })?;
                children.push(Source { layer, fd });
            }
            let top = &children[0];
            let st =
                rustix::fs::fstat(&top.fd).map_err(io_err("stat", self.layers[top.layer], path))?;
            // Writable by us until its contents are in; its own mode comes last.
            rustix::fs::mkdirat(out, name, owner_only(0o700)).map_err(io_err(
                "create the directory",
                target,
                path,
            ))?;
            let dir = rustix::fs::openat(out, name, DIR_FLAGS, Mode::empty())
                .map_err(io_err("open", target, path))?;
            self.set_owner_and_xattrs(top, &dir, &st, path)?;
            let index = self.entries.len();
            self.entries.push(ManifestEntry {
                path: path.clone(),
                stat: EntryStat::default(),
            });
            self.merge_dir(children, &dir, path)?;
            rustix::fs::fchmod(&dir, perms(&st)).map_err(io_err(
                "set the mode of",
                target,
                path,
            ))?;
            rustix::fs::futimens(&dir, &times_of(&st)).map_err(io_err(
                "set the times of",
                target,
                path,
            ))?;
            let done = rustix::fs::fstat(&dir).map_err(io_err("stat", target, path))?;
            self.entries[index].stat = entry_stat(&done);
            Ok(())
        }

        /// Owner first (chown clears setuid bits and file capabilities), then xattrs.
        fn set_owner_and_xattrs(
            &self,
            src: &Source,
            dst: &OwnedFd,
            st: &Stat,
            path: &[u8],
        ) -> Result<()> {
            if self.as_root {
                rustix::fs::fchown(
                    dst,
                    Some(Uid::from_raw(st.st_uid)),
                    Some(Gid::from_raw(st.st_gid)),
                )
                .map_err(io_err("set the owner of", self.target, path))?;
            }
            copy_xattrs(&src.fd, dst, self.as_root).map_err(io_err(
                "copy the extended attributes of",
                self.layers[src.layer],
                path,
            ))
        }

        fn leaf(&mut self, src: &Source, name: &[u8], out: &OwnedFd, path: &[u8]) -> Result<()> {
            let st = rustix::fs::statat(&src.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err("stat", self.layers[src.layer], path))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => self.file(src, name, &st, out, path),
                FileType::Symlink => {
                    let link = rustix::fs::readlinkat(&src.fd, name, Vec::new())
                        .map_err(io_err("read the symlink", self.layers[src.layer], path))?;
                    rustix::fs::symlinkat(link.as_c_str(), out, name).map_err(io_err(
                        "create the symlink",
                        self.target,
                        path,
                    ))?;
                    self.finish_at(out, name, &st, path, false)
                }
                ft @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                    let dev = if ft == FileType::Fifo { 0 } else { st.st_rdev };
                    make_node(out, name, ft, dev).map_err(|e| match e {
                        Errno::NOSYS if !cfg!(target_os = "linux") => Error::Unsupported {
                            what: "creating device nodes and fifos",
                            path: join(self.target, path),
                        },
                        e => io_err("create the node", self.target, path)(e),
                    })?;
                    self.finish_at(out, name, &st, path, true)
                }
                FileType::Directory => Err(Error::LayerChanged {
                    path: join(self.layers[src.layer], path),
                }),
                // Sockets cannot travel in a layer; like GNU tar, leave them out.
                _ => Ok(()),
            }
        }

        fn record(&mut self, path: &[u8], st: &Stat) -> usize {
            self.entries.push(ManifestEntry {
                path: path.to_vec(),
                stat: entry_stat(st),
            });
            self.entries.len() - 1
        }

        #[allow(
            clippy::unnecessary_cast,
            reason = "stat field types differ between Unix platforms"
        )]
        fn file(
            &mut self,
            src: &Source,
            name: &[u8],
            st: &Stat,
            out: &OwnedFd,
            path: &[u8],
        ) -> Result<()> {
            let (target, base) = (self.target, self.layers[src.layer]);
            let key = link_key(src.layer, st);
            if let Some(key) = key
                && self.links.contains_key(&key)
            {
                return self.hardlink(key, name, out, path);
            }
            let from = rustix::fs::openat(
                &src.fd,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            )
            .map_err(io_err("open", base, path))?;
            let src_file = Source {
                layer: src.layer,
                fd: from,
            };
            let size = st.st_size as u64;
            let (to, placed, bytes) = match self.clone_file(&src_file, out, name, size, path)? {
                Some(to) => (to, Placed::Reflinked, size),
                None => {
                    // Owner-writable until the end, so xattrs can be set whatever the final
                    // mode.
                    let to = rustix::fs::openat(
                        out,
                        name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        owner_only(0o600),
                    )
                    .map_err(io_err("create", target, path))?;
                    let (placed, bytes) = self.copy_data(&src_file, &to, size, path)?;
                    (to, placed, bytes)
                }
            };
            match placed {
                Placed::Reflinked => self.report.reflinked += 1,
                Placed::Copied => self.report.copied += 1,
            }
            self.report.bytes += bytes;
            self.set_owner_and_xattrs(&src_file, &to, st, path)?;
            rustix::fs::fchmod(&to, perms(st)).map_err(io_err("set the mode of", target, path))?;
            rustix::fs::futimens(&to, &times_of(st)).map_err(io_err(
                "set the times of",
                target,
                path,
            ))?;
            let done = rustix::fs::fstat(&to).map_err(io_err("stat", target, path))?;
            let index = self.record(path, &done);
            if let Some(key) = key {
                self.links.insert(key, vec![index]);
            }
            Ok(())
        }

        /// Links `name` to the copy already made of the same layer inode.
        fn hardlink(
            &mut self,
            key: (usize, u64, u64),
            name: &[u8],
            out: &OwnedFd,
            path: &[u8],
        ) -> Result<()> {
            let target = self.target;
            let first = self.links[&key][0];
            let first_path = self.entries[first].path.clone();
            let (parent, first_name) = split_parent(&first_path);
            let parent_fd = self.open_target_dir(parent)?;
            rustix::fs::linkat(&parent_fd, first_name, out, name, AtFlags::empty())
                .map_err(io_err("create the hard link", target, path))?;
            let st = rustix::fs::statat(out, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err("stat", target, path))?;
            let index = self.record(path, &st);
            // Linking changed the inode's ctime: every name of it must record the new one.
            let names = self.links.get_mut(&key).expect("checked by the caller");
            names.push(index);
            for &i in names.iter() {
                self.entries[i].stat = entry_stat(&st);
            }
            self.report.hardlinked += 1;
            Ok(())
        }

        /// A directory of the target, reached from the root one component at a time.
        fn open_target_dir(&self, rel: &[u8]) -> Result<OwnedFd> {
            let mut fd = self.root.try_clone().map_err(|e| Error::Io {
                op: "open",
                path: self.target.to_path_buf(),
                source: e,
            })?;
            if !rel.is_empty() {
                for component in rel.split(|&b| b == b'/') {
                    fd = rustix::fs::openat(&fd, component, DIR_FLAGS, Mode::empty())
                        .map_err(io_err("open", self.target, rel))?;
                }
            }
            Ok(fd)
        }

        /// macOS: creates `name` in `out` as a clone of `from` (`fclonefileat`, APFS), opened
        /// for writing its metadata; `None` where the filesystem cannot clone, and the caller
        /// copies. Elsewhere cloning needs the file created first (see `copy_data`).
        #[cfg(target_vendor = "apple")]
        fn clone_file(
            &mut self,
            from: &Source,
            out: &OwnedFd,
            name: &[u8],
            size: u64,
            path: &[u8],
        ) -> Result<Option<OwnedFd>> {
            let target = self.target;
            if size == 0 || !self.reflink[from.layer] {
                return Ok(None);
            }
            let flags = rustix::fs::CloneFlags::NOFOLLOW | rustix::fs::CloneFlags::NOOWNERCOPY;
            match rustix::fs::fclonefileat(&from.fd, out, name, flags) {
                Ok(()) => {}
                // Not APFS, or another volume: stop asking for this layer.
                Err(Errno::NOTSUP | Errno::XDEV | Errno::NOSYS) => {
                    self.reflink[from.layer] = false;
                    return Ok(None);
                }
                Err(e) => return Err(io_err("clone", target, path)(e)),
            }
            // The clone has the layer file's mode, maybe read-only: writable by us until the
            // end, like a copy. It is our fresh regular file, so chmodat cannot be misled.
            rustix::fs::chmodat(out, name, owner_only(0o600), AtFlags::empty()).map_err(io_err(
                "set the mode of",
                target,
                path,
            ))?;
            let to = rustix::fs::openat(
                out,
                name,
                OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err("open", target, path))?;
            Ok(Some(to))
        }

        #[cfg(not(target_vendor = "apple"))]
        #[allow(
            clippy::unnecessary_wraps,
            clippy::unused_self,
            reason = "the same signature as the macOS variant"
        )]
        fn clone_file(
            &mut self,
            _from: &Source,
            _out: &OwnedFd,
            _name: &[u8],
            _size: u64,
            _path: &[u8],
        ) -> Result<Option<OwnedFd>> {
            Ok(None)
        }

        /// Puts the data of `from` into `to`: a reflink, else an in-kernel copy, else a copy
        /// through a buffer. Returns how, and the bytes placed.
        fn copy_data(
            &mut self,
            from: &Source,
            to: &OwnedFd,
            size: u64,
            path: &[u8],
        ) -> Result<(Placed, u64)> {
            let (target, base) = (self.target, self.layers[from.layer]);
            if size == 0 {
                return Ok((Placed::Copied, 0));
            }
            #[cfg(target_os = "linux")]
            {
                let layer = from.layer;
                if self.reflink[layer] {
                    match rustix::fs::ioctl_ficlone(to, &from.fd) {
                        Ok(()) => return Ok((Placed::Reflinked, size)),
                        // The filesystems cannot share extents: stop asking for this layer.
                        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::NOTTY | Errno::NOSYS) => {
                            self.reflink[layer] = false;
                        }
                        // Only this file cannot be cloned (btrfs: different nodatacow flags).
                        Err(Errno::INVAL) => {}
                        Err(e) => return Err(io_err("clone", target, path)(e)),
                    }
                }
                if self.copy_range[layer] {
                    let mut done = 0u64;
                    loop {
                        match rustix::fs::copy_file_range(&from.fd, None, to, None, COPY_CHUNK) {
                            Ok(0) => return Ok((Placed::Copied, done)),
                            Ok(n) => done += n as u64,
                            Err(Errno::INTR) => {}
                            Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP) if done == 0 => {
                                self.copy_range[layer] = false;
                                break;
                            }
                            Err(Errno::INVAL) if done == 0 => break,
                            Err(e) => return Err(io_err("copy", target, path)(e)),
                        }
                    }
                }
            }
            if self.buf.is_empty() {
                self.buf = vec![0; 256 << 10];
            }
            let dup = |fd: &OwnedFd, op: &'static str, base: &Path| {
                fd.try_clone().map(File::from).map_err(|e| Error::Io {
                    op,
                    path: join(base, path),
                    source: e,
                })
            };
            let mut reader = dup(&from.fd, "read", base)?;
            let mut writer = dup(to, "write", target)?;
            let mut done = 0u64;
            loop {
                let n = match reader.read(&mut self.buf) {
                    Ok(0) => return Ok((Placed::Copied, done)),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Error::Io {
                            op: "read",
                            path: join(base, path),
                            source: e,
                        });
                    }
                };
                writer.write_all(&self.buf[..n]).map_err(|e| Error::Io {
                    op: "write",
                    path: join(target, path),
                    source: e,
                })?;
                done += n as u64;
            }
        }

        /// Owner, mode (not for symlinks) and times of an entry that has no handle of its
        /// own, then its stat for the manifest.
        fn finish_at(
            &mut self,
            out: &OwnedFd,
            name: &[u8],
            st: &Stat,
            path: &[u8],
            chmod: bool,
        ) -> Result<()> {
            let target = self.target;
            if self.as_root {
                rustix::fs::chownat(
                    out,
                    name,
                    Some(Uid::from_raw(st.st_uid)),
                    Some(Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err("set the owner of", target, path))?;
            }
            if chmod {
                // We just created this device or fifo here; chmodat cannot follow it anywhere.
                rustix::fs::chmodat(out, name, perms(st), AtFlags::empty()).map_err(io_err(
                    "set the mode of",
                    target,
                    path,
                ))?;
            }
            rustix::fs::utimensat(out, name, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err("set the times of", target, path))?;
            let done = rustix::fs::statat(out, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err("stat", target, path))?;
            self.record(path, &done);
            Ok(())
        }
    }

    pub(super) fn manifest_of(dir: &Path) -> Result<Manifest> {
        let root = open_root(dir)?;
        let root_stat = rustix::fs::fstat(&root).map_err(io_err("stat", dir, b""))?;
        let taken = racy_bound(&entry_stat(&root_stat));
        let root = FdDir(root);
        let mut entries = Vec::new();
        collect(dir, &root, &mut Vec::new(), &mut entries)?;
        // As in a checkout, return once the filesystem's clock has surely passed every
        // recorded ctime; nothing may be written here, so the system clock stands in for it.
        if let Some(newest) = entries.iter().map(|e| e.stat.ctime).max() {
            let deadline = Instant::now() + CLOCK_WAIT_MAX;
            while racy_bound(&entry_stat(&root_stat)) <= newest && Instant::now() < deadline {
                std::thread::sleep(CLOCK_POLL);
            }
        }
        Ok(Manifest::new(taken, entries))
    }

    /// The system clock now, moved back by the coarse clock's lag, and to a whole second when
    /// the filesystem seems to keep only seconds (the root's times have no nanoseconds).
    fn racy_bound(root: &EntryStat) -> Timestamp {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(COARSE_CLOCK_SLACK);
        Timestamp {
            sec: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            nsec: if root.ctime.nsec == 0 && root.mtime.nsec == 0 {
                0
            } else {
                now.subsec_nanos()
            },
        }
    }

    pub(super) fn diff(dir: &Path, manifest: &Manifest) -> Result<Vec<Change>> {
        diff_walk(dir, &FdDir(open_root(dir)?), manifest)
    }

    /// A directory reached through a handle.
    struct FdDir(OwnedFd);

    impl WalkDir for FdDir {
        fn names(&self) -> std::io::Result<Vec<Vec<u8>>> {
            Ok(list(&self.0)?.into_iter().map(|(n, _)| n).collect())
        }

        fn stat(&self, name: &[u8]) -> std::io::Result<Option<EntryStat>> {
            match rustix::fs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Ok(Some(entry_stat(&st))),
                Err(Errno::NOENT) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }

        fn open(&self, name: &[u8]) -> std::io::Result<Option<FdDir>> {
            match rustix::fs::openat(&self.0, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Ok(Some(FdDir(fd))),
                Err(Errno::NOENT) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

#[cfg(not(any(unix, windows)))]
mod imp {
    //! Checkout and diff are implemented for Unix and Windows only.
    use super::*;

    pub(super) fn materialize(
        _layers: &[&Path],
        target: &Path,
    ) -> Result<(Manifest, MaterializeReport)> {
        Err(Error::Unsupported {
            what: "a portable checkout",
            path: target.to_path_buf(),
        })
    }

    pub(super) fn diff(dir: &Path, _manifest: &Manifest) -> Result<Vec<Change>> {
        Err(Error::Unsupported {
            what: "diffing a checkout",
            path: dir.to_path_buf(),
        })
    }

    pub(super) fn manifest_of(dir: &Path) -> Result<Manifest> {
        Err(Error::Unsupported {
            what: "taking a manifest",
            path: dir.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::rc::Rc;
    use std::time::{Duration, SystemTime};

    use strata_cas::ChangeKind;

    use super::*;

    fn listing(entries: &[(&str, Kind)]) -> Vec<(Vec<u8>, Kind)> {
        entries
            .iter()
            .map(|(n, k)| (n.as_bytes().to_vec(), *k))
            .collect()
    }

    fn picks(p: &Picker) -> Vec<(String, &Pick)> {
        p.picks
            .iter()
            .map(|(n, pick)| (String::from_utf8_lossy(n).into_owned(), pick))
            .collect()
    }

    #[test]
    fn the_picker_decides_each_name_top_layer_first() {
        use Kind::{Dir, Other, Whiteout};
        let mut p = Picker::default();
        let top = listing(&[
            ("a", Other),
            ("d", Dir),
            ("e", Other),
            (".wh.b", Other),
            ("c", Whiteout),
            ("g", Dir),
        ]);
        assert_eq!(p.add_layer(0, false, top), Ok(false));
        let middle = listing(&[
            ("a", Other),
            ("b", Other),
            ("c", Dir),
            ("d", Dir),
            ("e", Dir),
            ("f", Other),
            (".wh.g", Other),
        ]);
        assert_eq!(p.add_layer(1, false, middle), Ok(false));
        // `d` merges with lower layers; `g` was whited out below its top directory, so
        // nothing further down shows through it.
        let bottom = listing(&[("d", Dir), ("g", Dir), ("h", Other)]);
        assert_eq!(p.add_layer(2, false, bottom), Ok(false));
        let dir = |from: Vec<usize>, closed| Pick::Dir { from, closed };
        assert_eq!(
            picks(&p),
            [
                ("a".to_owned(), &Pick::Leaf(0)),
                ("b".to_owned(), &Pick::Hidden),
                ("c".to_owned(), &Pick::Hidden),
                ("d".to_owned(), &dir(vec![0, 1, 2], false)),
                ("e".to_owned(), &Pick::Leaf(0)),
                ("f".to_owned(), &Pick::Leaf(1)),
                ("g".to_owned(), &dir(vec![0], true)),
                ("h".to_owned(), &Pick::Leaf(2)),
            ]
        );
    }

    #[test]
    fn opaque_directories_hide_the_layers_below_and_bad_whiteouts_are_named() {
        let mut p = Picker::default();
        let oci = listing(&[(".wh..wh..opq", Kind::Other), ("x", Kind::Other)]);
        assert_eq!(p.add_layer(0, false, oci), Ok(true));
        assert_eq!(p.add_layer(0, true, Vec::new()), Ok(true));
        let bad = listing(&[(".wh.", Kind::Other)]);
        assert_eq!(
            Picker::default().add_layer(0, false, bad),
            Err(b".wh.".to_vec())
        );
    }

    /// An in-memory tree for the walkers: path → stat.
    #[derive(Clone)]
    struct FakeDir {
        tree: Rc<BTreeMap<Vec<u8>, EntryStat>>,
        path: Vec<u8>,
    }

    impl WalkDir for FakeDir {
        fn names(&self) -> io::Result<Vec<Vec<u8>>> {
            // Unsorted on purpose: the walkers sort.
            let mut names: Vec<Vec<u8>> = self
                .tree
                .keys()
                .filter(|p| strata_cas::tar::split_parent(p).0 == self.path.as_slice())
                .map(|p| strata_cas::tar::split_parent(p).1.to_vec())
                .collect();
            names.reverse();
            Ok(names)
        }

        fn stat(&self, name: &[u8]) -> io::Result<Option<EntryStat>> {
            Ok(self.tree.get(&child_path(&self.path, name)).copied())
        }

        fn open(&self, name: &[u8]) -> io::Result<Option<FakeDir>> {
            Ok(Some(FakeDir {
                tree: self.tree.clone(),
                path: child_path(&self.path, name),
            }))
        }
    }

    fn stat(dir: bool, ino: u64, size: u64, mtime: i64) -> EntryStat {
        let t = Timestamp {
            sec: mtime,
            nsec: 0,
        };
        EntryStat {
            dev: 1,
            ino,
            size,
            mtime: t,
            ctime: t,
            mode: if dir { S_IFDIR | 0o755 } else { 0o100_644 },
            uid: 0,
            gid: 0,
        }
    }

    fn fake(entries: &[(&str, EntryStat)]) -> FakeDir {
        FakeDir {
            tree: Rc::new(
                entries
                    .iter()
                    .map(|(p, s)| (p.as_bytes().to_vec(), *s))
                    .collect(),
            ),
            path: Vec::new(),
        }
    }

    fn changes(list: &[Change]) -> Vec<(String, ChangeKind)> {
        list.iter()
            .map(|c| (String::from_utf8_lossy(&c.path).into_owned(), c.kind))
            .collect()
    }

    #[test]
    fn a_stat_walk_reports_additions_changes_and_topmost_deletions() {
        let before = fake(&[
            ("bin", stat(true, 2, 0, 100)),
            ("bin/tool", stat(false, 3, 10, 100)),
            ("etc", stat(true, 4, 0, 100)),
            ("etc/motd", stat(false, 5, 6, 100)),
            ("etc/same", stat(false, 6, 6, 100)),
            ("gone", stat(true, 7, 0, 100)),
            ("gone/deep", stat(true, 8, 0, 100)),
            ("gone/deep/file", stat(false, 9, 1, 100)),
            ("lib", stat(true, 10, 0, 100)),
            ("lib/x", stat(false, 11, 1, 100)),
            ("racy", stat(false, 12, 1, 500)),
        ]);
        let taken = Timestamp { sec: 500, nsec: 0 };
        let mut entries = Vec::new();
        collect(Path::new("/t"), &before, &mut Vec::new(), &mut entries).unwrap();
        let manifest = Manifest::new(taken, entries);
        assert_eq!(manifest.len(), 11);

        let after = fake(&[
            ("bin", stat(true, 2, 0, 100)),
            ("bin/tool", stat(false, 3, 10, 100)),
            ("etc", stat(true, 4, 0, 600)),
            ("etc/motd", stat(false, 5, 7, 600)),
            ("etc/new", stat(false, 13, 1, 600)),
            ("etc/same", stat(false, 14, 6, 100)),
            // A directory replaced by a file: its recorded children go with it.
            ("lib", stat(false, 15, 3, 600)),
            ("racy", stat(false, 12, 1, 500)),
        ]);
        let got = diff_walk(Path::new("/t"), &after, &manifest).unwrap();
        assert_eq!(
            changes(&got),
            [
                ("etc".to_owned(), ChangeKind::Modified),
                ("etc/motd".to_owned(), ChangeKind::Modified),
                ("etc/new".to_owned(), ChangeKind::Added),
                // Same size and mtime, another inode (replaced by a rename).
                ("etc/same".to_owned(), ChangeKind::Modified),
                ("gone".to_owned(), ChangeKind::Deleted),
                ("lib".to_owned(), ChangeKind::Modified),
                // Recorded with an mtime not older than the manifest: it may have changed
                // within the same tick, so it counts as changed.
                ("racy".to_owned(), ChangeKind::Modified),
            ]
        );
    }

    #[test]
    fn windows_times_and_attributes_map_to_unix_stat_fields() {
        assert_eq!(
            timestamp_from_filetime(116_444_736_000_000_000),
            Timestamp { sec: 0, nsec: 0 }
        );
        assert_eq!(
            timestamp_from_filetime(116_444_736_000_000_000 + 15_000_000 + 7),
            Timestamp {
                sec: 1,
                nsec: 500_000_700
            }
        );
        // Before 1970: the seconds go down, the nanoseconds stay positive.
        assert_eq!(
            timestamp_from_filetime(116_444_736_000_000_000 - 1),
            Timestamp {
                sec: -1,
                nsec: 999_999_900
            }
        );
        assert_eq!(mode_from_attributes(0x20, false, false), 0o100_644);
        assert_eq!(mode_from_attributes(0x21, false, false), 0o100_444);
        assert_eq!(mode_from_attributes(0x10, true, false), 0o040_755);
        assert_eq!(mode_from_attributes(0x411, true, true), 0o120_777);
    }

    /// Sets `path`'s modification time an hour back, so that nothing in a test is racy.
    fn age(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        #[cfg(unix)]
        let file = fs::File::open(path).unwrap();
        #[cfg(windows)]
        let file = {
            use std::os::windows::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .custom_flags(0x0200_0000) // FILE_FLAG_BACKUP_SEMANTICS: directories too
                .open(path)
                .unwrap()
        };
        file.set_modified(old).unwrap();
    }

    fn write_aged(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        age(path);
    }

    /// Runs on every platform with an implementation (Windows under Wine in CI).
    #[test]
    fn a_stack_of_real_layers_materialises_and_diffs() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, top, out) = (
            tmp.path().join("base"),
            tmp.path().join("top"),
            tmp.path().join("out"),
        );
        write_aged(&base.join("a.txt"), "base");
        write_aged(&base.join("dir/x"), "x");
        write_aged(&base.join("gone.txt"), "gone");
        write_aged(&top.join("a.txt"), "top");
        write_aged(&top.join(".wh.gone.txt"), "");
        write_aged(&top.join("dir/y"), "y");
        for dir in [&base.join("dir"), &base, &top.join("dir"), &top] {
            age(dir);
        }

        let (manifest, report) = materialize(&[&base, &top], &out).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(report.reflinked + report.copied, 3);
        let read = |p: &str| fs::read_to_string(out.join(p)).unwrap();
        assert_eq!(
            (read("a.txt"), read("dir/x"), read("dir/y")),
            ("top".into(), "x".into(), "y".into())
        );
        assert!(!out.join("gone.txt").exists() && !out.join(".wh.gone.txt").exists());
        let paths: Vec<&[u8]> = manifest.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, [&b"a.txt"[..], b"dir", b"dir/x", b"dir/y"]);
        assert_eq!(diff(&out, &manifest).unwrap(), Vec::new());

        fs::remove_file(out.join("a.txt")).unwrap();
        fs::write(out.join("dir/x"), "changed").unwrap();
        fs::write(out.join("new.txt"), "new").unwrap();
        assert_eq!(
            changes(&diff(&out, &manifest).unwrap()),
            [
                ("a.txt".to_owned(), ChangeKind::Deleted),
                ("dir/x".to_owned(), ChangeKind::Modified),
                ("new.txt".to_owned(), ChangeKind::Added),
            ]
        );
        // Just written: racy against a manifest taken now, unless made older.
        let again = manifest_of(&out).unwrap();
        assert_eq!(diff(&out, &again).unwrap().len(), 2);
        age(&out.join("dir/x"));
        age(&out.join("new.txt"));
        let again = manifest_of(&out).unwrap();
        assert_eq!(again.len(), 4);
        assert_eq!(diff(&out, &again).unwrap(), Vec::new());
    }
}
