//! The Windows extraction engine behind [`apply_tar`](super::apply_tar).
//!
//! std offers no handle-relative calls on Windows, so paths are resolved here from the
//! target's canonical (`\\?\`) path, one component at a time, with `symlink_metadata`: the
//! same rules as on Unix, checked by path instead of held by handles. The target must not be
//! changed by anyone else during an extraction (as for a portable checkout); what the layer
//! says cannot make it write outside the target.
//!
//! Path safety, whatever the tar says:
//! - every component must be a valid Windows name (`winname.rs`): no `\`, `:`,
//!   `<>"|?*`, control characters, trailing dot or space, device names, non-UTF-8 bytes;
//! - two paths of one layer that differ only by case (`A/x` and `a/y`) are refused, since
//!   Windows would merge them; a path that differs by case from a *lower* layer's replaces
//!   or merges with it, as it would on a case-insensitive Unix file system. 8.3 short names
//!   (`PROGRA~1`) are ordinary names here: they can only alias paths inside the target;
//! - symlinks and junctions met in parents are followed inside the target only, like
//!   `openat2(RESOLVE_IN_ROOT)` on Unix: from where the link is, with `..` stopping at the
//!   target's root. A target naming a drive, a UNC or device path (which is what Windows
//!   makes of a rooted `/usr/lib`, and what junctions hold) or a component Windows would
//!   read differently is refused; no directory is created past a followed link;
//! - files are created with `CREATE_NEW` and `FILE_FLAG_OPEN_REPARSE_POINT` (never through a
//!   link); an existing entry is removed first, links as links, never followed.
//!
//! What each entry becomes:
//! - files: data, then the mtime on the handle, then the read-only attribute when the mode
//!   has no owner write bit. Other mode bits, owners ([`Ownership::Restore`] is an error) and
//!   extended attributes (reported in [`ExtractReport::skipped`]) have no Windows form;
//!   setuid and setgid bits follow [`SetuidPolicy`] as on Unix;
//! - directories: mtimes set in a final pass, deepest first; never read-only (Windows ignores
//!   the attribute on directories for access, and it would block their removal);
//! - symlinks: targets get `\` for `/`; a rooted target (`/usr/lib`) is made absolute on
//!   the current drive by Windows, so it points outside the target at run time (as an
//!   absolute link does outside a chroot). A Windows symlink is a file or a directory symlink:
//!   a directory one when the target ends in `/` or resolves inside the target to a
//!   directory once the whole layer is extracted (links are created at once with the kind
//!   known then, and recreated at the end if it changed); a file one otherwise (also when
//!   the target is only in a lower layer, or outside). Creating them needs the symlink
//!   privilege or developer mode; without, the error says so and names the entry;
//! - hard links: to an earlier regular file inside the target, never to a symlink (Windows
//!   might follow it and link a file outside);
//! - devices and fifos follow [`DevicePolicy`]: refused, skipped, or (`Create`) an error;
//! - whiteouts: [`WhiteoutMode::Apply`] and [`WhiteoutMode::Keep`] as on Unix (kept
//!   markers are never read-only); [`WhiteoutMode::Overlay`] is Linux-only and an error.
//!
//! Files are written by the reading thread (no writer pool yet); with `sync` each file is
//! flushed (`FlushFileBuffers`), since Windows has no `syncfs` and NTFS journals metadata.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::windows::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::core::{
    self, DirCache, Host, Ledger, MAX_SYMLINK_HOPS, Made, Xattrs, entry_error, stream_problem,
};
use super::{ExtractOptions, ExtractReport, Ownership, WhiteoutMode};
use crate::tar::{TarReader, Whiteout, split_parent, whiteout};
use crate::winname::{CaseIndex, check_component, fold, split_target};
use crate::{Entry, EntryKind, EntryName, EntryProblem, Error, Metadata, Result};

/// What Windows can hold: no device nodes or fifos, no extended attributes.
const HOST: Host = Host {
    no_nodes: Some("device nodes and fifos cannot be created on Windows"),
    xattrs: Xattrs::Dropped("extended attributes not restored on Windows"),
};
/// `CreateFile` flags: open directories too, and a link itself rather than its target.
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
/// Access rights: read and write attributes (times, read-only) only.
const FILE_READ_ATTRIBUTES: u32 = 0x80;
const FILE_WRITE_ATTRIBUTES: u32 = 0x100;
const ERROR_PRIVILEGE_NOT_HELD: i32 = 1314;
/// FILETIME counts 100 ns ticks from 1601 in an `i64` and gives 0 a special meaning;
/// mtimes are clamped to what it holds.
const MIN_MTIME: i64 = -11_644_473_599;
const MAX_MTIME: i64 = 910_692_730_000;

