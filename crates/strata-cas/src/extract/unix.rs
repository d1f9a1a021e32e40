//! The Unix extraction engine behind [`apply_tar`](super::apply_tar).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::core::{
    self, DirCache, Host, Ledger, MAX_SYMLINK_HOPS, Made, Xattrs, entry_error, stream_problem,
};
use super::{ExtractOptions, ExtractReport, Ownership, WhiteoutMode};
use crate::dirfd::{DIR_FLAGS, open_root};
use crate::tar::{TarReader, Whiteout, split_parent, whiteout};
use crate::{Entry, EntryKind, EntryName, EntryProblem, Error, Metadata, Result};

/// Files up to this size are read into memory and written by the pool; larger ones are
/// streamed by the reading thread so memory stays bounded whatever the layer holds.
const POOLED_FILE_MAX: u64 = 4 << 20;
/// Bytes of file data queued for the writers at most.
const POOL_BUDGET: u64 = 64 << 20;

type Fd = Arc<OwnedFd>;

/// Decides which metadata syscalls a new file needs, so the common case (owner and mode
/// already right at creation) costs only create, write, futimens and close.
#[derive(Debug, Clone, Copy)]
struct FileSetup {
    restore_owner: bool,
    /// Owner that new files get anyway: the caller's, when no directory in the target can
    /// be setgid (the target was empty and not setgid at the start; our directories stay
    /// 0700 until their contents are written).
    default_owner: Option<(u32, u32)>,
    /// The process umask, when known; without it every file gets an explicit chmod.
    umask: Option<u32>,
}

impl FileSetup {
    fn needs_chown(&self, meta: &Metadata) -> bool {
        self.restore_owner && self.default_owner != Some((meta.uid, meta.gid))
    }

    fn needs_chmod(&self, meta: &Metadata) -> bool {
        match self.umask {
            Some(umask) => meta.mode & 0o7000 != 0 || meta.mode & umask != 0,
            None => true,
        }
    }
}

/// The umask, read without changing it (`umask(2)` can only be read by setting it, which
/// would race with other threads of an embedding program).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
}

pub(super) fn apply<R: Read>(input: R, dir: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create the directory", dir, e)),
    }
    let root = open_root(dir)?;
    let restore_owner = match opts.ownership {
        Ownership::Auto => rustix::process::geteuid().is_root(),
        Ownership::Restore => true,
        Ownership::Ignore => false,
    };
    let empty_at_start = Dir::read_from(&root)
        .map_err(|e| Error::io("list", dir, e.into()))?
        .filter_map(|e| e.ok())
        .all(|e| matches!(e.file_name().to_bytes(), b"." | b".."));
    let root_stat = rustix::fs::fstat(&root).map_err(|e| Error::io("stat", dir, e.into()))?;
    let setup = FileSetup {
        restore_owner,
        default_owner: (empty_at_start && root_stat.st_mode & 0o2000 == 0).then(|| {
            (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )
        }),
        umask: current_umask(),
    };
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut ex = Extractor {
        opts,
        restore_owner,
        setup,
        root: Arc::new(root),
        cache: DirCache::new(),
        made: Ledger::default(),
        dirs: Vec::new(),
        kept_dir_fds: 0,
        max_kept_dir_fds: dir_fd_budget(),
        root_meta: None,
        report: ExtractReport::default(),
        pool: Pool::new(threads, setup),
        buf: vec![0; 256 << 10],
    };
    let mut reader = TarReader::new(input, &opts.limits);
    let result = ex.run(&mut reader);
    let pool_result = ex.pool.finish();
    result?;
    pool_result?;
    ex.finish_dirs()?;
    reader.finish()?;
    if opts.sync {
        sync_filesystem(&ex.root).map_err(|e| Error::io("sync", dir, e.into()))?;
    }
    let (files, bytes) = ex.pool.totals();
    ex.report.files += files;
    ex.report.bytes += bytes;
    Ok(ex.report)
}

struct Extractor<'a> {
    opts: &'a ExtractOptions,
    restore_owner: bool,
    setup: FileSetup,
    root: Fd,
    /// Directory handles by the [`key`] of their normalised path (possibly reached through
    /// symlinks).
    cache: DirCache<u128, Fd>,
    /// What this layer made, by path hash.
    made: Ledger,
    /// Directories whose mode and mtime are set last, after their contents.
    dirs: Vec<PendingDir>,
    kept_dir_fds: usize,
    max_kept_dir_fds: usize,
    root_meta: Option<Metadata>,
    report: ExtractReport,
    pool: Pool,
    buf: Vec<u8>,
}

/// Permission bits as rustix wants them (`mode_t` is 16 bits on macOS).
#[allow(
    clippy::unnecessary_cast,
    reason = "mode_t is u32 on Linux, u16 on macOS"
)]
fn mode(bits: u32) -> Mode {
    Mode::from_raw_mode((bits & 0o7777) as rustix::fs::RawMode)
}

