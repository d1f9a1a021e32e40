//! The Windows implementation of portable checkouts: the same merge and diff as on Unix,
//! through paths (std has no handle-relative calls on Windows), with file identity and
//! change times from `GetFileInformationByHandleEx` and block cloning on ReFS.
//!
//! Layers are unpacked in OCI form on Windows (no root, no overlay whiteouts), so only `.wh.`
//! files mark deletions. Names must be valid Unicode: a manifest records `/`-separated UTF-8
//! paths, as the layer format does. Symlinks are recreated as file or directory symlinks, as
//! the layer's were, which needs the symlink privilege (or developer mode).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::windows::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_cas::Change;

use super::{
    EntryStat, Error, Kind, Manifest, ManifestEntry, MaterializeReport, Pick, Picker, Result,
    Timestamp, WalkDir, diff_walk, join, mode_from_attributes, timestamp_from_filetime, walk,
};

/// How far behind the system clock a file timestamp can be (NTFS stamps from a clock that
/// advances every 1 to 16 ms).
const COARSE_CLOCK_SLACK: Duration = Duration::from_millis(50);
/// How long to wait at most for the clock to pass the newest recorded change time.
const CLOCK_WAIT_MAX: Duration = Duration::from_secs(2);
const CLOCK_POLL: Duration = Duration::from_millis(1);

/// `CreateFile` flags: open directories too, and a symlink itself rather than its target.
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
/// Access rights: read or write attributes (times) only.
const FILE_READ_ATTRIBUTES: u32 = 0x80;
const FILE_WRITE_ATTRIBUTES: u32 = 0x100;
const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;

fn io_err<'s>(
    op: &'static str,
    base: &'s Path,
    rel: &'s [u8],
) -> impl FnOnce(io::Error) -> Error + 's {
    super::walk_err(op, base, rel)
}

/// A name as the manifest records it; names that are not valid Unicode have no such form.
fn name_bytes(name: &std::ffi::OsStr, dir: &Path) -> Result<Vec<u8>> {
    name.to_str()
        .map(|n| n.as_bytes().to_vec())
        .ok_or_else(|| Error::NotUnicode {
            path: dir.join(name),
        })
}

/// Names in `dir` with what they are (symlinks not followed).
fn list(dir: &Path) -> Result<Vec<(Vec<u8>, Kind)>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_err("list", dir, b""))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir, b""))?;
        let ft = entry
            .file_type()
            .map_err(io_err("stat", &entry.path(), b""))?;
        let kind = if ft.is_dir() { Kind::Dir } else { Kind::Other };
        out.push((name_bytes(&entry.file_name(), dir)?, kind));
    }
    Ok(out)
}

/// Opens `path` itself (a directory, or a symlink rather than its target) to read or write
/// its attributes.
fn open_attributes(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .access_mode(if write {
            FILE_WRITE_ATTRIBUTES | FILE_READ_ATTRIBUTES
        } else {
            FILE_READ_ATTRIBUTES
        })
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
}

/// What the manifest records of `path`, and how many names its file has.
fn stat_path(path: &Path) -> io::Result<(EntryStat, u32)> {
    let file = open_attributes(path, false)?;
    let info = win32::file_info(&file)?;
    let symlink = info.attributes & FILE_ATTRIBUTE_REPARSE_POINT != 0
        && fs::symlink_metadata(path)?.file_type().is_symlink();
    let stat = EntryStat {
        dev: info.volume,
        ino: info.id,
        size: if info.directory { 0 } else { info.size },
        mtime: timestamp_from_filetime(info.last_write),
        ctime: timestamp_from_filetime(info.change),
        mode: mode_from_attributes(info.attributes, info.directory, symlink),
        uid: 0,
        gid: 0,
    };
    Ok((stat, info.links))
}

/// The system clock now, less the slack of the clock files are stamped with.
fn racy_bound() -> Timestamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(COARSE_CLOCK_SLACK);
    Timestamp {
        sec: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        nsec: now.subsec_nanos(),
    }
}