pub(super) fn apply<R: Read>(input: R, dir: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
    if opts.ownership == Ownership::Restore {
        return Err(Error::Unsupported {
            what: "restoring file owners (Ownership::Restore)",
        });
    }
    if opts.whiteouts == WhiteoutMode::Overlay {
        return Err(Error::Unsupported {
            what: "recording whiteouts for overlayfs (WhiteoutMode::Overlay)",
        });
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create the directory", dir, e)),
    }
    // The caller chose the directory (it may be reached through links); everything below
    // it is resolved by this engine. Verbatim, so long paths work and nothing is rewritten.
    let root = fs::canonicalize(dir).map_err(|e| Error::io("open the directory", dir, e))?;
    if !fs::metadata(&root)
        .map_err(|e| Error::io("stat", dir, e))?
        .is_dir()
    {
        return Err(Error::io(
            "open the directory",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut ex = Extractor {
        opts,
        root,
        cache: DirCache::new(),
        made: Ledger::default(),
        case: CaseIndex::default(),
        dirs: Vec::new(),
        links: Vec::new(),
        root_meta: None,
        report: ExtractReport::default(),
        buf: vec![0; 256 << 10],
    };
    let mut reader = TarReader::new(input, &opts.limits);
    ex.run(&mut reader)?;
    ex.fix_symlinks()?;
    ex.finish_dirs()?;
    reader.finish()?;
    Ok(ex.report)
}

struct Extractor<'a> {
    opts: &'a ExtractOptions,
    /// The target, canonical.
    root: PathBuf,
    /// Real directory paths by normalised layer path (possibly reached through symlinks).
    cache: DirCache<Vec<u8>, PathBuf>,
    /// What this layer made, by hash of the case-folded path.
    made: Ledger,
    case: CaseIndex,
    /// Directories whose mtime is set last, after their contents.
    dirs: Vec<(Vec<u8>, Metadata)>,
    /// Symlinks whose kind (file or directory) is checked again at the end.
    links: Vec<PendingLink>,
    root_meta: Option<Metadata>,
    report: ExtractReport,
    buf: Vec<u8>,
}

/// A symlink created by this layer, with the kind it was given.
struct PendingLink {
    path: Vec<u8>,
    /// The target as the layer has it (`/`-separated).
    target: String,
    as_dir: bool,
    meta: Metadata,
}

/// The key of a layer path in [`Extractor::made`]: case-folded, since Windows compares
/// names that way.
fn key(path: &[u8]) -> u128 {
    let folded = fold(&String::from_utf8_lossy(path));
    let hash = blake3::hash(folded.as_bytes());
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

fn io_problem(op: &'static str) -> impl Fn(io::Error) -> EntryProblem {
    move |source| EntryProblem::Io { op, source }
}

/// Checks every component of a normalised layer path; returns it as text.
fn check_path(path: &[u8]) -> Result<&str, EntryProblem> {
    if path.is_empty() {
        return Ok("");
    }
    for component in path.split(|&b| b == b'/') {
        check_component(component)?;
    }
    Ok(std::str::from_utf8(path).expect("every component is UTF-8"))
}

fn join_child(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

fn is_under(path: &[u8], dir: &[u8]) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

impl Extractor<'_> {
    fn run<R: Read>(&mut self, reader: &mut TarReader<R>) -> Result<()> {
        while let Some(entry) = reader.next_entry()? {
            self.report.entries += 1;
            let raw_name = reader.current_raw_name().to_vec();
            self.apply_entry(entry, reader)
                .map_err(|problem| entry_error(&raw_name, problem))?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        mut entry: Entry,
        reader: &mut TarReader<R>,
    ) -> Result<(), EntryProblem> {
        let text = check_path(&entry.path)?.to_owned();
        let class = whiteout(&entry.path)?;
        if class.is_some() {
            // A kept marker is no real file: its mode (0 in layers this crate writes) would
            // make it read-only, which only gets in the way of removing the unpacked layer.
            entry.meta.mode |= 0o200;
        }
        if class.is_some() && self.opts.whiteouts == WhiteoutMode::Apply {
            self.made.marker(key(&entry.path))?;
        }
        match (class, self.opts.whiteouts) {
            (Some(Whiteout::Remove { parent, name }), WhiteoutMode::Apply) => {
                check_component(name)?;
                if !parent.is_empty() {
                    self.case.insert(check_path(parent)?)?;
                }
                return self.remove(parent, name);
            }
            (Some(Whiteout::Opaque { dir }), WhiteoutMode::Apply) => {
                if !dir.is_empty() {
                    self.case.insert(check_path(dir)?)?;
                }
                return self.opaque(dir);
            }
            (Some(_), WhiteoutMode::Overlay) => {
                return Err(EntryProblem::NotSupportedHere(
                    "overlayfs whiteouts cannot be recorded on Windows",
                ));
            }
            (Some(_), WhiteoutMode::Keep) | (None, _) => {}
        }
        if entry.path.is_empty() {
            if self.root_meta.is_some() {
                return Err(EntryProblem::Duplicate);
            }
            core::check_policies(self.opts, HOST, &mut entry, &mut self.report)?;
            self.root_meta = Some(entry.meta);
            return Ok(());
        }
        self.case.insert(&text)?;
        let k = key(&entry.path);
        self.made.check_new(k, &entry.kind)?;
        if !core::check_policies(self.opts, HOST, &mut entry, &mut self.report)? {
            return Ok(());
        }
        let (parent_path, name) = split_parent(&entry.path);
        let name = std::str::from_utf8(name).expect("checked above");
        let parent = self
            .dir_path(parent_path, true)?
            .expect("created when missing");
        let path = parent.join(name);
        match &entry.kind {
            EntryKind::File => {
                self.made.record(k, Made::File);
                self.write_file(&path, &entry, reader)?;
                self.report.files += 1;
                self.report.bytes += entry.size;
            }
            EntryKind::Dir => {
                self.make_dir(&path, &entry)?;
                self.made.record(k, Made::Dir);
                self.report.dirs += 1;
            }
            EntryKind::Symlink(target) => {
                let target = std::str::from_utf8(target)
                    .map_err(|_| {
                        EntryProblem::NotSupportedHere(
                            "a symlink target that is not UTF-8 has no Windows form",
                        )
                    })?
                    .to_owned();
                let as_dir = self.target_is_dir(&entry.path, &target);
                make_symlink(&path, &target, as_dir)?;
                set_mtime(&path, &entry.meta, false)?;
                self.invalidate(&entry.path);
                self.made.record(k, Made::Symlink);
                self.links.push(PendingLink {
                    path: entry.path.clone(),
                    target,
                    as_dir,
                    meta: entry.meta.clone(),
                });
                self.report.symlinks += 1;
            }
            EntryKind::Hardlink(target) => {
                self.hardlink(&path, target)?;
                self.invalidate(&entry.path);
                self.made.record(k, Made::File);
                self.report.hardlinks += 1;
            }
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => {
                unreachable!("check_policies never lets a device or fifo through on Windows")
            }
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        path: &Path,
        entry: &Entry,
        reader: &mut TarReader<R>,
    ) -> Result<(), EntryProblem> {
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
                .open(path)
        };
        let mut file = retry_replacing(path, create).map_err(io_problem("create the file"))?;
        let mut left = entry.size;
        while left > 0 {
            let n = reader.read_data(&mut self.buf).map_err(stream_problem)?;
            file.write_all(&self.buf[..n])
                .map_err(io_problem("write"))?;
            left -= n as u64;
        }
        if self.opts.sync {
            file.sync_all().map_err(io_problem("flush"))?;
        }
        file.set_modified(system_time(&entry.meta))
            .map_err(io_problem("set the mtime"))?;
        if entry.meta.mode & 0o200 == 0 {
            let mut perms = file
                .metadata()
                .map_err(io_problem("stat the file"))?
                .permissions();
            perms.set_readonly(true);
            file.set_permissions(perms)
                .map_err(io_problem("set the read-only attribute"))?;
        }
        Ok(())
    }

    fn make_dir(&mut self, path: &Path, entry: &Entry) -> Result<(), EntryProblem> {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) => {
                match fs::symlink_metadata(path) {
                    // A directory of a lower layer: merge with it.
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_entry(path).map_err(io_problem("replace the existing entry"))?;
                        self.invalidate(&entry.path);
                        fs::create_dir(path).map_err(io_problem("create the directory"))?;
                    }
                    Err(_) => return Err(io_problem("create the directory")(e)),
                }
            }
        }
        self.cache.insert(entry.path.clone(), path.to_path_buf());
        self.dirs.push((entry.path.clone(), entry.meta.clone()));
        Ok(())
    }

    fn hardlink(&mut self, path: &Path, target: &[u8]) -> Result<(), EntryProblem> {
        let bad = || EntryProblem::BadHardlink(EntryName(target.to_vec()));
        if matches!(
            self.made.get(key(target)),
            Some(Made::Dir | Made::ImplicitDir)
        ) {
            return Err(bad());
        }
        check_path(target).map_err(|_| bad())?;
        let (target_parent, target_name) = split_parent(target);
        let Some(dir) = self.dir_path(target_parent, false).map_err(|_| bad())? else {
            return Err(bad());
        };
        let from = dir.join(std::str::from_utf8(target_name).expect("checked above"));
        // Only a regular file: Windows could follow a link and link a file outside.
        match fs::symlink_metadata(&from) {
            Ok(m) if m.file_type().is_file() => {}
            _ => return Err(bad()),
        }
        retry_replacing(path, || fs::hard_link(&from, path)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                bad()
            } else {
                io_problem("create the hard link")(e)
            }
        })
    }

    /// A `.wh.<name>` whiteout: remove `name` from lower layers.
    fn remove(&mut self, parent: &[u8], name: &[u8]) -> Result<(), EntryProblem> {
        let path = join_child(parent, name);
        self.made.check_whiteout(key(&path))?;
        self.report.whiteouts += 1;
        let Some(dir) = self.dir_path(parent, false)? else {
            return Ok(()); // nothing below to hide
        };
        let name = std::str::from_utf8(name).expect("checked by the caller");
        match remove_entry(&dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_problem("apply the whiteout")(e)),
        }
        self.cache.clear();
        Ok(())
    }

    /// A `.wh..wh..opq` marker: hide every lower-layer child of `dir`.
    fn opaque(&mut self, dir: &[u8]) -> Result<(), EntryProblem> {
        self.report.whiteouts += 1;
        self.made.walked(key(dir));
        let Some(real) = self.dir_path(dir, false)? else {
            return Ok(()); // nothing below to hide
        };
        let mut names = Vec::new();
        for item in fs::read_dir(&real).map_err(io_problem("list the opaque directory"))? {
            names.push(
                item.map_err(io_problem("list the opaque directory"))?
                    .file_name(),
            );
        }
        for name in names {
            // A name that is not Unicode cannot be one this layer made.
            let ours = name
                .to_str()
                .is_some_and(|n| self.made.contains(key(&join_child(dir, n.as_bytes()))));
            if ours {
                continue;
            }
            match remove_entry(&real.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_problem("apply the opaque marker")(e)),
            }
        }
        self.cache.clear();
        Ok(())
    }

    fn invalidate(&mut self, path: &[u8]) {
        if self.cache.any_key(|k| k == path || is_under(k, path)) {
            self.cache.clear();
        }
    }

    /// The real path of the directory at layer path `path` (normalised, checked), resolved
    /// inside the root. With `create`, missing directories are made as long as no symlink
    /// was followed; without, a missing directory gives `None`.
    fn dir_path(&mut self, path: &[u8], create: bool) -> Result<Option<PathBuf>, EntryProblem> {
        if path.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(real) = self.cache.get(path) {
            return Ok(Some(real));
        }
        let components = check_path(path)?.split('/').map(str::to_owned).collect();
        let found = self.resolve(components, create, true)?;
        if let Some(real) = &found {
            self.cache.insert(path.to_vec(), real.clone());
        }
        Ok(found)
    }

    /// Resolves `components` from the root the way Windows would if the root were a drive's
    /// root: symlinks and junctions are read and followed here, inside the root. With
    /// `track`, directories walked through lexically are recorded in [`Self::made`].
    fn resolve(
        &mut self,
        mut queue: VecDeque<String>,
        create: bool,
        track: bool,
    ) -> Result<Option<PathBuf>, EntryProblem> {
        let mut stack = vec![self.root.clone()];
        // The layer path walked so far, while no symlink was followed.
        let mut lexical = Some(String::new());
        let mut hops = 0;
        while let Some(component) = queue.pop_front() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    lexical = None;
                    continue;
                }
                _ => {}
            }
            if let Some(lex) = lexical.as_mut() {
                if !lex.is_empty() {
                    lex.push('/');
                }
                lex.push_str(&component);
                self.made.check_parent(key(lex.as_bytes()))?;
            }
            let next = stack.last().expect("never empty").join(&component);
            let mut created = false;
            loop {
                match fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() => {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(EntryProblem::Io {
                                op: "resolve a parent path",
                                source: io::Error::other("too many levels of symlinks"),
                            });
                        }
                        let target =
                            fs::read_link(&next).map_err(io_problem("read a parent symlink"))?;
                        let Some((absolute, parts)) = target.to_str().and_then(split_target) else {
                            return Err(EntryProblem::SymlinkOutsideRoot(
                                target.to_string_lossy().into_owned(),
                            ));
                        };
                        if absolute {
                            stack.truncate(1);
                        }
                        for part in parts.into_iter().rev() {
                            queue.push_front(part.to_owned());
                        }
                        lexical = None;
                        break;
                    }
                    Ok(m) if m.is_dir() => {
                        if let Some(lex) = lexical.as_ref().filter(|_| track) {
                            self.made.walked(key(lex.as_bytes()));
                        }
                        stack.push(next);
                        break;
                    }
                    Ok(_) => return Err(EntryProblem::ParentNotDirectory),
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            && create
                            && lexical.is_some()
                            && !created =>
                    {
                        match fs::create_dir(&next) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                            Err(e) => return Err(io_problem("create a parent directory")(e)),
                        }
                        // Look again: it is ours now, or someone else's made meanwhile.
                        created = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                    // Missing past a followed symlink: nothing is created there, as on Unix.
                    Err(e) => return Err(io_problem("resolve a parent path component")(e)),
                }
            }
        }
        Ok(stack.pop())
    }

    /// Whether the symlink at layer path `link` to `target` points to a directory inside
    /// the root (or says it does with a trailing `/`).
    fn target_is_dir(&mut self, link: &[u8], target: &str) -> bool {
        if target.ends_with('/') {
            return true;
        }
        let Some((absolute, parts)) = split_target(target) else {
            return false;
        };
        let mut components: VecDeque<String> = VecDeque::new();
        if !absolute {
            let parent = String::from_utf8_lossy(split_parent(link).0).into_owned();
            components.extend(parent.split('/').map(str::to_owned));
        }
        components.extend(parts.into_iter().map(str::to_owned));
        matches!(self.resolve(components, false, false), Ok(Some(_)))
    }

    /// Gives each symlink of this layer the kind its target has now that every entry is in
    /// place (a link may come before its target in the layer).
    fn fix_symlinks(&mut self) -> Result<()> {
        for link in std::mem::take(&mut self.links) {
            let as_dir = self.target_is_dir(&link.path, &link.target);
            if as_dir == link.as_dir {
                continue;
            }
            let fail = |p| Error::entry(&link.path, p);
            let (parent, name) = split_parent(&link.path);
            let Some(dir) = self.dir_path(parent, false).map_err(fail)? else {
                continue;
            };
            let path = dir.join(std::str::from_utf8(name).expect("checked when created"));
            // Only the link this layer made, if nothing replaced it since.
            let same = fs::symlink_metadata(&path)
                .is_ok_and(|m| m.file_type().is_symlink_dir() == link.as_dir)
                && fs::read_link(&path)
                    .is_ok_and(|t| t.as_os_str() == link.target.replace('/', "\\").as_str());
            if !same {
                continue;
            }
            remove_entry(&path)
                .map_err(io_problem("replace the symlink"))
                .map_err(fail)?;
            make_symlink(&path, &link.target, as_dir).map_err(fail)?;
            set_mtime(&path, &link.meta, false).map_err(fail)?;
        }
        Ok(())
    }

    /// Sets directory mtimes, deepest first, once their contents are in place.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.iter().rev() {
            // A later whiteout or replacement may have removed it.
            let Some(real) = self
                .dir_path(path, false)
                .map_err(|p| Error::entry(path, p))?
            else {
                continue;
            };
            set_mtime(&real, meta, true).map_err(|p| Error::entry(path, p))?;
        }
        if let Some(meta) = self.root_meta.take() {
            set_mtime(&self.root, &meta, true).map_err(|p| Error::entry(b".", p))?;
        }
        Ok(())
    }
}

