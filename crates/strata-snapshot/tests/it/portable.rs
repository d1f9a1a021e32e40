//! Portable checkout against real trees: merge semantics in both whiteout encodings, a
//! cross-check with strata-cas's extraction, diffs (racy entries included), reflinks, and the
//! diff of a large tree. Linux only: the trees hold fifos and devices, which the module
//! creates on Linux only.
#![cfg(target_os = "linux")]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use strata_cas::create::{CreateOptions, create_from_changes, create_from_dir};
use strata_cas::extract::{apply_file, open_layer_file};
use strata_cas::{Change, ChangeKind, DevicePolicy, ExtractOptions, SetuidPolicy, WhiteoutMode};
use strata_snapshot::portable::{self, Manifest, Timestamp};
use strata_test_support::tree::{Tree, assert_same_trees, snapshot, xattrs};
use strata_test_support::{require, root, runs, tool};
use tempfile::TempDir;

/// A base for the fixed mtimes of hand-made trees: old enough never to be racy.
const T0: i64 = 1_600_000_000;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_times(path: &Path, sec: i64, nsec: u32) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Gives every entry below `root` a fixed, distinct, old mtime (children before parents do
/// not matter: setting a child's times leaves its directory's mtime alone).
fn stamp_tree(root: &Path, base: i64) {
    let mut paths = Vec::new();
    walk_paths(root, &mut paths);
    for (i, path) in paths.iter().enumerate() {
        set_times(path, base + i as i64, 0);
    }
}

fn walk_paths(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut children: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    children.sort();
    for child in children {
        out.push(child.clone());
        if fs::symlink_metadata(&child).unwrap().is_dir() {
            walk_paths(&child, out);
        }
    }
}

/// Restores write access to every directory, so a non-root run can clean up read-only ones.
fn make_writable(root: &Path) {
    let mut paths = vec![root.to_path_buf()];
    walk_paths(root, &mut paths);
    for path in paths {
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

fn mknod(path: &Path, ft: FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        CWD,
        path,
        ft,
        Mode::from_raw_mode(0o644),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

fn path_str(p: &[u8]) -> &str {
    std::str::from_utf8(p).unwrap()
}

/// The changes as (path, kind) pairs, for readable assertions.
fn pairs(changes: &[Change]) -> Vec<(String, ChangeKind)> {
    changes
        .iter()
        .map(|c| (String::from_utf8_lossy(&c.path).into_owned(), c.kind))
        .collect()
}

fn expect(list: &[(&str, ChangeKind)]) -> Vec<(String, ChangeKind)> {
    list.iter().map(|(p, k)| ((*p).to_owned(), *k)).collect()
}

fn paths(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(PathBuf::as_path).collect()
}

/// How a hand-made layer records whiteouts and opaque directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// `.wh.<name>` files and `.wh..wh..opq` markers.
    Oci,
    /// 0/0 character devices and `trusted.overlay.opaque=y`.
    OverlayTrusted,
}

impl Encoding {
    const ALL: [Encoding; 2] = [Encoding::Oci, Encoding::OverlayTrusted];

    /// `None` where layers in this encoding can be made, else why not.
    fn problem(self) -> Option<String> {
        // Whiteout devices need CAP_MKNOD.
        if self == Encoding::Oci { None } else { root() }
    }

    fn whiteout(self, layer: &Path, rel: &str) {
        let path = layer.join(rel);
        match self {
            Encoding::Oci => {
                let name = path.file_name().unwrap().as_bytes();
                let marker = path.with_file_name(OsStr::from_bytes(&[b".wh.", name].concat()));
                write(&marker, b"", 0o644);
            }
            Encoding::OverlayTrusted => {
                mknod(&path, FileType::CharacterDevice, 0, 0);
            }
        }
    }

    fn opaque(self, layer: &Path, rel: &str) {
        let dir = layer.join(rel);
        match self {
            Encoding::Oci => write(&dir.join(".wh..wh..opq"), b"", 0o644),
            Encoding::OverlayTrusted => set_xattr(&dir, "trusted.overlay.opaque", b"y"),
        }
    }
}

/// Three hand-made layers (base first) exercising every merge rule.
fn merge_layers(root: &Path, enc: Encoding) -> Vec<PathBuf> {
    let l: Vec<PathBuf> = (0..3).map(|i| root.join(format!("layer{i}"))).collect();
    for dir in &l {
        mkdir(dir, 0o755);
    }
    let (l0, l1, l2) = (&l[0], &l[1], &l[2]);

    write(&l0.join("keep.txt"), b"keep\n", 0o644);
    set_xattr(&l0.join("keep.txt"), "user.note", b"base");
    write(&l0.join("over.txt"), b"base over", 0o644);
    write(&l0.join("gone.txt"), b"gone", 0o644);
    write(&l0.join("gonedir/a"), b"a", 0o644);
    write(&l0.join("gonedir/b/c"), b"c", 0o644);
    write(&l0.join("opq/lower1"), b"l1", 0o644);
    write(&l0.join("opq/sub/lower2"), b"l2", 0o644);
    write(&l0.join("f2d"), b"was a file", 0o644);
    write(&l0.join("d2f/x"), b"x", 0o644);
    write(&l0.join("merge/base.txt"), b"b", 0o644);
    write(&l0.join("readd.txt"), b"old", 0o644);
    symlink("keep.txt", l0.join("sym")).unwrap();
    write(&l0.join("hl1"), b"linked", 0o640);
    fs::hard_link(l0.join("hl1"), l0.join("hl2")).unwrap();
    fs::hard_link(l0.join("hl1"), l0.join("hl3")).unwrap();
    write(&l0.join("exec.sh"), b"#!/bin/sh\n", 0o755);
    rustix::fs::mknodat(
        CWD,
        l0.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    fs::set_permissions(l0.join("fifo"), fs::Permissions::from_mode(0o620)).unwrap();
    write(&l0.join("deep/x/y"), b"y", 0o644);
    write(&l0.join("deep/x/z"), b"z", 0o644);
    write(&l0.join("ro/file"), b"ro", 0o444);
    fs::set_permissions(l0.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();

    write(&l1.join("over.txt"), b"mid over", 0o644);
    enc.whiteout(l1, "gonedir");
    write(&l1.join("f2d/inner"), b"inner", 0o644);
    write(&l1.join("merge/mid.txt"), b"m", 0o644);
    enc.whiteout(l1, "readd.txt");
    symlink("does/not/exist", l1.join("dangling")).unwrap();
    write(&l1.join("opq/mid.txt"), b"hidden by the opaque top", 0o644);

    write(&l2.join("over.txt"), b"top over!", 0o600);
    enc.whiteout(l2, "gone.txt");
    write(&l2.join("opq/own"), b"own", 0o644);
    enc.opaque(l2, "opq");
    write(&l2.join("d2f"), b"now a file", 0o644);
    write(&l2.join("merge/top.txt"), b"t", 0o644);
    fs::set_permissions(l2.join("merge"), fs::Permissions::from_mode(0o750)).unwrap();
    set_xattr(&l2.join("merge"), "user.dir", b"top");
    write(&l2.join("readd.txt"), b"new", 0o644);
    write(&l2.join("hl3"), b"replaced", 0o644);
    mkdir(&l2.join("deep/x"), 0o711);
    enc.whiteout(l2, "deep/x/y");
    write(&l2.join("pair/a"), b"pair", 0o644);
    fs::hard_link(l2.join("pair/a"), l2.join("pair/b")).unwrap();

    for (i, dir) in l.iter().enumerate() {
        stamp_tree(dir, T0 + 1000 * i as i64);
        set_times(dir, T0 + 900 + i as i64, 0);
    }
    set_times(&l2.join("over.txt"), T0 + 50, 123_456_789);
    set_times(&l2.join("merge"), T0 + 77, 0);
    l
}

/// `user.overlay.opaque` is what a `userxattr` overlay mount reads; the engine's mounts are
/// not such, and ignore it: so does a portable checkout, which must show the same tree.
#[test]
fn a_user_overlay_opaque_attribute_hides_nothing() {
    let tmp = TempDir::new().unwrap();
    let (l0, l1) = (tmp.path().join("l0"), tmp.path().join("l1"));
    write(&l0.join("d/lower"), b"lower", 0o644);
    write(&l1.join("d/upper"), b"upper", 0o644);
    set_xattr(&l1.join("d"), "user.overlay.opaque", b"y");
    let target = tmp.path().join("out");
    portable::materialize(&[l0.as_path(), l1.as_path()], &target).unwrap();
    assert_eq!(fs::read(target.join("d/lower")).unwrap(), b"lower");
    assert_eq!(fs::read(target.join("d/upper")).unwrap(), b"upper");
    assert!(xattrs(&target.join("d")).is_empty(), "not copied either");
}

#[test]
fn merge_semantics_in_every_whiteout_encoding() {
    for enc in Encoding::ALL {
        if !require(&format!("the {enc:?} encoding"), enc.problem()) {
            continue;
        }
        let tmp = TempDir::new().unwrap();
        let layers = merge_layers(tmp.path(), enc);
        let target = tmp.path().join("out");
        let (manifest, report) = portable::materialize(&paths(&layers), &target).unwrap();
        let tree = snapshot(&target);

        let expected = [
            "d2f",
            "dangling",
            "deep",
            "deep/x",
            "deep/x/z",
            "exec.sh",
            "f2d",
            "f2d/inner",
            "fifo",
            "hl1",
            "hl2",
            "hl3",
            "keep.txt",
            "merge",
            "merge/base.txt",
            "merge/mid.txt",
            "merge/top.txt",
            "opq",
            "opq/own",
            "over.txt",
            "pair",
            "pair/a",
            "pair/b",
            "readd.txt",
            "ro",
            "ro/file",
            "sym",
        ];
        let got: Vec<&str> = tree.keys().map(|k| path_str(k)).collect();
        assert_eq!(got, expected, "{enc:?}");

        let node = |p: &str| &tree[p.as_bytes()];
        let data = |p: &str| node(p).data.as_slice();
        assert_eq!(data("over.txt"), b"top over!");
        assert_eq!(node("over.txt").mode, 0o600);
        assert_eq!(node("over.txt").mtime, (T0 + 50, 123_456_789));
        assert_eq!(data("d2f"), b"now a file");
        assert_eq!(node("f2d").kind, "dir");
        assert_eq!(data("readd.txt"), b"new");
        assert_eq!(data("opq/own"), b"own");
        assert_eq!(node("sym").kind, "symlink");
        assert_eq!(data("sym"), b"keep.txt");
        assert_eq!(data("dangling"), b"does/not/exist");
        assert_eq!(node("fifo").kind, "fifo");
        assert_eq!(node("fifo").mode, 0o620);
        assert_eq!(node("exec.sh").mode, 0o755);
        assert_eq!(node("ro").mode, 0o555);
        assert_eq!(node("ro/file").mode, 0o444);
        assert_eq!(node("deep/x").mode, 0o711);
        assert_eq!(node("merge").mode, 0o750);
        assert_eq!(node("merge").mtime, (T0 + 77, 0));
        assert_eq!(
            node("merge").xattrs,
            vec![(b"user.dir".to_vec(), b"top".to_vec())]
        );
        assert_eq!(
            node("keep.txt").xattrs,
            vec![(b"user.note".to_vec(), b"base".to_vec())]
        );
        // Overlayfs's own attributes are whiteout encoding, never content.
        assert!(node("opq").xattrs.is_empty(), "{:?}", node("opq").xattrs);
        // Hard links within a layer stay links; a name replaced above leaves the group.
        assert_eq!(node("hl1").link_group.as_deref(), Some(&b"hl1"[..]));
        assert_eq!(node("hl2").link_group.as_deref(), Some(&b"hl1"[..]));
        assert_eq!(node("hl3").link_group, None);
        assert_eq!(data("hl3"), b"replaced");
        assert_eq!(node("pair/b").link_group.as_deref(), Some(&b"pair/a"[..]));
        // Every entry keeps the mtime of the layer it came from.
        for (path, n) in &tree {
            let from = layers
                .iter()
                .rev()
                .map(|l| l.join(OsStr::from_bytes(path)))
                .find(|p| fs::symlink_metadata(p).is_ok())
                .unwrap();
            let meta = fs::symlink_metadata(&from).unwrap();
            assert_eq!(
                n.mtime,
                (meta.mtime(), meta.mtime_nsec()),
                "{enc:?} {}",
                path_str(path)
            );
            if is_root() {
                assert_eq!((n.uid, n.gid), (meta.uid(), meta.gid()));
            }
        }
        // The root takes the top layer's attributes.
        let root_meta = fs::metadata(&target).unwrap();
        assert_eq!(root_meta.mtime(), T0 + 902);
        assert_eq!(root_meta.mode() & 0o7777, 0o755);

        assert_eq!(manifest.len(), tree.len());
        assert_eq!(report.entries, tree.len() as u64);
        assert_eq!(report.hardlinked, 2, "hl2 and pair/b");
        assert_eq!(report.reflinked + report.copied, 15, "{report:?}");
        // Right after the checkout nothing has changed, and a fresh manifest agrees.
        assert_eq!(pairs(&portable::diff(&target, &manifest).unwrap()), vec![]);
        let fresh = portable::manifest_of(&target).unwrap();
        assert!(manifest.iter().eq(fresh.iter()), "{enc:?}");
        let again = Manifest::from_bytes(&manifest.to_bytes()).unwrap();
        assert_eq!(again, manifest);
        if !is_root() {
            make_writable(tmp.path());
        }
    }
}

#[test]
fn target_must_be_empty_and_whiteout_names_valid() {
    let tmp = TempDir::new().unwrap();
    let layer = tmp.path().join("layer");
    write(&layer.join("a"), b"a", 0o644);
    let busy = tmp.path().join("busy");
    write(&busy.join("x"), b"x", 0o644);
    let err = portable::materialize(&[&layer], &busy).unwrap_err();
    assert!(
        matches!(err, portable::Error::TargetNotEmpty { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("busy"), "{err}");

    write(&layer.join(".wh..wh.bogus"), b"", 0o644);
    let err = portable::materialize(&[&layer], &tmp.path().join("out")).unwrap_err();
    assert!(matches!(err, portable::Error::BadWhiteout { .. }), "{err}");
    assert!(err.to_string().contains(".wh..wh.bogus"), "{err}");

    // An empty stack checks out an empty directory.
    let (m, report) = portable::materialize(&[], &tmp.path().join("empty")).unwrap();
    assert!(m.is_empty());
    assert_eq!(report, portable::MaterializeReport::default());
}

#[test]
fn manifest_round_trips_any_name_and_refuses_garbage() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    write(&dir.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1", 0o644);
    write(&dir.join("100%"), b"percent", 0o644);
    write(&dir.join("d/%41"), b"not an escape", 0o644);
    let m = portable::manifest_of(dir).unwrap();
    let bytes = m.to_bytes();
    let back = Manifest::from_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    assert!(back.get(b"caf\xe9").is_some());
    assert!(back.get(b"d/%41").is_some());
    assert!(back.get(b"d/A").is_none());
    assert_eq!(back.len(), 4);

    // Damage anywhere is caught by the checksum, and named by its offset.
    for at in [20, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x20;
        let err = Manifest::from_bytes(&bad).unwrap_err().to_string();
        assert!(err.contains("malformed manifest at byte"), "{err}");
    }
    for cut in [0, 10, bytes.len() - 40, bytes.len() - 1] {
        let err = Manifest::from_bytes(&bytes[..cut]).unwrap_err().to_string();
        assert!(err.contains("malformed manifest"), "{err}");
    }
    assert!(Manifest::from_bytes(b"not a manifest").is_err());

    // The JSON form of the first version (checkouts made before) is still read, and its
    // order is checked too.
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(Manifest::from_bytes(json.as_bytes()).unwrap(), m);
    assert!(Manifest::from_bytes(b"{}").is_err());
    let swapped = json.replacen("\"100%25\"", "\"zzz\"", 1);
    let err = Manifest::from_bytes(swapped.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("zzz"), "{err}");
}

/// A well-formed binary manifest (checksum right) whose entries break the rules: the
/// reader refuses it, naming the entry.
#[test]
fn a_binary_manifest_out_of_order_is_refused_naming_the_entry() {
    let tmp = TempDir::new().unwrap();
    write(&tmp.path().join("aaa"), b"1", 0o644);
    write(&tmp.path().join("bbb"), b"2", 0o644);
    let bytes = portable::manifest_of(tmp.path()).unwrap().to_bytes();
    // The second path shares nothing with the first and is stored whole: make it sort first.
    let at = bytes
        .windows(3)
        .rposition(|w| w == b"bbb")
        .expect("the second path");
    let mut bad = bytes[..bytes.len() - 32].to_vec();
    bad[at..at + 3].copy_from_slice(b"a00");
    let checksum = blake3::hash(&bad);
    bad.extend_from_slice(checksum.as_bytes());
    let err = Manifest::from_bytes(&bad).unwrap_err().to_string();
    assert!(err.contains("`a00` does not come after `aaa`"), "{err}");
}

fn extract_options(whiteouts: WhiteoutMode) -> ExtractOptions {
    ExtractOptions {
        whiteouts,
        devices: DevicePolicy::Create,
        setuid: SetuidPolicy::Keep,
        ..Default::default()
    }
}

/// Unpacks a layer keeping its OCI whiteout files, as GNU tar does. `None` without GNU tar.
fn untar_keeping_whiteouts(layer: &Path, dir: &Path) {
    mkdir(dir, 0o755);
    let mut child = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xpf", "-", "-C"])
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot run GNU tar");
    let mut input = open_layer_file(layer).unwrap();
    std::io::copy(&mut input, child.stdin.as_mut().unwrap()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "tar -x failed");
}

/// Three layers made by strata-cas: a whole base tree, then two change lists.
fn cas_layers(root: &Path) -> Vec<PathBuf> {
    let t0 = root.join("tree0");
    write(&t0.join("etc/conf"), b"conf v0", 0o644);
    write(&t0.join("etc/old"), b"old", 0o644);
    write(&t0.join("etc/keep"), b"keep", 0o644);
    set_xattr(&t0.join("etc/keep"), "user.k", b"v");
    write(&t0.join("var/log/a"), b"a", 0o644);
    write(&t0.join("var/cache/b"), b"b", 0o644);
    write(&t0.join("bin/tool"), b"tool", 0o755);
    symlink("tool", t0.join("bin/link")).unwrap();
    write(&t0.join("srv/x"), b"x", 0o644);
    write(&t0.join("srv/y/z"), b"z", 0o644);
    mkdir(&t0.join("opt"), 0o755);
    write(&t0.join("hl/a"), b"linked", 0o644);
    fs::hard_link(t0.join("hl/a"), t0.join("hl/b")).unwrap();
    symlink("etc/conf", t0.join("lnk")).unwrap();
    rustix::fs::mknodat(
        CWD,
        t0.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    write(&t0.join("suid"), b"suid", 0o4755);
    if is_root() {
        mkdir(&t0.join("dev"), 0o755);
        mknod(&t0.join("dev/null"), FileType::CharacterDevice, 1, 3);
        mknod(&t0.join("dev/loopy"), FileType::BlockDevice, 7, 9);
        write(&t0.join("owned"), b"owned", 0o640);
        std::os::unix::fs::lchown(t0.join("owned"), Some(1234), Some(5678)).unwrap();
    }
    stamp_tree(&t0, T0);

    let t1 = root.join("tree1");
    write(&t1.join("etc/conf"), b"conf v1", 0o644);
    write(&t1.join("opt/new/file"), b"new", 0o644);
    write(&t1.join("srv/only"), b"only", 0o644);
    write(&t1.join("bin/tool/x"), b"x", 0o644);
    symlink("bin", t1.join("lnk")).unwrap();
    stamp_tree(&t1, T0 + 10_000);
    let c1 = vec![
        Change::new("etc/conf", ChangeKind::Modified),
        Change::new("etc/old", ChangeKind::Deleted),
        Change::new("var", ChangeKind::Deleted),
        Change::new("opt/new/file", ChangeKind::Added),
        Change::new("srv", ChangeKind::Opaque),
        Change::new("srv/only", ChangeKind::Added),
        Change::new("bin/tool", ChangeKind::Modified),
        Change::new("bin/tool/x", ChangeKind::Added),
        Change::new("lnk", ChangeKind::Modified),
    ];

    let t2 = root.join("tree2");
    mkdir(&t2.join("etc"), 0o700);
    write(&t2.join("etc/hl_a"), b"pair", 0o600);
    fs::hard_link(t2.join("etc/hl_a"), t2.join("etc/hl_b")).unwrap();
    write(&t2.join("var/fresh"), b"fresh", 0o644);
    mkdir(&t2.join("opt"), 0o755);
    mkdir(&t2.join("hl"), 0o755);
    stamp_tree(&t2, T0 + 20_000);
    let c2 = vec![
        Change::new("opt/new", ChangeKind::Deleted),
        Change::new("var", ChangeKind::Added),
        Change::new("var/fresh", ChangeKind::Added),
        Change::new("etc", ChangeKind::Modified),
        Change::new("etc/hl_a", ChangeKind::Added),
        Change::new("etc/hl_b", ChangeKind::Added),
        Change::new("hl/b", ChangeKind::Deleted),
    ];

    let opts = CreateOptions::default();
    let blobs: Vec<PathBuf> = (0..3).map(|i| root.join(format!("l{i}.zst"))).collect();
    create_from_dir(&t0, File::create(&blobs[0]).unwrap(), &opts).unwrap();
    create_from_changes(&t1, &c1, File::create(&blobs[1]).unwrap(), &opts).unwrap();
    create_from_changes(&t2, &c2, File::create(&blobs[2]).unwrap(), &opts).unwrap();
    blobs
}

#[test]
fn matches_applying_the_layers_in_order() {
    let tmp = TempDir::new().unwrap();
    let blobs = cas_layers(tmp.path());
    let reference = tmp.path().join("reference");
    for blob in &blobs {
        apply_file(blob, &reference, &extract_options(WhiteoutMode::Apply)).unwrap();
    }
    let expected = snapshot(&reference);
    assert!(expected.contains_key(&b"etc/hl_b"[..]) && !expected.contains_key(&b"var/log"[..]));

    let mut ran = 0;
    for overlay in [true, false] {
        let unpacked: Vec<PathBuf> = (0..blobs.len())
            .map(|i| {
                tmp.path()
                    .join(format!("{}{i}", if overlay { "ovl" } else { "oci" }))
            })
            .collect();
        if overlay {
            if !require("overlay-format layers", root()) {
                continue;
            }
            for (blob, dir) in blobs.iter().zip(&unpacked) {
                apply_file(blob, dir, &extract_options(WhiteoutMode::Overlay)).unwrap();
            }
        } else {
            if !require("OCI-format layers (unpacked by GNU tar)", tool("tar")) {
                continue;
            }
            for (blob, dir) in blobs.iter().zip(&unpacked) {
                untar_keeping_whiteouts(blob, dir);
            }
            assert!(unpacked[1].join(".wh.var").exists(), "tar kept whiteouts");
        }
        let target = tmp.path().join(format!("out-{overlay}"));
        let (manifest, report) = portable::materialize(&paths(&unpacked), &target).unwrap();
        assert_same_trees(&expected, &snapshot(&target));
        assert_eq!(report.entries, expected.len() as u64);
        assert_eq!(manifest.len(), expected.len());
        assert_eq!(pairs(&portable::diff(&target, &manifest).unwrap()), vec![]);
        ran += 1;
    }
    assert!(ran > 0, "no whiteout encoding could be tested");
}

/// A base layer for the diff tests, with old mtimes.
fn diff_base(root: &Path) -> PathBuf {
    let base = root.join("base");
    write(&base.join("chm.txt"), b"chm", 0o644);
    write(&base.join("del.txt"), b"del", 0o644);
    write(&base.join("f2d"), b"file", 0o644);
    write(&base.join("mod.txt"), b"hello world", 0o644);
    write(&base.join("keep.txt"), b"keep", 0o644);
    write(&base.join("sub/deep.txt"), b"deep", 0o644);
    write(&base.join("tree/a"), b"a", 0o644);
    write(&base.join("tree/sub/b"), b"b", 0o644);
    write(&base.join("target.txt"), b"target", 0o644);
    stamp_tree(&base, T0);
    base
}

#[test]
fn diff_lists_exactly_what_a_step_changed_and_commits_back() {
    let tmp = TempDir::new().unwrap();
    let base = diff_base(tmp.path());
    let dir = tmp.path().join("work");
    let (manifest, _) = portable::materialize(&[&base], &dir).unwrap();

    // The step: right after the checkout, so within the same second.
    write(&dir.join("new.txt"), b"new", 0o644);
    fs::write(dir.join("mod.txt"), b"HELLO WORLD").unwrap();
    fs::set_permissions(dir.join("chm.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(dir.join("del.txt")).unwrap();
    fs::remove_dir_all(dir.join("tree")).unwrap();
    fs::remove_file(dir.join("f2d")).unwrap();
    write(&dir.join("f2d/inside"), b"inside", 0o644);
    symlink("target.txt", dir.join("newlink")).unwrap();
    write(&dir.join("sub/added.txt"), b"added", 0o644);

    let changes = portable::diff(&dir, &manifest).unwrap();
    use ChangeKind::{Added, Deleted, Modified};
    assert_eq!(
        pairs(&changes),
        expect(&[
            ("chm.txt", Modified),
            ("del.txt", Deleted),
            ("f2d", Modified),
            ("f2d/inside", Added),
            ("mod.txt", Modified),
            ("new.txt", Added),
            ("newlink", Added),
            ("sub", Modified),
            ("sub/added.txt", Added),
            ("tree", Deleted),
        ])
    );

    // End to end: the changes as a layer, applied onto a fresh checkout of the base.
    let blob = tmp.path().join("step.zst");
    create_from_changes(
        &dir,
        &changes,
        File::create(&blob).unwrap(),
        &CreateOptions::default(),
    )
    .unwrap();
    let fresh = tmp.path().join("fresh");
    portable::materialize(&[&base], &fresh).unwrap();
    apply_file(&blob, &fresh, &extract_options(WhiteoutMode::Apply)).unwrap();
    // Layers keep whole seconds.
    let coarse = |t: Tree| -> Tree {
        t.into_iter()
            .map(|(p, mut n)| {
                n.mtime.1 = 0;
                (p, n)
            })
            .collect()
    };
    assert_same_trees(&coarse(snapshot(&dir)), &coarse(snapshot(&fresh)));
}

#[test]
fn racy_entries_are_reported() {
    let tmp = TempDir::new().unwrap();
    let base = tmp.path().join("base");
    write(&base.join("r.txt"), b"0123456789", 0o644);
    write(&base.join("still.txt"), b"still", 0o644);
    stamp_tree(&base, T0);
    let dir = tmp.path().join("work");
    let (manifest, _) = portable::materialize(&[&base], &dir).unwrap();

    // Same size, and the mtime put back to exactly what the manifest recorded: only the
    // ctime, which nobody can set, tells the write apart.
    let recorded = *manifest.get(b"r.txt").unwrap();
    fs::write(dir.join("r.txt"), b"abcdefghij").unwrap();
    set_times(&dir.join("r.txt"), recorded.mtime.sec, recorded.mtime.nsec);
    let now = portable::manifest_of(&dir).unwrap();
    let current = now.get(b"r.txt").unwrap();
    assert_eq!(
        (current.ino, current.size, current.mtime, current.mode),
        (recorded.ino, recorded.size, recorded.mtime, recorded.mode)
    );
    assert_ne!(current.ctime, recorded.ctime);
    assert_eq!(
        pairs(&portable::diff(&dir, &manifest).unwrap()),
        expect(&[("r.txt", ChangeKind::Modified)])
    );

    // Where only the racy rule can see it: a change in the same timestamp tick as the
    // manifest leaves the stat bit for bit as recorded. Kernels with multigrain timestamps
    // (Linux 6.13+ on ext4, XFS, btrfs, tmpfs) give every change after a stat a new ctime, so
    // such a write cannot be staged from user space; what can be is its signature: a
    // recorded mtime not older than the manifest, with nothing changed since. That entry is
    // reported, and an old one next to it is not.
    let plain = tmp.path().join("plain");
    write(&plain.join("future.txt"), b"f", 0o644);
    write(&plain.join("old.txt"), b"o", 0o644);
    set_times(&plain.join("old.txt"), T0, 0);
    let later = Timestamp {
        sec: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
            + 3600,
        nsec: 0,
    };
    set_times(&plain.join("future.txt"), later.sec, later.nsec);
    let m = portable::manifest_of(&plain).unwrap();
    assert!(m.get(b"future.txt").unwrap().mtime >= m.taken());
    assert!(m.get(b"old.txt").unwrap().mtime < m.taken());
    let again = portable::manifest_of(&plain).unwrap();
    assert_eq!(
        again.get(b"future.txt"),
        m.get(b"future.txt"),
        "stat unchanged"
    );
    assert_eq!(
        pairs(&portable::diff(&plain, &m).unwrap()),
        expect(&[("future.txt", ChangeKind::Modified)])
    );
}

/// A loop-mounted filesystem, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run_quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A few files worth cloning.
fn reflink_layer(dir: &Path) -> usize {
    let big: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    write(&dir.join("big"), &big, 0o644);
    write(&dir.join("sub/medium"), &big[..200_000], 0o600);
    write(&dir.join("small"), b"small", 0o644);
    write(&dir.join("empty"), b"", 0o644);
    stamp_tree(dir, T0);
    4
}

#[allow(
    clippy::unnecessary_cast,
    reason = "f_type is a long on Linux and a u32 on macOS"
)]
fn fs_type(path: &Path) -> i64 {
    rustix::fs::statfs(path).unwrap().f_type as i64
}

#[test]
fn reflinks_where_the_filesystem_can() {
    // The default temporary directory: copies unless it is a reflinking filesystem.
    let tmp = TempDir::new().unwrap();
    let files = reflink_layer(&tmp.path().join("layer"));
    let target = tmp.path().join("out");
    let (_, report) = portable::materialize(&[&tmp.path().join("layer")], &target).unwrap();
    assert_eq!(report.reflinked + report.copied, files as u64);
    assert_eq!(report.bytes, (1 << 20) + 200_000 + 5);
    assert_same_trees(&snapshot(&tmp.path().join("layer")), &snapshot(&target));
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    let fs_type = fs_type(tmp.path());
    if fs_type == EXT4_SUPER_MAGIC {
        assert_eq!(report.reflinked, 0, "{report:?}");
        assert!(report.copied > 0, "{report:?}");
    } else {
        eprintln!("temporary directory is not ext4 (type {fs_type:#x}): {report:?}");
    }

    // XFS with reflink on a loop device, when we may mount and mkfs.xfs is installed.
    if !require(
        "the XFS reflink check",
        root().or_else(|| runs("mkfs.xfs", &["-V"])),
    ) {
        return;
    }
    let image = tmp.path().join("xfs.img");
    File::create(&image)
        .unwrap()
        .set_len(320 << 20) // mkfs.xfs refuses filesystems under 300 MiB
        .unwrap();
    assert!(
        run_quiet(
            Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image),
        ),
        "mkfs.xfs failed"
    );
    let mnt = tmp.path().join("mnt");
    mkdir(&mnt, 0o755);
    let mounted = run_quiet(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt),
    );
    if !require(
        "the XFS reflink check",
        (!mounted).then(|| "loop mounts do not work here".to_owned()),
    ) {
        return;
    }
    let mounted = Mounted(mnt.clone());
    let layer = mnt.join("layer");
    reflink_layer(&layer);
    let out = mnt.join("out");
    let (manifest, report) = portable::materialize(&[&layer], &out).unwrap();
    eprintln!("checkout on XFS: {report:?}");
    assert_eq!(report.reflinked, 3, "{report:?}");
    assert_eq!(report.copied, 1, "the empty file: {report:?}");
    assert_same_trees(&snapshot(&layer), &snapshot(&out));
    assert_eq!(pairs(&portable::diff(&out, &manifest).unwrap()), vec![]);
    drop(mounted);
}

#[test]
fn diff_of_a_large_tree_lists_only_the_change() {
    let tmp = TempDir::new().unwrap();
    let layer = tmp.path().join("layer");
    for d in 0..200 {
        let dir = layer.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}")).unwrap();
        }
    }
    stamp_tree(&layer, T0);
    let dir = tmp.path().join("work");
    let (manifest, report) = portable::materialize(&[&layer], &dir).unwrap();
    assert_eq!(manifest.len(), 20_200);
    assert_eq!(report.entries, 20_200);

    let changed = dir.join("d057/f042");
    let before = fs::read(&changed).unwrap();
    let mut after = before.clone();
    after.reverse();
    assert_ne!(after, before);
    File::options()
        .write(true)
        .open(&changed)
        .unwrap()
        .write_all(&after)
        .unwrap();
    assert_eq!(
        pairs(&portable::diff(&dir, &manifest).unwrap()),
        expect(&[("d057/f042", ChangeKind::Modified)])
    );
}

/// The manifest a tracked portable checkout at `dir` keeps in its state dir.
fn manifest_of_checkout(engine: &strata_snapshot::Engine, dir: &Path) -> Manifest {
    let state = engine.checkout_state_dir(dir).unwrap().unwrap();
    Manifest::from_bytes(&fs::read(state.join("manifest")).unwrap()).unwrap()
}

/// The layers above, as a snapshot, plus a step committed at one root whose file names that
/// root: a portable checkout streamed from the blobs (the cache cold, no reflinks) and one
/// built from the unpacked-layer cache are the same tree, relocated the same way, and
/// neither one's manifest sees a change.
#[test]
fn a_checkout_streamed_from_the_blobs_is_the_one_built_from_the_cache() {
    use strata_snapshot::{CheckoutMode, Engine};
    let tmp = TempDir::new().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let blobs = cas_layers(&top);
    let engine = Engine::open(&top.join("store")).unwrap();
    assert!(engine.assume_clones(false));
    let mut parent = None;
    for blob in &blobs {
        let tar = open_layer_file(blob).unwrap();
        parent = Some(engine.import_layer(parent.as_ref(), tar, None).unwrap().id);
    }
    let w1 = top.join("w1");
    engine
        .checkout(parent.as_ref().unwrap(), &w1, Some(CheckoutMode::Portable))
        .unwrap();
    assert_eq!(
        pairs(&portable::diff(&w1, &manifest_of_checkout(&engine, &w1)).unwrap()),
        vec![]
    );
    write(
        &w1.join("etc/where"),
        format!("{}\n", w1.display()).as_bytes(),
        0o644,
    );
    fs::remove_file(w1.join("etc/conf")).unwrap();
    let step = engine.commit(&w1, None).unwrap();

    // Same length as w1: relocated in place.
    let w2 = top.join("w2");
    let copy = top.join("copy");
    let mut trees = Vec::new();
    for from_cache in [false, true] {
        if from_cache {
            engine.unpack_snapshot(&step.id).unwrap();
        }
        engine
            .checkout(&step.id, &w2, Some(CheckoutMode::Portable))
            .unwrap();
        assert_eq!(
            fs::read_to_string(w2.join("etc/where")).unwrap(),
            format!("{}\n", w2.display())
        );
        assert!(!w2.join("etc/conf").exists() && w2.join("etc/hl_b").exists());
        let manifest = manifest_of_checkout(&engine, &w2);
        assert_eq!(pairs(&portable::diff(&w2, &manifest).unwrap()), vec![]);
        trees.push(snapshot(&w2));
        engine.release(&w2).unwrap();
        engine.copy_out(&step.id, &copy).unwrap();
        assert_eq!(
            fs::read_to_string(copy.join("etc/where")).unwrap(),
            format!("{}\n", copy.display())
        );
        trees.push(snapshot(&copy));
        fs::remove_dir_all(&copy).unwrap();
    }
    // The copies are relocated to their own root, whose name differs from w2's.
    let without_where = |t: &Tree| {
        let mut t = t.clone();
        t.remove(&b"etc/where"[..]);
        t
    };
    // Streamed, then from the cache: checkout, copy, checkout, copy.
    assert_same_trees(&trees[0], &trees[2]);
    for copy in [&trees[1], &trees[3]] {
        assert_same_trees(&without_where(&trees[0]), &without_where(copy));
    }
    assert_same_trees(&without_where(&trees[0]), &without_where(&trees[1]));
}
