//! In-root path resolution: what a path names below a directory, found from directory
//! handles as if that directory were `/`.
//!
//! A [`Root`] is a handle on a directory. [`Root::open_dir`] and [`Root::locate`] resolve a
//! path below it the way the kernel would inside a chroot: symlinks met on the way are
//! followed *inside* the root (an absolute target restarts at the root, `..` never climbs
//! above it), at most [`MAX_SYMLINK_HOPS`] of them per resolution, so no path, symlink or
//! concurrent rename makes a resolution reach anything outside the root. On Linux this is one
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`; where the kernel lacks `openat2` (or a
//! seccomp filter hides it), and on other Unixes, a walk with `openat(O_NOFOLLOW)` from
//! directory handles gives the same answers.
//!
//! A [`DirChain`] walks down from a directory by name, never through a symlink, keeping a
//! bounded number of handles open however deep it goes.
//!
//! ```no_run
//! # fn main() -> strata_cas::Result<()> {
//! use strata_cas::root::Root;
//! let ctx = Root::open(std::path::Path::new("/srv/context"))?;
//! // `a -> /` in the context makes this `/srv/context/etc/passwd`, never the host's file.
//! let found = ctx.locate(b"a/etc/passwd")?;
//! assert_eq!(found.name.as_deref(), Some(&b"passwd"[..]));
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;

use crate::dirfd::{DIR_FLAGS, open_root};
use crate::{Error, Result};

/// How many symlinks one resolution follows before it fails with `ELOOP`: Linux's limit
/// (`MAXSYMLINKS`), which `openat2` applies too, so both ways agree.
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// An open directory that paths are resolved inside of.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// Where [`Root::locate`] found a path: the directory holding its last component, with every
/// symlink on the way resolved inside the root, and the last component's name, not followed.
#[derive(Debug)]
pub struct Located {
    /// The directory holding the entry; the entry itself when `name` is `None`.
    pub dir: OwnedFd,
    /// The entry's name in `dir`, or `None` when the path ends without a name (empty, `.`,
    /// `..` or a trailing `/`): it then names a directory, reached by following everything,
    /// and that directory is `dir`.
    pub name: Option<Vec<u8>>,
}

impl Root {
    /// Opens `dir` (which may itself be reached through symlinks: the caller chose it).
    pub fn open(dir: &Path) -> Result<Root> {
        Ok(Root {
            fd: open_root(dir)?,
            path: dir.to_path_buf(),
        })
    }

