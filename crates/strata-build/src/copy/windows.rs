//! Reading copy sources on Windows, with std only: sources are resolved component by
//! component and symlinks or junctions on the way are refused; files are opened without
//! following reparse points, so one swapped in is refused rather than read through.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::windows::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{FileId, Item, ItemKind, Node, Source, copy_err};
use crate::error::{Error, Result};

const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;

/// The context or stage directory every source is resolved in.
#[derive(Debug)]
pub(super) struct Tree {
    root: PathBuf,
}

impl Tree {
    pub(super) fn open(dir: &Path) -> Result<Tree> {
        let md = fs::metadata(dir).map_err(|source| Error::Io {
            op: "open",
            path: dir.to_path_buf(),
            source,
        })?;
        if !md.is_dir() {
            return Err(Error::Io {
                op: "open",
                path: dir.to_path_buf(),
                source: io::Error::other("not a directory"),
            });
        }
        Ok(Tree {
            root: dir.to_path_buf(),
        })
    }

    /// Where `rel` below `src` is, for messages.
    pub(super) fn display(&self, src: &Source, rel: &str) -> PathBuf {
        let mut p = self.root.clone();
        for part in src.rel.split('/').chain(rel.split('/')) {
            if !part.is_empty() {
                p.push(part);
            }
        }
        p
    }

    /// The host path of `src`, after checking no component but the last is a symlink or a
    /// junction.
    fn resolve(&self, src: &Source) -> Result<PathBuf> {
        let mut p = self.root.clone();
        let parts: Vec<&str> = src.rel.split('/').filter(|s| !s.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            p.push(part);
            if i + 1 == parts.len() {
                break;
            }
            let md = fs::symlink_metadata(&p).map_err(|e| io_fail(src, &p, &e))?;
            if is_link(&md) {
                return Err(copy_err(
                    &src.spec,
                    format!(
                        "{}: symlinks and junctions in a source path are not followed on Windows",
                        p.display()
                    ),
                ));
            }
            if !md.is_dir() {
                return Err(copy_err(
                    &src.spec,
                    format!("{}: not a directory", p.display()),
                ));
            }
        }
        Ok(p)
    }

    /// Calls `emit` for `src` and everything below it, parents first, children in byte
    /// order, skipping names in `exclude`.
    pub(super) fn walk(
        &self,
        src: &Source,
        exclude: &[String],
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let top = self.resolve(src)?;
        let md = fs::symlink_metadata(&top).map_err(|e| io_fail(src, &top, &e))?;
        self.visit(src, &top, String::new(), &md, exclude, emit)
    }

    fn visit(
        &self,
        src: &Source,
        path: &Path,
        rel: String,
        md: &Metadata,
        exclude: &[String],
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let mtime = mtime(md);
        if is_link(md) {
            let target = fs::read_link(path).map_err(|e| io_fail(src, path, &e))?;
            emit(Node {
                rel,
                kind: ItemKind::Symlink(target.to_string_lossy().replace('\\', "/").into_bytes()),
                mode: 0o777,
                mtime,
                id: FileId::default(),
            });
        } else if md.is_dir() {
            emit(Node {
                rel: rel.clone(),
                kind: ItemKind::Dir,
                mode: 0o755,
                mtime,
                id: FileId::default(),
            });
            let mut names = Vec::new();
            for e in fs::read_dir(path).map_err(|e| io_fail(src, path, &e))? {
                let e = e.map_err(|e| io_fail(src, path, &e))?;
                let Ok(name) = e.file_name().into_string() else {
                    return Err(copy_err(
                        &src.spec,
                        format!("{}: file name is not UTF-8", e.path().display()),
                    ));
                };
                if !exclude.contains(&name) {
                    names.push(name);
                }
            }
            names.sort_unstable();
            for name in names {
                let child = path.join(&name);
                let md = fs::symlink_metadata(&child).map_err(|e| io_fail(src, &child, &e))?;
                let rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                self.visit(src, &child, rel, &md, exclude, emit)?;
            }
        } else if md.is_file() {
            let (file, md) = open_file(src, path)?;
            let size = md.len();
            let mut hasher = blake3::Hasher::new();
            let read =
                io::copy(&mut file.take(size), &mut hasher).map_err(|e| io_fail(src, path, &e))?;
            if read != size {
                return Err(changed(src, path));
            }
            emit(Node {
                rel,
                kind: ItemKind::File {
                    size,
                    hash: *hasher.finalize().as_bytes(),
                },
                mode: if md.permissions().readonly() {
                    0o444
                } else {
                    0o644
                },
                mtime: self::mtime(&md),
                id: FileId::default(),
            });
        } else {
            return Err(copy_err(
                &src.spec,
                format!(
                    "{}: only files, directories and symlinks can be copied",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Opens the files a manifest recorded again, checking their size.
#[derive(Debug)]
pub(super) struct Opener<'a> {
    tree: &'a Tree,
    sources: &'a [Source],
}

impl<'a> Opener<'a> {
    pub(super) fn new(tree: &'a Tree, sources: &'a [Source]) -> Opener<'a> {
        Opener { tree, sources }
    }

    /// The file to stream for `item`, when it is one.
    pub(super) fn next(&mut self, item: &Item) -> Result<Option<File>> {
        let ItemKind::File { size, .. } = item.kind else {
            return Ok(None);
        };
        let src = &self.sources[item.host.src];
        let mut path = self.tree.resolve(src)?;
        for part in item.host.rel.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
        }
        let (file, md) = open_file(src, &path)?;
        if md.len() != size {
            return Err(changed(src, &path));
        }
        Ok(Some(file))
    }
}

/// Opens a regular file; a reparse point is opened as itself, found out and refused.
fn open_file(src: &Source, path: &Path) -> Result<(File, Metadata)> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
        .map_err(|e| io_fail(src, path, &e))?;
    let md = file.metadata().map_err(|e| io_fail(src, path, &e))?;
    if is_link(&md) || !md.is_file() {
        return Err(changed(src, path));
    }
    Ok((file, md))
}

/// Symlinks and junctions (std counts both name-surrogate reparse points as symlinks);
/// other reparse points (deduplicated or cloud files) are files.
fn is_link(md: &Metadata) -> bool {
    md.file_type().is_symlink()
}

fn mtime(md: &Metadata) -> i64 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn io_fail(src: &Source, path: &Path, e: &io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => {
            copy_err(&src.spec, "no such file or directory in the source".into())
        }
        _ => copy_err(&src.spec, format!("{}: {e}", path.display())),
    }
}

fn changed(src: &Source, path: &Path) -> Error {
    copy_err(
        &src.spec,
        format!("{}: changed while being copied", path.display()),
    )
}
