//! Overlayfs checkouts: mount a stack of unpacked layers under a fresh upper dir, find and
//! sweep overlay mounts, and read the upper dir back as the change list of the next layer.
//!
//! Mounts use the new mount API, one `lowerdir+` call per layer (Linux 6.8+), so the stack
//! depth is bounded only by overlayfs itself (500 layers), not by the one-page option string
//! of mount(2). `redirect_dir`, `metacopy` and `index` are off: the upper dir then describes
//! the whole diff by itself, in overlay format, and can be moved away after unmounting.
//! Mounts are `volatile` (Linux 5.10+): unmounting does not sync the upper filesystem, and
//! neither does an fsync in the sandbox. The engine flushes an upper dir once, when it
//! commits it; after a host crash, an upper dir of the previous boot cannot be trusted.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};
use strata_cas::{Change, ChangeKind};

/// The biggest option string mount(2) passes on: the kernel copies one page, and it must
/// hold the terminating NUL.
const MOUNT_DATA_MAX: usize = 4095;

/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One overlay mount: a stack of read-only layers, an upper dir that receives every change,
/// the work dir overlayfs needs on the upper's filesystem, and where to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer (empty for a fresh checkout).
    pub upper: PathBuf,
    /// An empty directory on the same filesystem as `upper`.
    pub work: PathBuf,
    /// The mount point (an existing directory).
    pub target: PathBuf,
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong mounting, unmounting or reading an upper dir. Every variant names the
/// path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A step of mounting failed.
    #[error(
        "cannot mount overlay on {}: {step} failed{}: {source}",
        target.display(),
        kernel_note(kernel)
    )]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// Which step ("fsopen", "fsconfig create", "move_mount", ...).
        step: &'static str,
        /// What the kernel logged about it, if anything.
        kernel: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused one of the directories.
    #[error(
        "cannot mount overlay on {}: the kernel rejected {option} {}{}: {source}",
        target.display(),
        path.display(),
        kernel_note(kernel)
    )]
    Layer {
        /// The mount point.
        target: PathBuf,
        /// The option (`lowerdir+`, `upperdir`, `workdir`).
        option: &'static str,
        /// The directory.
        path: PathBuf,
        /// What the kernel logged about it, if anything.
        kernel: String,
        #[source]
        source: io::Error,
    },
    /// A mount needs at least one lower layer.
    #[error("cannot mount overlay on {}: no lower layers given", target.display())]
    NoLowers {
        /// The mount point.
        target: PathBuf,
    },
    /// The kernel lacks `lowerdir+` and the stack does not fit in mount(2)'s options.
    #[error(
        "cannot mount overlay on {}: this kernel has no `lowerdir+` (linux 6.8 or later), and \
         the {layers} lower layers need a {len}-byte mount(2) option string, over its \
         {limit}-byte limit",
        target.display()
    )]
    OptionsTooLong {
        /// The mount point.
        target: PathBuf,
        /// How many lower layers were asked for.
        layers: usize,
        /// Bytes the option string would need.
        len: usize,
        /// What mount(2) accepts.
        limit: usize,
    },
    /// Unmounting failed.
    #[error("cannot unmount {}: {source}", target.display())]
    Unmount {
        /// The mount point.
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// There is no mount at the path to unmount.
    #[error("cannot unmount {}: it is not a mount point", target.display())]
    NotMounted {
        /// The path.
        target: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb phrase.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An upper dir entry uses an overlayfs feature strata mounts with off, so the upper dir
    /// alone does not describe the change.
    #[error(
        "upper dir entry {} carries `{attr}`: strata mounts with redirect_dir and metacopy off, \
         so this upper dir was not made by strata",
        path.display()
    )]
    ForeignUpper {
        /// The entry.
        path: PathBuf,
        /// The extended attribute found.
        attr: String,
    },
}

fn kernel_note(kernel: &str) -> String {
    if kernel.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {kernel})")
    }
}

fn io_err(op: &'static str, path: impl Into<PathBuf>, e: impl Into<io::Error>) -> Error {
    Error::Io {
        op,
        path: path.into(),
        source: e.into(),
    }
}