    /// The path the root was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` below the root, for messages.
    pub fn display(&self, path: &[u8]) -> PathBuf {
        let rel = trim_slashes(path);
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(OsStr::from_bytes(rel))
        }
    }

    /// Opens the directory `path` names inside the root, following every symlink (the last
    /// component's too) inside the root. A leading `/` means the root.
    pub fn open_dir(&self, path: &[u8]) -> Result<OwnedFd> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(found) = self.open_dir_openat2(path) {
            return found.map_err(|e| self.resolve_err(path, e));
        }
        self.open_dir_walk(path)
            .map_err(|e| self.resolve_err(path, e))
    }

    /// Finds the entry `path` names inside the root without following its last component:
    /// a symlink there is returned as a symlink. Every earlier component is resolved as by
    /// [`Root::open_dir`]. The entry need not exist; its directory must.
    pub fn locate(&self, path: &[u8]) -> Result<Located> {
        let (dir, name) = split_last_name(path);
        Ok(Located {
            dir: self.open_dir(dir)?,
            name: name.map(<[u8]>::to_vec),
        })
    }

    fn resolve_err(&self, path: &[u8], e: Errno) -> Error {
        Error::io("resolve", self.display(path), e.into())
    }

    /// `None` when `openat2` cannot be used here; the walk then decides.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn open_dir_openat2(&self, path: &[u8]) -> Option<rustix::io::Result<OwnedFd>> {
        use rustix::fs::{OFlags, ResolveFlags};
        use std::sync::atomic::{AtomicBool, Ordering};
        static MISSING: AtomicBool = AtomicBool::new(false);
        if MISSING.load(Ordering::Relaxed) {
            return None;
        }
        let rel = trim_slashes(path);
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        // EAGAIN: a rename elsewhere raced the lookup of a `..`; the kernel asks to retry.
        for _ in 0..8 {
            match rustix::fs::openat2(
                &self.fd,
                rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(Errno::AGAIN | Errno::INTR) => continue,
                Err(Errno::NOSYS) => {
                    MISSING.store(true, Ordering::Relaxed);
                    return None;
                }
                // A seccomp filter that does not know openat2, or a kernel that knows only
                // some of the flags: the walk works everywhere.
                Err(Errno::PERM | Errno::INVAL | Errno::TOOBIG) => return None,
                other => return Some(other),
            }
        }
        None
    }

    /// The portable resolver: one `openat(O_NOFOLLOW | O_DIRECTORY)` per component from the
    /// handle of its parent; a symlink is read and its target spliced into the components
    /// still to resolve.
    fn open_dir_walk(&self, path: &[u8]) -> rustix::io::Result<OwnedFd> {
        let mut chain = DirChain::new(rustix::io::dup(&self.fd)?, self.path.clone());
        let mut todo: Vec<Vec<u8>> = components(path).rev().map(<[u8]>::to_vec).collect();
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            match name.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    // Never above the root.
                    chain.pop();
                    continue;
                }
                _ => {}
            }
            match chain.try_push(&name) {
                Ok(()) => {}
                // FreeBSD says EMLINK for O_NOFOLLOW on a symlink.
                Err(Errno::LOOP | Errno::MLINK | Errno::NOTDIR) => {
                    let at = chain.current_raw()?;
                    let st = rustix::fs::statat(at, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                        return Err(Errno::NOTDIR);
                    }
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Errno::LOOP);
                    }
                    let target = rustix::fs::readlinkat(at, name.as_slice(), Vec::new())?;
                    let target = target.as_bytes();
                    if target.first() == Some(&b'/') {
                        chain.truncate(0);
                    }
                    todo.extend(components(target).rev().map(<[u8]>::to_vec));
                }
                Err(e) => return Err(e),
            }
        }
        chain.into_current()
    }
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Directories opened one below the other from a base directory, by name and never through
/// a symlink (`O_NOFOLLOW`), holding at most a bounded number of handles: the handles of
/// ancestors far above the current directory are closed, and opened again by name when the
/// walk climbs back to them, which fails unless they are still the same directories (device
/// and inode).
#[derive(Debug)]
pub struct DirChain {
    base: OwnedFd,
    base_path: PathBuf,
    frames: Vec<Frame>,
    max_open: usize,
}

#[derive(Debug)]
struct Frame {
    name: Vec<u8>,
    fd: Option<OwnedFd>,
    id: (u64, u64),
}

impl DirChain {
    /// How many handles a chain keeps open below its base, by default.
    pub const MAX_OPEN: usize = 32;

    /// A chain starting at `base`; `base_path` names it in messages.
    pub fn new(base: OwnedFd, base_path: PathBuf) -> DirChain {
        DirChain::with_max_open(base, base_path, DirChain::MAX_OPEN)
    }

    /// A chain that keeps at most `max_open` (at least 1) handles open below its base.
    pub fn with_max_open(base: OwnedFd, base_path: PathBuf, max_open: usize) -> DirChain {
        DirChain {
            base,
            base_path,
            frames: Vec::new(),
            max_open: max_open.max(1),
        }
    }

    /// How many directories below the base the chain is.
    pub fn depth(&self) -> usize {
        self.frames.len()
    }

    /// The current directory's path, for messages.
    pub fn path(&self) -> PathBuf {
        let mut p = self.base_path.clone();
        for f in &self.frames {
            p.push(OsStr::from_bytes(&f.name));
        }
        p
    }

    /// Opens the directory `name` in the current one, without following a symlink, and
    /// makes it the current directory.
    pub fn push(&mut self, name: &[u8]) -> Result<()> {
        self.try_push(name).map_err(|e| {
            Error::io(
                "open the directory",
                self.path().join(OsStr::from_bytes(name)),
                e.into(),
            )
        })
    }

    /// Makes the parent of the current directory current (nothing at the base).
    pub fn pop(&mut self) {
        self.frames.pop();
    }

    /// Climbs back to `depth` directories below the base.
    pub fn truncate(&mut self, depth: usize) {
        self.frames.truncate(depth);
    }

