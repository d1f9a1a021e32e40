//! `copy`: the manifest of what a copy reads (which enters the step key) and the tar stream
//! that writes it into the checkout through strata-cas's hardened extractor.
//!
//! Semantics follow OBuilder: with a destination ending in `/`, each source lands inside it
//! under its base name (`.` copies the directory's contents); otherwise there must be exactly
//! one source and it is copied *as* the destination. Sources are relative to the context (or
//! the stage result); `..` and absolute paths are refused; symlinks are copied as symlinks,
//! never followed; `exclude` names match base names at any depth. Copied entries belong to
//! the context user and keep their permission bits (OBuilder reduced them to 0644/0755).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use strata_cas::{Entry, EntryKind, Metadata};
use strata_spec::Copy;

use crate::error::{Error, Result};
use crate::key::KeyBuilder;

/// One entry to write, in tar order (parents first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    /// Where it goes, relative to the rootfs, `/`-separated.
    pub(crate) dst: String,
    pub(crate) kind: ItemKind,
    /// Permission bits (`0o777`).
    pub(crate) mode: u32,
    pub(crate) mtime: i64,
    /// Where it is read from.
    pub(crate) host: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemKind {
    Dir,
    File { size: u64, hash: [u8; 32] },
    Symlink(Vec<u8>),
}

/// Everything a copy writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) items: Vec<Item>,
}

impl Manifest {
    /// Walks the sources of `op` under `root`; `dst` is the destination already joined to
    /// the workdir (absolute).
    pub(crate) fn build(root: &Path, op: &Copy, dst: &str) -> Result<Manifest> {
        let into_dir = dst.ends_with('/');
        if !into_dir && op.src.len() != 1 {
            return Err(copy_err(
                &op.src.join(" "),
                format!("several sources need a destination directory ending in `/`, not `{dst}`"),
            ));
        }
        let dst_rel = dst.trim_start_matches('/').trim_end_matches('/');
        let mut items = Vec::new();
        for src in &op.src {
            let rel = check_source(src)?;
            let host = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&rel)
            };
            let md = fs::symlink_metadata(&host).map_err(|e| copy_err(src, describe_io(&e)))?;
            let target = if into_dir {
                match rel.rsplit('/').next() {
                    Some(base) if !base.is_empty() => join(dst_rel, base),
                    _ => dst_rel.to_owned(), // `.`: its contents go into the directory
                }
            } else {
                dst_rel.to_owned()
            };
            walk(&host, &md, &target, &op.exclude, src, &mut items)?;
        }
        Ok(Manifest { items })
    }

    pub(crate) fn hash_into(&self, k: &mut KeyBuilder) {
        k.list("items", &self.items, |k, it| {
            k.str("dst", &it.dst).u64("mode", u64::from(it.mode));
            match &it.kind {
                ItemKind::Dir => {
                    k.str("kind", "dir");
                }
                ItemKind::File { size, hash } => {
                    k.str("kind", "file")
                        .u64("size", *size)
                        .bytes("blake3", hash);
                }
                ItemKind::Symlink(t) => {
                    k.str("kind", "symlink").bytes("target", t);
                }
            }
        });
    }

    /// Writes the manifest as a tar stream owned by `uid:gid`. Files are re-read: one that
    /// changed since the manifest was made is an error, never a silent mismatch with the key.
    pub(crate) fn write_tar(&self, out: impl io::Write, uid: u32, gid: u32) -> Result<()> {
        let mut w = strata_cas::tar::TarWriter::new(out);
        let werr = |it: &Item| {
            let path = it.host.clone();
            move |source| Error::Io {
                what: "write copy of",
                path,
                source,
            }
        };
        for it in &self.items {
            if it.dst.is_empty() {
                continue; // the rootfs itself: never change its owner or mode
            }
            let (kind, size) = match &it.kind {
                ItemKind::Dir => (EntryKind::Dir, 0),
                ItemKind::File { size, .. } => (EntryKind::File, *size),
                ItemKind::Symlink(t) => (EntryKind::Symlink(t.clone()), 0),
            };
            let entry = Entry {
                path: it.dst.as_bytes().to_vec(),
                kind,
                meta: Metadata {
                    mode: it.mode,
                    uid,
                    gid,
                    mtime: it.mtime,
                    ..Metadata::default()
                },
                size,
            };
            w.append(&entry).map_err(werr(it))?;
            if let ItemKind::File { size, hash } = &it.kind {
                let f = File::open(&it.host).map_err(werr(it))?;
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 256 * 1024];
                let mut left = *size;
                let mut r = f.take(*size);
                while left > 0 {
                    let n = r.read(&mut buf).map_err(werr(it))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    w.write_data(&buf[..n]).map_err(werr(it))?;
                    left -= n as u64;
                }
                if left != 0 || hasher.finalize().as_bytes() != hash {
                    return Err(copy_err(
                        &it.host.display().to_string(),
                        "changed while being copied".into(),
                    ));
                }
            }
        }
        w.finish().map_err(|source| Error::Io {
            what: "write copy",
            path: PathBuf::new(),
            source,
        })?;
        Ok(())
    }
}