/// Whether overlay mounts can work here: running as root, with overlayfs in the kernel.
/// Checked once per process.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            return false;
        }
        let listed = std::fs::read_to_string("/proc/filesystems").is_ok_and(|list| {
            list.lines()
                .any(|line| line.split_whitespace().last() == Some("overlay"))
        });
        // A modular overlayfs is only listed once loaded; fsopen loads it on demand.
        listed || rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).is_ok()
    })
}

/// Mounts the overlay described by `spec` on `spec.target`.
pub fn mount(spec: &OverlayMount) -> Result<()> {
    if spec.lowers.is_empty() {
        return Err(Error::NoLowers {
            target: spec.target.clone(),
        });
    }
    match mount_new_api(spec)? {
        NewApi::Mounted => Ok(()),
        NewApi::Unavailable => mount_classic(spec),
    }
}

enum NewApi {
    Mounted,
    /// The kernel lacks the new mount API or `lowerdir+`: mount(2) may still do.
    Unavailable,
}

fn mount_new_api(spec: &OverlayMount) -> Result<NewApi> {
    let target = &spec.target;
    let failed = |step: &'static str, fs: Option<&OwnedFd>, e: Errno| Error::Mount {
        target: target.clone(),
        step,
        kernel: fs.map(kernel_log).unwrap_or_default(),
        source: e.into(),
    };
    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(Errno::NOSYS) => return Ok(NewApi::Unavailable),
        Err(e) => return Err(failed("fsopen", None, e)),
    };
    rustix::mount::fsconfig_set_string(&fs, "source", "strata")
        .map_err(|e| failed("setting the source", Some(&fs), e))?;
    let layer_failed = |option: &'static str, path: &Path, fs: &OwnedFd, e: Errno| Error::Layer {
        target: target.clone(),
        option,
        path: path.to_path_buf(),
        kernel: kernel_log(fs),
        source: e.into(),
    };
    for (i, lower) in spec.lowers.iter().enumerate() {
        // One path per call and no unescaping: any byte but NUL is fine here.
        match rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower.as_os_str()) {
            Ok(()) => {}
            // Linux 6.5 to 6.7 parse overlay options themselves but do not know `lowerdir+`;
            // the log tells that apart from a refused path.
            Err(Errno::INVAL) if i == 0 => {
                let kernel = kernel_log(&fs);
                if kernel.contains("Unknown parameter") {
                    return Ok(NewApi::Unavailable);
                }
                return Err(Error::Layer {
                    target: target.clone(),
                    option: "lowerdir+",
                    path: lower.clone(),
                    kernel,
                    source: Errno::INVAL.into(),
                });
            }
            Err(e) => return Err(layer_failed("lowerdir+", lower, &fs, e)),
        }
    }
    // Unlike `lowerdir+`, these two are unescaped by overlayfs, so backslashes are doubled.
    for (option, path) in [("upperdir", &spec.upper), ("workdir", &spec.work)] {
        rustix::mount::fsconfig_set_string(&fs, option, escape(path, b"\\").as_slice())
            .map_err(|e| layer_failed(option, path, &fs, e))?;
    }
    for (key, step) in [
        ("redirect_dir", "setting redirect_dir=off"),
        ("metacopy", "setting metacopy=off"),
        ("index", "setting index=off"),
    ] {
        rustix::mount::fsconfig_set_string(&fs, key, "off")
            .map_err(|e| failed(step, Some(&fs), e))?;
    }
    // `volatile`: no sync when unmounting (and fsync inside the sandbox returns at once).
    // A commit flushes the upper dir itself, once, together with the index (see the
    // engine's module docs); a mount that is never committed need not be flushed at all.
    rustix::mount::fsconfig_set_flag(&fs, "volatile")
        .map_err(|e| failed("setting volatile", Some(&fs), e))?;
    match rustix::mount::fsconfig_create(&fs) {
        Ok(()) => {}
        // Before 6.5 options are only collected by fsconfig and parsed here, so an unknown
        // `lowerdir+` surfaces now.
        Err(Errno::INVAL) if kernel_older_than(6, 5) => return Ok(NewApi::Unavailable),
        Err(e) => return Err(failed("fsconfig create", Some(&fs), e)),
    }
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| failed("fsmount", Some(&fs), e))?;
    // On failure the detached mount goes away with its descriptor.
    rustix::mount::move_mount(
        &mnt,
        "",
        CWD,
        target.as_path(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| failed("move_mount", None, e))?;
    Ok(NewApi::Mounted)
}

