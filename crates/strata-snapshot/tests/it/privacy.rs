//! A store is private to its owner: another local user (uid 65534, through `setpriv`) can
//! reach nothing under it, not an unpacked setuid binary nor a device node, while overlay
//! checkouts stay readable through their mounts. Older stores left open to others are
//! narrowed on open; a store of another user that is open to others is refused. Needs root
//! and `setpriv`: these tests fail under `CI` without them, and skip otherwise.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rustix::fs::{CWD, FileType, Mode};
use strata_snapshot::{CheckoutMode, Engine};
use strata_test_support::{require, root, tool};

/// The unprivileged user the tests act as.
const NOBODY: u32 = 65534;

/// Whether the tests can run: root (to make device nodes and act as another user) and
/// `setpriv`. Under `CI` a missing requirement is a failure.
fn requirements_met() -> bool {
    require("a private store", root().or_else(|| tool("setpriv")))
}

/// Runs `argv` as uid/gid 65534 with no supplementary groups. The program is started by
/// `env`: one named to setpriv directly ran even where uid 65534 may not execute it.
fn as_nobody(argv: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "env",
        ])
        .args(argv)
        .output()
        .unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts that `argv` works as root but is refused to uid 65534 for lack of permission.
fn refused_to_nobody(argv: &[&str]) {
    let root = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(root.status.success(), "as root: {argv:?}: {root:?}");
    let nobody = as_nobody(argv);
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        !nobody.status.success() && stderr.contains("Permission denied"),
        "uid {NOBODY} could run {argv:?}: {nobody:?}"
    );
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// A temporary directory everyone may enter, so that only the store itself can keep
/// another user out.
fn open_tmp() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    fs::set_permissions(&top, fs::Permissions::from_mode(0o755)).unwrap();
    (tmp, top)
}

