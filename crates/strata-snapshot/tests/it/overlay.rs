//! Overlay mounts against the real kernel: merged views, deep stacks, odd paths, and upper
//! dirs read back as layers. Every test needs root and overlayfs: it fails under CI without them, and skips otherwise.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{CWD, FileType, Mode, XattrFlags};
use strata_cas::create::create_from_changes;
use strata_cas::extract::{apply_file, open_layer_file};
use strata_cas::tar::TarReader;
use strata_cas::{
    Change, ChangeKind, DevicePolicy, EntryKind, ExtractOptions, Limits, SetuidPolicy, WhiteoutMode,
};
use strata_snapshot::overlay::{self, Error, OverlayMount};
use strata_test_support::require;
use strata_test_support::tree::{self, Fields};

macro_rules! require_overlay {
    () => {
        if !require(
            "overlay mounts",
            (!overlay::supported()).then(|| "they need root and overlayfs".to_owned()),
        ) {
            return;
        }
    };
}

/// Detaches the mount when dropped, so a failing test leaves nothing mounted. Declared after
/// the temporary directory, it is dropped before it.
struct Mounted(PathBuf);

impl Mounted {
    fn new(spec: &OverlayMount) -> Mounted {
        overlay::mount(spec).unwrap();
        Mounted(spec.target.clone())
    }

    fn unmount(self) {
        overlay::unmount(&self.0).unwrap();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if overlay::is_mounted(&self.0).unwrap_or(false) {
            let _ = overlay::unmount_detach(&self.0);
        }
    }
}

fn write(path: &Path, data: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

fn mkdirs(paths: &[&Path]) {
    for p in paths {
        fs::create_dir_all(p).unwrap();
    }
}

/// An overlay whiteout: a 0/0 character device.
fn whiteout(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mknodat(CWD, path, FileType::CharacterDevice, Mode::empty(), 0).unwrap();
}

fn set_opaque(dir: &Path) {
    rustix::fs::setxattr(dir, "trusted.overlay.opaque", b"y", XattrFlags::empty()).unwrap();
}

fn cp_a(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(dst)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        src.display(),
        dst.display()
    );
}

/// What an overlay view must show the same as a layer applied: kinds, modes, contents,
/// link targets, owners and hard links (mtimes and attributes are the mount's).
const FIELDS: Fields = Fields {
    owners: true,
    links: true,
    ..Fields::CONTENT
};

#[track_caller]
fn assert_same_tree(expected: &Path, actual: &Path) {
    tree::assert_same_tree(expected, actual, FIELDS);
}

fn changes(list: &[(&str, ChangeKind)]) -> Vec<Change> {
    list.iter().map(|(p, k)| Change::new(*p, *k)).collect()
}

fn permissive() -> ExtractOptions {
    ExtractOptions {
        devices: DevicePolicy::Create,
        setuid: SetuidPolicy::Keep,
        ..ExtractOptions::default()
    }
}

/// Commits `changes` of `upper` to a layer file and returns its path.
fn commit(upper: &Path, changes: &[Change], file: &Path) -> PathBuf {
    let mut blob = Vec::new();
    create_from_changes(upper, changes, &mut blob, &Default::default()).unwrap();
    fs::write(file, blob).unwrap();
    file.to_path_buf()
}

/// A checkout layout in `root`: `upper`, `work` and `mnt`, created empty.
fn checkout(root: &Path, lowers: Vec<PathBuf>) -> OverlayMount {
    let spec = OverlayMount {
        lowers,
        upper: root.join("upper"),
        work: root.join("work"),
        target: root.join("mnt"),
    };
    mkdirs(&[&spec.upper, &spec.work, &spec.target]);
    spec
}

