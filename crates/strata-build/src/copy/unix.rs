//! Reading copy sources on Unix: resolved inside their root from directory handles, walked
//! through handles, hashed and streamed from the files that were opened.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::PathBuf;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use strata_cas::root::{DirChain, Root};

use super::{FileId, Item, ItemKind, Node, Source, copy_err, join};
use crate::error::{Error, Result};

/// Regular files: never through a symlink; `NONBLOCK` so a fifo swapped in cannot hang the
/// open, `NOCTTY` so a terminal cannot become ours.
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The context or stage directory every source is resolved in.
#[derive(Debug)]
pub(super) struct Tree {
    root: Root,
}

impl Tree {
    pub(super) fn open(dir: &std::path::Path) -> Result<Tree> {
        Ok(Tree {
            root: Root::open(dir)?,
        })
    }

    /// Where `rel` below `src` is, for messages.
    pub(super) fn display(&self, src: &Source, rel: &str) -> PathBuf {
        self.root.display(join(&src.rel, rel).as_bytes())
    }

    /// Calls `emit` for `src` and everything below it, parents first, children in byte
    /// order, skipping names in `exclude`.
    pub(super) fn walk(
        &self,
        src: &Source,
        exclude: &[String],
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let fail = |rel: &str, op: &'static str, e: Errno| {
            let path = self.display(src, rel);
            match e {
                // From `list`: a destination is a string, a name that is not UTF-8 cannot
                // be written as one.
                Errno::ILSEQ => copy_err(
                    &src.spec,
                    format!("{}: a file name in it is not UTF-8", path.display()),
                ),
                e => Error::CopyIo {
                    src: src.spec.clone(),
                    path,
                    op,
                    source: e.into(),
                },
            }
        };
        let located = self
            .root
            .locate(src.rel.as_bytes())
            .map_err(|e| resolve_err(src, e))?;
        let top = match located.name {
            // The source names a directory by following everything (`.`, the root).
            None => located.dir,
            Some(name) => {
                let st =
                    rustix::fs::statat(&located.dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| match e {
                            Errno::NOENT => not_found(src),
                            e => fail("", "stat", e),
                        })?;
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        rustix::fs::openat(&located.dir, name.as_slice(), DIR_FLAGS, Mode::empty())
                            .map_err(|e| fail("", "open", e))?
                    }
                    FileType::Symlink => {
                        emit(
                            symlink_node(&located.dir, &name, String::new(), &st)
                                .map_err(|e| fail("", "read the symlink", e))?,
                        );
                        return Ok(());
                    }
                    FileType::RegularFile => {
                        emit(self.file_node(&located.dir, &name, String::new(), src)?);
                        return Ok(());
                    }
                    _ => return Err(unsupported(self, src, "")),
                }
            }
        };
        let st = rustix::fs::fstat(&top).map_err(|e| fail("", "stat", e))?;
        emit(dir_node(String::new(), &st));
        let mut chain = DirChain::new(top, self.display(src, ""));
        let cas = |source| Error::CopySource {
            src: src.spec.clone(),
            source,
        };
        let names = {
            let fd = chain.current().map_err(cas)?;
            list(fd, exclude).map_err(|e| fail("", "list", e))?
        };
        let mut levels = vec![Level {
            rel: String::new(),
            names,
        }];
        while let Some(level) = levels.last_mut() {
            let Some(name) = level.names.pop() else {
                levels.pop();
                chain.pop();
                continue;
            };
            let rel = join(&level.rel, &name);
            let dir = chain.current().map_err(cas)?;
            let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| fail(&rel, "stat", e))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    chain.push(name.as_bytes()).map_err(cas)?;
                    let fd = chain.current().map_err(cas)?;
                    // The handle's own facts: the entry may have changed since the stat.
                    let st = rustix::fs::fstat(fd).map_err(|e| fail(&rel, "stat", e))?;
                    let names = list(fd, exclude).map_err(|e| fail(&rel, "list", e))?;
                    emit(dir_node(rel.clone(), &st));
                    levels.push(Level { rel, names });
                }
                FileType::RegularFile => {
                    let node = self.file_node(&dir, name.as_bytes(), rel, src)?;
                    emit(node);
                }
                FileType::Symlink => {
                    let node = symlink_node(&dir, name.as_bytes(), rel.clone(), &st)
                        .map_err(|e| fail(&rel, "read the symlink", e))?;
                    emit(node);
                }
                _ => return Err(unsupported(self, src, &rel)),
            }
        }
        Ok(())
    }

    /// Opens a regular file from its parent's handle and hashes what it reads from it.
    fn file_node(&self, dir: &impl AsFd, name: &[u8], rel: String, src: &Source) -> Result<Node> {
        let (file, st) = self.open_file(dir, name, &rel, src)?;
        let facts = Facts::of(&st);
        let mut hasher = blake3::Hasher::new();
        let read = io::copy(&mut file.take(facts.size), &mut hasher).map_err(|e| {
            copy_err(
                &src.spec,
                format!("{}: {e}", self.display(src, &rel).display()),
            )
        })?;
        if read != facts.size {
            return Err(changed(self, src, &rel));
        }
        Ok(Node {
            rel,
            kind: ItemKind::File {
                size: facts.size,
                hash: *hasher.finalize().as_bytes(),
            },
            mode: facts.mode,
            mtime: facts.mtime,
            id: facts.id,
        })
    }

    fn open_file(
        &self,
        dir: &impl AsFd,
        name: &[u8],
        rel: &str,
        src: &Source,
    ) -> Result<(File, Stat)> {
        let fd = rustix::fs::openat(dir, name, FILE_FLAGS, Mode::empty()).map_err(|e| match e {
            // A symlink now, or gone: it changed since it was seen.
            Errno::LOOP | Errno::MLINK | Errno::NOENT => changed(self, src, rel),
            e => copy_err(
                &src.spec,
                format!(
                    "{}: open: {}",
                    self.display(src, rel).display(),
                    io::Error::from(e)
                ),
            ),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| {
            copy_err(
                &src.spec,
                format!(
                    "{}: stat: {}",
                    self.display(src, rel).display(),
                    io::Error::from(e)
                ),
            )
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(changed(self, src, rel));
        }
        Ok((File::from(fd), st))
    }
}

/// Re-opens, in manifest order, what a manifest recorded, checking each is still the entry
/// it was (device and inode; files also their size).
#[derive(Debug)]
pub(super) struct Opener<'a> {
    tree: &'a Tree,
    sources: &'a [Source],
    /// The source being streamed, and the directories open below it.
    at: Option<(usize, DirChain, Vec<String>)>,
}