fn copy_err(src: &str, reason: String) -> Error {
    Error::Copy {
        src: src.to_owned(),
        reason,
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory in the source".into(),
        _ => e.to_string(),
    }
}

/// Normalises a source path: `./a//b/` → `a/b`, `.` → ``; refuses absolute paths and `..`.
pub(crate) fn check_source(src: &str) -> Result<String> {
    if src.starts_with('/') || src.starts_with('\\') || src.as_bytes().get(1) == Some(&b':') {
        return Err(copy_err(
            src,
            "source paths must be relative to the build context".into(),
        ));
    }
    let mut parts = Vec::new();
    for part in src.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(copy_err(src, "`..` may not appear in a source path".into())),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}/{b}")
    }
}

fn walk(
    host: &Path,
    md: &fs::Metadata,
    dst: &str,
    exclude: &[String],
    src: &str,
    out: &mut Vec<Item>,
) -> Result<()> {
    let io_fail = |e: io::Error| copy_err(src, format!("{}: {e}", host.display()));
    let mode = permissions(md);
    let mtime = mtime(md);
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(host).map_err(io_fail)?;
        out.push(Item {
            dst: dst.to_owned(),
            kind: ItemKind::Symlink(path_bytes(&target)),
            mode: 0o777,
            mtime,
            host: host.to_path_buf(),
        });
    } else if ft.is_dir() {
        out.push(Item {
            dst: dst.to_owned(),
            kind: ItemKind::Dir,
            mode,
            mtime,
            host: host.to_path_buf(),
        });
        let mut children: Vec<(Vec<u8>, PathBuf, String)> = Vec::new();
        for e in fs::read_dir(host).map_err(io_fail)? {
            let e = e.map_err(io_fail)?;
            let name = e.file_name();
            let Some(name_str) = name.to_str() else {
                return Err(copy_err(
                    src,
                    format!("{}: file name is not UTF-8", e.path().display()),
                ));
            };
            if exclude.iter().any(|x| x == name_str) {
                continue;
            }
            children.push((name_str.as_bytes().to_vec(), e.path(), name_str.to_owned()));
        }
        children.sort();
        for (_, path, name) in children {
            let md = fs::symlink_metadata(&path).map_err(io_fail)?;
            walk(&path, &md, &join(dst, &name), exclude, src, out)?;
        }
    } else if ft.is_file() {
        let hash = hash_file(host).map_err(io_fail)?;
        out.push(Item {
            dst: dst.to_owned(),
            kind: ItemKind::File {
                size: md.len(),
                hash,
            },
            mode,
            mtime,
            host: host.to_path_buf(),
        });
    } else {
        return Err(copy_err(
            src,
            format!(
                "{}: only files, directories and symlinks can be copied",
                host.display()
            ),
        ));
    }
    Ok(())
}

fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(File::open(path)?)?;
    Ok(*hasher.finalize().as_bytes())
}