#[test]
fn three_lowers_merge_and_writes_land_in_upper() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let l = |i: u32| tmp.path().join(format!("lower{i}"));
    // Bottom layer.
    write(&l(2).join("a.txt"), "bottom");
    write(&l(2).join("d/x"), "x");
    write(&l(2).join("gone.txt"), "gone");
    write(&l(2).join("opq/old"), "old");
    // Middle: overrides, deletes gone.txt, replaces opq.
    write(&l(1).join("a.txt"), "middle");
    write(&l(1).join("b.txt"), "b");
    write(&l(1).join("d/y"), "y");
    whiteout(&l(1).join("gone.txt"));
    write(&l(1).join("opq/new"), "new");
    set_opaque(&l(1).join("opq"));
    // Top.
    write(&l(0).join("a.txt"), "top");
    write(&l(0).join("c.txt"), "c");

    let spec = checkout(tmp.path(), vec![l(0), l(1), l(2)]);
    write(&spec.upper.join("u.txt"), "upper");
    write(&spec.upper.join("c.txt"), "upper wins");

    assert!(!overlay::is_mounted(&spec.target).unwrap());
    let mounted = Mounted::new(&spec);
    assert!(overlay::is_mounted(&spec.target).unwrap());
    assert_eq!(
        overlay::mounts_under(tmp.path()).unwrap(),
        vec![fs::canonicalize(&spec.target).unwrap()]
    );

    let m = &spec.target;
    assert_eq!(read(&m.join("a.txt")), "top");
    assert_eq!(read(&m.join("b.txt")), "b");
    assert_eq!(read(&m.join("c.txt")), "upper wins");
    assert_eq!(read(&m.join("u.txt")), "upper");
    assert_eq!(read(&m.join("d/x")), "x");
    assert_eq!(read(&m.join("d/y")), "y");
    assert!(
        !m.join("gone.txt").exists(),
        "whiteout hides the bottom file"
    );
    let opq: Vec<_> = fs::read_dir(m.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(opq, ["new"], "an opaque dir hides what is below it");

    write(&m.join("w.txt"), "written");
    write(&m.join("a.txt"), "changed");
    assert_eq!(read(&spec.upper.join("w.txt")), "written");
    assert_eq!(read(&spec.upper.join("a.txt")), "changed");
    assert_eq!(read(&l(0).join("a.txt")), "top", "lowers are never written");

    // A busy mount refuses a plain unmount and names the target.
    let busy = fs::File::open(m.join("b.txt")).unwrap();
    let err = overlay::unmount(m).unwrap_err();
    assert!(matches!(err, Error::Unmount { .. }), "{err}");
    assert!(err.to_string().contains("mnt"), "{err}");
    drop(busy);

    mounted.unmount();
    assert!(!overlay::is_mounted(&spec.target).unwrap());
    assert!(overlay::mounts_under(tmp.path()).unwrap().is_empty());
    let err = overlay::unmount(&spec.target).unwrap_err();
    assert!(matches!(err, Error::NotMounted { .. }), "{err}");
}

#[test]
fn two_hundred_layers_with_long_paths_mount() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("p".repeat(60)).join("q".repeat(60));
    let lowers: Vec<PathBuf> = (0..200)
        .rev()
        .map(|i| deep.join(format!("layer-{i:03}-{}", "r".repeat(12))))
        .collect();
    for (top_index, lower) in lowers.iter().enumerate() {
        let i = 199 - top_index;
        write(&lower.join(format!("f{i}")), &i.to_string());
        write(&lower.join("common"), &i.to_string());
    }
    let option_bytes: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(
        lowers[0].as_os_str().len() >= 150,
        "{}",
        lowers[0].display()
    );
    assert!(option_bytes > 7 * 4096, "{option_bytes} bytes of lowerdir");

    let spec = checkout(tmp.path(), lowers);
    let mounted = Mounted::new(&spec);
    for i in 0..200 {
        assert_eq!(read(&spec.target.join(format!("f{i}"))), i.to_string());
    }
    assert_eq!(read(&spec.target.join("common")), "199");
    assert_eq!(fs::read_dir(&spec.target).unwrap().count(), 201);
    mounted.unmount();
}

#[test]
fn paths_with_separators_and_blanks_mount_and_are_found() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path().join("a:b,c\\d e\tf");
    let lowers = vec![odd.join("low:1,x"), odd.join("low\\2")];
    write(&lowers[0].join("one"), "1");
    write(&lowers[1].join("two"), "2");
    let spec = OverlayMount {
        lowers,
        upper: odd.join("up,per:\\"),
        work: odd.join("wo:rk,"),
        target: odd.join("mount point\\x"),
    };
    mkdirs(&[&spec.upper, &spec.work, &spec.target]);
    let mounted = Mounted::new(&spec);
    assert!(overlay::is_mounted(&spec.target).unwrap());
    assert_eq!(
        overlay::mounts_under(&odd).unwrap(),
        vec![fs::canonicalize(&spec.target).unwrap()]
    );
    assert_eq!(read(&spec.target.join("one")), "1");
    assert_eq!(read(&spec.target.join("two")), "2");
    write(&spec.target.join("three"), "3");
    assert_eq!(read(&spec.upper.join("three")), "3");
    mounted.unmount();
    assert!(!overlay::is_mounted(&spec.target).unwrap());
}