/// The manifest's time, once the clock has surely passed every recorded change time (see
/// the module docs of `portable`).
fn settle(entries: &[ManifestEntry]) -> Timestamp {
    let newest = entries.iter().map(|e| e.stat.ctime.max(e.stat.mtime)).max();
    let deadline = Instant::now() + CLOCK_WAIT_MAX;
    loop {
        let now = racy_bound();
        if newest.is_none_or(|n| now > n) || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(CLOCK_POLL);
    }
}

pub(super) fn manifest_of(dir: &Path) -> Result<Manifest> {
    let taken = racy_bound();
    let entries = walk::entries(dir, PathDir(dir.to_path_buf()))?;
    settle(&entries);
    Ok(Manifest::new(taken, entries))
}

/// Windows has no handle on which to read the filesystem's clock: the system clock's
/// margin stands in, as in [`manifest_of`].
pub(super) fn manifest_of_written(dir: &Path) -> Result<Manifest> {
    manifest_of(dir)
}

/// Whether the volume of `dir` clones blocks (ReFS), asked on a probe file.
pub(super) fn can_clone(dir: &Path) -> bool {
    let probe = dir.join(format!(".clone-probe-{}", std::process::id()));
    let clones = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&probe)
        .is_ok_and(|file| win32::volume_clones(&file));
    let _ = fs::remove_file(&probe);
    clones
}

pub(super) fn diff(dir: &Path, manifest: &Manifest) -> Result<Vec<Change>> {
    diff_walk(dir, PathDir(dir.to_path_buf()), manifest)
}

/// A directory reached by its path.
struct PathDir(PathBuf);