#[cfg(unix)]
fn permissions(md: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    md.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn permissions(md: &fs::Metadata) -> u32 {
    if md.is_dir() {
        0o755
    } else if md.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

fn mtime(md: &fs::Metadata) -> i64 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().replace('\\', "/").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(src: &[&str], dst: &str, exclude: &[&str]) -> Copy {
        Copy {
            from: strata_spec::CopyFrom::Context,
            src: src.iter().map(|s| s.to_string()).collect(),
            dst: dst.into(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("lib/sub")).unwrap();
        fs::write(d.path().join("a.txt"), "a").unwrap();
        fs::write(d.path().join("lib/b.ml"), "b").unwrap();
        fs::write(d.path().join("lib/sub/c"), "c").unwrap();
        fs::create_dir(d.path().join(".git")).unwrap();
        fs::write(d.path().join(".git/HEAD"), "x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("../a.txt", d.path().join("lib/link")).unwrap();
        d
    }

    fn dsts(m: &Manifest) -> Vec<&str> {
        m.items.iter().map(|i| i.dst.as_str()).collect()
    }

    #[test]
    fn dot_into_dir_copies_contents_and_excludes_by_basename() {
        let t = tree();
        let m = Manifest::build(t.path(), &copy(&["."], "/src/", &[".git", "c"]), "/src/").unwrap();
        let mut want = vec!["src", "src/a.txt", "src/lib", "src/lib/b.ml", "src/lib/sub"];
        if cfg!(unix) {
            want.insert(4, "src/lib/link");
            let link = m.items.iter().find(|i| i.dst == "src/lib/link").unwrap();
            assert_eq!(link.kind, ItemKind::Symlink(b"../a.txt".to_vec()));
        }
        assert_eq!(dsts(&m), want);
    }

    #[test]
    fn single_source_is_copied_as_the_destination() {
        let t = tree();
        let m = Manifest::build(
            t.path(),
            &copy(&["lib/b.ml"], "/opt/x.ml", &[]),
            "/opt/x.ml",
        )
        .unwrap();
        assert_eq!(dsts(&m), ["opt/x.ml"]);
        let m =
            Manifest::build(t.path(), &copy(&["./lib/sub", "a.txt"], "/d/", &[]), "/d/").unwrap();
        assert_eq!(dsts(&m), ["d/sub", "d/sub/c", "d/a.txt"]);
    }

    #[test]
    fn bad_sources_are_refused_with_their_name() {
        let t = tree();
        for (src, needle) in [
            ("../etc", "`..`"),
            ("/etc", "relative"),
            ("nope", "no such file"),
        ] {
            let e = Manifest::build(t.path(), &copy(&[src], "/d/", &[]), "/d/")
                .unwrap_err()
                .to_string();
            assert!(e.contains(src) && e.contains(needle), "{e}");
        }
        let e = Manifest::build(t.path(), &copy(&["a.txt", "lib"], "/d", &[]), "/d").unwrap_err();
        assert!(e.to_string().contains("ending in `/`"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn mode_and_content_change_the_key_mtime_does_not() {
        use std::os::unix::fs::PermissionsExt;
        let t = tree();
        let key = || {
            let m = Manifest::build(t.path(), &copy(&["."], "/src/", &[]), "/src/").unwrap();
            let parent = strata_snapshot::SnapshotId::derive(None, &strata_cas::LayerId::of(b""));
            let mut k = KeyBuilder::new(&parent, "copy");
            m.hash_into(&mut k);
            k.finish()
        };
        let k0 = key();
        let f = t.path().join("lib/b.ml");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        let k1 = key();
        assert_ne!(k0, k1, "a chmod must change the key");
        fs::write(&f, "B").unwrap();
        let k2 = key();
        assert_ne!(k1, k2);
        let now = std::time::SystemTime::now() + std::time::Duration::from_secs(100);
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(now)
            .unwrap();
        assert_eq!(key(), k2, "mtime is not in the key");
    }
}