impl<'a> Opener<'a> {
    pub(super) fn new(tree: &'a Tree, sources: &'a [Source]) -> Opener<'a> {
        Opener {
            tree,
            sources,
            at: None,
        }
    }

    /// Follows the manifest to `item`, which comes right after the previous one; returns the
    /// file to stream when it is one.
    pub(super) fn next(&mut self, item: &Item) -> Result<Option<File>> {
        let index = item.host.src;
        let src = &self.sources[index];
        let tree = self.tree;
        let rel = item.host.rel.as_str();
        if rel.is_empty() {
            self.at = None;
            if matches!(item.kind, ItemKind::Symlink(_)) {
                return Ok(None); // written from the manifest; nothing is read
            }
            let located = tree
                .root
                .locate(src.rel.as_bytes())
                .map_err(|e| resolve_err(src, e))?;
            return match (&item.kind, located.name) {
                (ItemKind::File { size, .. }, Some(name)) => {
                    let (file, st) = tree.open_file(&located.dir, &name, "", src)?;
                    check(tree, src, rel, &st, item.host.id, Some(*size))?;
                    Ok(Some(file))
                }
                (ItemKind::Dir, name) => {
                    let fd = match name {
                        None => located.dir,
                        Some(name) => rustix::fs::openat(
                            &located.dir,
                            name.as_slice(),
                            DIR_FLAGS,
                            Mode::empty(),
                        )
                        .map_err(|_| changed(tree, src, rel))?,
                    };
                    let st = rustix::fs::fstat(&fd).map_err(|_| changed(tree, src, rel))?;
                    check(tree, src, rel, &st, item.host.id, None)?;
                    self.at = Some((index, DirChain::new(fd, tree.display(src, "")), Vec::new()));
                    Ok(None)
                }
                _ => Err(changed(tree, src, rel)),
            };
        }
        let Some((at, chain, names)) = self.at.as_mut().filter(|(i, ..)| *i == index) else {
            return Err(changed(tree, src, rel));
        };
        debug_assert_eq!(*at, index);
        let (parents, last) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parents: Vec<&str> = parents.split('/').filter(|p| !p.is_empty()).collect();
        let common = names
            .iter()
            .zip(&parents)
            .take_while(|(a, b)| a == *b)
            .count();
        chain.truncate(common);
        names.truncate(common);
        for p in &parents[common..] {
            chain
                .push(p.as_bytes())
                .map_err(|source| Error::CopySource {
                    src: src.spec.clone(),
                    source,
                })?;
            names.push((*p).to_owned());
        }
        match &item.kind {
            ItemKind::Symlink(_) => Ok(None),
            ItemKind::Dir => {
                chain
                    .push(last.as_bytes())
                    .map_err(|_| changed(tree, src, rel))?;
                names.push(last.to_owned());
                let fd = chain.current().map_err(|_| changed(tree, src, rel))?;
                let st = rustix::fs::fstat(fd).map_err(|_| changed(tree, src, rel))?;
                check(tree, src, rel, &st, item.host.id, None)?;
                Ok(None)
            }
            ItemKind::File { size, .. } => {
                let dir = chain.current().map_err(|_| changed(tree, src, rel))?;
                let (file, st) = tree.open_file(&dir, last.as_bytes(), rel, src)?;
                check(tree, src, rel, &st, item.host.id, Some(*size))?;
                Ok(Some(file))
            }
        }
    }
}