fn mount_classic(spec: &OverlayMount) -> Result<()> {
    // Overlayfs splits this string on ',' and the lower list on ':', honouring backslash
    // escapes, so any path survives once those three bytes are escaped.
    let special = b"\\:,";
    let mut data = b"lowerdir=".to_vec();
    for (i, lower) in spec.lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend(escape(lower, special));
    }
    data.extend_from_slice(b",upperdir=");
    data.extend(escape(&spec.upper, special));
    data.extend_from_slice(b",workdir=");
    data.extend(escape(&spec.work, special));
    data.extend_from_slice(b",redirect_dir=off,metacopy=off,index=off");
    // As in `mount_new_api`; overlayfs knows `volatile` since Linux 5.10.
    if !kernel_older_than(5, 10) {
        data.extend_from_slice(b",volatile");
    }
    if data.len() > MOUNT_DATA_MAX {
        return Err(Error::OptionsTooLong {
            target: spec.target.clone(),
            layers: spec.lowers.len(),
            len: data.len(),
            limit: MOUNT_DATA_MAX,
        });
    }
    let failed = |source: io::Error| Error::Mount {
        target: spec.target.clone(),
        step: "mount(2)",
        kernel: String::new(),
        source,
    };
    let data =
        CString::new(data).map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    rustix::mount::mount(
        "strata",
        spec.target.as_path(),
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| failed(e.into()))
}

/// `path` with a backslash before each byte of `special`.
fn escape(path: &Path, special: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.as_os_str().len());
    for &b in path.as_os_str().as_bytes() {
        if special.contains(&b) {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// What the kernel logged on a filesystem context, one message per read, joined.
fn kernel_log(fs: &OwnedFd) -> String {
    let mut messages = Vec::new();
    let mut buf = [0u8; 1024];
    // Stops at ENODATA once the log is empty; bounded in case of a chatty kernel.
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf[..]) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]);
                // Each message starts with its level: "e ", "w " or "i ".
                let text = text.get(2..).unwrap_or(&text).trim_end().to_owned();
                messages.push(text);
            }
            _ => break,
        }
    }
    messages.join("; ")
}

fn kernel_older_than(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found < (major, minor)
}