#[test]
fn mount_errors_name_the_target_and_the_layer() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-layer");
    let present = tmp.path().join("lower");
    fs::create_dir(&present).unwrap();
    let spec = checkout(tmp.path(), vec![present.clone(), missing.clone()]);
    let err = overlay::mount(&spec).unwrap_err();
    match &err {
        Error::Layer { option, path, .. } => {
            assert_eq!(*option, "lowerdir+");
            assert_eq!(path, &missing);
        }
        other => panic!("unexpected error: {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("no-such-layer") && text.contains("mnt"),
        "{text}"
    );

    let none = OverlayMount {
        lowers: Vec::new(),
        ..spec.clone()
    };
    assert!(matches!(overlay::mount(&none), Err(Error::NoLowers { .. })));

    // A target that does not exist: the last step fails and says so.
    let nowhere = OverlayMount {
        lowers: vec![present],
        target: tmp.path().join("no-such-target"),
        ..spec
    };
    let err = overlay::mount(&nowhere).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Mount {
                step: "move_mount",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-target"), "{err}");
    assert!(!overlay::is_mounted(&nowhere.target).unwrap());
}

/// The lower tree of the step test: two layers, the top one overriding a file.
fn step_lowers(root: &Path) -> Vec<PathBuf> {
    let (top, bottom) = (root.join("lower-top"), root.join("lower-bottom"));
    write(&bottom.join("bin/tool"), "tool");
    fs::set_permissions(bottom.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&bottom.join("etc/conf"), "v1");
    write(&bottom.join("etc/old"), "old");
    write(&bottom.join("etc/a"), "renamed content");
    write(&bottom.join("var/cache/x"), "x");
    write(&bottom.join("var/cache/sub/y"), "y");
    write(&bottom.join("var/log"), "log");
    write(&bottom.join("opt/o1"), "o1");
    write(&bottom.join("opt/sub/o2"), "o2");
    write(&bottom.join("data/readme"), "r");
    write(&top.join("etc/conf"), "v2");
    write(&top.join("etc/extra"), "extra");
    vec![top, bottom]
}

/// What a build step typically does to a tree, through the mount.
fn run_step(m: &Path) {
    write(&m.join("new.txt"), "new");
    fs::write(m.join("etc/conf"), "v3").unwrap();
    fs::set_permissions(m.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(m.join("etc/old")).unwrap();
    fs::remove_dir_all(m.join("var/cache")).unwrap();
    fs::remove_dir_all(m.join("opt")).unwrap();
    fs::create_dir(m.join("opt")).unwrap();
    fs::write(m.join("opt/new"), "").unwrap();
    fs::rename(m.join("etc/a"), m.join("etc/b")).unwrap();
    std::os::unix::fs::symlink("etc/conf", m.join("link")).unwrap();
    fs::write(m.join("data/h1"), "h").unwrap();
    fs::hard_link(m.join("data/h1"), m.join("data/h2")).unwrap();
}

#[test]
fn upper_changes_of_a_step_rebuild_the_merged_view() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let lowers = step_lowers(tmp.path());
    let spec = checkout(tmp.path(), lowers.clone());
    let (pre, post) = (tmp.path().join("pre"), tmp.path().join("post"));
    mkdirs(&[&pre, &post]);

    let mounted = Mounted::new(&spec);
    cp_a(&spec.target, &pre);
    run_step(&spec.target);
    cp_a(&spec.target, &post);
    mounted.unmount();

    let found = overlay::upper_changes(&spec.upper).unwrap();
    use ChangeKind::{Added, Deleted, Modified, Opaque};
    let expected = changes(&[
        ("bin", Modified),
        ("bin/tool", Modified),
        ("data", Modified),
        ("data/h1", Modified),
        ("data/h2", Modified),
        ("etc", Modified),
        ("etc/a", Deleted),
        ("etc/b", Modified),
        ("etc/conf", Modified),
        ("etc/old", Deleted),
        ("link", Modified),
        ("new.txt", Modified),
        ("opt", Opaque),
        ("opt/new", Added),
        ("var", Modified),
        ("var/cache", Deleted),
    ]);
    assert_eq!(found, expected);

    // The layer, applied on the view before the step, gives the view after it.
    let layer = commit(&spec.upper, &found, &tmp.path().join("layer.tar.zst"));
    let report = apply_file(&layer, &pre, &permissive()).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.hardlinks, 1, "h2 travels as a hard link to h1");
    assert_same_tree(&pre, &post);

    // And extracted in overlay format on top of the same lowers, it shows the same view.
    let unpacked = tmp.path().join("unpacked");
    let overlay_opts = ExtractOptions {
        whiteouts: WhiteoutMode::Overlay,
        ..permissive()
    };
    apply_file(&layer, &unpacked, &overlay_opts).unwrap();
    let again_root = tmp.path().join("again");
    let again = checkout(&again_root, [vec![unpacked], lowers].concat());
    let mounted = Mounted::new(&again);
    assert_same_tree(&again.target, &post);
    mounted.unmount();
}

