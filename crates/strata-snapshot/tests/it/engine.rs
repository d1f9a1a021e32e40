//! The engine end to end: import a root filesystem, check it out (overlay and portable),
//! change it, commit, check the child out again, and relocate a Python venv between slots;
//! and what `Engine::open` recovers from states a crash leaves behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_snapshot::{Checkout, CheckoutMode, Engine, Snapshot};
use strata_test_support::{require, runs};

use crate::overlay_problem;

/// A small root filesystem tarball made with strata-cas itself.
pub(crate) fn rootfs_tar(tmp: &Path) -> PathBuf {
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

/// The pid of a process that has exited (and been reaped).
pub(crate) fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A process that has exited (and been reaped), identified while it ran.
pub(crate) fn dead_owner() -> strata_process::Owner {
    let mut child = Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let owner = strata_process::Owner::of(child.id()).expect("cat runs until its stdin closes");
    drop(child.stdin.take());
    child.wait().unwrap();
    assert!(!owner.is_alive());
    owner
}

/// The private state dir of the tracked checkout `row`.
pub(crate) fn state_of(engine: &Engine, row: &Checkout) -> PathBuf {
    engine
        .checkout_state_dir(&row.dir)
        .unwrap()
        .expect("the checkout has a state dir")
}

/// Makes the tracked checkout `row` look made by a process that died: its state dir is
/// renamed to carry a dead pid (as older versions named it, pid only), and recorded so.
/// Returns the moved state dir.
pub(crate) fn orphan_checkout(engine: &Engine, row: &Checkout) -> PathBuf {
    let state = state_of(engine, row);
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let moved = state.with_file_name(format!("c-{}-0-{n}", dead_pid()));
    fs::rename(&state, &moved).unwrap();
    engine.set_checkout_state_dir(&row.dir, &moved).unwrap();
    moved
}

/// The names in `dir`, sorted.
pub(crate) fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Both checkout modes, or portable only where overlay does not work (never under CI).
fn modes() -> Vec<CheckoutMode> {
    if require("overlay checkouts", crate::overlay_problem()) {
        vec![CheckoutMode::Overlay, CheckoutMode::Portable]
    } else {
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
        assert_eq!(row.mode, mode);
        assert_eq!(row.dir, work.canonicalize().unwrap());
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

/// `None` where `python3 -m venv` works, else why not.
fn python_venv_problem() -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    let venv = tmp.path().join("v");
    runs("python3", &["-m", "venv", venv.to_str().unwrap()])
}

/// The acceptance test: a venv with a package installed, made in slot A, committed,
/// checked out in slot B with slot A deleted; B's pip and python work and report B's paths.
#[test]
fn a_python_venv_committed_in_one_slot_works_in_another() {
    if !require("a Python venv moved between slots", python_venv_problem()) {
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
    let how = crate::relocate::venv::install_demo(tmp.path(), &venv_a);
    eprintln!("installed stratademo {how}");
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

#[test]
fn failpoint_names_are_unique() {
    let names = strata_snapshot::FAILPOINTS;
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
}

/// The public surface an embedder lists, tags, touches and removes snapshots through, and
/// pins them with.
#[test]
fn snapshots_are_listed_resolved_tagged_touched_pinned_and_removed_through_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    let base = engine
        .import(&rootfs_tar(tmp.path()), Some("base"))
        .unwrap();
    assert_eq!(base.tags, ["base"]);
    assert_eq!(
        (base.parent, base.depth, base.root_path.as_ref()),
        (None, 0, None)
    );
    let work = tmp.path().join("work");
    let checkout = engine
        .checkout(&base.id, &work, Some(CheckoutMode::Portable))
        .unwrap();
    let work = work.canonicalize().unwrap();
    assert_eq!(
        (&checkout.dir, checkout.snapshot, checkout.mode),
        (&work, base.id, CheckoutMode::Portable)
    );
    assert_eq!(checkout.root_path, work);
    assert_eq!(engine.checkouts().unwrap(), std::slice::from_ref(&checkout));
    assert_eq!(
        engine.tracked_checkout(&tmp.path().join("work")).unwrap(),
        Some(checkout)
    );
    assert_eq!(engine.tracked_checkout(tmp.path()).unwrap(), None);
    fs::write(work.join("new"), "new\n").unwrap();
    let child = engine.commit(&work, None).unwrap();
    assert_eq!((child.parent, child.depth), (Some(base.id), 1));
    assert_eq!(child.root_path.as_deref(), Some(work.as_path()));
    assert!(child.tags.is_empty());

    // Reading, by id, prefix and tag. The checkout marked the base used.
    assert_eq!(engine.snapshot(&child.id).unwrap().as_ref(), Some(&child));
    let used = engine.snapshot(&base.id).unwrap().unwrap();
    assert!(used.last_used >= base.last_used && used.created == base.created);
    let base = used;
    assert_eq!(engine.snapshots().unwrap(), [base.clone(), child.clone()]);
    let mut ids = vec![base.id, child.id];
    ids.sort();
    assert_eq!(engine.snapshot_ids().unwrap(), ids);
    assert_eq!(engine.children(&base.id).unwrap(), [child.id]);
    assert_eq!(
        engine.chain(&child.id).unwrap(),
        [base.clone(), child.clone()]
    );
    assert_eq!(engine.resolve(&child.id.to_hex()[..8]).unwrap(), child.id);
    assert_eq!(engine.resolve("base").unwrap(), base.id);

    // Tags.
    engine.tag("top", &child.id).unwrap();
    engine.tag("base", &child.id).unwrap();
    assert_eq!(
        engine.tags().unwrap(),
        [("base".to_owned(), child.id), ("top".to_owned(), child.id)]
    );
    assert_eq!(
        engine.snapshot(&child.id).unwrap().unwrap().tags,
        ["base", "top"]
    );
    assert!(engine.untag("top").unwrap());
    assert!(!engine.untag("top").unwrap());
    assert!(engine.tag("a b", &child.id).is_err());
    assert!(matches!(
        engine.resolve("top").unwrap_err(),
        strata_snapshot::Error::Index(strata_snapshot::index::Error::UnknownReference { .. })
    ));

    // Touching only moves last-used times forward.
    let before = engine.snapshot(&base.id).unwrap().unwrap().last_used;
    std::thread::sleep(std::time::Duration::from_millis(5));
    engine.touch(&[base.id]).unwrap();
    let after = engine.snapshot(&base.id).unwrap().unwrap().last_used;
    assert!(after > before, "{after} > {before}");

    // A lease pins until released or dropped; a parent with children stays.
    let lease = engine.lease(&child.id, "test").unwrap();
    let err = engine.remove_snapshot(&child.id).unwrap_err();
    assert!(err.to_string().contains("leased"), "{err}");
    drop(lease);
    let err = engine.remove_snapshot(&base.id).unwrap_err();
    assert!(err.to_string().contains("child"), "{err}");
    engine.remove_snapshot(&child.id).unwrap();
    assert_eq!(engine.snapshot(&child.id).unwrap(), None);
    assert_eq!(engine.tags().unwrap(), [], "its tag went with it");
    assert_eq!(engine.snapshots().unwrap().len(), 1);
}

#[test]
fn open_finishes_or_rolls_back_what_dead_processes_left() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    let portable = Some(CheckoutMode::Portable);

    // A discard that died after moving the state aside.
    let abandoned = tmp.path().join("abandoned");
    let row = engine.checkout(&base.id, &abandoned, portable).unwrap();
    fs::remove_dir_all(state_of(&engine, &row)).unwrap();
    // A checkout whose maker died while copying files (no manifest yet).
    let half = tmp.path().join("half");
    let row = engine.checkout(&base.id, &half, portable).unwrap();
    let state = orphan_checkout(&engine, &row);
    fs::remove_file(state.join("manifest")).unwrap();
    // The same, but its maker (this process) still runs: it may be finishing.
    let busy = tmp.path().join("busy");
    let row = engine.checkout(&base.id, &busy, portable).unwrap();
    fs::remove_file(state_of(&engine, &row).join("manifest")).unwrap();
    // A finished checkout of a process that exited.
    let done = tmp.path().join("done");
    let row = engine.checkout(&base.id, &done, portable).unwrap();
    orphan_checkout(&engine, &row);
    // Leftovers without rows, of dead and of live processes.
    let states = store.join("checkouts-v1");
    let unpacked = store.join("unpacked-v1");
    let dead = dead_pid();
    let me = std::process::id();
    for dir in [
        states.join(format!("c-{dead}-1-1/upper")),
        states.join(format!("x-{dead}-1-2")),
        states.join(format!("c-{me}-1-3")),
        unpacked.join(format!("tmp-{dead}-1-4/etc")),
        unpacked.join(format!("tmp-{me}-1-5")),
    ] {
        fs::create_dir_all(dir).unwrap();
    }
    drop(engine);

    let engine = Engine::open(&store).unwrap();
    let tracked: Vec<_> = engine
        .checkouts()
        .unwrap()
        .into_iter()
        .map(|r| r.dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(tracked, ["busy", "done"]);
    assert!(
        !abandoned.exists() && !half.exists(),
        "their files are gone"
    );
    assert!(busy.join("etc/hostname").exists() && done.join("etc/hostname").exists());
    let left = names_in(&states);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.contains(&format!("c-{me}-1-3")), "{left:?}");
    assert!(!left.iter().any(|n| n.contains(&format!("-{dead}-1-"))));
    assert!(names_in(&unpacked).contains(&format!("tmp-{me}-1-5")));
    assert!(!names_in(&unpacked).contains(&format!("tmp-{dead}-1-4")));
    // The finished one is as good as new.
    fs::write(done.join("new"), "new\n").unwrap();
    let child = engine.commit(&done, None).unwrap();
    assert_eq!(child.parent, Some(base.id));
}

/// Leftovers are judged by their maker's pid and start time: a zombie maker is dead, a
/// process that reused a maker's pid is not the maker, and names of older versions (pid only)
/// are kept while their pid runs.
#[cfg(any(target_os = "linux", target_os = "macos"))]
#[test]
fn leftovers_are_judged_by_their_makers_start_time_and_zombies_are_dead() {
    use strata_process::Owner;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    drop(Engine::open(&store).unwrap());
    let mut zombie = Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let z = Owner::of(zombie.id()).expect("cat runs until its stdin closes");
    drop(zombie.stdin.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while Owner::of(z.pid).is_some() {
        assert!(std::time::Instant::now() < deadline, "cat never exited");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let me = Owner::current();
    let states = store.join("checkouts-v1");
    let unpacked = store.join("unpacked-v1");
    let gone = [
        states.join(format!("c-{}-1-1", z.pid)),
        states.join(format!("c-{z}-2")),
        states.join(format!("x-{}.{}-3", me.pid, me.start_time + 1)),
        unpacked.join(format!("tmp-{z}-4")),
        unpacked.join(format!("tmp-{}-1-5", z.pid)),
    ];
    let kept = [
        states.join(format!("c-{me}-6")),
        states.join(format!("x-{}-1-7", me.pid)),
        unpacked.join(format!("tmp-{me}-8")),
    ];
    for dir in gone.iter().chain(&kept) {
        fs::create_dir_all(dir).unwrap();
    }
    // Opened while the zombie is still unreaped: its pid is taken, yet it is dead.
    drop(Engine::open(&store).unwrap());
    zombie.wait().unwrap();
    for dir in &gone {
        assert!(!dir.exists(), "{} was left", dir.display());
    }
    for dir in &kept {
        assert!(dir.exists(), "{} was removed", dir.display());
    }
}

#[test]
fn an_overlay_checkout_that_lost_its_mount_commits_and_releases() {
    if !require("overlay checkouts that lost their mount", overlay_problem()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    let overlay = Some(CheckoutMode::Overlay);

    // As after a reboot: the upper dir is there, the mount is not.
    let work = tmp.path().join("work");
    engine.checkout(&base.id, &work, overlay).unwrap();
    fs::write(work.join("etc/new"), "new\n").unwrap();
    strata_snapshot::overlay::unmount(&work).unwrap();
    drop(engine);
    let engine = Engine::open(&store).unwrap();
    let child = engine.commit(&work, None).unwrap();
    let copy = tmp.path().join("copy");
    engine.copy_out(&child.id, &copy).unwrap();
    assert_eq!(fs::read_to_string(copy.join("etc/new")).unwrap(), "new\n");

    let other = tmp.path().join("other");
    engine.checkout(&base.id, &other, overlay).unwrap();
    strata_snapshot::overlay::unmount(&other).unwrap();
    engine.release(&other).unwrap();
    assert!(!other.exists());
    engine.wait_for_deletions();
    assert!(names_in(&store.join("checkouts-v1")).is_empty());
    assert!(engine.fsck(false).unwrap().is_empty());
}

/// A store with a base snapshot imported, where overlay checkouts work; `None` (skipped)
/// elsewhere.
fn overlay_store() -> Option<(tempfile::TempDir, PathBuf, Engine, Snapshot)> {
    if !require("overlay checkouts", overlay_problem()) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    Some((tmp, store, engine, base))
}

/// Overlay checkouts are mounted `volatile` (unmounting flushes nothing, nor does the
/// commit), so an upper dir that outlived its boot may have lost writes: commit refuses it,
/// release still works.
#[test]
fn a_volatile_overlay_checkout_from_an_earlier_boot_is_not_committed() {
    let Some((tmp, _store, engine, base)) = overlay_store() else {
        return;
    };
    let work = tmp.path().join("work");
    let row = engine
        .checkout(&base.id, &work, Some(CheckoutMode::Overlay))
        .unwrap();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(row.dir.to_str().unwrap()))
        .expect("the checkout is mounted");
    assert!(line.contains("volatile"), "not volatile: {line}");

    fs::write(work.join("etc/new"), "new\n").unwrap();
    strata_snapshot::overlay::unmount(&work).unwrap();
    // As after a host crash: another boot mounted it.
    let state = state_of(&engine, &row);
    fs::write(
        state.join("boot-id"),
        "00000000-0000-0000-0000-000000000000",
    )
    .unwrap();
    let err = engine.commit(&work, None).unwrap_err();
    assert!(
        matches!(err, strata_snapshot::Error::EarlierBoot { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("release it"), "{err}");
    engine.release(&work).unwrap();
    engine.wait_for_deletions();
    assert!(engine.fsck(false).unwrap().is_empty());
}

/// An overlay commit never flushes its upper dir: the unpacked layer it becomes is marked
/// unsynced in this boot. After a reboot (a marker naming another boot) the layer is
/// unpacked again from its blob; `gc` flushes once and drops the markers.
#[test]
fn unflushed_layers_of_an_earlier_boot_are_unpacked_again() {
    let Some((tmp, store, engine, base)) = overlay_store() else {
        return;
    };
    let work = tmp.path().join("work");
    engine
        .checkout(&base.id, &work, Some(CheckoutMode::Overlay))
        .unwrap();
    fs::write(work.join("etc/new"), "new\n").unwrap();
    let child = engine.commit(&work, None).unwrap();
    let unpacked = store.join("unpacked-v1").join(child.layer.to_hex());
    let marker = store
        .join("unpacked-v1")
        .join(format!("{}.unsynced", child.layer.to_hex()));
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(fs::read_to_string(&marker).unwrap().trim(), boot.trim());
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let made = inode(&unpacked);

    // Same boot: trusted as it is.
    let again = tmp.path().join("again");
    engine
        .checkout(&child.id, &again, Some(CheckoutMode::Overlay))
        .unwrap();
    assert_eq!(fs::read_to_string(again.join("etc/new")).unwrap(), "new\n");
    engine.release(&again).unwrap();
    assert_eq!(inode(&unpacked), made);

    // As after a host crash: the marker names another boot, so the tree may be incomplete.
    fs::write(&marker, "00000000-0000-0000-0000-000000000000").unwrap();
    fs::remove_file(unpacked.join("etc/new")).unwrap(); // what a crash could have lost
    fs::write(unpacked.join("etc/stale"), "only in the distrusted tree").unwrap();
    engine
        .checkout(&child.id, &again, Some(CheckoutMode::Overlay))
        .unwrap();
    assert_eq!(fs::read_to_string(again.join("etc/new")).unwrap(), "new\n");
    assert!(
        !unpacked.join("etc/stale").exists(),
        "unpacked again from the blob"
    );
    assert!(!marker.exists());
    engine.release(&again).unwrap();

    // gc flushes and trusts what later commits left unflushed.
    engine
        .checkout(&child.id, &work, Some(CheckoutMode::Overlay))
        .unwrap();
    fs::write(work.join("etc/newer"), "newer\n").unwrap();
    let grandchild = engine.commit(&work, None).unwrap();
    let marker = store
        .join("unpacked-v1")
        .join(format!("{}.unsynced", grandchild.layer.to_hex()));
    assert!(marker.exists());
    assert_eq!(engine.gc().unwrap().settled, 1);
    assert!(!marker.exists());
    engine.wait_for_deletions();
    assert!(engine.fsck(false).unwrap().is_empty());
}

/// overlayfs refuses a stack naming one directory twice; stacks repeat layers when a step
/// changes nothing (the empty layer) or makes exactly the change an earlier step made.
#[test]
fn stacks_with_empty_and_repeated_layers_check_out() {
    fn set(dir: &Path, name: &str, content: &str) {
        let file = dir.join("etc").join(name);
        fs::write(&file, content).unwrap();
        for path in [file, dir.join("etc")] {
            let t = rustix::fs::Timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            };
            let times = rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(rustix::fs::CWD, &path, &times, rustix::fs::AtFlags::empty())
                .unwrap();
        }
    }
    for mode in modes() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(&tmp.path().join("store")).unwrap();
        let mut top = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
        let work = tmp.path().join("work");
        let mut layers = Vec::new();
        for step in ["a=1", "nothing", "a=2", "a=1", "nothing"] {
            engine.checkout(&top.id, &work, Some(mode)).unwrap();
            if let Some(value) = step.strip_prefix("a=") {
                set(&work, "a", value);
            }
            top = engine.commit(&work, None).unwrap();
            layers.push(top.layer);
        }
        assert_eq!(layers[1], layers[4], "two empty layers");
        assert_eq!(
            layers[0], layers[3],
            "the same change twice gives the same layer"
        );
        engine.checkout(&top.id, &work, Some(mode)).unwrap();
        assert_eq!(fs::read_to_string(work.join("etc/a")).unwrap(), "1");
        assert_eq!(
            fs::read_to_string(work.join("etc/hostname")).unwrap(),
            "builder\n"
        );
        engine.release(&work).unwrap();
        if mode == CheckoutMode::Overlay {
            let twins = fs::read_dir(tmp.path().join("store/unpacked-v1"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains("@dup-")
                })
                .count();
            assert_eq!(twins, 1, "the repeated layer was mounted through a twin");
        }
    }
}

#[test]
fn layers_made_elsewhere_become_snapshots_and_their_oci_digests_are_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    let tar = fs::read(rootfs_tar(tmp.path())).unwrap();
    let base = engine.import_layer(None, &tar[..], Some("base")).unwrap();
    assert_eq!(engine.resolve("base").unwrap(), base.id);
    // The layer id is the blake3 of the bytes given: kept as they are.
    assert_eq!(base.layer, strata_cas::LayerId::of(&tar));

    // A layer stored first and recorded later, on top of the base.
    let tree = tmp.path().join("top");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/top"), "top\n").unwrap();
    let stored = engine
        .cas()
        .put_dir(&tree, &strata_cas::CreateOptions::default())
        .unwrap();
    let child = engine
        .add_snapshot(Some(&base.id), &stored.id, None)
        .unwrap();
    assert_eq!(child.parent, Some(base.id));
    let missing = strata_cas::LayerId::of(b"no such blob");
    assert!(engine.add_snapshot(Some(&base.id), &missing, None).is_err());
    let unknown = strata_snapshot::SnapshotId::derive(None, &missing);
    assert!(engine.import_layer(Some(&unknown), &tar[..], None).is_err());

    // Computed from the blob once, then read back from the index even without the blob.
    let digests = engine.oci_digests(&base.layer).unwrap();
    let sha = |data: &[u8]| {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
    };
    assert_eq!(digests.diff_id, sha(&tar));
    let blob = engine.cas().blob_path(&base.layer);
    let saved = fs::read(&blob).unwrap();
    fs::remove_file(&blob).unwrap();
    assert_eq!(engine.oci_digests(&base.layer).unwrap(), digests);
    fs::write(&blob, saved).unwrap();
}

#[test]
fn import_and_commit_count_their_progress_in_uncompressed_bytes() {
    for mode in modes() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(&tmp.path().join("store")).unwrap();
        let imported = strata_cas::Progress::new();
        let base = engine
            .import_with_progress(&rootfs_tar(tmp.path()), None, &imported)
            .unwrap();
        let size = |layer| engine.cas().stat(layer).unwrap().uncompressed_size;
        assert_eq!(imported.done(), size(&base.layer));

        let work = tmp.path().join("work");
        engine.checkout(&base.id, &work, Some(mode)).unwrap();
        fs::write(work.join("big"), vec![7u8; 3 << 20]).unwrap();
        let committed = strata_cas::Progress::new();
        let child = engine
            .commit_with_progress(&work, None, &committed)
            .unwrap();
        assert_eq!(committed.done(), size(&child.layer), "{mode:?}");
        let total = committed.total().unwrap();
        assert!(
            total >= 3 << 20,
            "{mode:?}: the total {total} covers the file"
        );
    }
}

#[test]
fn a_snapshot_keeps_its_root_and_relocation_records_in_another_store() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Engine::open(&tmp.path().join("a")).unwrap();
    let tar = fs::read(rootfs_tar(tmp.path())).unwrap();
    let base = a.import_layer(None, &tar[..], None).unwrap();
    assert_eq!(a.root_record(&base.id).unwrap(), None, "imported: no root");
    let root_a = tmp.path().join("ra/slot");
    fs::create_dir_all(root_a.parent().unwrap()).unwrap();
    a.checkout(&base.id, &root_a, Some(CheckoutMode::Portable))
        .unwrap();
    fs::write(root_a.join("at"), format!("{}\n", root_a.display())).unwrap();
    let built = a.commit(&root_a, None).unwrap();
    let record = a.root_record(&built.id).unwrap().unwrap();
    assert_eq!(record.root, root_a.as_os_str().as_encoded_bytes());
    assert!(!record.relocations.is_empty());

    // Another store with the same blobs records the same snapshot, relocated alike.
    let b = Engine::open(&tmp.path().join("b")).unwrap();
    let b_base = b.import_layer(None, &tar[..], None).unwrap();
    let mut blob = Vec::new();
    std::io::Read::read_to_end(&mut a.cas().open_layer(&built.layer).unwrap(), &mut blob).unwrap();
    let stored = b
        .cas()
        .put_tar(&blob[..], &Default::default(), &Default::default())
        .unwrap();
    // Records naming another root than the one given are refused.
    let lying =
        strata_snapshot::RootRecord::new(b"/elsewhere".to_vec(), record.relocations.clone());
    assert!(
        b.add_snapshot_at(Some(&b_base.id), &stored.id, None, &lying)
            .is_err()
    );
    let garbage = strata_snapshot::RootRecord::new(record.root.clone(), b"{not records".to_vec());
    assert!(
        b.add_snapshot_at(Some(&b_base.id), &stored.id, None, &garbage)
            .is_err()
    );
    let copied = b
        .add_snapshot_at(Some(&b_base.id), &stored.id, None, &record)
        .unwrap();
    assert_eq!(copied.id, built.id);
    assert_eq!(b.root_record(&copied.id).unwrap().unwrap(), record);
    let root_b = tmp.path().join("rb/slot");
    fs::create_dir_all(root_b.parent().unwrap()).unwrap();
    b.checkout(&copied.id, &root_b, Some(CheckoutMode::Portable))
        .unwrap();
    assert_eq!(
        fs::read_to_string(root_b.join("at")).unwrap(),
        format!("{}\n", root_b.display())
    );
    b.release(&root_b).unwrap();
}