/// Unmounts the mount at `target`; fails if it stays busy.
pub fn unmount(target: &Path) -> Result<()> {
    // A process forked by another thread holds copies of every open descriptor, including
    // ones under this mount, until it execs: busy for a moment, then free. Wait that out
    // (100 ms at most), but not a process that really works in the mount.
    for _ in 0..20 {
        match unmount_with(target, UnmountFlags::NOFOLLOW) {
            Err(Error::Unmount { source, .. })
                if source.raw_os_error() == Some(Errno::BUSY.raw_os_error()) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
    unmount_with(target, UnmountFlags::NOFOLLOW)
}

/// Detaches the mount at `target` now and lets the kernel finish unmounting once it is no
/// longer busy (`MNT_DETACH`): for crash recovery and cleanup, where processes may linger.
pub fn unmount_detach(target: &Path) -> Result<()> {
    unmount_with(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
}

fn unmount_with(target: &Path, flags: UnmountFlags) -> Result<()> {
    match rustix::mount::unmount(target, flags) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) => Err(Error::NotMounted {
            target: target.to_path_buf(),
        }),
        Err(e) => Err(Error::Unmount {
            target: target.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Whether something is mounted exactly at `target` (after resolving symlinks; a missing
/// path is not mounted).
pub fn is_mounted(target: &Path) -> Result<bool> {
    let target = match std::fs::canonicalize(target) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("resolve", target, e)),
    };
    Ok(read_mountinfo()?.iter().any(|m| m.point == target))
}

/// Overlay mounts whose mount point is `dir` or below it, most recent first, so unmounting
/// them in order never meets a mount that still has another on top. A path mounted over
/// twice appears twice.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("resolve", dir, e)),
    };
    Ok(read_mountinfo()?
        .into_iter()
        .rev()
        .filter(|m| m.fstype == b"overlay" && m.point.starts_with(&dir))
        .map(|m| m.point)
        .collect())
}

struct MountInfo {
    point: PathBuf,
    fstype: Vec<u8>,
}

fn read_mountinfo() -> Result<Vec<MountInfo>> {
    let text = std::fs::read(MOUNTINFO).map_err(|e| io_err("read", MOUNTINFO, e))?;
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        // id parent dev root point options [optional fields...] - fstype source super-options
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let (Some(point), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == b"-"))
        else {
            continue;
        };
        let Some(fstype) = fields.get(dash + 1) else {
            continue;
        };
        out.push(MountInfo {
            point: PathBuf::from(OsString::from_vec(unescape_octal(point))),
            fstype: unescape_octal(fstype),
        });
    }
    Ok(out)
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// The changes an upper dir records, sorted like a depth-first walk with children in byte
/// order ([`strata_cas::tar::path_order`]): whiteouts (0/0 character devices) are
/// `Deleted`, opaque directories (`trusted.overlay.opaque=y`) `Opaque` (their contents
/// `Added`), everything else
/// `Modified`, directories included, since overlayfs copies a directory up before changing
/// anything inside it.
pub fn upper_changes(upper: &Path) -> Result<Vec<Change>> {
    let root = rustix::fs::openat(CWD, upper, dir_flags(), Mode::empty())
        .map_err(|e| io_err("open the upper dir", upper, e))?;
    let mut walk = UpperWalk {
        upper,
        changes: Vec::new(),
    };
    walk.dir(&root, &mut Vec::new(), ChangeKind::Modified)?;
    debug_assert!(
        walk.changes
            .is_sorted_by(|a, b| strata_cas::tar::path_order(&a.path, &b.path).is_le())
    );
    Ok(walk.changes)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

struct UpperWalk<'a> {
    upper: &'a Path,
    changes: Vec<Change>,
}

impl UpperWalk<'_> {
    fn full_path(&self, rel: &[u8]) -> PathBuf {
        self.upper.join(OsStr::from_bytes(rel))
    }

    /// Records the entries of `dir` (at `prefix`); `kind` is what a plain entry there is.
    fn dir(&mut self, dir: &OwnedFd, prefix: &mut Vec<u8>, kind: ChangeKind) -> Result<()> {
        let listing = Dir::read_from(dir).map_err(|e| io_err("list", self.full_path(prefix), e))?;
        let mut names = Vec::new();
        for item in listing {
            let item = item.map_err(|e| io_err("list", self.full_path(prefix), e))?;
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
            self.entry(dir, &name, prefix, kind)?;
            prefix.truncate(len);
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        path: &mut Vec<u8>,
        kind: ChangeKind,
    ) -> Result<()> {
        // Never follow: a symlink is an entry of its own. Whiteouts may share one inode
        // (overlayfs links them to a single whiteout), so nothing here goes by inode.
        let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("stat", self.full_path(path), e))?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type == FileType::CharacterDevice && stat.st_rdev == 0 {
            self.changes
                .push(Change::new(path.clone(), ChangeKind::Deleted));
            return Ok(());
        }
        if file_type != FileType::Directory {
            // xattr calls take no AT_SYMLINK_NOFOLLOW-style dirfd form here, so name the
            // entry through its parent's descriptor, which also keeps paths short.
            let mut proc_path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            proc_path.extend_from_slice(name);
            let names =
                list_xattrs(|buf| rustix::fs::llistxattr(OsStr::from_bytes(&proc_path), buf))
                    .map_err(|e| io_err("list xattrs of", self.full_path(path), e))?;
            self.refuse_foreign(&names, path)?;
            self.changes.push(Change::new(path.clone(), kind));
            return Ok(());
        }
        let fd = rustix::fs::openat(dir, name, dir_flags() | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| io_err("open", self.full_path(path), e))?;
        let names = list_xattrs(|buf| rustix::fs::flistxattr(&fd, buf))
            .map_err(|e| io_err("list xattrs of", self.full_path(path), e))?;
        self.refuse_foreign(&names, path)?;
        // Only the marker of the mount itself: strata's mounts are not `userxattr` ones, so
        // `user.overlay.opaque` is an attribute a process set, which the layer writer refuses.
        let mut opaque = false;
        let attr = "trusted.overlay.opaque";
        if names.iter().any(|n| n == attr.as_bytes()) {
            let mut value = [0u8; 8];
            // "x" marks a directory holding xwhiteouts, which is not opaque.
            match rustix::fs::fgetxattr(&fd, attr, &mut value[..]) {
                Ok(n) => opaque = &value[..n] == b"y",
                Err(Errno::RANGE | Errno::NODATA) => {}
                Err(e) => return Err(io_err("read xattrs of", self.full_path(path), e)),
            }
        }
        let (own, children) = if opaque {
            (ChangeKind::Opaque, ChangeKind::Added)
        } else {
            (kind, kind)
        };
        self.changes.push(Change::new(path.clone(), own));
        self.dir(&fd, path, children)
    }

    fn refuse_foreign(&self, names: &[Vec<u8>], path: &[u8]) -> Result<()> {
        // What the kernel would write with those features on. The `user.overlay.*` forms
        // only a process can set here: the layer writer refuses them with the rest.
        const FOREIGN: [&str; 2] = ["trusted.overlay.redirect", "trusted.overlay.metacopy"];
        match names
            .iter()
            .find(|n| FOREIGN.iter().any(|f| f.as_bytes() == n.as_slice()))
        {
            Some(attr) => Err(Error::ForeignUpper {
                path: self.full_path(path),
                attr: String::from_utf8_lossy(attr).into_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// Calls a listxattr variant with a growing buffer and splits the names.
fn list_xattrs(
    mut list: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    let len = loop {
        match list(&mut buf[..]) {
            Ok(len) => break len,
            // Grown rather than queried: the list may change between two calls.
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape_octal(br"/a\040b\011c\012d\134e"), b"/a b\tc\nd\\e");
        assert_eq!(unescape_octal(br"/a\04"), br"/a\04");
        assert_eq!(unescape_octal(br"/a\777"), br"/a\777");
        assert_eq!(unescape_octal(b"/plain"), b"/plain");
    }

    #[test]
    fn escaping_marks_special_bytes() {
        assert_eq!(escape(Path::new(r"/a:b,c\d"), b"\\:,"), br"/a\:b\,c\\d");
        assert_eq!(escape(Path::new(r"/a:b\c"), b"\\"), br"/a:b\\c");
    }

    /// The fallback cannot be reached through `mount` on kernels with `lowerdir+`, so its
    /// escaping is checked against the real parser here.
    #[test]
    #[allow(clippy::print_stderr, reason = "a skipped test says why")]
    fn the_fallback_mounts_paths_with_separators() {
        if !supported() {
            eprintln!("skipped: overlay mounts need root and overlayfs");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let odd = tmp.path().join("a:b,c\\d e");
        let spec = OverlayMount {
            lowers: vec![odd.join("l:1,x"), odd.join("l\\2")],
            upper: odd.join("u,p:\\"),
            work: odd.join("w:k,"),
            target: odd.join("m t"),
        };
        for dir in [
            &spec.lowers[0],
            &spec.lowers[1],
            &spec.upper,
            &spec.work,
            &spec.target,
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(spec.lowers[1].join("f"), "low").unwrap();
        mount_classic(&spec).unwrap();
        let seen = std::fs::read_to_string(spec.target.join("f"));
        let mounted = is_mounted(&spec.target);
        unmount_detach(&spec.target).unwrap();
        assert_eq!(seen.unwrap(), "low");
        assert!(mounted.unwrap());
    }

    #[test]
    fn stacks_beyond_a_page_are_refused_by_the_fallback() {
        let spec = OverlayMount {
            lowers: (0..100)
                .map(|i| PathBuf::from(format!("/{}/{i}", "x".repeat(60))))
                .collect(),
            upper: "/u".into(),
            work: "/w".into(),
            target: "/t".into(),
        };
        let err = mount_classic(&spec).unwrap_err();
        assert!(
            matches!(err, Error::OptionsTooLong { layers: 100, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("/t"), "{err}");
    }
}