    /// A handle on the current directory, opened again if it was closed.
    pub fn current(&mut self) -> Result<BorrowedFd<'_>> {
        if let Err(e) = self.reopen() {
            return Err(Error::io("open the directory again", self.path(), e));
        }
        Ok(self.current_open())
    }

    /// The current directory's handle, owned.
    fn into_current(mut self) -> rustix::io::Result<OwnedFd> {
        self.reopen().map_err(|e| match e.raw_os_error() {
            Some(n) => Errno::from_raw_os_error(n),
            None => Errno::STALE,
        })?;
        Ok(match self.frames.pop() {
            Some(f) => f.fd.expect("reopened above"),
            None => self.base,
        })
    }

    fn current_raw(&mut self) -> rustix::io::Result<BorrowedFd<'_>> {
        self.reopen().map_err(|e| match e.raw_os_error() {
            Some(n) => Errno::from_raw_os_error(n),
            None => Errno::STALE,
        })?;
        Ok(self.current_open())
    }

    fn current_open(&self) -> BorrowedFd<'_> {
        match self.frames.last() {
            Some(f) => f.fd.as_ref().expect("reopened").as_fd(),
            None => self.base.as_fd(),
        }
    }

    fn try_push(&mut self, name: &[u8]) -> rustix::io::Result<()> {
        let fd = {
            let at = self.current_raw()?;
            rustix::fs::openat(at, name, DIR_FLAGS, Mode::empty())?
        };
        let st = rustix::fs::fstat(&fd)?;
        self.frames.push(Frame {
            name: name.to_vec(),
            fd: Some(fd),
            id: (st.st_dev as u64, st.st_ino as u64),
        });
        // Close the handle furthest up beyond the budget; it is opened again if needed.
        let open = self.frames.iter().filter(|f| f.fd.is_some()).count();
        if open > self.max_open
            && let Some(f) = self.frames.iter_mut().find(|f| f.fd.is_some())
        {
            f.fd = None;
        }
        Ok(())
    }

    /// Opens the closed frames from the deepest open one (or the base) down to the current
    /// one, checking each is still the directory it was.
    fn reopen(&mut self) -> io::Result<()> {
        let Some(last) = self.frames.len().checked_sub(1) else {
            return Ok(());
        };
        if self.frames[last].fd.is_some() {
            return Ok(());
        }
        let start = self.frames[..last]
            .iter()
            .rposition(|f| f.fd.is_some())
            .map_or(0, |i| i + 1);
        for i in start..=last {
            let fd = {
                let at = match i {
                    0 => self.base.as_fd(),
                    _ => self.frames[i - 1].fd.as_ref().expect("opened").as_fd(),
                };
                rustix::fs::openat(at, self.frames[i].name.as_slice(), DIR_FLAGS, Mode::empty())?
            };
            let st = rustix::fs::fstat(&fd)?;
            if (st.st_dev as u64, st.st_ino as u64) != self.frames[i].id {
                return Err(io::Error::other(
                    "the directory was replaced during the walk",
                ));
            }
            self.frames[i].fd = Some(fd);
        }
        // Back within budget: close from the top again.
        let mut open = self.frames.iter().filter(|f| f.fd.is_some()).count();
        for f in &mut self.frames[..last] {
            if open <= self.max_open {
                break;
            }
            if f.fd.take().is_some() {
                open -= 1;
            }
        }
        Ok(())
    }
}

