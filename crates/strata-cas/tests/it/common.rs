//! Helpers shared by the integration tests: building trees and comparing them exactly.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use strata_test_support::tree::{self, Fields, Mtimes};

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

/// What the CAS's comparisons look at: everything a layer records, mtimes to the second.
const FIELDS: Fields = Fields {
    mtimes: Mtimes::Seconds,
    ..Fields::ALL
};

/// Asserts two trees are identical in everything a layer records, naming the first
/// difference.
#[track_caller]
pub(crate) fn assert_same_tree(a: &Path, b: &Path) {
    tree::assert_same_tree(a, b, FIELDS);
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
