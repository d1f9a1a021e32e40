//! Prune, gc, du and fsck on real stores, including stores left as crashes leave them.

use std::collections::HashSet;
use std::fs;

use strata_cas::LayerId;
use strata_snapshot::maintenance::PruneOptions;
use strata_snapshot::{CheckoutMode, Engine, SnapshotId};
use strata_test_support::require;

use crate::engine::{dead_pid, orphan_checkout, rootfs_tar};
use crate::overlay_problem;

/// Records `n` snapshots in a tree (each parent has up to 4 children), without blobs.
fn tree(engine: &Engine, n: usize) -> Vec<SnapshotId> {
    let mut ids: Vec<SnapshotId> = Vec::with_capacity(n);
    for i in 0..n {
        let layer = LayerId::of(format!("layer {i}").as_bytes());
        let parent = (i > 0).then(|| ids[(i - 1) / 4]);
        // Older snapshots were used longer ago.
        let row = engine
            .fabricate_snapshot(parent, layer, 1000, 100, i as i64)
            .unwrap();
        ids.push(row.id);
    }
    ids
}

#[test]
fn prune_is_leaf_first_lru_and_keeps_what_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    let ids = tree(&engine, 2_000);
    // Pin one leaf by a tag: it and its ancestors must survive.
    let pinned = ids[1_999];
    engine.tag("keep", &pinned).unwrap();

    let report = engine
        .prune(&PruneOptions {
            keep_count: Some(500),
            ..PruneOptions::default()
        })
        .unwrap();
    let remaining: HashSet<SnapshotId> = engine
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(remaining.len(), 500, "pruned {}", report.snapshots.len());
    assert_eq!(report.snapshots.len(), 1_500);
    // Leaf-first: every remaining snapshot still has its parent.
    let chain = engine.chain(&pinned).unwrap();
    assert!(
        chain.iter().all(|r| remaining.contains(&r.id)),
        "the tagged chain survives"
    );
    for row in engine.snapshots().unwrap() {
        if let Some(parent) = row.parent {
            assert!(remaining.contains(&parent), "{} lost its parent", row.id);
        }
    }
    // The layers of pruned snapshots are gone from the index.
    assert_eq!(report.gc.layers, 1_500);
    let usage = engine.du().unwrap();
    assert_eq!(usage.snapshots, 500);
}

#[test]
fn prune_of_ten_thousand_snapshots_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    tree(&engine, 10_000);
    let started = std::time::Instant::now();
    let report = engine.prune(&PruneOptions::default()).unwrap();
    eprintln!("pruned 10,000 snapshots in {:.2?}", started.elapsed());
    assert_eq!(report.snapshots.len(), 10_000);
    assert!(engine.snapshots().unwrap().is_empty());
}

#[test]
fn fsck_repairs_what_crashes_leave_and_then_finds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    let unpacked = store.join("unpacked-v1");
    let states = store.join("checkouts-v1");
    let dead = dead_pid();
    let mut expected = Vec::new();

    // An unpacked layer the index does not know, and an unpack of a dead process.
    let unknown = LayerId::of(b"no such layer").to_hex();
    fs::create_dir_all(unpacked.join(&unknown).join("etc")).unwrap();
    fs::create_dir_all(unpacked.join(format!("{unknown}.plain"))).unwrap();
    fs::create_dir_all(unpacked.join(format!("tmp-{dead}-0-0"))).unwrap();
    expected.extend(["does not know", "does not know", "unfinished unpack"]);
    // A state dir no row names.
    fs::create_dir_all(states.join(format!("c-{dead}-0-0/upper"))).unwrap();
    expected.push("state of no checkout");
    // A checkout whose directory was deleted by hand.
    let lost = tmp.path().join("lost");
    engine
        .checkout(&base.id, &lost, Some(CheckoutMode::Portable))
        .unwrap();
    fs::remove_dir_all(&lost).unwrap();
    expected.push("lost its directory");
    // An overlay checkout of a dead process whose mount is gone (a reboot).
    if require("overlay checkouts lost in a reboot", overlay_problem()) {
        let rebooted = tmp.path().join("rebooted");
        let row = engine
            .checkout(&base.id, &rebooted, Some(CheckoutMode::Overlay))
            .unwrap();
        orphan_checkout(&engine, &row);
        strata_snapshot::overlay::unmount(&rebooted).unwrap();
        expected.push("not mounted");
    }

    // The base unpacked and marked (by the checkouts above), then its directory lost.
    let hex = base.layer.to_hex();
    for entry in fs::read_dir(&unpacked).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(&hex) {
            fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    expected.push("marked unpacked");

    let found = engine.fsck(false).unwrap();
    let mut unmatched: Vec<String> = found.iter().map(|p| p.what.clone()).collect();
    for phrase in &expected {
        let at = unmatched
            .iter()
            .position(|w| w.contains(phrase))
            .unwrap_or_else(|| panic!("no problem says `{phrase}`: {found:?}"));
        unmatched.remove(at);
    }
    assert!(unmatched.is_empty(), "unexpected: {unmatched:?}");
    assert!(found.iter().all(|p| !p.repaired));

    let repaired = engine.fsck(true).unwrap();
    assert_eq!(repaired.len(), found.len(), "{repaired:?}");
    assert!(repaired.iter().all(|p| p.repaired), "{repaired:?}");
    assert!(engine.fsck(false).unwrap().is_empty());
    assert!(fs::read_dir(&states).unwrap().next().is_none());
    // Nothing valid was lost: the base still checks out (unpacked again).
    let again = tmp.path().join("again");
    engine
        .checkout(&base.id, &again, Some(CheckoutMode::Portable))
        .unwrap();
    assert!(again.join("etc/hostname").exists());
}