/// A root filesystem with a setuid-root executable, a device node anyone may open, and a
/// world-readable file.
fn rootfs_with_privileged_files(top: &Path) -> PathBuf {
    let tree = top.join("rootfs-src");
    for dir in ["bin", "dev", "etc"] {
        fs::create_dir_all(tree.join(dir)).unwrap();
        fs::set_permissions(tree.join(dir), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).unwrap();
    let suid = tree.join("bin/suid");
    fs::copy("/bin/true", &suid).unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    // Like /dev/null: readable and writable by anyone who can reach it.
    let dev = tree.join("dev/null2");
    rustix::fs::mknodat(
        CWD,
        &dev,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    fs::set_permissions(&dev, fs::Permissions::from_mode(0o666)).unwrap();
    fs::write(tree.join("etc/secret"), "secret\n").unwrap();
    fs::set_permissions(tree.join("etc/secret"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = top.join("rootfs.tar");
    let file = fs::File::create(&out).unwrap();
    strata_cas::create::write_tar(&tree, file, &Default::default()).unwrap();
    out
}

/// The unpacked directory of a layer, as a root process unpacks it.
fn unpacked_layer(store: &Path, layer: &strata_cas::LayerId) -> PathBuf {
    let dir = store.join("unpacked-v1").join(layer.to_hex());
    assert!(dir.is_dir(), "{} was not unpacked", dir.display());
    dir
}

#[test]
fn nothing_under_a_store_is_reachable_by_another_user() {
    if !requirements_met() {
        return;
    }
    let (_tmp, top) = open_tmp();
    let control = top.join("control");
    fs::write(&control, "readable\n").unwrap();
    fs::set_permissions(&control, fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_nobody(&["cat", path_str(&control)]);
    assert!(
        out.status.success(),
        "the test setup keeps uid {NOBODY} out: {out:?}"
    );

    let store = top.join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine
        .import(&rootfs_with_privileged_files(&top), None)
        .unwrap();
    // A portable checkout leaves its manifest in the store; overlay checkouts (and portable
    // ones where the filesystem clones files) unpack the layer.
    let portable = top.join("portable");
    engine
        .checkout(&base.id, &portable, Some(CheckoutMode::Portable))
        .unwrap();
    engine.unpack_snapshot(&base.id).unwrap();
    let view = engine
        .cache_acquire_with("c", (0, 0), Some(CheckoutMode::Portable))
        .unwrap();
    let layer = unpacked_layer(&store, &base.layer);
    refused_to_nobody(&["ls", path_str(&store)]);
    refused_to_nobody(&["cat", path_str(&layer.join("etc/secret"))]);
    refused_to_nobody(&[path_str(&layer.join("bin/suid"))]);
    refused_to_nobody(&["head", "-c", "0", path_str(&layer.join("dev/null2"))]);
    refused_to_nobody(&["cat", path_str(&engine.cas().blob_path(&base.layer))]);
    let checkout = engine.tracked_checkout(&portable).unwrap().unwrap();
    let state = crate::engine::state_of(&engine, &checkout);
    refused_to_nobody(&["cat", path_str(&state.join("manifest"))]);
    refused_to_nobody(&["ls", path_str(&view.dir)]);
    engine.cache_discard(view).unwrap();
    for dir in [
        store.clone(),
        store.join("unpacked-v1"),
        store.join("checkouts-v1"),
        store.join("caches-v1"),
    ] {
        assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    }

    // Overlay checkouts are mounted by root and read through the mount: the private store
    // does not get in the way of a sandbox's users.
    if require(
        "overlay checkouts of a private store",
        crate::overlay_problem(),
    ) {
        let mounted = top.join("mounted");
        engine
            .checkout(&base.id, &mounted, Some(CheckoutMode::Overlay))
            .unwrap();
        fs::set_permissions(&mounted, fs::Permissions::from_mode(0o755)).unwrap();
        let out = as_nobody(&["cat", path_str(&mounted.join("etc/secret"))]);
        engine.release(&mounted).unwrap();
        assert!(out.status.success(), "through the overlay: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "secret\n");
    }
    engine.release(&portable).unwrap();
}

#[test]
fn an_older_store_open_to_others_is_made_private_on_open() {
    if !requirements_met() {
        return;
    }
    let (_tmp, top) = open_tmp();
    let store = top.join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine
        .import(&rootfs_with_privileged_files(&top), None)
        .unwrap();
    let copy = top.join("copy");
    engine.copy_out(&base.id, &copy).unwrap();
    engine.unpack_snapshot(&base.id).unwrap();
    let view = engine
        .cache_acquire_with("c", (0, 0), Some(CheckoutMode::Portable))
        .unwrap();
    engine.cache_discard(view).unwrap();
    drop(engine);
    // As an older strata left it: everything 0755, the setgid bit of one directory aside.
    let dirs = [
        store.clone(),
        store.join("unpacked-v1"),
        store.join("checkouts-v1"),
        store.join("caches-v1"),
    ];
    for dir in &dirs {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(&dirs[3], fs::Permissions::from_mode(0o2775)).unwrap();
    let layer = unpacked_layer(&store, &base.layer);
    let out = as_nobody(&["cat", path_str(&layer.join("etc/secret"))]);
    assert!(out.status.success(), "the old store was open: {out:?}");

    let engine = Engine::open(&store).unwrap();
    for dir in &dirs[..3] {
        assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode_of(&dirs[3]), 0o2700, "only group and other bits go");
    refused_to_nobody(&["cat", path_str(&layer.join("etc/secret"))]);
    refused_to_nobody(&[path_str(&layer.join("bin/suid"))]);
    refused_to_nobody(&["head", "-c", "0", path_str(&layer.join("dev/null2"))]);

    // Never widened: a narrower mode stays as it is.
    drop(engine);
    fs::set_permissions(&dirs[1], fs::Permissions::from_mode(0o500)).unwrap();
    Engine::open(&store).unwrap();
    assert_eq!(mode_of(&dirs[1]), 0o500);
    fs::set_permissions(&dirs[1], fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_store_of_another_user_open_to_others_is_refused_unchanged() {
    if !requirements_met() {
        return;
    }
    let (_tmp, top) = open_tmp();
    let store = top.join("theirs");
    Engine::open(&store).unwrap();
    let unpacked = store.join("unpacked-v1");
    for dir in [&store, &unpacked] {
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let err = Engine::open(&store).unwrap_err().to_string();
    assert!(
        err.contains(path_str(&store)) && err.contains("owned by uid 65534"),
        "{err}"
    );
    assert!(err.contains("0755"), "{err}");
    assert_eq!(
        mode_of(&store),
        0o755,
        "modes are not changed behind its owner's back"
    );
    let err = strata_cas::Store::open(&store).unwrap_err().to_string();
    assert!(err.contains(path_str(&store)), "{err}");

    // Private again (its owner opened it), the root is fine; a directory under it that is
    // open to others is refused the same way.
    fs::set_permissions(&store, fs::Permissions::from_mode(0o700)).unwrap();
    let err = Engine::open(&store).unwrap_err().to_string();
    assert!(err.contains(path_str(&unpacked)), "{err}");
    assert_eq!(mode_of(&unpacked), 0o755);
}
