//! The store's trash: released trees leave the user's path at once, are deleted by a
//! background thread, a handoff or `gc`, and nothing live is ever deleted.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use strata_snapshot::{CheckoutMode, Engine};

use crate::engine::{dead_owner, names_in, rootfs_tar};

/// A tree of a few hundred files, so that deleting it is not instant.
fn fill(dir: &Path) {
    for d in 0..20 {
        let sub = dir.join(format!("d{d}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..20 {
            fs::write(sub.join(format!("f{f}")), "x").unwrap();
        }
    }
}

#[test]
fn a_handoff_gets_the_trash_a_dropped_engine_leaves_and_live_trees_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let store = top.join("store");
    let tarball = rootfs_tar(&top);
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&tarball, Some("base")).unwrap();

    // One checkout stays tracked (live) throughout; another is released.
    let live = top.join("live");
    engine
        .checkout(&base.id, &live, Some(CheckoutMode::Portable))
        .unwrap();
    let gone = top.join("gone");
    engine
        .checkout(&base.id, &gone, Some(CheckoutMode::Portable))
        .unwrap();
    fill(&gone);
    let called: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let seen = Arc::clone(&called);
    engine.hand_off_trash(Box::new(move |root| {
        seen.lock().unwrap().push(root.to_path_buf());
        Ok(())
    }));
    engine.release(&gone).unwrap();
    assert!(!gone.exists(), "released at once");
    drop(engine);

    // The handoff ran only if the background thread had not finished; either way, what is
    // left in the trash is deletable, and the live checkout is whole.
    let trash = store.join("trash-v1");
    let left = names_in(&trash);
    let calls = called.lock().unwrap().clone();
    if left.is_empty() {
        assert!(calls.is_empty(), "nothing to hand off: {calls:?}");
    } else {
        assert_eq!(calls, std::slice::from_ref(&store));
        assert!(left.iter().all(|n| n.starts_with("t-")), "{left:?}");
    }
    let engine = Engine::open(&store).unwrap();
    engine.empty_trash().unwrap();
    assert_eq!(names_in(&trash), Vec::<String>::new());
    assert_eq!(
        fs::read_to_string(live.join("etc/hostname")).unwrap(),
        "builder\n"
    );
    assert_eq!(engine.checkouts().unwrap().len(), 1);
    engine.release(&live).unwrap();
}

#[test]
fn trees_a_dead_deleter_claimed_are_swept_and_live_claims_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let trash = store.join("trash-v1");
    // A deleter that died halfway, and one that still runs (this process).
    let dead = trash.join(format!("d-{}-0", dead_owner()));
    fill(&dead);
    let alive = trash.join(strata_process::unique_name("d-"));
    fill(&alive);
    assert!(engine.trash_pending());
    let report = engine.gc().unwrap();
    assert_eq!(report.trash, 1);
    assert_eq!(
        names_in(&trash),
        [alive.file_name().unwrap().to_string_lossy().into_owned()]
    );
    assert!(
        !engine.trash_pending(),
        "a live claim is its owner's business"
    );
}

#[test]
fn leftovers_of_dead_processes_go_to_the_trash_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    drop(Engine::open(&store).unwrap());
    // An unpack and a discard that died halfway.
    let owner = dead_owner();
    let unpack = store.join(format!("unpacked-v1/tmp-{owner}-0"));
    let state = store.join(format!("checkouts-v1/x-{owner}-1"));
    fill(&unpack);
    fill(&state.join("released-tree"));
    let engine = Engine::open(&store).unwrap();
    assert!(!unpack.exists() && !state.exists());
    engine.wait_for_deletions();
    assert_eq!(names_in(&store.join("trash-v1")), Vec::<String>::new());
}