#[test]
fn gc_removes_unpacked_layers_the_index_does_not_know() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    engine.copy_out(&base.id, &tmp.path().join("copy")).unwrap();
    let unpacked = store.join("unpacked-v1");
    let known: Vec<_> = fs::read_dir(&unpacked)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let unknown = LayerId::of(b"no such layer").to_hex();
    fs::create_dir_all(unpacked.join(&unknown).join("etc")).unwrap();
    fs::create_dir_all(unpacked.join("not-a-layer")).unwrap();
    let report = engine.gc().unwrap();
    assert_eq!(report.orphans, 1);
    let mut left: Vec<_> = fs::read_dir(&unpacked)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    let mut want = known;
    want.push("not-a-layer".into());
    want.sort();
    assert_eq!(
        left, want,
        "the base's unpacked layer and foreign entries stay"
    );
}

/// Layers that snapshots need are refused by name, tags included, and nothing is removed;
/// with `with_snapshots` those snapshots go first, children before parents, unless one is
/// checked out or leased; a store left so checks clean.
#[test]
fn remove_layers_refuses_needed_layers_or_removes_their_snapshots_too() {
    use strata_snapshot::maintenance::RemoveLayersOptions;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine
        .import(&rootfs_tar(tmp.path()), Some("base"))
        .unwrap();
    let commit = |parent: SnapshotId, name: &str, tag: Option<&str>| {
        let work = tmp.path().join(name);
        engine
            .checkout(&parent, &work, Some(CheckoutMode::Portable))
            .unwrap();
        fs::write(work.join(name), name).unwrap();
        engine.commit(&work, tag).unwrap()
    };
    let child = commit(base.id, "child", Some("child"));
    let grandchild = commit(child.id, "grandchild", None);
    let other = commit(base.id, "other", None);
    let forced = RemoveLayersOptions {
        with_snapshots: true,
    };

    let err = engine
        .remove_layers(&[child.layer], &RemoveLayersOptions::default())
        .unwrap_err();
    let users = match &err {
        strata_snapshot::Error::LayersNeeded { users } => users.clone(),
        other => panic!("{other}"),
    };
    let needing: HashSet<SnapshotId> = users.iter().map(|u| u.snapshot).collect();
    assert_eq!(needing, HashSet::from([child.id, grandchild.id]));
    let message = err.to_string();
    for needle in [
        child.layer.to_string(),
        child.id.to_string(),
        grandchild.id.to_string(),
        "`child`".into(),
    ] {
        assert!(message.contains(&needle), "{needle} not in: {message}");
    }
    assert!(engine.cas().contains(&child.layer));
    assert!(engine.fsck(false).unwrap().is_empty());

    // Forced, but one of them is checked out, then leased: all or nothing.
    let out = tmp.path().join("out");
    engine
        .checkout(&grandchild.id, &out, Some(CheckoutMode::Portable))
        .unwrap();
    let err = engine.remove_layers(&[child.layer], &forced).unwrap_err();
    assert!(
        err.to_string().contains(&grandchild.id.to_string()),
        "{err}"
    );
    engine.release(&out).unwrap();
    let lease = engine.lease(&child.id, "test").unwrap();
    assert_eq!(lease.snapshot(), &child.id);
    let err = engine.remove_layers(&[child.layer], &forced).unwrap_err();
    assert!(err.to_string().contains("leased"), "{err}");
    lease.release().unwrap();
    let left = engine.snapshots().unwrap();
    assert_eq!(left.len(), 4, "nothing was removed");
    assert!(engine.cas().contains(&child.layer));

    let removal = engine.remove_layers(&[child.layer], &forced).unwrap();
    let removed: Vec<SnapshotId> = removal.snapshots.iter().map(|u| u.snapshot).collect();
    assert_eq!(removed, vec![grandchild.id, child.id], "children first");
    assert_eq!(removal.snapshots[1].tags, vec!["child".to_owned()]);
    assert_eq!(removal.layers, vec![child.layer]);
    assert!(!engine.cas().contains(&child.layer));
    assert!(
        !store
            .join("unpacked-v1")
            .join(child.layer.to_hex())
            .exists()
            && !store
                .join("unpacked-v1")
                .join(format!("{}.plain", child.layer.to_hex()))
                .exists()
    );
    let left: HashSet<SnapshotId> = engine
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, HashSet::from([base.id, other.id]));
    assert!(engine.resolve("child").is_err(), "its tag went with it");
    assert!(engine.fsck(false).unwrap().is_empty());
    engine
        .copy_out(&other.id, &tmp.path().join("copy"))
        .unwrap();
    // The grandchild's own layer is garbage now.
    assert_eq!(engine.gc().unwrap().layers, 1);

    // A blob no snapshot names goes without ado; an unknown id is reported missing.
    let loose = tmp.path().join("loose");
    fs::create_dir_all(&loose).unwrap();
    fs::write(loose.join("f"), "loose").unwrap();
    let info = engine.cas().put_dir(&loose, &Default::default()).unwrap();
    let unknown = LayerId::of(b"never stored");
    let removal = engine
        .remove_layers(&[info.id, unknown], &RemoveLayersOptions::default())
        .unwrap();
    assert_eq!(
        (removal.layers, removal.missing),
        (vec![info.id], vec![unknown])
    );
    assert!(engine.fsck(false).unwrap().is_empty());
}