impl WalkDir for PathDir {
    fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.0)? {
            let name = entry?.file_name();
            let name = name.to_str().ok_or_else(|| {
                io::Error::new(ErrorKind::InvalidData, "a name is not valid Unicode")
            })?;
            out.push(name.as_bytes().to_vec());
        }
        Ok(out)
    }

    fn stat(&self, name: &[u8]) -> io::Result<Option<EntryStat>> {
        match stat_path(&join(&self.0, name)) {
            Ok((stat, _)) => Ok(Some(stat)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, name: &[u8]) -> io::Result<Option<PathDir>> {
        let path = join(&self.0, name);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Some(PathDir(path))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

struct Materializer<'a> {
    layers: &'a [&'a Path],
    target: &'a Path,
    /// Per layer: whether block cloning is still worth trying (ReFS only).
    clone: Vec<bool>,
    /// Manifest entries of the names materialised from each multiply-linked layer file
    /// (layer, volume, file id): later names link to the first.
    links: HashMap<(usize, u64, u64), Vec<usize>>,
    entries: Vec<ManifestEntry>,
    report: MaterializeReport,
}

pub(super) fn materialize(
    layers: &[&Path],
    target: &Path,
) -> Result<(Manifest, MaterializeReport)> {
    prepare_target(target)?;
    let mut m = Materializer {
        layers,
        target,
        clone: vec![true; layers.len()],
        links: HashMap::new(),
        entries: Vec::new(),
        report: MaterializeReport::default(),
    };
    let sources: Vec<(usize, PathBuf)> = layers
        .iter()
        .enumerate()
        .rev()
        .map(|(i, p)| (i, p.to_path_buf()))
        .collect();
    m.merge_dir(&sources, b"")?;
    // The root's attributes and time come from the top layer, last.
    if let Some((_, top)) = sources.first() {
        copy_dir_attributes(top, target, target, b"")?;
    }
    let taken = settle(&m.entries);
    m.report.entries = m.entries.len() as u64;
    Ok((Manifest::new(taken, m.entries), m.report))
}

/// Creates the target or checks that it is an empty directory.
fn prepare_target(target: &Path) -> Result<()> {
    match fs::create_dir(target) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create the directory", target, b"")(e)),
    }
    let mut entries = fs::read_dir(target).map_err(|_| Error::TargetNotEmpty {
        path: target.to_path_buf(),
    })?;
    if entries.next().is_some() {
        return Err(Error::TargetNotEmpty {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

/// Gives directory `to` the read-only attribute and modification time of `from`.
fn copy_dir_attributes(from: &Path, to: &Path, target: &Path, rel: &[u8]) -> Result<()> {
    let meta = fs::metadata(from).map_err(io_err("stat", from, b""))?;
    let modified = meta.modified().map_err(io_err("stat", from, b""))?;
    let file = open_attributes(to, true).map_err(io_err("open", target, rel))?;
    file.set_modified(modified)
        .map_err(io_err("set the times of", target, rel))?;
    drop(file);
    fs::set_permissions(to, meta.permissions()).map_err(io_err("set the mode of", target, rel))
}

impl Materializer<'_> {
    /// Merges one directory: `sources` are (layer, directory) of the layers contributing to
    /// it, top-first; `prefix` is its path.
    fn merge_dir(&mut self, sources: &[(usize, PathBuf)], prefix: &[u8]) -> Result<()> {
        let mut picker = Picker::default();
        let mut used = sources.len();
        for (pos, (layer, dir)) in sources.iter().enumerate() {
            let hides_below =
                picker
                    .add_layer(pos, false, list(dir)?)
                    .map_err(|name| Error::BadWhiteout {
                        path: join(self.layers[*layer], &super::child_path(prefix, &name)),
                    })?;
            if hides_below {
                used = pos + 1;
                break;
            }
        }
        let sources = &sources[..used];
        for (name, pick) in picker.picks {
            let path = super::child_path(prefix, &name);
            match pick {
                Pick::Hidden => {}
                Pick::Leaf(pos) => {
                    let (layer, dir) = &sources[pos];
                    self.leaf(*layer, &join(dir, &name), &path)?;
                }
                Pick::Dir { from, .. } => {
                    let children: Vec<(usize, PathBuf)> = from
                        .iter()
                        .map(|&pos| (sources[pos].0, join(&sources[pos].1, &name)))
                        .collect();
                    self.dir(&children, &path)?;
                }
            }
        }
        Ok(())
    }

    fn dir(&mut self, children: &[(usize, PathBuf)], path: &[u8]) -> Result<()> {
        let out = join(self.target, path);
        fs::create_dir(&out).map_err(io_err("create the directory", self.target, path))?;
        let index = self.entries.len();
        self.entries.push(ManifestEntry {
            path: path.to_vec(),
            stat: EntryStat::default(),
        });
        self.merge_dir(children, path)?;
        // Its own attributes last: adding entries would change its time.
        copy_dir_attributes(&children[0].1, &out, self.target, path)?;
        self.entries[index].stat = stat_path(&out)
            .map_err(io_err("stat", self.target, path))?
            .0;
        Ok(())
    }

    fn leaf(&mut self, layer: usize, from: &Path, path: &[u8]) -> Result<()> {
        let (target, base) = (self.target, self.layers[layer]);
        let to = join(target, path);
        let meta = fs::symlink_metadata(from).map_err(io_err("stat", base, path))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let link = fs::read_link(from).map_err(io_err("read the symlink", base, path))?;
            let made = if ft.is_symlink_dir() {
                std::os::windows::fs::symlink_dir(&link, &to)
            } else {
                std::os::windows::fs::symlink_file(&link, &to)
            };
            made.map_err(io_err("create the symlink", target, path))?;
        } else if ft.is_file() {
            let (stat, links) = stat_path(from).map_err(io_err("stat", base, path))?;
            let key = (links > 1).then_some((layer, stat.dev, stat.ino));
            if let Some(key) = key
                && let Some(first) = self.links.get(&key).and_then(|names| names.first())
            {
                let first = join(target, &self.entries[*first].path.clone());
                fs::hard_link(&first, &to).map_err(io_err("create the hard link", target, path))?;
                let index = self.record(path)?;
                // Linking changed the file's change time: every name must record the new one.
                let stat = self.entries[index].stat;
                let names = self.links.get_mut(&key).expect("looked up above");
                names.push(index);
                for &i in names.iter() {
                    self.entries[i].stat = stat;
                }
                self.report.hardlinked += 1;
                return Ok(());
            }
            let bytes = self.file(layer, from, &to, meta.len(), path)?;
            self.report.bytes += bytes;
            let modified = meta.modified().map_err(io_err("stat", base, path))?;
            let file = OpenOptions::new()
                .write(true)
                .open(&to)
                .map_err(io_err("open", target, path))?;
            file.set_modified(modified)
                .map_err(io_err("set the times of", target, path))?;
            drop(file);
            fs::set_permissions(&to, meta.permissions()).map_err(io_err(
                "set the mode of",
                target,
                path,
            ))?;
            let index = self.record(path)?;
            if let Some(key) = key {
                self.links.insert(key, vec![index]);
            }
            return Ok(());
        }
        // Devices, fifos and sockets do not exist here.
        self.record(path).map(|_| ())
    }

    /// Places the data of `from` at `to` (created): a block clone on ReFS, else a copy.
    /// Returns the bytes placed.
    fn file(&mut self, layer: usize, from: &Path, to: &Path, len: u64, path: &[u8]) -> Result<u64> {
        let (target, base) = (self.target, self.layers[layer]);
        if len > 0 && self.clone[layer] {
            let src = File::open(from).map_err(io_err("open", base, path))?;
            let dst = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(to)
                .map_err(io_err("create", target, path))?;
            match win32::clone_range(&src, &dst, len) {
                Ok(true) => {
                    self.report.reflinked += 1;
                    return Ok(len);
                }
                // Not ReFS (or another volume): stop asking for this layer.
                Ok(false) => self.clone[layer] = false,
                // Only this file cannot be cloned (a sparse or encrypted source, say).
                Err(_) => {}
            }
            drop(dst);
            fs::remove_file(to).map_err(io_err("remove", target, path))?;
        }
        let copied = fs::copy(from, to).map_err(io_err("copy", target, path))?;
        self.report.copied += 1;
        Ok(copied)
    }

    /// Records the stat of `path` in the target.
    fn record(&mut self, path: &[u8]) -> Result<usize> {
        let (stat, _) =
            stat_path(&join(self.target, path)).map_err(io_err("stat", self.target, path))?;
        self.entries.push(ManifestEntry {
            path: path.to_vec(),
            stat,
        });
        Ok(self.entries.len() - 1)
    }
}

mod win32 {
    //! The two Windows calls std does not wrap: per-handle file information (identity,
    //! link count, change time) and `DeviceIoControl` for block cloning.

    use std::fs::File;
    use std::io;
    use std::mem::size_of;
    use std::os::windows::io::AsRawHandle;

    use windows_sys::Win32::Storage::FileSystem::{
        FILE_BASIC_INFO, FILE_ID_INFO, FILE_INFO_BY_HANDLE_CLASS, FILE_STANDARD_INFO,
        FileBasicInfo, FileIdInfo, FileStandardInfo, GetFileInformationByHandleEx,
    };
    use windows_sys::Win32::System::IO::DeviceIoControl;
    use windows_sys::Win32::System::Ioctl::{
        DUPLICATE_EXTENTS_DATA, FSCTL_DUPLICATE_EXTENTS_TO_FILE, FSCTL_GET_INTEGRITY_INFORMATION,
        FSCTL_GET_INTEGRITY_INFORMATION_BUFFER,
    };

    /// What the manifest needs to know about an open file.
    pub(super) struct FileInfo {
        pub(super) volume: u64,
        /// The low 64 bits of the 128-bit file id (all of it on NTFS).
        pub(super) id: u64,
        pub(super) size: u64,
        pub(super) links: u32,
        pub(super) directory: bool,
        pub(super) attributes: u32,
        pub(super) last_write: i64,
        pub(super) change: i64,
    }

    /// Plain C structs that `GetFileInformationByHandleEx` fills, by class.
    trait InfoClass: Copy + Default {
        const CLASS: FILE_INFO_BY_HANDLE_CLASS;
    }
    impl InfoClass for FILE_BASIC_INFO {
        const CLASS: FILE_INFO_BY_HANDLE_CLASS = FileBasicInfo;
    }
    impl InfoClass for FILE_STANDARD_INFO {
        const CLASS: FILE_INFO_BY_HANDLE_CLASS = FileStandardInfo;
    }
    impl InfoClass for FILE_ID_INFO {
        const CLASS: FILE_INFO_BY_HANDLE_CLASS = FileIdInfo;
    }

    pub(super) fn file_info(file: &File) -> io::Result<FileInfo> {
        let basic: FILE_BASIC_INFO = info(file)?;
        let standard: FILE_STANDARD_INFO = info(file)?;
        let id: FILE_ID_INFO = info(file)?;
        let mut low = [0u8; 8];
        low.copy_from_slice(&id.FileId.Identifier[..8]);
        Ok(FileInfo {
            volume: id.VolumeSerialNumber,
            id: u64::from_le_bytes(low),
            size: u64::try_from(standard.EndOfFile).unwrap_or(0),
            links: standard.NumberOfLinks,
            directory: standard.Directory,
            attributes: basic.FileAttributes,
            last_write: basic.LastWriteTime,
            change: basic.ChangeTime,
        })
    }

    /// One class of information about an open file.
    #[allow(unsafe_code, reason = "Win32 FFI: std has no wrapper for this call")]
    fn info<T: InfoClass>(file: &File) -> io::Result<T> {
        let mut out = T::default();
        let len = u32::try_from(size_of::<T>()).expect("info structs are small");
        // SAFETY: the handle is open for as long as `file` is borrowed; `out` is a plain C
        // struct of the layout `T::CLASS` names, writable for `len` bytes, and the call
        // writes nothing beyond it.
        let ok = unsafe {
            GetFileInformationByHandleEx(file.as_raw_handle(), T::CLASS, (&raw mut out).cast(), len)
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(out)
    }

    /// `DeviceIoControl` with a plain C struct in and one out (either may be a unit).
    #[allow(unsafe_code, reason = "Win32 FFI: std has no wrapper for this call")]
    fn ioctl<I: Copy, O: Copy + Default>(file: &File, code: u32, input: &I) -> io::Result<O> {
        let mut out = O::default();
        let mut returned = 0u32;
        let in_len = u32::try_from(size_of::<I>()).expect("ioctl structs are small");
        let out_len = u32::try_from(size_of::<O>()).expect("ioctl structs are small");
        // SAFETY: the handle is open for as long as `file` is borrowed; `input` and `out` are
        // plain C structs readable / writable for the lengths given; the call is synchronous
        // (no OVERLAPPED), so nothing uses the buffers after it returns.
        let ok = unsafe {
            DeviceIoControl(
                file.as_raw_handle(),
                code,
                (&raw const *input).cast(),
                in_len,
                if out_len == 0 {
                    std::ptr::null_mut()
                } else {
                    (&raw mut out).cast()
                },
                out_len,
                &raw mut returned,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(out)
    }

    /// Whether the volume holding `file` can clone blocks: only ReFS answers this.
    pub(super) fn volume_clones(file: &File) -> bool {
        ioctl::<_, FSCTL_GET_INTEGRITY_INFORMATION_BUFFER>(
            file,
            FSCTL_GET_INTEGRITY_INFORMATION,
            &(),
        )
        .is_ok()
    }

    /// Makes `dst` (empty, open for writing) share the first `len` bytes of `src`'s blocks
    /// (ReFS block cloning). `Ok(false)` when the volume cannot clone at all.
    pub(super) fn clone_range(src: &File, dst: &File, len: u64) -> io::Result<bool> {
        // Only ReFS answers this; it also gives the cluster size clone ranges align to.
        let integrity: FSCTL_GET_INTEGRITY_INFORMATION_BUFFER =
            match ioctl(src, FSCTL_GET_INTEGRITY_INFORMATION, &()) {
                Ok(info) => info,
                Err(_) => return Ok(false),
            };
        let cluster = u64::from(integrity.ClusterSizeInBytes.max(4096));
        dst.set_len(len)?;
        // At most 4 GiB per call; the last range is rounded up to a whole cluster.
        let step = (1u64 << 31) / cluster * cluster;
        let mut offset = 0;
        while offset < len {
            let count = (len - offset).min(step).div_ceil(cluster) * cluster;
            let request = DUPLICATE_EXTENTS_DATA {
                FileHandle: src.as_raw_handle(),
                SourceFileOffset: i64::try_from(offset).map_err(io::Error::other)?,
                TargetFileOffset: i64::try_from(offset).map_err(io::Error::other)?,
                ByteCount: i64::try_from(count).map_err(io::Error::other)?,
            };
            ioctl::<_, ()>(dst, FSCTL_DUPLICATE_EXTENTS_TO_FILE, &request)?;
            offset += count;
        }
        Ok(true)
    }
}