#[test]
fn whiteouts_sharing_an_inode_are_each_a_deletion() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    for name in ["a", "b", "c", "d/e", "d/f"] {
        write(&lower.join(name), name);
    }
    let spec = checkout(tmp.path(), vec![lower.clone()]);
    let mounted = Mounted::new(&spec);
    for name in ["a", "b", "c", "d/e"] {
        fs::remove_file(spec.target.join(name)).unwrap();
    }
    mounted.unmount();

    let stats: Vec<_> = ["a", "b", "c", "d/e"]
        .iter()
        .map(|n| fs::symlink_metadata(spec.upper.join(n)).unwrap())
        .collect();
    for st in &stats {
        assert_eq!(
            (st.mode() & 0o170000, st.rdev()),
            (0o020000, 0),
            "0/0 char device"
        );
    }
    let shared = stats.iter().all(|s| s.ino() == stats[0].ino());
    eprintln!(
        "whiteouts share one inode: {shared} (nlink {})",
        stats[0].nlink()
    );

    let found = overlay::upper_changes(&spec.upper).unwrap();
    use ChangeKind::{Deleted, Modified};
    let expected = changes(&[
        ("a", Deleted),
        ("b", Deleted),
        ("c", Deleted),
        ("d", Modified),
        ("d/e", Deleted),
    ]);
    assert_eq!(found, expected);

    // Each becomes its own whiteout marker, never a hard link to another.
    let layer = commit(&spec.upper, &found, &tmp.path().join("layer.tar.zst"));
    let mut reader = TarReader::new(open_layer_file(&layer).unwrap(), &Limits::default());
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().unwrap() {
        entries.push((String::from_utf8(entry.path).unwrap(), entry.kind));
    }
    let expected_entries: Vec<_> = [
        (".wh.a", EntryKind::File),
        (".wh.b", EntryKind::File),
        (".wh.c", EntryKind::File),
        ("d", EntryKind::Dir),
        ("d/.wh.e", EntryKind::File),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_owned(), k))
    .collect();
    assert_eq!(entries, expected_entries);

    let flat = tmp.path().join("flat");
    fs::create_dir(&flat).unwrap();
    cp_a(&lower, &flat);
    apply_file(&layer, &flat, &permissive()).unwrap();
    let left: Vec<_> = tree::snapshot(&flat).into_keys().collect();
    assert_eq!(left, [b"d".to_vec(), b"d/f".to_vec()]);
}

#[test]
fn redirects_and_metacopy_in_an_upper_dir_are_refused() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    write(&upper.join("fine/file"), "f");
    fs::create_dir_all(upper.join("moved")).unwrap();
    rustix::fs::setxattr(
        upper.join("moved"),
        "trusted.overlay.redirect",
        b"/elsewhere",
        XattrFlags::empty(),
    )
    .unwrap();
    let err = overlay::upper_changes(&upper).unwrap_err();
    match &err {
        Error::ForeignUpper { path, attr } => {
            assert_eq!(path, &upper.join("moved"));
            assert_eq!(attr, "trusted.overlay.redirect");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("moved"), "{err}");

    fs::remove_dir(upper.join("moved")).unwrap();
    write(&upper.join("fine/meta"), "");
    rustix::fs::setxattr(
        upper.join("fine/meta"),
        "trusted.overlay.metacopy",
        b"",
        XattrFlags::empty(),
    )
    .unwrap();
    let err = overlay::upper_changes(&upper).unwrap_err();
    assert!(
        matches!(&err, Error::ForeignUpper { path, .. } if path.ends_with("fine/meta")),
        "{err}"
    );
}

/// Only the mount's own opaque marker counts: strata's mounts are not `userxattr` ones, so
/// `user.overlay.opaque` is an attribute like any other here (which the layer writer then
/// refuses).
#[test]
fn upper_changes_do_not_follow_symlinks_and_ignore_user_opaque() {
    require_overlay!();
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    let outside = tmp.path().join("outside");
    write(&outside.join("secret"), "s");
    fs::create_dir_all(upper.join("u")).unwrap();
    std::os::unix::fs::symlink(&outside, upper.join("dirlink")).unwrap();
    rustix::fs::setxattr(
        upper.join("u"),
        "user.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
    write(&upper.join("u/inner/file"), "");
    let found = overlay::upper_changes(&upper).unwrap();
    use ChangeKind::Modified;
    assert_eq!(
        found,
        changes(&[
            ("dirlink", Modified),
            ("u", Modified),
            ("u/inner", Modified),
            ("u/inner/file", Modified),
        ])
    );
}
