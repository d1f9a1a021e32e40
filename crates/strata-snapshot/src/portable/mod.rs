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
//! [`diff`] stats the whole tree again, a few directories at a time on parallel threads
//! (`walk.rs`), and compares the result with the manifest in one pass, both being in
//! depth-first byte order: it costs one `lstat` per entry plus one listing per directory,
//! and never reads data.
//! Two rules keep a stat walk from missing a change made in the same timestamp tick as the
//! manifest: a manifest is only returned once the filesystem's clock has passed every ctime
//! it records (so any later change, even one that restores size and mtime, moves the ctime),
//! and, as in git's index, an entry whose recorded mtime is not older than the manifest
//! ("racy") counts as changed.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_cas::Change;

mod diff;
mod manifest;
#[cfg(unix)]
mod unix;
mod walk;
#[cfg(windows)]
mod windows;

use diff::diff_walk;
pub use manifest::Manifest;
use manifest::ManifestEntry;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
use windows as imp;

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
    /// A manifest in the JSON form of the first version that does not parse.
    #[error("malformed manifest: {source}")]
    Manifest {
        /// What is wrong, naming the entry when one is at fault.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest in the binary form that is damaged or not one this version reads.
    #[error("malformed manifest at byte {offset}: {what}")]
    BadManifest {
        /// Where reading stopped.
        offset: usize,
        /// What is wrong, naming the entry when one is at fault.
        what: String,
    },
    /// A name that is not valid Unicode, which a manifest cannot record (Windows).
    #[error("{} is not valid Unicode: a portable checkout cannot record its name", path.display())]
    NotUnicode {
        /// The entry.
        path: PathBuf,
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

/// The manifest of a tree this process has just written (a checkout streamed from layer
/// blobs): like [`manifest_of`], but on Unix the root's times are set again, as
/// [`materialize`] does, to read the filesystem's own clock rather than waiting out a
/// margin on the system clock. The root must not change meanwhile.
pub fn manifest_of_written(dir: &Path) -> Result<Manifest> {
    imp::manifest_of_written(dir)
}

/// Whether the filesystem holding `dir` clones files (`FICLONE` on Linux, `clonefile` on
/// APFS, block cloning on ReFS), so that copying a tree costs no data; probed with two
/// small files in `dir`, removed again.
pub fn can_clone(dir: &Path) -> bool {
    imp::can_clone(dir)
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
trait WalkDir: Sized + Send + Sync {
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

    pub(super) fn manifest_of_written(dir: &Path) -> Result<Manifest> {
        manifest_of(dir)
    }

    pub(super) fn can_clone(_dir: &Path) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::sync::Arc;
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
        tree: Arc<BTreeMap<Vec<u8>, EntryStat>>,
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
            tree: Arc::new(
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
    fn a_parallel_walk_lists_a_wide_deep_tree_in_depth_first_byte_order() {
        // Names chosen so that byte order and depth-first order differ (`a/b` < `a.b`
        // in depth-first order, not in plain byte order).
        let mut entries = Vec::new();
        for i in 0..40 {
            let top = format!("d{i:02}");
            entries.push((top.clone(), stat(true, 1, 0, 1)));
            entries.push((format!("{top}.x"), stat(false, 2, 1, 1)));
            let mut deep = top.clone();
            for depth in 0..6 {
                deep = format!("{deep}/n{depth}");
                entries.push((deep.clone(), stat(true, 3, 0, 1)));
                entries.push((format!("{deep}-f"), stat(false, 4, 1, 1)));
            }
        }
        let refs: Vec<(&str, EntryStat)> = entries.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        let got = walk::entries(Path::new("/t"), fake(&refs)).unwrap();
        let mut want: Vec<Vec<u8>> = entries.iter().map(|(p, _)| p.as_bytes().to_vec()).collect();
        want.sort_by(|a, b| strata_cas::tar::path_order(a, b));
        let got: Vec<Vec<u8>> = got.into_iter().map(|e| e.path).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_walk_error_names_the_entry_and_stops_the_walk() {
        /// A tree whose `sub/bad` cannot be statted.
        #[derive(Clone)]
        struct Failing(FakeDir);
        impl WalkDir for Failing {
            fn names(&self) -> io::Result<Vec<Vec<u8>>> {
                self.0.names()
            }
            fn stat(&self, name: &[u8]) -> io::Result<Option<EntryStat>> {
                if self.0.path == b"sub" && name == b"bad" {
                    return Err(io::Error::from(io::ErrorKind::PermissionDenied));
                }
                self.0.stat(name)
            }
            fn open(&self, name: &[u8]) -> io::Result<Option<Self>> {
                Ok(self.0.open(name)?.map(Failing))
            }
        }
        let tree = fake(&[
            ("a", stat(true, 1, 0, 1)),
            ("a/x", stat(false, 2, 0, 1)),
            ("sub", stat(true, 3, 0, 1)),
            ("sub/bad", stat(false, 4, 0, 1)),
        ]);
        let err = walk::entries(Path::new("/t"), Failing(tree)).unwrap_err();
        let path = join(Path::new("/t"), b"sub/bad");
        assert_eq!(
            err.to_string(),
            format!("cannot stat {}: permission denied", path.display())
        );
    }

    #[test]
    fn a_comparison_reports_type_changes_and_changes_at_either_end() {
        let e = |p: &str, s: EntryStat| ManifestEntry {
            path: p.as_bytes().to_vec(),
            stat: s,
        };
        let taken = Timestamp { sec: 500, nsec: 0 };
        let old = [
            e("a", stat(false, 1, 1, 100)),
            e("b", stat(true, 2, 0, 100)),
            e("b/x", stat(false, 3, 1, 100)),
            e("c", stat(false, 4, 1, 100)),
            e("z", stat(true, 5, 0, 100)),
            e("z/y", stat(false, 6, 1, 100)),
        ];
        let now = [
            // `a`, a file, became a directory with an entry.
            e("a", stat(true, 7, 0, 600)),
            e("a/new", stat(false, 8, 1, 600)),
            // `b`, a directory, became a file: `b/x` goes with it unreported.
            e("b", stat(false, 9, 1, 600)),
            e("c", stat(false, 4, 1, 100)),
            // `z` and its entry are gone; `zz` is new, after everything recorded.
            e("zz", stat(false, 10, 1, 600)),
        ];
        assert_eq!(
            changes(&diff::compare(&old, &now, taken)),
            [
                ("a".to_owned(), ChangeKind::Modified),
                ("a/new".to_owned(), ChangeKind::Added),
                ("b".to_owned(), ChangeKind::Modified),
                ("z".to_owned(), ChangeKind::Deleted),
                ("zz".to_owned(), ChangeKind::Added),
            ]
        );
        assert!(changes(&diff::compare(&old, &old, taken)).is_empty());
        assert_eq!(diff::compare(&[], &now, taken).len(), now.len());
        assert_eq!(
            changes(&diff::compare(&old, &[], taken)),
            [
                ("a".to_owned(), ChangeKind::Deleted),
                ("b".to_owned(), ChangeKind::Deleted),
                ("c".to_owned(), ChangeKind::Deleted),
                ("z".to_owned(), ChangeKind::Deleted),
            ]
        );
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
        let entries = walk::entries(Path::new("/t"), before).unwrap();
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
        let got = diff_walk(Path::new("/t"), after, &manifest).unwrap();
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
