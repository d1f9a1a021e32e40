//! `copy`: the manifest of what a copy reads (which enters the step key) and the tar stream
//! that writes it into the checkout through strata-cas's hardened extractor.
//!
//! Semantics follow OBuilder: with a destination ending in `/`, each source lands inside it
//! under its base name (`.` copies the directory's contents); otherwise there must be exactly
//! one source and it is copied *as* the destination. `exclude` names match base names at any
//! depth. Copied entries belong to the context user and keep their permission bits (OBuilder
//! reduced them to 0644/0755).
//!
//! # Where sources are read
//!
//! A source is a path inside its *root*: the build context, or the root filesystem of the
//! stage it is copied from. As in OBuilder, a leading `/` means that root (stage sources are
//! written absolute, `(src /src/_build/default/main.exe)`, and context ones may be) and `..`
//! is refused. A drive letter is refused: it cannot name a place inside a root.
//!
//! On Unix the root is opened once and every source is resolved from that handle
//! ([`strata_cas::root`]): symlinks met on the way are followed *inside* the root, as if it
//! were `/` (`a -> /` makes `a/etc/shadow` the root's own `etc/shadow`, never the host's),
//! at most 40 of them. OBuilder refuses such symlinks instead; Strata follows them, safely,
//! because builds made them (`ln -s` in a stage) and Docker follows them too. The last
//! component is not followed: a source that is a symlink is copied as a symlink, as OBuilder
//! does (Docker's `COPY` would copy its target). Below a source, directories are walked
//! through their handles (`openat(O_NOFOLLOW)`, `fstatat(AT_SYMLINK_NOFOLLOW)`), files are
//! hashed from the handle that was opened, and symlinks are copied as symlinks, never
//! followed. Streaming opens each file again from its parent's handle with `O_NOFOLLOW` and
//! checks it is the same file (device and inode, size) with the same content (blake3): an
//! entry swapped between the manifest and the copy is either an error or still inside the
//! root. At most a bounded number of directory handles are open, however deep the tree.
//!
//! On Windows the std-only reader resolves sources component by component and refuses
//! symlinks and junctions on the way; files are opened without following reparse points.
//!
//! # What enters the key
//!
//! Each item's destination, kind, permission bits and content (blake3 and size, or the
//! symlink target), never its mtime nor where in the root it was found: two sources that
//! resolve to the same content write the same thing, so they are the same step. The
//! destination of a source copied into a directory is named after the source as written
//! (`(src a)` lands as `a` even when `a` resolves through a symlink), as before.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as sys;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as sys;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use strata_cas::{Entry, EntryKind, Metadata};
use strata_spec::{Copy, CopyFrom};

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
    pub(crate) host: Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemKind {
    Dir,
    File { size: u64, hash: [u8; 32] },
    Symlink(Vec<u8>),
}

/// Where an item was found: below which source, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    /// Index of the source in the manifest's sources.
    pub(crate) src: usize,
    /// Path below the source, `/`-separated; empty for the source itself.
    pub(crate) rel: String,
    pub(crate) id: FileId,
}

/// A file's identity while the copy runs (zero where the platform does not give one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// A source of a copy.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// As the spec wrote it, for messages.
    pub(crate) spec: String,
    /// Normalised: inside the root, `/`-separated, no leading `/`, no `.`; empty for the root.
    pub(crate) rel: String,
}

/// What a platform reader reports for each entry of a source.
#[derive(Debug)]
pub(crate) struct Node {
    rel: String,
    kind: ItemKind,
    mode: u32,
    mtime: i64,
    id: FileId,
}

/// Everything a copy writes, and the open root it reads from.
#[derive(Debug)]
pub(crate) struct Manifest {
    pub(crate) items: Vec<Item>,
    sources: Vec<Source>,
    tree: sys::Tree,
}

