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
    Timestamp, WalkDir, child_path, diff_walk, join, walk,
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
fn io_err<'s>(op: &'static str, base: &'s Path, rel: &'s [u8]) -> impl FnOnce(Errno) -> Error + 's {
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
            let st = rustix::fs::fstat(&src.fd).map_err(io_err("stat", layers[src.layer], b""))?;
            m.set_owner_and_xattrs(src, &out, &st, b"")?;
            Some(st)
        }
        None => None,
    };
    m.merge_dir(sources, &out, &mut Vec::new())?;
    // The root goes last: its new ctime, on the filesystem's clock, is the manifest's time.
    let times = match &top {
        Some(st) => {
            rustix::fs::fchmod(&out, perms(st)).map_err(io_err("set the mode of", target, b""))?;
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
    let taken = settle_root(&out, &times, &m.entries, target)?;
    m.report.entries = m.entries.len() as u64;
    Ok((Manifest::new(taken, m.entries), m.report))
}

/// Sets the times of the root `out` of a tree just written (which moves its ctime to the
/// filesystem's clock) until that clock has passed every ctime in `entries`, and returns
/// it: the manifest's time. Any later change then gives its entry a ctime the manifest
/// cannot hold.
fn settle_root(
    out: &OwnedFd,
    times: &Timestamps,
    entries: &[ManifestEntry],
    target: &Path,
) -> Result<Timestamp> {
    let newest = entries.iter().map(|e| e.stat.ctime).max();
    let deadline = Instant::now() + CLOCK_WAIT_MAX;
    loop {
        rustix::fs::futimens(out, times).map_err(io_err("set the times of", target, b""))?;
        let st = rustix::fs::fstat(out).map_err(io_err("stat", target, b""))?;
        let now = entry_stat(&st).ctime;
        if newest.is_none_or(|c| now > c) || Instant::now() >= deadline {
            return Ok(now);
        }
        std::thread::sleep(CLOCK_POLL);
    }
}

pub(super) fn manifest_of_written(dir: &Path) -> Result<Manifest> {
    let root = open_root(dir)?;
    let entries = walk::entries(dir, FdDir(open_root(dir)?))?;
    let st = rustix::fs::fstat(&root).map_err(io_err("stat", dir, b""))?;
    let taken = settle_root(&root, &times_of(&st), &entries, dir)?;
    Ok(Manifest::new(taken, entries))
}

/// Whether files in `dir` can be cloned (`FICLONE`, `clonefile`): tried on two probe
/// files, removed again.
pub(super) fn can_clone(dir: &Path) -> bool {
    let Ok(root) = open_root(dir) else {
        return false;
    };
    let name = |n: u8| format!(".clone-probe-{}-{n}", std::process::id());
    let (a, b) = (name(0), name(1));
    let create = |name: &str| {
        rustix::fs::openat(
            &root,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            owner_only(0o600),
        )
    };
    let cloned = (|| {
        let src = create(&a).ok()?;
        rustix::io::write(&src, b"probe").ok()?;
        #[cfg(target_os = "linux")]
        {
            let dst = create(&b).ok()?;
            Some(rustix::fs::ioctl_ficlone(&dst, &src).is_ok())
        }
        #[cfg(target_vendor = "apple")]
        {
            Some(
                rustix::fs::fclonefileat(&src, &root, b.as_str(), rustix::fs::CloneFlags::NOFOLLOW)
                    .is_ok(),
            )
        }
        #[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
        {
            Some(false)
        }
    })();
    for name in [&a, &b] {
        let _ = rustix::fs::unlinkat(&root, name.as_str(), AtFlags::empty());
    }
    cloned.unwrap_or(false)
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
    rustix::fs::fchmod(&root, owner_only(0o700)).map_err(io_err("set the mode of", target, b""))?;
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
                        let st =
                            rustix::fs::statat(&src.fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
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
            let fd = rustix::fs::openat(&parents[pos].fd, name, DIR_FLAGS, Mode::empty()).map_err(
                |e| match e {
                    Errno::NOTDIR | Errno::LOOP | Errno::NOENT => Error::LayerChanged {
                        path: join(base, path),
                    },
                    e => io_err("open", base, path)(e),
                },
            )?;
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
        rustix::fs::fchmod(&dir, perms(&st)).map_err(io_err("set the mode of", target, path))?;
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
        let st = rustix::fs::statat(&src.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err(
            "stat",
            self.layers[src.layer],
            path,
        ))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => self.file(src, name, &st, out, path),
            FileType::Symlink => {
                let link = rustix::fs::readlinkat(&src.fd, name, Vec::new()).map_err(io_err(
                    "read the symlink",
                    self.layers[src.layer],
                    path,
                ))?;
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
        rustix::fs::linkat(&parent_fd, first_name, out, name, AtFlags::empty()).map_err(io_err(
            "create the hard link",
            target,
            path,
        ))?;
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
    let entries = walk::entries(dir, FdDir(root))?;
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
    diff_walk(dir, FdDir(open_root(dir)?), manifest)
}

/// A directory reached through a handle.
struct FdDir(OwnedFd);

impl WalkDir for FdDir {
    /// Reads the handle's own position: a walk lists each directory once, from a handle it
    /// just opened, so the duplicate handle `Dir` would open (and close) is not needed.
    #[cfg(target_os = "linux")]
    fn names(&self) -> std::io::Result<Vec<Vec<u8>>> {
        use std::mem::MaybeUninit;
        let mut buf = [MaybeUninit::<u8>::uninit(); 32 * 1024];
        let mut names = Vec::new();
        let mut entries = rustix::fs::RawDir::new(&self.0, &mut buf);
        while let Some(entry) = entries.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        Ok(names)
    }

    #[cfg(not(target_os = "linux"))]
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