fn key(path: &[u8]) -> u128 {
    #[cfg(test)]
    tests::count_lookup_bytes(path.len());
    key_of(&blake3::hash(path))
}

fn key_of(hash: &blake3::Hash) -> u128 {
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// One component of a path being resolved: where it is and the [`key`] of the path up to it.
struct Prefix {
    start: usize,
    end: usize,
    key: u128,
}

/// The components of a normalised path with the key of every prefix, in one pass: hashing
/// each prefix from scratch would cost the square of the path's depth.
fn prefixes(path: &[u8]) -> Vec<Prefix> {
    #[cfg(test)]
    tests::count_lookup_bytes(path.len());
    let mut hasher = blake3::Hasher::new();
    let mut out = Vec::new();
    let mut start = 0;
    for component in path.split(|&b| b == b'/') {
        if start > 0 {
            hasher.update(b"/");
        }
        hasher.update(component);
        let end = start + component.len();
        out.push(Prefix {
            start,
            end,
            key: key_of(&hasher.finalize()),
        });
        start = end + 1;
    }
    out
}

fn sys(op: &'static str) -> impl Fn(Errno) -> EntryProblem {
    move |e| EntryProblem::Io {
        op,
        source: e.into(),
    }
}

fn times(meta: &Metadata) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: i64::from(meta.mtime_nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Extractor<'_> {
    fn run<R: Read>(&mut self, reader: &mut TarReader<R>) -> Result<()> {
        while let Some(entry) = reader.next_entry()? {
            self.report.entries += 1;
            self.pool.check()?;
            let raw_name = reader.current_raw_name().to_vec();
            self.apply_entry(entry, &raw_name, reader)
                .map_err(|problem| entry_error(&raw_name, problem))?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        mut entry: Entry,
        raw_name: &[u8],
        reader: &mut TarReader<R>,
    ) -> Result<(), EntryProblem> {
        let whiteout = whiteout(&entry.path)?;
        if whiteout.is_some() && self.opts.whiteouts != WhiteoutMode::Keep {
            self.made.marker(key(&entry.path))?;
        }
        match (whiteout, self.opts.whiteouts) {
            (Some(Whiteout::Remove { parent, name }), WhiteoutMode::Apply) => {
                return self.remove(parent, name);
            }
            (Some(Whiteout::Opaque { dir }), WhiteoutMode::Apply) => return self.opaque(dir),
            (Some(Whiteout::Remove { parent, name }), WhiteoutMode::Overlay) => {
                return self.overlay_whiteout(parent, name);
            }
            (Some(Whiteout::Opaque { dir }), WhiteoutMode::Overlay) => {
                return self.overlay_opaque(dir);
            }
            (Some(_), WhiteoutMode::Keep) | (None, _) => {}
        }
        if entry.path.is_empty() {
            if self.root_meta.is_some() {
                return Err(EntryProblem::Duplicate);
            }
            // The root's attributes pass the same checks as every other entry's.
            core::check_policies(self.opts, self.host(), &mut entry, &mut self.report)?;
            self.apply_xattrs_fd(&self.root.clone(), &entry.meta)?;
            self.root_meta = Some(entry.meta);
            return Ok(());
        }
        let k = key(&entry.path);
        self.made.check_new(k, &entry.kind)?;
        if !core::check_policies(self.opts, self.host(), &mut entry, &mut self.report)? {
            return Ok(());
        }
        let (parent_path, name) = split_parent(&entry.path);
        let name = name.to_vec();
        let parent = self
            .dir_fd(parent_path, true)?
            .expect("created when missing");
        match &entry.kind {
            EntryKind::File => {
                self.made.record(k, Made::File);
                if entry.size <= POOLED_FILE_MAX && self.pool.is_parallel() {
                    let mut data = Vec::new();
                    reader.read_data_to_vec(&mut data).map_err(stream_problem)?;
                    self.pool.submit(Job {
                        dir: parent,
                        name,
                        raw_name: raw_name.to_vec(),
                        data,
                        meta: entry.meta,
                    })?;
                } else {
                    let fd = create_file(&parent, &name, &entry.meta)?;
                    let mut file = File::from(fd);
                    let mut left = entry.size;
                    while left > 0 {
                        let n = reader.read_data(&mut self.buf).map_err(stream_problem)?;
                        file.write_all(&self.buf[..n])
                            .map_err(|source| EntryProblem::Io {
                                op: "write",
                                source,
                            })?;
                        left -= n as u64;
                    }
                    finish_file(&file, &entry.meta, &self.setup)?;
                    self.report.files += 1;
                    self.report.bytes += entry.size;
                }
            }
            EntryKind::Dir => {
                self.make_dir(&parent, &name, &entry)?;
                self.made.record(k, Made::Dir);
                self.report.dirs += 1;
            }
            EntryKind::Symlink(target) => {
                let replaced = retry_replacing(&parent, &name, || {
                    rustix::fs::symlinkat(target.as_slice(), &*parent, name.as_slice())
                })
                .map_err(sys("create the symlink"))?;
                self.invalidate(replaced);
                if self.restore_owner {
                    rustix::fs::chownat(
                        &*parent,
                        name.as_slice(),
                        Some(rustix::fs::Uid::from_raw(entry.meta.uid)),
                        Some(rustix::fs::Gid::from_raw(entry.meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(sys("set the owner of the symlink"))?;
                }
                rustix::fs::utimensat(
                    &*parent,
                    name.as_slice(),
                    &times(&entry.meta),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(sys("set the mtime of the symlink"))?;
                self.made.record(k, Made::Symlink);
                self.report.symlinks += 1;
            }
            EntryKind::Hardlink(target) => {
                let replaced = self.hardlink(&parent, &name, target)?;
                self.invalidate(replaced);
                self.made.record(k, Made::File);
                self.report.hardlinks += 1;
            }
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => {
                let (ft, dev) = match entry.kind {
                    EntryKind::CharDevice { major, minor } => {
                        (FileType::CharacterDevice, rustix::fs::makedev(major, minor))
                    }
                    EntryKind::BlockDevice { major, minor } => {
                        (FileType::BlockDevice, rustix::fs::makedev(major, minor))
                    }
                    _ => (FileType::Fifo, 0),
                };
                let mode = mode(entry.meta.mode);
                #[cfg(not(target_os = "linux"))]
                let _ = (ft, dev);
                let replaced =
                    retry_replacing(&parent, &name, || make_node(&parent, &name, ft, mode, dev))
                        .map_err(sys("create the node"))?;
                self.invalidate(replaced);
                self.finish_node(&parent, &name, &entry.meta)?;
                self.made.record(k, Made::Other);
            }
        }
        Ok(())
    }

    /// What this host can hold: device nodes, and privileged xattrs only as root.
    fn host(&self) -> Host {
        Host {
            no_nodes: None,
            xattrs: if self.restore_owner {
                Xattrs::All
            } else {
                Xattrs::Unprivileged
            },
        }
    }

    fn make_dir(&mut self, parent: &Fd, name: &[u8], entry: &Entry) -> Result<(), EntryProblem> {
        let meta = &entry.meta;
        // Create it with its final permissions when we can still write into it; setuid,
        // setgid and sticky bits, and modes that would lock us out, are set at the end.
        let initial = if self.restore_owner || meta.mode & 0o700 == 0o700 {
            meta.mode & 0o777
        } else {
            0o700
        };
        let mut merged = false;
        match rustix::fs::mkdirat(&**parent, name, mode(initial)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(&**parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(sys("stat the existing entry"))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    merged = true;
                } else {
                    remove_entry(parent, name).map_err(sys("replace the existing entry"))?;
                    self.invalidate(true);
                    rustix::fs::mkdirat(&**parent, name, mode(initial))
                        .map_err(sys("create the directory"))?;
                }
            }
            Err(e) => return Err(sys("create the directory")(e)),
        }
        let fd = Arc::new(
            rustix::fs::openat(&**parent, name, DIR_FLAGS, Mode::empty())
                .map_err(sys("open the directory"))?,
        );
        if self.restore_owner && (merged || self.setup.needs_chown(meta)) {
            rustix::fs::fchown(
                &*fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(sys("set the owner"))?;
        }
        self.apply_xattrs_fd(&fd, meta)?;
        self.cache.insert(key(&entry.path), fd.clone());
        let keep_fd = self.kept_dir_fds < self.max_kept_dir_fds;
        self.kept_dir_fds += usize::from(keep_fd);
        self.dirs.push(PendingDir {
            path: entry.path.clone(),
            meta: meta.clone(),
            fd: keep_fd.then_some(fd),
            chmod: merged || initial != meta.mode & 0o777 || self.setup.needs_chmod(meta),
        });
        Ok(())
    }

    fn apply_xattrs_fd(&self, fd: &Fd, meta: &Metadata) -> Result<(), EntryProblem> {
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(&**fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(sys("set an extended attribute"))?;
        }
        Ok(())
    }

    fn finish_node(&self, parent: &Fd, name: &[u8], meta: &Metadata) -> Result<(), EntryProblem> {
        if self.restore_owner {
            rustix::fs::chownat(
                &**parent,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(sys("set the owner"))?;
        }
        // mknodat applied the umask; set the exact mode. The node was just created at this
        // name by us, and chmodat cannot follow a device or fifo anywhere.
        rustix::fs::chmodat(&**parent, name, mode(meta.mode), AtFlags::empty())
            .map_err(sys("set the mode"))?;
        rustix::fs::utimensat(&**parent, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(sys("set the mtime"))?;
        Ok(())
    }

    /// Links `name` to the layer path `target`; whether an existing entry was replaced.
    fn hardlink(&mut self, parent: &Fd, name: &[u8], target: &[u8]) -> Result<bool, EntryProblem> {
        let bad = || EntryProblem::BadHardlink(EntryName(target.to_vec()));
        match self.made.get(key(target)) {
            Some(Made::Dir | Made::ImplicitDir) => return Err(bad()),
            // The target may still be in the writers' queue.
            Some(Made::File) => self.pool.wait_idle()?,
            _ => {}
        }
        let (target_parent, target_name) = split_parent(target);
        let Some(tdir) = self.dir_fd(target_parent, false).map_err(|_| bad())? else {
            return Err(bad());
        };
        retry_replacing(parent, name, || {
            rustix::fs::linkat(&*tdir, target_name, &**parent, name, AtFlags::empty())
        })
        .map_err(|e| match e {
            Errno::NOENT | Errno::PERM | Errno::ISDIR => bad(),
            e => sys("create the hard link")(e),
        })
    }

    /// A `.wh.<name>` whiteout: remove `name` from lower layers.
    fn remove(&mut self, parent: &[u8], name: &[u8]) -> Result<(), EntryProblem> {
        let mut path = parent.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        self.made.check_whiteout(key(&path))?;
        self.report.whiteouts += 1;
        let Some(dir) = self.dir_fd(parent, false)? else {
            return Ok(()); // nothing below to hide
        };
        match remove_entry(&dir, name) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(sys("apply the whiteout")(e)),
        }
        self.cache.clear();
        Ok(())
    }

    /// A `.wh.<name>` whiteout recorded for overlayfs: a 0/0 character device at `name`.
    fn overlay_whiteout(&mut self, parent: &[u8], name: &[u8]) -> Result<(), EntryProblem> {
        let mut path = parent.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let k = key(&path);
        self.made.check_whiteout(k)?;
        let dir = self.dir_fd(parent, true)?.expect("created when missing");
        let replaced = retry_replacing(&dir, name, || {
            make_node(
                &dir,
                name,
                FileType::CharacterDevice,
                mode(0),
                rustix::fs::makedev(0, 0),
            )
        })
        .map_err(sys("create the overlay whiteout"))?;
        self.invalidate(replaced);
        self.made.record(k, Made::Other);
        self.report.whiteouts += 1;
        Ok(())
    }

    /// A `.wh..wh..opq` marker recorded for overlayfs: `trusted.overlay.opaque=y` on `dir`.
    fn overlay_opaque(&mut self, dir: &[u8]) -> Result<(), EntryProblem> {
        let fd = self.dir_fd(dir, true)?.expect("created when missing");
        rustix::fs::fsetxattr(&*fd, "trusted.overlay.opaque", b"y", XattrFlags::empty())
            .map_err(sys("mark the directory opaque"))?;
        self.made.walked(key(dir));
        self.report.whiteouts += 1;
        Ok(())
    }

    /// A `.wh..wh..opq` marker: hide every lower-layer child of `dir`.
    fn opaque(&mut self, dir: &[u8]) -> Result<(), EntryProblem> {
        self.report.whiteouts += 1;
        self.made.walked(key(dir));
        let Some(fd) = self.dir_fd(dir, false)? else {
            return Ok(()); // nothing below to hide
        };
        let mut names = Vec::new();
        for item in Dir::read_from(&*fd).map_err(sys("list the opaque directory"))? {
            let item = item.map_err(sys("list the opaque directory"))?;
            let name = item.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        // The directory's part of every child's key is hashed once.
        let mut prefix = blake3::Hasher::new();
        if !dir.is_empty() {
            prefix.update(dir);
            prefix.update(b"/");
        }
        for name in names {
            let mut child = prefix.clone();
            child.update(&name);
            if self.made.contains(key_of(&child.finalize())) {
                continue;
            }
            match remove_entry(&fd, &name) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(sys("apply the opaque marker")(e)),
            }
        }
        self.cache.clear();
        Ok(())
    }

    /// Forgets cached handles after an entry of a lower layer was replaced: a directory
    /// or symlink there may have led to any of them.
    fn invalidate(&mut self, replaced: bool) {
        if replaced {
            self.cache.clear();
        }
    }

    /// The directory at `path` (normalised), resolved inside the root. With `create`, missing
    /// directories are made (0755) as long as no symlink was followed; without, a missing
    /// directory gives `None`.
    fn dir_fd(&mut self, path: &[u8], create: bool) -> Result<Option<Fd>, EntryProblem> {
        if path.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(fd) = self.cache.get(&key(path)) {
            return Ok(Some(fd));
        }
        // Fast path: walk down from the deepest cached ancestor, component by component,
        // with O_NOFOLLOW. Anything unusual (a symlink) goes to the general resolver.
        let prefixes = prefixes(path);
        let (mut fd, first) = prefixes[..prefixes.len() - 1]
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, p)| self.cache.get(&p.key).map(|fd| (fd, i + 1)))
            .unwrap_or_else(|| (self.root.clone(), 0));
        for prefix in &prefixes[first..] {
            let component = &path[prefix.start..prefix.end];
            self.made.check_parent(prefix.key)?;
            if self.made.get(prefix.key) == Some(Made::Symlink) {
                return self.resolve_slow(path, create);
            }
            let opened = match rustix::fs::openat(&*fd, component, DIR_FLAGS, Mode::empty()) {
                Ok(child) => child,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&*fd, component, mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(sys("create a parent directory")(e)),
                    }
                    rustix::fs::openat(&*fd, component, DIR_FLAGS, Mode::empty())
                        .map_err(sys("open a parent directory"))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => return self.resolve_slow(path, create),
                Err(e) => return Err(sys("open a parent directory")(e)),
            };
            self.made.walked(prefix.key);
            fd = Arc::new(opened);
            self.cache.insert(prefix.key, fd.clone());
        }
        Ok(Some(fd))
    }

    /// Resolves `path` inside the root following symlinks the way the kernel would if the
    /// root were `/`: absolute targets restart at the root and `..` never climbs above it.
    fn resolve_slow(&mut self, path: &[u8], create: bool) -> Result<Option<Fd>, EntryProblem> {
        let mut stack: Vec<Fd> = vec![self.root.clone()];
        let mut queue: std::collections::VecDeque<Vec<u8>> =
            path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
        let mut hops = 0;
        let mut followed = false;
        while let Some(component) = queue.pop_front() {
            match component.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let cur = stack.last().expect("never empty").clone();
            match rustix::fs::openat(&*cur, component.as_slice(), DIR_FLAGS, Mode::empty()) {
                Ok(fd) => stack.push(Arc::new(fd)),
                Err(Errno::NOENT) if create && !followed => {
                    match rustix::fs::mkdirat(&*cur, component.as_slice(), mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(sys("create a parent directory")(e)),
                    }
                    let fd =
                        rustix::fs::openat(&*cur, component.as_slice(), DIR_FLAGS, Mode::empty())
                            .map_err(sys("open a parent directory"))?;
                    stack.push(Arc::new(fd));
                }
                Err(Errno::NOENT) if !create => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let st =
                        rustix::fs::statat(&*cur, component.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(sys("stat a parent path component"))?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                        return Err(EntryProblem::ParentNotDirectory);
                    }
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(sys("resolve a parent path")(Errno::LOOP));
                    }
                    followed = true;
                    let target = rustix::fs::readlinkat(&*cur, component.as_slice(), Vec::new())
                        .map_err(sys("read a parent symlink"))?
                        .into_bytes();
                    if target.first() == Some(&b'/') {
                        stack.truncate(1);
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                Err(e) => return Err(sys("open a parent directory")(e)),
            }
        }
        let fd = stack.pop().expect("never empty");
        self.cache.insert(key(path), fd.clone());
        Ok(Some(fd))
    }

    /// Sets directory modes and mtimes, deepest first, once their contents are in place.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for dir in dirs.iter().rev() {
            let fd = match &dir.fd {
                Some(fd) => fd.clone(),
                // A later whiteout or replacement may have removed it.
                None => match self
                    .dir_fd(&dir.path, false)
                    .map_err(|p| Error::entry(&dir.path, p))?
                {
                    Some(fd) => fd,
                    None => continue,
                },
            };
            if dir.chmod {
                rustix::fs::fchmod(&*fd, mode(dir.meta.mode))
                    .map_err(|e| Error::entry(&dir.path, sys("set the mode")(e)))?;
            }
            rustix::fs::futimens(&*fd, &times(&dir.meta))
                .map_err(|e| Error::entry(&dir.path, sys("set the mtime")(e)))?;
        }
        if let Some(meta) = self.root_meta.take() {
            if self.restore_owner {
                rustix::fs::fchown(
                    &*self.root,
                    Some(rustix::fs::Uid::from_raw(meta.uid)),
                    Some(rustix::fs::Gid::from_raw(meta.gid)),
                )
                .map_err(|e| Error::entry(b".", sys("set the owner")(e)))?;
            }
            set_mode_and_time(&self.root, &meta).map_err(|p| Error::entry(b".", p))?;
        }
        Ok(())
    }
}

/// A directory whose mode and mtime are set once its contents are written.
struct PendingDir {
    path: Vec<u8>,
    meta: Metadata,
    /// Its handle, kept open while the process's file limit allows.
    fd: Option<Fd>,
    /// Whether its mode still needs setting.
    chmod: bool,
}

/// How many directory handles to keep open for the final pass: a quarter of the soft file
/// limit, so an embedding program keeps plenty.
fn dir_fd_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map_or(4096, |n| usize::try_from(n / 4).unwrap_or(4096))
        .min(65_536)
}

fn set_mode_and_time(fd: &OwnedFd, meta: &Metadata) -> Result<(), EntryProblem> {
    rustix::fs::fchmod(fd, mode(meta.mode)).map_err(sys("set the mode"))?;
    rustix::fs::futimens(fd, &times(meta)).map_err(sys("set the mtime"))
}

/// One `syncfs` for the whole target on Linux; elsewhere a global `sync`.
fn sync_filesystem(root: &OwnedFd) -> rustix::io::Result<()> {
    #[cfg(target_os = "linux")]
    return rustix::fs::syncfs(root);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        rustix::fs::sync();
        Ok(())
    }
}