impl Manifest {
    /// Walks the sources of `op` inside `root` (the context or a stage's checkout); `dst` is
    /// the destination already joined to the workdir (absolute).
    pub(crate) fn build(root: &Path, op: &Copy, dst: &str) -> Result<Manifest> {
        let into_dir = dst.ends_with('/');
        if !into_dir && op.src.len() != 1 {
            return Err(copy_err(
                &op.src.join(" "),
                format!("several sources need a destination directory ending in `/`, not `{dst}`"),
            ));
        }
        let dst_rel = dst.trim_start_matches('/').trim_end_matches('/');
        let sources = op
            .src
            .iter()
            .map(|src| {
                Ok(Source {
                    spec: src.clone(),
                    rel: check_source(src, &op.from)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tree = sys::Tree::open(root)?;
        let mut items = Vec::new();
        for (index, src) in sources.iter().enumerate() {
            let target = if into_dir {
                match src.rel.rsplit('/').next() {
                    Some(base) if !base.is_empty() => join(dst_rel, base),
                    _ => dst_rel.to_owned(), // `.`: its contents go into the directory
                }
            } else {
                dst_rel.to_owned()
            };
            let mut reserved = None;
            tree.walk(src, &op.exclude, &mut |node| {
                let dst = join(&target, &node.rel);
                // A layer would read such a name as a whiteout: copying it would delete a file
                // instead, and the commit would be refused.
                if reserved.is_none() && dst.split('/').any(|c| c.starts_with(".wh.")) {
                    reserved = Some(dst.clone());
                }
                items.push(Item {
                    dst,
                    kind: node.kind,
                    mode: node.mode,
                    mtime: node.mtime,
                    host: Host {
                        src: index,
                        rel: node.rel,
                        id: node.id,
                    },
                });
            })?;
            if let Some(dst) = reserved {
                return Err(copy_err(
                    &src.spec,
                    format!(
                        "`/{dst}`: names starting with `.wh.` are reserved for whiteouts in \
                         layers and cannot be copied"
                    ),
                ));
            }
        }
        Ok(Manifest {
            items,
            sources,
            tree,
        })
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

    /// Where an item is read from, for messages.
    fn display(&self, it: &Item) -> PathBuf {
        self.tree.display(&self.sources[it.host.src], &it.host.rel)
    }

    /// Writes the manifest as a tar stream owned by `uid:gid`. Files are opened again and
    /// re-read: one that is not the file the manifest saw, or whose content changed since,
    /// is an error, never a silent mismatch with the key.
    pub(crate) fn write_tar(&self, out: impl io::Write, uid: u32, gid: u32) -> Result<()> {
        let mut w = strata_cas::tar::TarWriter::new(out);
        let werr = |it: &Item| {
            let path = self.display(it);
            move |source| Error::Io {
                op: "write copy of",
                path,
                source,
            }
        };
        let mut opener = sys::Opener::new(&self.tree, &self.sources);
        let mut buf = vec![0u8; 256 * 1024];
        for it in &self.items {
            // Every item, the skipped one too: the opener follows the manifest's order.
            let file = opener.next(it)?;
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
                let changed = || {
                    copy_err(
                        &self.sources[it.host.src].spec,
                        format!("{}: changed while being copied", self.display(it).display()),
                    )
                };
                let Some(f) = file else {
                    return Err(changed()); // the opener gives every file item's file
                };
                let mut hasher = blake3::Hasher::new();
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
                    return Err(changed());
                }
            }
        }
        w.finish().map_err(|source| Error::Io {
            op: "write copy",
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

/// Normalises a source path to one inside its root: `./a//b/` → `a/b`, `/a` → `a`,
/// `.` → ``; refuses `..` and drive letters.
pub(crate) fn check_source(src: &str, from: &CopyFrom) -> Result<String> {
    let bytes = src.as_bytes();
    if bytes.get(1) == Some(&b':') && bytes[0].is_ascii_alphabetic() {
        let root = match from {
            CopyFrom::Context => "the build context",
            CopyFrom::Build(_) => "the stage",
        };
        return Err(copy_err(
            src,
            format!(
                "a drive letter cannot name a place inside {root}; write the path from its \
                 root, like `/{}`",
                src[2..].trim_start_matches(['/', '\\'])
            ),
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
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

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
    fn whiteout_names_are_refused() {
        let t = tree();
        fs::write(t.path().join("lib/.wh.b.ml"), "").unwrap();
        let e = Manifest::build(t.path(), &copy(&["lib"], "/d/", &[]), "/d/")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d/lib/.wh.b.ml") && e.contains("reserved"),
            "{e}"
        );
        let e = Manifest::build(t.path(), &copy(&["a.txt"], "/d/.wh.x", &[]), "/d/.wh.x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
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
            ("lib/../a.txt", "`..`"),
            ("C:/etc", "drive letter"),
            // Absolute: inside the context, as OBuilder reads it.
            ("/etc", "no such file"),
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

    /// What the copy of `src` into `/x` reads: each file's content, by destination.
    #[cfg(unix)]
    fn read(root: &Path, src: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let m = Manifest::build(root, &copy(&[src], "/x", &[]), "/x")?;
        let mut tar = Vec::new();
        m.write_tar(&mut tar, 0, 0)?;
        let mut out = Vec::new();
        let mut r = strata_cas::tar::TarReader::new(tar.as_slice(), &strata_cas::Limits::default());
        while let Some(e) = r.next_entry().unwrap() {
            let mut data = Vec::new();
            r.read_data_to_vec(&mut data).unwrap();
            out.push((String::from_utf8(e.path.clone()).unwrap(), data));
        }
        Ok(out)
    }

    #[cfg(unix)]
    fn in_root_tree() -> tempfile::TempDir {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/hostname"), "inside\n").unwrap();
        fs::create_dir_all(d.path().join("deep/er")).unwrap();
        symlink("/", d.path().join("a")).unwrap();
        symlink("../../..", d.path().join("deep/er/up")).unwrap();
        symlink("/etc", d.path().join("abs")).unwrap();
        symlink("loop2", d.path().join("loop1")).unwrap();
        symlink("loop1", d.path().join("loop2")).unwrap();
        symlink("etc/hostname", d.path().join("file")).unwrap();
        d
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_on_the_way_resolve_inside_the_root() {
        let t = in_root_tree();
        let inside = vec![("x".to_owned(), b"inside\n".to_vec())];
        for src in [
            "a/etc/hostname",
            "deep/er/up/etc/hostname",
            "abs/hostname",
            "a/a/abs/hostname",
            "/etc/hostname",
            "/a/etc/hostname",
        ] {
            assert_eq!(read(t.path(), src).unwrap(), inside, "{src}");
        }
        // What only the host has is not found, whatever the way.
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("secret"), "host").unwrap();
        let host_rel = &host.path().to_str().unwrap()[1..];
        for src in [
            format!("a/{host_rel}/secret"),
            format!("deep/er/up/{host_rel}/secret"),
        ] {
            let e = read(t.path(), &src).unwrap_err().to_string();
            assert!(e.contains("no such file"), "{src}: {e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_final_symlink_is_copied_as_a_symlink() {
        let t = in_root_tree();
        for (src, target) in [
            ("a", "/"),
            ("deep/er/up", "../../.."),
            ("a/a/file", "etc/hostname"),
        ] {
            let m = Manifest::build(t.path(), &copy(&[src], "/x", &[]), "/x").unwrap();
            assert_eq!(m.items.len(), 1);
            assert_eq!(
                m.items[0].kind,
                ItemKind::Symlink(target.as_bytes().to_vec()),
                "{src}"
            );
        }
    }

    #[test]
    fn stage_sources_are_paths_inside_the_stage() {
        let t = tree();
        let mut op = copy(&["/lib/b.ml", "//lib/./sub/"], "/d/", &[]);
        op.from = strata_spec::CopyFrom::Build("dev".into());
        let m = Manifest::build(t.path(), &op, "/d/").unwrap();
        assert_eq!(dsts(&m), ["d/b.ml", "d/sub", "d/sub/c"]);
        op.src = vec!["/lib/../a.txt".into()];
        let e = Manifest::build(t.path(), &op, "/d/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`..`"), "{e}");
    }

    /// Deeper than the handles a walk keeps open: closed ones are opened again on the way
    /// back up, and streaming follows the same way.
    #[cfg(unix)]
    #[test]
    fn deep_trees_are_walked_and_streamed() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().join("top");
        for i in 0..150 {
            p.push(format!("d{i}"));
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("f"), format!("{i}")).unwrap();
        }
        let files = read(t.path(), "top").unwrap();
        let data: Vec<&[u8]> = files
            .iter()
            .filter(|(p, _)| p.ends_with("/f"))
            .map(|(_, d)| d.as_slice())
            .collect();
        assert_eq!(data.len(), 150);
        // Depth-first: a directory's own file comes after its subdirectory in byte order
        // (`d…` < `f`), so the deepest file comes first.
        assert_eq!(data[0], b"149");
        assert_eq!(data[149], b"0");
    }

    #[cfg(unix)]
    #[test]
    fn loops_and_long_chains_are_refused_and_files_are_not_directories() {
        use std::os::unix::fs::symlink;
        let t = in_root_tree();
        let e = read(t.path(), "loop1/x").unwrap_err().to_string();
        assert!(e.contains("loop1/x") && e.contains("symbolic links"), "{e}");
        let e = read(t.path(), "file/x").unwrap_err().to_string();
        assert!(e.contains("file/x") && e.contains("ot a directory"), "{e}");
        // 40 symlinks on the way are followed (as the kernel does), 41 are not.
        for i in 0..40 {
            symlink(format!("s{}", i + 1), t.path().join(format!("s{i}"))).unwrap();
        }
        symlink("etc", t.path().join("s40")).unwrap();
        assert_eq!(read(t.path(), "s1/hostname").unwrap().len(), 1);
        let e = read(t.path(), "s0/hostname").unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
    }

    /// A thread keeps exchanging a directory with a symlink to a host directory while
    /// manifests are made and streamed: a copy reads the root or fails, never the host.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_swap_race_never_reads_the_host() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let t = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        fs::create_dir_all(host.path().join("sub")).unwrap();
        fs::write(host.path().join("f"), "HOST SECRET").unwrap();
        fs::write(host.path().join("sub/g"), "HOST SECRET").unwrap();
        fs::create_dir_all(t.path().join("d/sub")).unwrap();
        fs::write(t.path().join("d/f"), "root f").unwrap();
        fs::write(t.path().join("d/sub/g"), "root g").unwrap();
        std::os::unix::fs::symlink(host.path(), t.path().join("alt")).unwrap();
        let stop = AtomicBool::new(false);
        let (mut ok, mut refused) = (0, 0);
        std::thread::scope(|s| {
            // A failed assertion must stop the swapper too, or the scope never ends.
            let _stop = StopOnDrop(&stop);
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        t.path().join("d"),
                        rustix::fs::CWD,
                        t.path().join("alt"),
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                }
            });
            for i in 0..2000 {
                let src = ["d/f", "d/sub/g", "d", "d/sub"][i % 4];
                match read(t.path(), src) {
                    Ok(files) => {
                        ok += 1;
                        for (path, data) in files {
                            assert!(!data.starts_with(b"HOST"), "{src}: {path} from the host");
                        }
                    }
                    Err(
                        e @ (Error::Copy { .. } | Error::CopyIo { .. } | Error::CopySource { .. }),
                    ) => {
                        refused += 1;
                        assert!(e.to_string().contains(src), "{e}");
                    }
                    Err(e) => panic!("{src}: not a copy error: {e}"),
                }
            }
        });
        assert!(ok > 0, "{refused} refused, none copied");
    }

    #[cfg(target_os = "linux")]
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

    #[cfg(target_os = "linux")]
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
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
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(now)
            .unwrap();
        assert_eq!(key(), k2, "mtime is not in the key");
    }
}
