//! Tree comparison: everything a layer records about each path under a directory, read
//! back from the file system, so that suites compare trees one way and name the first
//! path that differs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Everything compared about one path of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `dir`, `file`, `symlink`, `fifo`, `char`, `block` or `socket`.
    pub kind: &'static str,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// File content or symlink target.
    pub data: Vec<u8>,
    /// Device number of device nodes, else 0.
    pub rdev: u64,
    /// `user.*` and `trusted.*` attributes, sorted (what layers carry; hosts may add
    /// security labels of their own). None on symlinks.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For files with several links: the first path of the same inode in walk order.
    pub link_group: Option<Vec<u8>>,
}

/// Relative path bytes → node, for every path below a root (the root excluded).
pub type Tree = BTreeMap<Vec<u8>, Node>;

/// Which parts of a [`Node`] a comparison looks at: the others are cleared by
/// [`snapshot_of`]. Kinds, modes, contents and link targets are always compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub owners: bool,
    pub mtimes: Mtimes,
    pub xattrs: bool,
    /// Hard-link groups.
    pub links: bool,
}

/// How much of the mtimes a comparison looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtimes {
    None,
    Seconds,
    Exact,
}

impl Fields {
    /// Everything.
    pub const ALL: Fields = Fields {
        owners: true,
        mtimes: Mtimes::Exact,
        xattrs: true,
        links: true,
    };
    /// Kinds, modes, contents and link targets only.
    pub const CONTENT: Fields = Fields {
        owners: false,
        mtimes: Mtimes::None,
        xattrs: false,
        links: false,
    };
}

/// Every path below `root`, with everything about it.
pub fn snapshot(root: &Path) -> Tree {
    snapshot_of(root, Fields::ALL)
}

/// Every path below `root`, with only `fields` (and what is always compared) filled in.
pub fn snapshot_of(root: &Path, fields: Fields) -> Tree {
    let mut out = Tree::new();
    let mut inodes = BTreeMap::new();
    walk(root, root, fields, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    fields: Fields,
    out: &mut Tree,
    inodes: &mut BTreeMap<(u64, u64), Vec<u8>>,
) {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    // Sorted, so that link groups name the same first path whatever the directory order.
    paths.sort();
    for path in paths {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = meta.file_type();
        let (kind, data) = if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            ("symlink", target.as_os_str().as_bytes().to_vec())
        } else if ft.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_file() {
            ("file", fs::read(&path).unwrap())
        } else if ft.is_fifo() {
            ("fifo", Vec::new())
        } else if ft.is_char_device() {
            ("char", Vec::new())
        } else if ft.is_block_device() {
            ("block", Vec::new())
        } else {
            ("socket", Vec::new())
        };
        let link_group = (fields.links && ft.is_file() && meta.nlink() > 1).then(|| {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let (owners, mtime) = (
            if fields.owners {
                (meta.uid(), meta.gid())
            } else {
                (0, 0)
            },
            match fields.mtimes {
                Mtimes::None => (0, 0),
                Mtimes::Seconds => (meta.mtime(), 0),
                Mtimes::Exact => (meta.mtime(), meta.mtime_nsec()),
            },
        );
        let node = Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: owners.0,
            gid: owners.1,
            mtime,
            data,
            rdev: if ft.is_char_device() || ft.is_block_device() {
                meta.rdev()
            } else {
                0
            },
            xattrs: if fields.xattrs && !ft.is_symlink() {
                xattrs(&path)
            } else {
                Vec::new()
            },
            link_group,
        };
        out.insert(rel, node);
        if ft.is_dir() {
            walk(root, &path, fields, out, inodes);
        }
    }
}

/// The `user.*` and `trusted.*` attributes of `path` (not followed), sorted.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 64 << 10];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Vec::new(),
        Err(e) => panic!("cannot list the attributes of {}: {e}", path.display()),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0) {
        if !(name.starts_with(b"user.") || name.starts_with(b"trusted.")) {
            continue;
        }
        let mut value = vec![0u8; 64 << 10];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
        value.truncate(len);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

/// The first difference between two trees, in path order: a path only one of them holds,
/// or a path whose nodes differ (with both nodes). `None` when they are the same. For
/// suites that collect failures rather than stop at the first.
pub fn difference(expected: &Tree, actual: &Tree) -> Option<String> {
    let name = |path: &[u8]| String::from_utf8_lossy(path).into_owned();
    let mut paths: Vec<&Vec<u8>> = expected.keys().chain(actual.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .find_map(|path| match (expected.get(path), actual.get(path)) {
            (Some(_), None) => Some(format!("{} is missing", name(path))),
            (None, Some(_)) => Some(format!("{} is not expected", name(path))),
            (Some(e), Some(a)) if e != a => Some(format!(
                "{} differs: expected {e:?}, actual {a:?}",
                name(path)
            )),
            _ => None,
        })
}

/// Asserts that two trees hold the same paths and nodes, naming the first difference.
#[track_caller]
pub fn assert_same_trees(expected: &Tree, actual: &Tree) {
    let names = |t: &Tree| -> Vec<String> {
        t.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    assert_eq!(
        names(expected),
        names(actual),
        "the trees hold different paths"
    );
    for (path, node) in expected {
        assert_eq!(
            node,
            &actual[path],
            "{} differs (left: expected, right: actual)",
            String::from_utf8_lossy(path)
        );
    }
}

/// Asserts that the trees under two directories are the same in `fields`.
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path, fields: Fields) {
    assert_same_trees(&snapshot_of(expected, fields), &snapshot_of(actual, fields));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> Node {
        Node {
            kind: "file",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            data: data.to_vec(),
            rdev: 0,
            xattrs: Vec::new(),
            link_group: None,
        }
    }

    #[test]
    fn difference_names_the_first_path_that_differs() {
        let a = Tree::from([(b"a".to_vec(), file(b"1")), (b"b".to_vec(), file(b"2"))]);
        assert_eq!(difference(&a, &a.clone()), None);
        let mut changed = a.clone();
        changed.insert(b"b".to_vec(), file(b"3"));
        assert!(difference(&a, &changed).unwrap().starts_with("b differs"));
        let mut fewer = a.clone();
        fewer.remove(b"a".as_slice());
        assert_eq!(difference(&a, &fewer).unwrap(), "a is missing");
        assert_eq!(difference(&fewer, &a).unwrap(), "a is not expected");
    }
}