fn trim_slashes(path: &[u8]) -> &[u8] {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    &path[start..]
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// Splits off the last component when it is a name (not `.` or `..`, no trailing `/`).
fn split_last_name(path: &[u8]) -> (&[u8], Option<&[u8]>) {
    let (dir, last) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i + 1], &path[i + 1..]),
        None => (&path[..0], path),
    };
    match last {
        b"" | b"." | b".." => (path, None),
        name => (dir, Some(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir_all(p.join("etc/deep/er")).unwrap();
        fs::write(p.join("etc/hostname"), "inside").unwrap();
        symlink("/", p.join("a")).unwrap();
        symlink("/etc", p.join("abs")).unwrap();
        symlink("../../../../..", p.join("etc/deep/er/up")).unwrap();
        symlink("loop2", p.join("loop1")).unwrap();
        symlink("loop1", p.join("loop2")).unwrap();
        symlink("etc/hostname", p.join("file")).unwrap();
        // s1 → s2 → … → s40 → etc: 40 symlinks; s0 adds a 41st.
        for i in 0..40 {
            symlink(format!("s{}", i + 1), p.join(format!("s{i}"))).unwrap();
        }
        symlink("etc", p.join("s40")).unwrap();
        d
    }

    /// Both resolvers, so the fallback is tested on kernels that have openat2.
    fn both(root: &Root, path: &str) -> Vec<std::result::Result<(u64, u64), Errno>> {
        let walked = root.open_dir_walk(path.as_bytes());
        let mut out = vec![walked.map(|fd| id(&fd))];
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(r) = root.open_dir_openat2(path.as_bytes()) {
            out.push(r.map(|fd| id(&fd)));
        }
        out
    }

    fn id(fd: &OwnedFd) -> (u64, u64) {
        let st = rustix::fs::fstat(fd).unwrap();
        (st.st_dev as u64, st.st_ino as u64)
    }

    fn id_of(p: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(p).unwrap();
        (md.dev(), md.ino())
    }

    #[test]
    fn symlinks_and_dotdot_resolve_inside_the_root() {
        let t = tree();
        let root = Root::open(t.path()).unwrap();
        let etc = id_of(&t.path().join("etc"));
        let top = id_of(t.path());
        for (path, want) in [
            ("etc", etc),
            ("/etc", etc),
            ("a/etc", etc),
            ("a/a/a/etc/", etc),
            ("abs", etc),
            ("etc/deep/er/up/etc", etc),
            ("etc/deep/er/up", top),
            ("../../..", top),
            ("etc/../../..", top),
            ("a/..", top),
            ("", top),
            ("s1", etc),
        ] {
            for got in both(&root, path) {
                assert_eq!(got, Ok(want), "{path}");
            }
        }
        for (path, errno) in [
            ("loop1", Errno::LOOP),
            ("s0", Errno::LOOP),
            ("file", Errno::NOTDIR),
            ("etc/hostname", Errno::NOTDIR),
            ("nope", Errno::NOENT),
            ("a/tmp", Errno::NOENT),
        ] {
            for got in both(&root, path) {
                assert_eq!(got, Err(errno), "{path}");
            }
        }
        let e = root.open_dir(b"a/tmp").unwrap_err().to_string();
        assert!(e.contains(&format!("{}/a/tmp", t.path().display())), "{e}");
    }

    #[test]
    fn locate_does_not_follow_the_last_name() {
        let t = tree();
        let root = Root::open(t.path()).unwrap();
        for (path, dir, name) in [
            ("a", "", Some("a")),
            ("a/a/abs", "", Some("abs")),
            ("abs/hostname", "etc", Some("hostname")),
            ("/etc/deep/er/up", "etc/deep/er", Some("up")),
            ("etc/", "etc", None),
            ("a/.", "", None),
            ("etc/deep/..", "etc", None),
        ] {
            let found = root.locate(path.as_bytes()).unwrap();
            assert_eq!(id(&found.dir), id_of(&t.path().join(dir)), "{path}");
            assert_eq!(found.name.as_deref(), name.map(str::as_bytes), "{path}");
        }
    }

    #[test]
    fn a_chain_keeps_few_handles_and_notices_replaced_directories() {
        let t = tempfile::tempdir().unwrap();
        let mut deep = t.path().to_path_buf();
        for i in 0..10 {
            deep.push(format!("d{i}"));
        }
        fs::create_dir_all(&deep).unwrap();
        let base = open_root(t.path()).unwrap();
        let mut chain = DirChain::with_max_open(base, t.path().to_path_buf(), 2);
        for i in 0..10 {
            chain.push(format!("d{i}").as_bytes()).unwrap();
        }
        assert!(chain.frames.iter().filter(|f| f.fd.is_some()).count() <= 2);
        assert_eq!(chain.path(), deep);
        chain.truncate(3);
        let d2 = t.path().join("d0/d1/d2");
        assert_eq!(
            id(&rustix::io::dup(chain.current().unwrap()).unwrap()),
            id_of(&d2)
        );
        assert!(chain.frames.iter().filter(|f| f.fd.is_some()).count() <= 2);
        // Replace d0/d1 by another directory (the old one moved away): climbing back fails.
        chain.push(b"d3").unwrap();
        chain.push(b"d4").unwrap();
        chain.push(b"d5").unwrap();
        fs::rename(t.path().join("d0/d1"), t.path().join("moved")).unwrap();
        fs::create_dir_all(t.path().join("d0/d1/d2")).unwrap();
        chain.truncate(2);
        let e = chain.current().unwrap_err().to_string();
        assert!(e.contains("replaced") && e.contains("d0/d1"), "{e}");
    }
}
