//! The engine end to end: import a root filesystem, check it out (overlay and portable),
//! change it, commit, check the child out again, and relocate a Python venv between slots.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_snapshot::{CheckoutMode, Engine};

/// A small root filesystem tarball made with strata-cas itself.
fn rootfs_tar(tmp: &Path) -> PathBuf {
    let tree = tmp.join("rootfs-src");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("usr/lib")).unwrap();
    fs::write(tree.join("etc/hostname"), "builder\n").unwrap();
    fs::write(tree.join("etc/motd"), "hello\n").unwrap();
    fs::write(tree.join("usr/lib/libx.so"), vec![7u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("usr/lib", tree.join("lib")).unwrap();
    let out = tmp.join("rootfs.tar");
    let file = fs::File::create(&out).unwrap();
    strata_cas::create::write_tar(&tree, file, &Default::default()).unwrap();
    out
}

fn modes() -> Vec<CheckoutMode> {
    if strata_snapshot::engine::overlay_available() {
        vec![CheckoutMode::Overlay, CheckoutMode::Portable]
    } else {
        eprintln!("overlay unavailable here: testing portable checkouts only");
        vec![CheckoutMode::Portable]
    }
}

#[test]
fn import_checkout_change_commit_and_check_the_child_out() {
    for mode in modes() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(&tmp.path().join("store")).unwrap();
        let base = engine
            .import(&rootfs_tar(tmp.path()), Some("base"))
            .unwrap();
        assert_eq!(engine.resolve("base").unwrap(), base.id);

        let work = tmp.path().join("work");
        let row = engine.checkout(&base.id, &work, Some(mode)).unwrap();
        assert_eq!(
            row.mode,
            if mode == CheckoutMode::Overlay {
                "overlay"
            } else {
                "portable"
            }
        );
        assert_eq!(
            fs::read_to_string(work.join("etc/hostname")).unwrap(),
            "builder\n"
        );
        // A step: add, modify, delete, and write through the symlinked directory.
        fs::write(work.join("etc/new"), "new\n").unwrap();
        fs::write(work.join("etc/hostname"), "changed\n").unwrap();
        fs::remove_file(work.join("etc/motd")).unwrap();
        fs::write(work.join("lib/libnew.so"), "so\n").unwrap();
        let child = engine.commit(&work, Some("child")).unwrap();
        assert_eq!(child.parent, Some(base.id));
        assert!(!work.exists(), "commit releases the checkout");

        let again = tmp.path().join("again");
        engine.checkout(&child.id, &again, Some(mode)).unwrap();
        assert_eq!(
            fs::read_to_string(again.join("etc/hostname")).unwrap(),
            "changed\n"
        );
        assert_eq!(fs::read_to_string(again.join("etc/new")).unwrap(), "new\n");
        assert!(
            !again.join("etc/motd").exists(),
            "the deletion is part of the child"
        );
        assert_eq!(
            fs::read_to_string(again.join("usr/lib/libnew.so")).unwrap(),
            "so\n"
        );
        assert_eq!(
            fs::read(again.join("usr/lib/libx.so")).unwrap().len(),
            100_000
        );
        engine.release(&again).unwrap();
        assert!(!again.exists());

        // The parent is unchanged.
        let base_copy = tmp.path().join("base-copy");
        engine.copy_out(&base.id, &base_copy).unwrap();
        assert_eq!(
            fs::read_to_string(base_copy.join("etc/hostname")).unwrap(),
            "builder\n"
        );
        assert!(base_copy.join("etc/motd").exists());
    }
}

#[test]
fn bad_targets_and_untracked_dirs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    let full = tmp.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), "x").unwrap();
    let err = engine
        .checkout(&base.id, &full, Some(CheckoutMode::Portable))
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(
        fs::read_to_string(full.join("x")).unwrap(),
        "x",
        "nothing was touched"
    );
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let err = engine.commit(&plain, None).unwrap_err();
    assert!(err.to_string().contains("not a tracked checkout"), "{err}");
    let err = engine.resolve("nonexistent-tag").unwrap_err();
    assert!(err.to_string().contains("nonexistent-tag"), "{err}");
}

fn python_venv_works() -> bool {
    let tmp = tempfile::tempdir().unwrap();
    Command::new("python3")
        .args(["-m", "venv"])
        .arg(tmp.path().join("v"))
        .status()
        .is_ok_and(|s| s.success())
}

/// The acceptance test: a venv with a package installed, made in slot A, committed,
/// checked out in slot B with slot A deleted; B's pip and python work and report B's paths.
#[test]
fn a_python_venv_committed_in_one_slot_works_in_another() {
    if !python_venv_works() {
        eprintln!("skipped: python3 -m venv does not work here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    let slots = tmp.path().join("slots");
    fs::create_dir(&slots).unwrap();
    let (slot_a, slot_b) = (slots.join("s01"), slots.join("s02"));

    engine
        .checkout(&base.id, &slot_a, Some(CheckoutMode::Portable))
        .unwrap();
    let venv_a = slot_a.join("venv");
    let ok = crate::relocate::venv::command("python3")
        .args(["-m", "venv"])
        .arg(&venv_a)
        .status()
        .unwrap();
    assert!(ok.success());
    // A package installed offline (from source, or from a hand-made wheel).
    match crate::relocate::venv::install_demo(tmp.path(), &venv_a) {
        Ok(how) => eprintln!("installed stratademo {how}"),
        Err(why) => {
            eprintln!("skipped: cannot install a package offline: {why}");
            engine.release(&slot_a).unwrap();
            return;
        }
    }
    let committed = engine.commit(&slot_a, Some("venv")).unwrap();
    assert!(!slot_a.exists(), "slot A is gone");

    for mode in modes() {
        engine.checkout(&committed.id, &slot_b, Some(mode)).unwrap();
        let venv_b = slot_b.join("venv");
        let command = crate::relocate::venv::command;
        let pip = command(venv_b.join("bin/pip"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(
            pip.status.success(),
            "pip in slot B: {}",
            String::from_utf8_lossy(&pip.stderr)
        );
        let pip_out = String::from_utf8_lossy(&pip.stdout);
        assert!(pip_out.contains(&*slot_b.to_string_lossy()), "{pip_out}");
        let py = command(venv_b.join("bin/python"))
            .args([
                "-c",
                "import stratademo, sys; print(stratademo.__file__); print(sys.prefix)",
            ])
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "{}",
            String::from_utf8_lossy(&py.stderr)
        );
        let py_out = String::from_utf8_lossy(&py.stdout);
        for line in py_out.lines() {
            assert!(
                line.starts_with(&*slot_b.to_string_lossy()),
                "{line} is not under slot B"
            );
        }
        let hello = command(venv_b.join("bin/stratademo-hello"))
            .output()
            .unwrap();
        assert!(
            hello.status.success(),
            "{}",
            String::from_utf8_lossy(&hello.stderr)
        );
        engine.release(&slot_b).unwrap();
    }
}
