//! Helpers shared by the integration tests: building trees and comparing them exactly.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Everything a layer records about one path, in a comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) kind: &'static str,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Not compared for directories whose mtime the test does not control.
    pub(crate) mtime: i64,
    pub(crate) content: Vec<u8>,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For hard links: the first path of the same inode in walk order.
    pub(crate) link_group: Option<PathBuf>,
}

pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Snapshot of a tree: relative path → node. Hard links are grouped by inode.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<PathBuf, Node>,
    inodes: &mut BTreeMap<(u64, u64), PathBuf>,
) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let ft = meta.file_type();
        let (kind, content) = if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if ft.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_file() {
            ("file", fs::read(&path).unwrap())
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else {
                "other"
            };
            (kind, meta.rdev().to_le_bytes().to_vec())
        };
        let link_group = if ft.is_file() && meta.nlink() > 1 {
            Some(
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone(),
            )
        } else {
            None
        };
        let xattrs = if ft.is_symlink() {
            Vec::new()
        } else {
            user_xattrs(&path)
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: meta.permissions().mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                content,
                xattrs,
                link_group,
            },
        );
        if ft.is_dir() {
            walk(root, &path, out, inodes);
        }
    }
}

fn user_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::listxattr(path, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let mut value = vec![0u8; 4096];
        let len = rustix::fs::getxattr(path, name, &mut value[..]).unwrap();
        value.truncate(len);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

/// Asserts two trees are identical, naming the first difference.
pub(crate) fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let keys_a: Vec<_> = sa.keys().collect();
    let keys_b: Vec<_> = sb.keys().collect();
    assert_eq!(keys_a, keys_b, "the trees hold different paths");
    for (path, node) in &sa {
        assert_eq!(node, &sb[path], "{} differs", path.display());
    }
}

pub(crate) fn write(path: &Path, data: &[u8], mode: u32, mtime: i64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime);
}

pub(crate) fn set_mtime(path: &Path, mtime: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A tree exercising every entry kind a layer carries (devices only as root).
pub(crate) fn rich_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    write(
        &root.join("etc/hostname"),
        b"builder\n",
        0o644,
        1_600_000_000,
    );
    write(&root.join("etc/empty"), b"", 0o600, 1_600_000_001);
    write(
        &root.join("bin/tool"),
        &vec![7u8; 70_000],
        0o755,
        1_600_000_002,
    );
    // Larger than the pooled-file threshold, so the streaming path runs too.
    let big: Vec<u8> = (0..(5u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&root.join("data/big.bin"), &big, 0o644, 1_600_000_003);
    let long_dir = root
        .join("deep")
        .join("d".repeat(120))
        .join("e".repeat(120));
    write(
        &long_dir.join("f".repeat(200)),
        b"long names",
        0o640,
        1_600_000_004,
    );
    write(
        &root.join(OsStr::from_bytes(b"odd/name-\xff\xfe-\x01")),
        b"non-utf8",
        0o644,
        1_600_000_005,
    );
    std::os::unix::fs::symlink("../etc/hostname", root.join("bin/host-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute", root.join("bin/dangling")).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-hardlink")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("run-fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Everything gets a fixed mtime, so two trees built a second apart are identical.
    for path in ["bin/host-link", "bin/dangling", "run-fifo"] {
        set_mtime(&root.join(path), 1_600_000_006);
    }
    let _ = rustix::fs::setxattr(
        root.join("etc/hostname"),
        "user.strata.test",
        b"value\0with nul",
        rustix::fs::XattrFlags::empty(),
    );
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::set_permissions(root.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(root.join("etc/hostname"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("bin/host-link"), Some(42), Some(43)).unwrap();
    }
    // Directory mtimes last, deepest first, since writing into them changes them.
    for (i, dir) in ["deep/dddd", "etc", "bin", "data", "odd", "shared", "deep"]
        .iter()
        .enumerate()
    {
        let dir = if *dir == "deep/dddd" {
            long_dir.parent().unwrap().to_path_buf()
        } else {
            root.join(dir)
        };
        set_mtime(&dir, 1_500_000_000 + i as i64);
    }
    set_mtime(&long_dir, 1_499_999_999);
}

#[test]
fn tree_comparison_notices_every_recorded_attribute() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    rich_tree(&a);
    rich_tree(&b);
    assert_same_tree(&a, &b);
    type Mutation = (&'static str, fn(&Path));
    let mutations: [Mutation; 5] = [
        ("content", |t| fs::write(t.join("etc/empty"), b"x").unwrap()),
        ("mode", |t| {
            fs::set_permissions(t.join("etc/empty"), fs::Permissions::from_mode(0o644)).unwrap()
        }),
        ("mtime", |t| set_mtime(&t.join("bin"), 7)),
        ("symlink target", |t| {
            fs::remove_file(t.join("bin/dangling")).unwrap();
            std::os::unix::fs::symlink("/elsewhere", t.join("bin/dangling")).unwrap();
        }),
        ("hard link", |t| {
            fs::remove_file(t.join("bin/tool-hardlink")).unwrap();
            fs::copy(t.join("bin/tool"), t.join("bin/tool-hardlink")).unwrap();
            set_mtime(&t.join("bin/tool-hardlink"), 1_600_000_002);
            set_mtime(&t.join("bin"), 1_500_000_002);
        }),
    ];
    for (what, mutate) in mutations {
        let c = tmp.path().join(format!("c-{}", what.replace(' ', "-")));
        rich_tree(&c);
        mutate(&c);
        let caught = std::panic::catch_unwind(|| assert_same_tree(&a, &c)).is_err();
        assert!(caught, "a difference in {what} went unnoticed");
    }
}