/// `mknodat`, which rustix offers on Linux only; elsewhere nodes are refused for now.
fn make_node(
    parent: &OwnedFd,
    name: &[u8],
    ft: FileType,
    mode: Mode,
    dev: rustix::fs::Dev,
) -> rustix::io::Result<()> {
    #[cfg(target_os = "linux")]
    return rustix::fs::mknodat(parent, name, ft, mode, dev);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (parent, name, ft, mode, dev);
        Err(Errno::NOSYS)
    }
}

/// Runs `create`; if the name exists (from a lower layer), removes it and tries once more.
/// Returns whether something was replaced.
fn retry_replacing(
    parent: &OwnedFd,
    name: &[u8],
    mut create: impl FnMut() -> rustix::io::Result<()>,
) -> rustix::io::Result<bool> {
    match create() {
        Ok(()) => Ok(false),
        Err(Errno::EXIST) => {
            remove_entry(parent, name)?;
            create().map(|()| true)
        }
        Err(e) => Err(e),
    }
}

/// Removes `name` from `parent`: unlinks a non-directory, empties and removes a directory.
/// Never follows symlinks. Directories are emptied with a stack on the heap and hold a
/// handle open only for the first levels (deeper ones are reached again through `..`), so
/// neither a deep tree nor the file limit can stop it.
fn remove_entry(parent: &OwnedFd, name: &[u8]) -> rustix::io::Result<()> {
    /// Levels of a tree that keep their handle while deeper ones are emptied.
    const KEEP_OPEN: usize = 16;
    /// A directory being emptied: its handle, its name in its parent, children left.
    struct Level {
        fd: Option<OwnedFd>,
        name: Vec<u8>,
        children: Vec<Vec<u8>>,
    }
    let open = |parent: &OwnedFd, name: &[u8]| -> rustix::io::Result<Level> {
        let fd = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
        let mut children = Vec::new();
        for item in Dir::read_from(&fd)? {
            let item = item?;
            let child = item.file_name().to_bytes();
            if child != b"." && child != b".." {
                children.push(child.to_vec());
            }
        }
        Ok(Level {
            fd: Some(fd),
            name: name.to_vec(),
            children,
        })
    };

    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        other => return other,
    }
    let mut stack = vec![open(parent, name)?];
    loop {
        let depth = stack.len();
        let level = stack.last_mut().expect("popped only when emptied");
        let fd = level.fd.as_ref().expect("the deepest level is open");
        if let Some(child) = level.children.pop() {
            match rustix::fs::unlinkat(fd, &child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) | Err(Errno::PERM) => match open(fd, &child) {
                    Ok(next) => {
                        if depth > KEEP_OPEN {
                            level.fd = None;
                        }
                        stack.push(next);
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
            continue;
        }
        let done = stack.pop().expect("checked above");
        let Some(up) = stack.last_mut() else {
            return rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR);
        };
        if up.fd.is_none() {
            let done_fd = done.fd.as_ref().expect("the deepest level is open");
            up.fd = Some(rustix::fs::openat(done_fd, "..", DIR_FLAGS, Mode::empty())?);
        }
        let up_fd = up.fd.as_ref().expect("opened above");
        match rustix::fs::unlinkat(up_fd, &done.name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Creates a new file with its final permission bits (the umask may remove some; setuid and
/// friends are added by `finish_file` after the owner is set).
fn create_file(dir: &OwnedFd, name: &[u8], meta: &Metadata) -> Result<OwnedFd, EntryProblem> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = mode(meta.mode & 0o777);
    match rustix::fs::openat(dir, name, flags, mode) {
        Err(Errno::EXIST) => {
            remove_entry(dir, name).map_err(sys("replace the existing entry"))?;
            rustix::fs::openat(dir, name, flags, mode).map_err(sys("create the file"))
        }
        other => other.map_err(sys("create the file")),
    }
}

/// Owner, mode, xattrs and mtime, in that order (chown clears setuid; the mtime goes last).
/// Calls that would change nothing are skipped.
fn finish_file(file: &File, meta: &Metadata, setup: &FileSetup) -> Result<(), EntryProblem> {
    if setup.needs_chown(meta) {
        rustix::fs::fchown(
            file,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(sys("set the owner"))?;
    }
    if setup.needs_chown(meta) || setup.needs_chmod(meta) {
        rustix::fs::fchmod(file, mode(meta.mode)).map_err(sys("set the mode"))?;
    }
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(file, name.as_slice(), value, XattrFlags::empty())
            .map_err(sys("set an extended attribute"))?;
    }
    rustix::fs::futimens(file, &times(meta)).map_err(sys("set the mtime"))
}

/// A regular file for the writer pool.
struct Job {
    dir: Fd,
    name: Vec<u8>,
    /// The entry's name as written in the tar, for errors.
    raw_name: Vec<u8>,
    data: Vec<u8>,
    meta: Metadata,
}

#[derive(Default)]
struct PoolState {
    queued_jobs: u64,
    queued_bytes: u64,
    files: u64,
    bytes: u64,
    error: Option<Error>,
}

struct Shared {
    state: Mutex<PoolState>,
    changed: Condvar,
    failed: AtomicBool,
}

/// Writer threads for regular files, with a bound on queued bytes. Files are handed over
/// in batches, so the threads synchronise once per batch rather than once per file.
struct Pool {
    tx: Option<crossbeam_channel::Sender<Vec<Job>>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    batch: Vec<Job>,
    batch_bytes: u64,
}

/// A batch is sent once it holds this many files or bytes.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 2 << 20;

impl Pool {
    fn new(threads: usize, setup: FileSetup) -> Pool {
        let shared = Arc::new(Shared {
            state: Mutex::new(PoolState::default()),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        let mut pool = Pool {
            tx: None,
            workers: Vec::new(),
            shared: shared.clone(),
            batch: Vec::new(),
            batch_bytes: 0,
        };
        if threads <= 1 {
            return pool;
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<Job>>();
        pool.workers = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for batch in rx {
                        let (mut files, mut bytes, mut error) = (0u64, 0u64, None);
                        let queued = batch.len() as u64;
                        let queued_bytes: u64 = batch.iter().map(|j| j.data.len() as u64).sum();
                        for job in batch {
                            if error.is_some() || shared.failed.load(Ordering::Relaxed) {
                                continue;
                            }
                            match write_job(&job, &setup) {
                                Ok(()) => {
                                    files += 1;
                                    bytes += job.data.len() as u64;
                                }
                                Err(problem) => error = Some(Error::entry(&job.raw_name, problem)),
                            }
                        }
                        let mut st = shared.state.lock().expect("pool lock");
                        st.queued_jobs -= queued;
                        st.queued_bytes -= queued_bytes;
                        st.files += files;
                        st.bytes += bytes;
                        if let Some(e) = error {
                            shared.failed.store(true, Ordering::Relaxed);
                            st.error.get_or_insert(e);
                        }
                        drop(st);
                        shared.changed.notify_all();
                    }
                })
            })
            .collect();
        pool.tx = Some(tx);
        pool
    }

    fn is_parallel(&self) -> bool {
        self.tx.is_some()
    }

    fn submit(&mut self, job: Job) -> Result<(), EntryProblem> {
        self.batch_bytes += job.data.len() as u64;
        self.batch.push(job);
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<(), EntryProblem> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let (len, bytes) = (self.batch.len() as u64, self.batch_bytes);
        let mut st = self.shared.state.lock().expect("pool lock");
        while st.queued_jobs > 0 && st.queued_bytes + bytes > POOL_BUDGET && st.error.is_none() {
            st = self.shared.changed.wait(st).expect("pool lock");
        }
        st.queued_jobs += len;
        st.queued_bytes += bytes;
        drop(st);
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        self.tx
            .as_ref()
            .expect("submit only on a parallel pool")
            .send(batch)
            .map_err(|_| EntryProblem::Io {
                op: "queue the file",
                source: io::Error::other("writer threads exited"),
            })
    }

    /// The first error a writer hit, if any.
    fn check(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Relaxed) {
            let mut st = self.shared.state.lock().expect("pool lock");
            if let Some(e) = st.error.take() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Waits until every queued file is written.
    fn wait_idle(&mut self) -> Result<(), EntryProblem> {
        self.send_batch()?;
        let mut st = self.shared.state.lock().expect("pool lock");
        while st.queued_jobs > 0 {
            st = self.shared.changed.wait(st).expect("pool lock");
        }
        Ok(())
    }

    /// Stops the writers after the queue drains; returns the first error.
    fn finish(&mut self) -> Result<()> {
        let sent = self.send_batch();
        self.tx = None;
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                return Err(Error::Unsupported {
                    what: "a writer thread panicked; extracting",
                });
            }
        }
        self.check()?;
        sent.map_err(|p| Error::entry(b"", p))
    }

    fn totals(&self) -> (u64, u64) {
        let st = self.shared.state.lock().expect("pool lock");
        (st.files, st.bytes)
    }
}

fn write_job(job: &Job, setup: &FileSetup) -> Result<(), EntryProblem> {
    let fd = create_file(&job.dir, &job.name, &job.meta)?;
    let mut file = File::from(fd);
    if !job.data.is_empty() {
        file.write_all(&job.data)
            .map_err(|source| EntryProblem::Io {
                op: "write",
                source,
            })?;
    }
    finish_file(&file, &job.meta, setup)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::tar::TarWriter;

    thread_local! {
        /// Path bytes hashed by directory lookups on this thread.
        static LOOKUP_BYTES: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn count_lookup_bytes(n: usize) {
        LOOKUP_BYTES.with(|c| c.set(c.get() + n as u64));
    }

    fn entry(path: Vec<u8>, kind: EntryKind, size: u64) -> Entry {
        Entry {
            path,
            kind,
            meta: Metadata {
                mode: 0o755,
                ..Metadata::default()
            },
            size,
        }
    }

    /// A layer holding one file at `a/a/.../a/f`, `depth` components deep.
    fn deep_file(depth: usize) -> (Vec<u8>, usize) {
        let mut path = b"a/".repeat(depth - 1);
        path.push(b'f');
        let mut w = TarWriter::new(Vec::new());
        w.append(&entry(path.clone(), EntryKind::File, 1)).unwrap();
        w.write_data(b"x").unwrap();
        (w.finish().unwrap(), path.len())
    }

    fn one_thread() -> ExtractOptions {
        ExtractOptions {
            threads: 1,
            ..ExtractOptions::default()
        }
    }

    /// The shape: a file thousands of components deep. Hashing (and copying) each
    /// prefix of the path from scratch made extraction cost the square of the depth; the
    /// work must stay a small multiple of the path's length.
    #[test]
    fn deep_paths_cost_work_linear_in_their_length() {
        for depth in [100, 1000, 3000] {
            let (tar, len) = deep_file(depth);
            let dir = tempfile::tempdir().unwrap();
            LOOKUP_BYTES.with(|c| c.set(0));
            apply(&tar[..], &dir.path().join("t"), &one_thread()).unwrap();
            let work = LOOKUP_BYTES.with(Cell::get);
            assert!(
                work <= 4 * len as u64,
                "depth {depth}: {work} bytes hashed for a {len}-byte path"
            );
            let mut p = dir.path().join("t");
            for _ in 1..depth.min(100) {
                p.push("a");
            }
            assert!(p.is_dir(), "{} was not created", p.display());
        }
    }

    /// Deep entries in a deep tree: each lookup starts from the deepest cached ancestor.
    #[test]
    fn many_deep_entries_cost_work_linear_in_the_layer() {
        let depth = 1000;
        let mut w = TarWriter::new(Vec::new());
        let mut total = 0;
        for i in 0..50 {
            let mut path = b"d/".repeat(depth);
            path.extend_from_slice(format!("f{i}").as_bytes());
            total += path.len();
            w.append(&entry(path, EntryKind::File, 0)).unwrap();
        }
        let tar = w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        LOOKUP_BYTES.with(|c| c.set(0));
        let report = apply(&tar[..], &dir.path().join("t"), &one_thread()).unwrap();
        assert_eq!(report.files, 50);
        let work = LOOKUP_BYTES.with(Cell::get);
        assert!(
            work <= 4 * total as u64,
            "{work} bytes hashed for {total} bytes of paths"
        );
    }

    /// Each opaque marker lists its directory and looks up every child: repeated for one
    /// deep directory, that cost the number of markers times the directory's contents.
    #[test]
    fn a_whiteout_or_opaque_marker_twice_is_a_duplicate() {
        for marker in [&b"d/.wh..wh..opq"[..], b"d/.wh.gone"] {
            let mut w = TarWriter::new(Vec::new());
            w.append(&entry(b"d".to_vec(), EntryKind::Dir, 0)).unwrap();
            w.append(&entry(b"d/f".to_vec(), EntryKind::File, 0))
                .unwrap();
            for _ in 0..2 {
                w.append(&entry(marker.to_vec(), EntryKind::File, 0))
                    .unwrap();
            }
            let tar = w.finish().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let e = apply(&tar[..], &dir.path().join("t"), &one_thread()).unwrap_err();
            assert!(
                matches!(&e, Error::Entry { entry, problem: EntryProblem::Duplicate } if entry.0 == marker),
                "{e}"
            );
            assert!(dir.path().join("t/d/f").exists());
        }
    }

    /// A whiteout over a lower tree deeper than a small thread stack (or the file limit)
    /// allows a recursive removal holding a handle per level.
    #[test]
    fn a_whiteout_removes_a_tree_of_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::create_dir(&target).unwrap();
        let root = open_root(&target).unwrap();
        let mut fd = rustix::fs::openat(&root, ".", DIR_FLAGS, Mode::empty()).unwrap();
        for i in 0..5000 {
            let name = if i == 0 { "deep" } else { "d" };
            rustix::fs::mkdirat(&fd, name, mode(0o755)).unwrap();
            if i % 1000 == 0 {
                let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC;
                rustix::fs::openat(&fd, "file", flags, mode(0o644)).unwrap();
            }
            fd = rustix::fs::openat(&fd, name, DIR_FLAGS, Mode::empty()).unwrap();
        }
        drop(fd);
        let mut w = TarWriter::new(Vec::new());
        w.append(&entry(b".wh.deep".to_vec(), EntryKind::File, 0))
            .unwrap();
        let tar = w.finish().unwrap();
        let t = target.clone();
        let report = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || apply(&tar[..], &t, &one_thread()).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(report.whiteouts, 1);
        assert!(!target.join("deep").exists());
    }
}