struct Level {
    rel: String,
    /// Children still to visit, last first.
    names: Vec<String>,
}

/// The facts of a stat that a manifest keeps.
struct Facts {
    mode: u32,
    mtime: i64,
    size: u64,
    id: FileId,
}

impl Facts {
    #[allow(
        clippy::unnecessary_cast,
        reason = "stat field types differ between Unix platforms"
    )]
    fn of(st: &Stat) -> Facts {
        Facts {
            mode: st.st_mode as u32 & 0o777,
            mtime: st.st_mtime as i64,
            size: st.st_size as u64,
            id: FileId {
                dev: st.st_dev as u64,
                ino: st.st_ino as u64,
            },
        }
    }
}

fn dir_node(rel: String, st: &Stat) -> Node {
    let f = Facts::of(st);
    Node {
        rel,
        kind: ItemKind::Dir,
        mode: f.mode,
        mtime: f.mtime,
        id: f.id,
    }
}

fn symlink_node(dir: &impl AsFd, name: &[u8], rel: String, st: &Stat) -> Result<Node, Errno> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
    let f = Facts::of(st);
    Ok(Node {
        rel,
        kind: ItemKind::Symlink(target.into_bytes()),
        mode: 0o777,
        mtime: f.mtime,
        id: f.id,
    })
}

/// The names in a directory, without `exclude`d ones, last first.
fn list(dir: impl AsFd, exclude: &[String]) -> Result<Vec<String>, Errno> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| Errno::ILSEQ)?;
        if !exclude.contains(&name) {
            names.push(name);
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

fn check(
    tree: &Tree,
    src: &Source,
    rel: &str,
    st: &Stat,
    id: FileId,
    size: Option<u64>,
) -> Result<()> {
    let f = Facts::of(st);
    if f.id != id || size.is_some_and(|s| s != f.size) {
        return Err(changed(tree, src, rel));
    }
    Ok(())
}

fn changed(tree: &Tree, src: &Source, rel: &str) -> Error {
    copy_err(
        &src.spec,
        format!(
            "{}: changed while being copied",
            tree.display(src, rel).display()
        ),
    )
}

fn unsupported(tree: &Tree, src: &Source, rel: &str) -> Error {
    copy_err(
        &src.spec,
        format!(
            "{}: only files, directories and symlinks can be copied",
            tree.display(src, rel).display()
        ),
    )
}

fn not_found(src: &Source) -> Error {
    copy_err(&src.spec, "no such file or directory in the source".into())
}

fn resolve_err(src: &Source, e: strata_cas::Error) -> Error {
    match &e {
        strata_cas::Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            not_found(src)
        }
        _ => Error::CopySource {
            src: src.spec.clone(),
            source: e,
        },
    }
}
