//! A commit that runs out of space, on a real full filesystem (a 32 MiB tmpfs holding the
//! store and the checkout): the error says so and names the store's path, nothing of the
//! commit is stored, and the checkout stays as it was, to be released or, once space is
//! freed, committed. Needs root (to mount): fails under `CI` without it, skips otherwise.

use std::fs;
use std::path::{Path, PathBuf};

use strata_snapshot::{CheckoutMode, Engine, SnapshotId};
use strata_test_support::{require, root};

use crate::engine::{names_in, rootfs_tar};
use crate::overlay_problem;

/// A size-limited tmpfs mounted at a directory; unmounted (with any overlay mounted under
/// it) when dropped.
struct SmallFilesystem(PathBuf);

impl SmallFilesystem {
    fn mount(dir: &Path, size: &str) -> SmallFilesystem {
        fs::create_dir_all(dir).unwrap();
        let data = std::ffi::CString::new(format!("size={size},mode=0755")).unwrap();
        rustix::mount::mount(
            "strata-test",
            dir,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap();
        SmallFilesystem(dir.to_path_buf())
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        if let Ok(points) = strata_snapshot::overlay::mounts_under(&self.0) {
            for point in points {
                let _ = strata_snapshot::overlay::unmount_detach(&point);
            }
        }
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Mounting a small filesystem needs root.
fn requirements_met() -> bool {
    require("a full disk (mounting a small filesystem)", root())
}

/// `len` bytes that zstd cannot shrink.
fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn snapshot_ids(engine: &Engine) -> Vec<SnapshotId> {
    let mut ids: Vec<SnapshotId> = engine
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

/// Fills a checkout past what the filesystem can also store as a blob and commits it:
/// the commit fails for lack of space and leaves everything as it was.
fn fill_and_fail(engine: &Engine, store: &Path, work: &Path, mode: CheckoutMode) {
    let before = (snapshot_ids(engine), engine.cas().ids().unwrap());
    fs::write(work.join("small"), "small\n").unwrap();
    fs::write(work.join("big"), incompressible(20 << 20)).unwrap();
    let err = engine.commit(work, None).unwrap_err();
    let message = format!("{err}");
    assert!(
        message.contains("No space left on device") && message.contains(store.to_str().unwrap()),
        "{mode:?}: the error should say the disk holding the store is full: {message}"
    );
    // Nothing of the commit is stored: no row, no blob, no temp file.
    assert_eq!(
        (snapshot_ids(engine), engine.cas().ids().unwrap()),
        before,
        "{mode:?}"
    );
    assert_eq!(
        names_in(&store.join("tmp")),
        Vec::<String>::new(),
        "{mode:?}"
    );
    // The checkout is as it was: tracked, and (overlay) mounted again.
    assert!(
        engine.tracked_checkout(work).unwrap().is_some(),
        "{mode:?}: the checkout is no longer tracked"
    );
    assert_eq!(
        fs::read_to_string(work.join("small")).unwrap(),
        "small\n",
        "{mode:?}"
    );
    assert_eq!(
        fs::read_to_string(work.join("etc/hostname")).unwrap(),
        "builder\n",
        "{mode:?}"
    );
    assert!(engine.fsck(false).unwrap().is_empty(), "{mode:?}");
}

#[test]
fn a_commit_that_runs_out_of_space_stores_nothing_and_keeps_its_checkout() {
    if !requirements_met() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let tarball = rootfs_tar(&top);
    let small = top.join("small");
    let _mounted = SmallFilesystem::mount(&small, "32m");
    let store = small.join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&tarball, None).unwrap();
    let mut modes = vec![CheckoutMode::Portable];
    if require("a full disk under overlay checkouts", overlay_problem()) {
        modes.push(CheckoutMode::Overlay);
    }
    for mode in modes {
        // Released after the failure: the store checks clean.
        let work = small.join(format!("{mode:?}-released"));
        engine.checkout(&base.id, &work, Some(mode)).unwrap();
        fill_and_fail(&engine, &store, &work, mode);
        engine.release(&work).unwrap();
        engine.wait_for_deletions();
        assert!(engine.fsck(false).unwrap().is_empty(), "{mode:?}");
        assert_eq!(names_in(&store.join("checkouts-v1")), Vec::<String>::new());

        // Committed once space is freed: the change made before the failure is kept.
        let work = small.join(format!("{mode:?}-committed"));
        engine.checkout(&base.id, &work, Some(mode)).unwrap();
        fill_and_fail(&engine, &store, &work, mode);
        fs::remove_file(work.join("big")).unwrap();
        let child = engine.commit(&work, None).unwrap();
        let copy = top.join(format!("{mode:?}-copy"));
        engine.copy_out(&child.id, &copy).unwrap();
        assert_eq!(fs::read_to_string(copy.join("small")).unwrap(), "small\n");
        assert!(!copy.join("big").exists());
        engine.wait_for_deletions();
        assert!(engine.fsck(false).unwrap().is_empty(), "{mode:?}");
    }
}