/// The mtime of `meta` as a `SystemTime` FILETIME can hold.
fn system_time(meta: &Metadata) -> SystemTime {
    let secs = meta.mtime.clamp(MIN_MTIME, MAX_MTIME);
    let nanos = if secs == meta.mtime {
        Duration::from_nanos(u64::from(meta.mtime_nsec.min(999_999_999)))
    } else {
        Duration::ZERO
    };
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// Opens `path` itself (a directory, or a link rather than its target) to read and write
/// its attributes.
fn open_attributes(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .access_mode(FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
}

/// Sets the mtime of the directory (`dir`) or symlink at `path`, on a handle to it.
fn set_mtime(path: &Path, meta: &Metadata, dir: bool) -> Result<(), EntryProblem> {
    let file = open_attributes(path).map_err(io_problem("open to set the mtime"))?;
    if dir
        && !file
            .metadata()
            .map_err(io_problem("stat the directory"))?
            .is_dir()
    {
        return Err(EntryProblem::Io {
            op: "set the mtime",
            source: io::Error::other("it is no longer a directory"),
        });
    }
    file.set_modified(system_time(meta))
        .map_err(io_problem("set the mtime"))
}

/// Creates a file or directory symlink at `path` to `target` (`/`-separated).
fn make_symlink(path: &Path, target: &str, as_dir: bool) -> Result<(), EntryProblem> {
    let target = target.replace('/', "\\");
    let create = || {
        if as_dir {
            std::os::windows::fs::symlink_dir(&target, path)
        } else {
            std::os::windows::fs::symlink_file(&target, path)
        }
    };
    retry_replacing(path, create).map_err(|e| {
        if e.raw_os_error() == Some(ERROR_PRIVILEGE_NOT_HELD) {
            EntryProblem::SymlinkPrivilege(e)
        } else {
            io_problem("create the symlink")(e)
        }
    })?;
    // Wine reports success without creating anything: say so rather than lose the entry.
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(()),
        _ => Err(EntryProblem::NotSupportedHere(
            "the system reported the symlink created, but there is none (Wine does not implement symlinks)",
        )),
    }
}

/// Runs `create`; if it fails and something exists at `path` (from a lower layer), removes
/// that and tries once more.
fn retry_replacing<T>(path: &Path, create: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match create() {
        Err(e) => {
            if fs::symlink_metadata(path).is_err() {
                return Err(e);
            }
            remove_entry(path)?;
            create()
        }
        ok => ok,
    }
}

/// Removes what is at `path`: a link as a link (a directory link or junction with
/// `RemoveDirectory`, never followed), a directory with its contents, a file even when it is
/// read-only.
fn remove_entry(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return if ft.is_symlink_dir() {
            fs::remove_dir(path)
        } else {
            fs::remove_file(path)
        };
    }
    if meta.permissions().readonly() {
        clear_readonly(path)?;
    }
    if ft.is_dir() {
        for item in fs::read_dir(path)? {
            match remove_entry(&item?.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        return fs::remove_dir(path);
    }
    fs::remove_file(path)
}

/// Clears the read-only attribute of the file or directory at `path` (not a link), which
/// Windows requires before removing it.
#[allow(
    clippy::permissions_set_readonly_false,
    reason = "Windows: this clears one attribute, it grants nobody anything"
)]
fn clear_readonly(path: &Path) -> io::Result<()> {
    let file = open_attributes(path)?;
    let mut perms = file.metadata()?.permissions();
    perms.set_readonly(false);
    file.set_permissions(perms)?;
    // With no other attribute left the handle call means "change nothing"; the path call
    // turns 0 into FILE_ATTRIBUTE_NORMAL.
    if file.metadata()?.permissions().readonly() {
        let mut perms = file.metadata()?.permissions();
        perms.set_readonly(false);
        drop(file);
        fs::set_permissions(path, perms)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "windows_tests.rs"]
mod tests;