/// Overlay checkouts at another root than a layer's mount a relocated variant of it, one
/// per root: `gc` keeps those of roots with a tracked checkout and removes the rest, and
/// `du` counts them.
#[test]
fn gc_removes_relocated_variants_of_roots_no_checkout_uses() {
    if !require("relocated variants of overlay checkouts", overlay_problem()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let engine = Engine::open(&top.join("store")).unwrap();
    let base = engine.import(&rootfs_tar(&top), None).unwrap();
    let overlay = Some(CheckoutMode::Overlay);
    // A step that records where it ran: its layer is relocated for every other root.
    let s00 = top.join("s00");
    engine.checkout(&base.id, &s00, overlay).unwrap();
    fs::write(s00.join("where"), format!("{}\n", s00.display())).unwrap();
    let child = engine.commit(&s00, None).unwrap();
    let unpacked = top.join("store/unpacked-v1");
    let variants = || {
        let mut names: Vec<String> = fs::read_dir(&unpacked)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains('@'))
            .collect();
        names.sort();
        names
    };
    let variant_of = |root: &std::path::Path| {
        let hash = blake3::hash(root.as_os_str().as_encoded_bytes());
        format!("{}@{}", child.layer.to_hex(), &hash.to_hex()[..16])
    };

    let slots: Vec<_> = ["s01", "s02", "s03"].iter().map(|s| top.join(s)).collect();
    for slot in &slots {
        engine.checkout(&child.id, slot, overlay).unwrap();
        assert_eq!(
            fs::read_to_string(slot.join("where")).unwrap(),
            format!("{}\n", slot.display())
        );
    }
    let mut all: Vec<String> = slots.iter().map(|s| variant_of(s)).collect();
    all.sort();
    assert_eq!(variants(), all);
    assert_eq!(engine.du().unwrap().variants, 3);

    engine.release(&slots[0]).unwrap();
    engine.release(&slots[1]).unwrap();
    let report = engine.gc().unwrap();
    assert_eq!(report.variants, 2, "{report:?}");
    assert_eq!(variants(), vec![variant_of(&slots[2])]);
    assert_eq!(engine.du().unwrap().variants, 1);
    // The live checkout still reads through its variant, and a new checkout at a released
    // root makes its variant again.
    assert_eq!(
        fs::read_to_string(slots[2].join("where")).unwrap(),
        format!("{}\n", slots[2].display())
    );
    engine.checkout(&child.id, &slots[0], overlay).unwrap();
    assert_eq!(
        fs::read_to_string(slots[0].join("where")).unwrap(),
        format!("{}\n", slots[0].display())
    );
    for slot in [&slots[0], &slots[2]] {
        engine.release(slot).unwrap();
    }
    assert_eq!(engine.gc().unwrap().variants, 2);
    assert!(variants().is_empty());
    assert_eq!(engine.du().unwrap().variants, 0);
    assert!(engine.fsck(false).unwrap().is_empty());
}

/// A layer hold keeps `gc` (here through a second engine on the same store, as another
/// process would) off a layer that no snapshot records for the moment, until it is dropped:
/// what a pull needs between finding a layer stored and recording its snapshot.
#[test]
fn gc_waits_for_layer_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let engine = Engine::open(&store).unwrap();
    let base = engine.import(&rootfs_tar(tmp.path()), None).unwrap();
    let hold = engine.hold_layers().unwrap();
    // The layer is found stored; its only snapshot goes meanwhile.
    engine.remove_snapshot(&base.id).unwrap();
    let other = Engine::open(&store).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let gc = std::thread::spawn(move || {
        let report = other.gc().unwrap();
        done.send(()).unwrap();
        report
    });
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "gc ran while a layer hold was held"
    );
    // The snapshot that records it again lands before gc can look.
    let again = engine.add_snapshot(None, &base.layer, None).unwrap();
    assert_eq!(again.id, base.id);
    drop(hold);
    let report = gc.join().unwrap();
    assert_eq!(report.layers, 0, "{report:?}");
    assert!(engine.cas().contains(&base.layer));
    let copy = tmp.path().join("copy");
    engine.copy_out(&base.id, &copy).unwrap();
    assert_eq!(fs::read(copy.join("etc/motd")).unwrap(), b"hello\n");
}
