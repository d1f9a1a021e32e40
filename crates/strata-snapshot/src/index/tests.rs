//! The snapshot index against real SQLite files: round trips, refusals, leases owned by live
//! and dead processes, pruning order, and several threads and processes sharing one file.
//! Unit tests, since the index is private to the crate; the multi-process test runs this
//! test binary again as its children.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use strata_cas::LayerId;

use super::*;
use crate::{CheckoutMode, SnapshotId};

fn fresh() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.db")).unwrap();
    (dir, index)
}

fn layer_row(name: &str) -> LayerRow {
    LayerRow {
        id: LayerId::of(name.as_bytes()),
        uncompressed_size: 1000,
        compressed_size: 300,
        unpacked: false,
        created: 5,
    }
}

/// Records layer `name` and the snapshot of it on `parent`.
fn add(index: &mut Index, parent: Option<SnapshotId>, name: &str, now: i64) -> SnapshotId {
    index.add_layer(&layer_row(name)).unwrap();
    let row = index
        .add_snapshot(&NewSnapshot {
            parent,
            layer: LayerId::of(name.as_bytes()),
            root_path: Some(format!("/slots/{name}").into_bytes()),
            now,
        })
        .unwrap();
    row.id
}

fn checkout_row(dir: &str, snapshot: SnapshotId) -> CheckoutRow {
    CheckoutRow {
        dir: PathBuf::from(dir),
        snapshot,
        mode: CheckoutMode::Overlay,
        state_dir: Some(PathBuf::from(format!("{dir}.state"))),
        root_path: format!("{dir}/root").into_bytes(),
        created: 9,
    }
}

/// A process that has exited (and been reaped), identified while it ran. Unix only: elsewhere
/// every owner counts as alive.
#[cfg(unix)]
fn dead_owner() -> Owner {
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let owner = Owner::of(child.id()).expect("cat runs until its stdin closes");
    assert!(owner.is_alive());
    drop(child.stdin.take());
    // Before reaping, the exited child is a zombie: Linux already counts it as dead.
    #[cfg(target_os = "linux")]
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        while owner.is_alive() {
            assert!(Instant::now() < deadline, "cat never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    child.wait().unwrap();
    assert!(!owner.is_alive());
    owner
}

#[test]
fn open_sets_wal_and_schema_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.db");
    let index = Index::open(&path).unwrap();
    assert!(dir.path().join("index.db.lock").exists());
    drop(index);
    // Opening again finds the schema in place.
    let index = Index::open(&path).unwrap();
    assert_eq!(index.usage().unwrap(), Usage::default());

    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let mut st = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap();
    let tables: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in [
        "cache_views",
        "caches",
        "checkouts",
        "layers",
        "leases",
        "snapshots",
        "tags",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
}

#[test]
fn open_needs_the_parent_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = Index::open(&dir.path().join("missing/index.db")).unwrap_err();
    assert!(matches!(err, Error::Io { op: "open", .. }), "{err}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.db");
    drop(Index::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 4).unwrap();
    drop(conn);
    let err = Index::open(&path).unwrap_err();
    assert!(matches!(err, Error::Migrate { .. }), "{err}");
}

#[test]
fn layers_round_trip() {
    let (_dir, mut index) = fresh();
    let row = layer_row("l1");
    index.add_layer(&row).unwrap();
    assert_eq!(index.layer(&row.id).unwrap(), Some(row.clone()));
    // Same id, same content: a second insert changes nothing.
    index
        .add_layer(&LayerRow {
            compressed_size: 1,
            ..row.clone()
        })
        .unwrap();
    assert_eq!(index.layer(&row.id).unwrap(), Some(row.clone()));

    index.set_layer_unpacked(&row.id, true).unwrap();
    assert!(index.layer(&row.id).unwrap().unwrap().unpacked);
    index.set_layer_unpacked(&row.id, false).unwrap();
    assert!(!index.layer(&row.id).unwrap().unwrap().unpacked);

    assert_eq!(index.relocations(&row.id).unwrap(), None);
    index
        .set_relocations(&row.id, b"/slots/01", b"\x00records\xff")
        .unwrap();
    assert_eq!(
        index.relocations(&row.id).unwrap(),
        Some((b"/slots/01".to_vec(), b"\x00records\xff".to_vec()))
    );

    let missing = LayerId::of(b"missing");
    assert_eq!(index.layer(&missing).unwrap(), None);
    for err in [
        index.set_layer_unpacked(&missing, true).unwrap_err(),
        index.set_relocations(&missing, b"", b"").unwrap_err(),
        index.relocations(&missing).unwrap_err(),
        index.remove_layer(&missing).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::MissingLayer { id } if id == missing),
            "{err}"
        );
    }

    index.add_layer(&layer_row("l2")).unwrap();
    let usage = index.usage().unwrap();
    assert_eq!(usage.layers, 2);
    assert_eq!(usage.uncompressed_bytes, 2000);
    assert_eq!(usage.compressed_bytes, 600);

    let huge = LayerRow {
        uncompressed_size: u64::MAX,
        ..layer_row("huge")
    };
    let err = index.add_layer(&huge).unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
}

#[test]
fn snapshot_chains_depths_and_children() {
    let (_dir, mut index) = fresh();
    let base = add(&mut index, None, "base", 100);
    let mid = add(&mut index, Some(base), "mid", 200);
    let top = add(&mut index, Some(mid), "top", 300);
    let side = add(&mut index, Some(base), "side", 400);
    assert_eq!(base, SnapshotId::derive(None, &LayerId::of(b"base")));
    assert_eq!(top, SnapshotId::derive(Some(&mid), &LayerId::of(b"top")));

    let chain = index.chain(&top).unwrap();
    let ids: Vec<_> = chain.iter().map(|r| r.id).collect();
    assert_eq!(ids, [base, mid, top]);
    let depths: Vec<_> = chain.iter().map(|r| r.depth).collect();
    assert_eq!(depths, [0, 1, 2]);
    assert_eq!(chain[0].parent, None);
    assert_eq!(chain[2].parent, Some(mid));
    assert_eq!(chain[2].layer, LayerId::of(b"top"));
    assert_eq!(chain[2].root_path.as_deref(), Some(&b"/slots/top"[..]));
    assert_eq!(index.chain(&base).unwrap().len(), 1);

    let mut kids = vec![mid, side];
    kids.sort();
    assert_eq!(index.children(&base).unwrap(), kids);
    assert!(index.children(&top).unwrap().is_empty());

    let all: Vec<_> = index.snapshots().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(all, [base, mid, top, side]);
    assert_eq!(index.usage().unwrap().snapshots, 4);

    let row = index.snapshot(&mid).unwrap().unwrap();
    assert_eq!((row.created, row.last_used, row.depth), (200, 200, 1));

    let missing = SnapshotId::derive(None, &LayerId::of(b"nothing"));
    assert_eq!(index.snapshot(&missing).unwrap(), None);
    let err = index.chain(&missing).unwrap_err();
    assert!(
        matches!(err, Error::MissingSnapshot { id } if id == missing),
        "{err}"
    );

    // As the engine hands them out, snapshots serialize with hex ids and lossy paths.
    let json = serde_json::to_value(crate::Snapshot::from_row(row, vec!["t".into()])).unwrap();
    assert_eq!(json["id"], mid.to_hex());
    assert_eq!(json["root_path"], "/slots/mid");
    assert_eq!(json["tags"], serde_json::json!(["t"]));
}

#[test]
fn add_snapshot_is_idempotent_and_touches() {
    let (_dir, mut index) = fresh();
    let base = add(&mut index, None, "base", 100);
    let first = index.snapshot(&base).unwrap().unwrap();
    let again = index
        .add_snapshot(&NewSnapshot {
            parent: None,
            layer: LayerId::of(b"base"),
            root_path: Some(b"/elsewhere".to_vec()),
            now: 500,
        })
        .unwrap();
    assert_eq!(again.id, base);
    assert_eq!(again.created, 100);
    assert_eq!(again.last_used, 500);
    assert_eq!(
        again.root_path, first.root_path,
        "the first commit's root is kept"
    );
    assert_eq!(index.snapshot(&base).unwrap(), Some(again));
    assert_eq!(index.snapshots().unwrap().len(), 1);

    // touch raises last_used and never lowers it; unknown ids are ignored.
    let ghost = SnapshotId::derive(None, &LayerId::of(b"ghost"));
    index.touch(&[base, ghost], 900).unwrap();
    assert_eq!(index.snapshot(&base).unwrap().unwrap().last_used, 900);
    index.touch(&[base], 10).unwrap();
    assert_eq!(index.snapshot(&base).unwrap().unwrap().last_used, 900);
}

#[test]
fn layer_and_snapshot_in_one_transaction() {
    let (_dir, mut index) = fresh();
    let base = add(&mut index, None, "base", 1);
    let row = index
        .add_layer_and_snapshot(&layer_row("top"), Some(base), Some(b"/r".to_vec()), 7)
        .unwrap();
    assert_eq!(
        row.id,
        SnapshotId::derive(Some(&base), &LayerId::of(b"top"))
    );
    assert_eq!((row.depth, row.created), (1, 7));
    assert_eq!(index.layer(&row.layer).unwrap(), Some(layer_row("top")));
    assert_eq!(index.snapshot(&row.id).unwrap(), Some(row.clone()));
    // Idempotent like add_snapshot.
    let again = index
        .add_layer_and_snapshot(&layer_row("top"), Some(base), None, 9)
        .unwrap();
    assert_eq!((again.id, again.last_used), (row.id, 9));

    // A missing parent rolls the layer back too.
    let ghost = SnapshotId::derive(None, &LayerId::of(b"ghost"));
    let err = index
        .add_layer_and_snapshot(&layer_row("orphan"), Some(ghost), None, 9)
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingParent { id } if id == ghost),
        "{err}"
    );
    assert_eq!(index.layer(&LayerId::of(b"orphan")).unwrap(), None);
}

#[test]
fn foreign_keys_are_refused_with_names() {
    let (_dir, mut index) = fresh();
    let base = add(&mut index, None, "base", 1);
    let ghost = SnapshotId::derive(None, &LayerId::of(b"ghost"));

    index.add_layer(&layer_row("child")).unwrap();
    let err = index
        .add_snapshot(&NewSnapshot {
            parent: Some(ghost),
            layer: LayerId::of(b"child"),
            root_path: None,
            now: 2,
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingParent { id } if id == ghost),
        "{err}"
    );

    let unknown_layer = LayerId::of(b"unknown layer");
    let err = index
        .add_snapshot(&NewSnapshot {
            parent: Some(base),
            layer: unknown_layer,
            root_path: None,
            now: 2,
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingLayer { id } if id == unknown_layer),
        "{err}"
    );

    for err in [
        index.set_tag("t", &ghost).unwrap_err(),
        index.add_checkout(&checkout_row("/co", ghost)).unwrap_err(),
        index
            .lease(&ghost, Owner::current(), "build", 3)
            .unwrap_err(),
        index.remove_snapshot(&ghost).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::MissingSnapshot { id } if id == ghost),
            "{err}"
        );
    }
    assert_eq!(index.snapshots().unwrap().len(), 1);
}

#[test]
fn tags_resolve_move_and_validate() {
    let (_dir, mut index) = fresh();
    let a = add(&mut index, None, "a", 1);
    let b = add(&mut index, Some(a), "b", 2);

    index.set_tag("stable", &a).unwrap();
    assert_eq!(index.resolve("stable").unwrap(), a);
    index.set_tag("stable", &b).unwrap();
    assert_eq!(index.resolve("stable").unwrap(), b);
    index.set_tag("old", &a).unwrap();
    assert_eq!(
        index.tags().unwrap(),
        [("old".to_owned(), a), ("stable".to_owned(), b)]
    );

    assert!(index.remove_tag("old").unwrap());
    assert!(!index.remove_tag("old").unwrap());
    let err = index.resolve("old").unwrap_err();
    assert!(matches!(&err, Error::UnknownReference { reference } if reference == "old"));

    for bad in ["", "a b", "a/b", "tab\there", &a.to_hex()] {
        let err = index.set_tag(bad, &a).unwrap_err();
        assert!(
            matches!(&err, Error::BadTag { name, .. } if name == bad),
            "{err}"
        );
    }
}

/// Two base snapshots whose ids share their first four hex digits.
fn colliding_layers() -> (String, String) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for i in 0.. {
        let name = format!("probe {i}");
        let id = SnapshotId::derive(None, &LayerId::of(name.as_bytes())).to_hex();
        if let Some(other) = seen.insert(id[..4].to_owned(), name.clone()) {
            return (other, name);
        }
    }
    unreachable!()
}

#[test]
fn resolve_by_id_and_prefix() {
    let (_dir, mut index) = fresh();
    let (n1, n2) = colliding_layers();
    let s1 = add(&mut index, None, &n1, 1);
    let s2 = add(&mut index, None, &n2, 2);
    let (h1, h2) = (s1.to_hex(), s2.to_hex());
    assert_eq!(h1[..4], h2[..4]);

    assert_eq!(index.resolve(&h1).unwrap(), s1);
    assert_eq!(index.resolve(&h2.to_uppercase()).unwrap(), s2);
    let split = h1
        .bytes()
        .zip(h2.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    assert_eq!(index.resolve(&h1[..=split]).unwrap(), s1);
    assert_eq!(index.resolve(&h2[..=split]).unwrap(), s2);

    let prefix = &h1[..4];
    match index.resolve(prefix).unwrap_err() {
        Error::Ambiguous {
            reference,
            candidates,
        } => {
            assert_eq!(reference, prefix);
            let mut want = vec![s1, s2];
            want.sort();
            assert_eq!(candidates, want);
        }
        err => panic!("expected ambiguity, got {err}"),
    }

    // A tag spelled like the prefix wins.
    let other = add(&mut index, None, "other", 3);
    index.set_tag(prefix, &other).unwrap();
    assert_eq!(index.resolve(prefix).unwrap(), other);

    let never = SnapshotId::derive(None, &LayerId::of(b"never")).to_hex();
    for unknown in [&h1[..3], never.as_str(), "zzzz", "", "not a reference"] {
        let err = index.resolve(unknown).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownReference { reference } if reference == unknown),
            "{unknown}: {err}"
        );
    }
}

#[test]
fn checkouts_round_trip_and_pin() {
    let (_dir, mut index) = fresh();
    let a = add(&mut index, None, "a", 1);
    let row = checkout_row("/work/slot-01", a);
    index.add_checkout(&row).unwrap();
    let err = index.add_checkout(&row).unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyTracked { dir } if *dir == row.dir),
        "{err}"
    );
    assert_eq!(index.checkout(&row.dir).unwrap(), Some(row.clone()));
    assert_eq!(index.checkout(Path::new("/elsewhere")).unwrap(), None);
    assert_eq!(index.checkouts().unwrap(), std::slice::from_ref(&row));
    assert_eq!(index.usage().unwrap().checkouts, 1);

    let json = serde_json::to_value(crate::Checkout::from(row.clone())).unwrap();
    assert_eq!(json["dir"], "/work/slot-01");
    assert_eq!(json["mode"], "overlay");
    assert_eq!(json["root_path"], "/work/slot-01/root");
    assert!(json.get("state_dir").is_none(), "the engine's own business");

    let err = index.remove_snapshot(&a).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InUse {
                kind: "snapshot",
                ..
            }
        ),
        "{err}"
    );
    assert!(index.remove_checkout(&row.dir).unwrap());
    assert!(!index.remove_checkout(&row.dir).unwrap());
    index.remove_snapshot(&a).unwrap();
}

/// The mode is text in the database and an enum in Rust: a row whose mode this version does
/// not know is an error naming the checkout, not a guess.
#[test]
fn a_checkout_mode_this_version_does_not_know_is_named_with_its_directory() {
    let (dir, mut index) = fresh();
    let a = add(&mut index, None, "a", 1);
    index.add_checkout(&checkout_row("/work/a", a)).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("index.db")).unwrap();
    conn.execute("UPDATE checkouts SET mode = 'zfs'", [])
        .unwrap();
    drop(conn);
    for err in [
        index.checkouts().unwrap_err(),
        index.checkout(Path::new("/work/a")).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::BadCheckoutMode { dir, source } if dir == Path::new("/work/a") && source.text == "zfs"),
            "{err}"
        );
        assert!(err.to_string().contains("/work/a"), "{err}");
        assert!(err.to_string().contains("`zfs`"), "{err}");
    }
}

#[cfg(unix)]
#[test]
fn checkout_dirs_keep_raw_bytes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (_dir, mut index) = fresh();
    let a = add(&mut index, None, "a", 1);
    let dir = PathBuf::from(OsStr::from_bytes(b"/work/\xff\xfeslot"));
    let row = CheckoutRow {
        dir: dir.clone(),
        state_dir: None,
        ..checkout_row("/x", a)
    };
    index.add_checkout(&row).unwrap();
    assert_eq!(index.checkout(&dir).unwrap(), Some(row));
}

#[test]
fn remove_snapshot_refusals_and_success() {
    let (_dir, mut index) = fresh();
    let base = add(&mut index, None, "base", 1);
    let top = add(&mut index, Some(base), "top", 2);
    index.set_tag("top", &top).unwrap();

    let err = index.remove_snapshot(&base).unwrap_err();
    match &err {
        Error::InUse { kind, id, why } => {
            assert_eq!((*kind, id.as_str()), ("snapshot", base.to_hex().as_str()));
            assert!(why.contains("child"), "{why}");
        }
        _ => panic!("{err}"),
    }

    let lease = index.lease(&top, Owner::current(), "build", 3).unwrap();
    let err = index.remove_snapshot(&top).unwrap_err();
    assert!(
        matches!(&err, Error::InUse { why, .. } if why.contains("leased")),
        "{err}"
    );
    index.release_lease(lease).unwrap();
    index.release_lease(lease).unwrap();

    // A dead owner's lease does not pin; it goes with the snapshot.
    #[cfg(unix)]
    index.lease(&top, dead_owner(), "crashed build", 4).unwrap();
    index.remove_snapshot(&top).unwrap();
    assert_eq!(index.snapshot(&top).unwrap(), None);
    assert!(index.tags().unwrap().is_empty(), "its tags went with it");
    assert_eq!(index.usage().unwrap().leases, 0);
    assert!(index.children(&base).unwrap().is_empty());
    index.remove_snapshot(&base).unwrap();
    assert_eq!(index.usage().unwrap().snapshots, 0);
}

#[test]
fn unreferenced_layers_can_be_removed() {
    let (_dir, mut index) = fresh();
    let a = add(&mut index, None, "a", 1);
    index.add_layer(&layer_row("loose")).unwrap();
    let (la, loose) = (LayerId::of(b"a"), LayerId::of(b"loose"));
    assert_eq!(index.unreferenced_layers().unwrap(), [loose]);

    let err = index.remove_layer(&la).unwrap_err();
    assert!(
        matches!(&err, Error::InUse { kind: "layer", id, .. } if *id == la.to_hex()),
        "{err}"
    );
    index.remove_snapshot(&a).unwrap();
    let mut both = vec![la, loose];
    both.sort();
    assert_eq!(index.unreferenced_layers().unwrap(), both);
    index.remove_layer(&la).unwrap();
    index.remove_layer(&loose).unwrap();
    assert_eq!(index.layer(&la).unwrap(), None);
    assert_eq!(index.usage().unwrap().layers, 0);
}

#[cfg(unix)]
#[test]
fn leases_live_with_their_owner() {
    let (_dir, mut index) = fresh();
    let a = add(&mut index, None, "a", 1);
    let b = add(&mut index, None, "b", 1);
    let me = Owner::current();
    assert!(me.is_alive());
    let live = index.lease(&a, me, "build", 10).unwrap();
    let dead = dead_owner();
    index.lease(&b, dead, "crashed", 11).unwrap();

    let leases = index.leases().unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!((leases[0].id, leases[0].owner), (live, me));
    assert_eq!(leases[1].purpose, "crashed");

    // The dead lease does not protect `b` from pruning, even before it is expired.
    let ids: Vec<_> = index
        .prune_candidates(i64::MAX, 10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [b]);

    assert_eq!(index.expire_dead_leases().unwrap(), 1);
    assert_eq!(index.expire_dead_leases().unwrap(), 0);
    let leases = index.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].id, live);
    index.release_lease(live).unwrap();
    assert_eq!(index.usage().unwrap().leases, 0);
}

#[cfg(target_os = "linux")]
#[test]
fn a_recycled_pid_does_not_keep_a_lease() {
    let (_dir, mut index) = fresh();
    let a = add(&mut index, None, "a", 1);
    let me = Owner::current();
    let impostor = Owner::new(me.pid, me.start_time + 1);
    assert!(!impostor.is_alive());
    index.lease(&a, impostor, "earlier process", 1).unwrap();
    assert_eq!(index.prune_candidates(i64::MAX, 10).unwrap().len(), 1);
    index.remove_snapshot(&a).unwrap();
}

#[test]
fn prune_candidates_are_unpinned_leaves_lru_first() {
    let (_dir, mut index) = fresh();
    let base = add(&mut index, None, "base", 10);
    let mid = add(&mut index, Some(base), "mid", 20);
    let leaf_new = add(&mut index, Some(mid), "leaf-new", 90);
    let leaf_old = add(&mut index, Some(base), "leaf-old", 30);
    let tagged = add(&mut index, None, "tagged", 1);
    let checked_out = add(&mut index, None, "checked-out", 2);
    let leased = add(&mut index, None, "leased", 3);
    let lone = add(&mut index, None, "lone", 50);
    let recent = add(&mut index, None, "recent", 1000);
    index.set_tag("keep", &tagged).unwrap();
    index
        .add_checkout(&checkout_row("/work/co", checked_out))
        .unwrap();
    index.lease(&leased, Owner::current(), "build", 3).unwrap();

    let ids = |index: &Index, older_than, limit| -> Vec<SnapshotId> {
        index
            .prune_candidates(older_than, limit)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(ids(&index, 500, 100), [leaf_old, lone, leaf_new]);
    assert_eq!(ids(&index, 500, 2), [leaf_old, lone]);
    assert_eq!(ids(&index, 50, 100), [leaf_old]);
    assert!(ids(&index, 500, 0).is_empty());

    // Touching changes the order; removing leaves exposes their parents.
    index.touch(&[leaf_old], 95).unwrap();
    assert_eq!(ids(&index, 500, 100), [lone, leaf_new, leaf_old]);
    for id in ids(&index, 500, 100) {
        index.remove_snapshot(&id).unwrap();
    }
    assert_eq!(ids(&index, 500, 100), [mid]);
    index.remove_snapshot(&mid).unwrap();
    assert_eq!(ids(&index, 500, 100), [base]);
    assert_eq!(ids(&index, i64::MAX, 100), [base, recent]);
}

#[test]
fn threads_with_their_own_index_share_a_file() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("index.db"));
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (path, barrier) = (Arc::clone(&path), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut index = Index::open(&path).unwrap();
                index.add_layer(&layer_row("shared")).unwrap();
                let shared = index
                    .add_snapshot(&NewSnapshot {
                        parent: None,
                        layer: LayerId::of(b"shared"),
                        root_path: None,
                        now: 1,
                    })
                    .unwrap()
                    .id;
                let mut top = shared;
                for i in 0..PER_THREAD {
                    top = add(&mut index, Some(top), &format!("t{t} {i}"), 2);
                    assert_eq!(index.resolve(&top.to_hex()[..16]).unwrap(), top);
                    if i % 10 == 0 {
                        index.children(&shared).unwrap();
                        index.usage().unwrap();
                    }
                }
                assert_eq!(index.chain(&top).unwrap().len(), PER_THREAD + 1);
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let index = Index::open(&path).unwrap();
    let usage = index.usage().unwrap();
    assert_eq!(usage.snapshots, (THREADS * PER_THREAD + 1) as u64);
    assert_eq!(usage.layers, (THREADS * PER_THREAD + 1) as u64);
}

const CHILD_DB: &str = "STRATA_INDEX_TEST_CHILD_DB";
const CHILD_N: &str = "STRATA_INDEX_TEST_CHILD_N";
const CHILDREN: usize = 8;
const PER_CHILD: usize = 200;

/// The body of each child process of `processes_race_on_a_fresh_database`; a no-op when
/// run as an ordinary test.
#[test]
fn child_open_and_write() {
    let (Some(db), Some(n)) = (std::env::var_os(CHILD_DB), std::env::var_os(CHILD_N)) else {
        return;
    };
    let db = PathBuf::from(db);
    let n = n.into_string().unwrap();
    let dir = db.parent().unwrap();
    std::fs::write(dir.join(format!("ready-{n}")), b"").unwrap();
    let go = dir.join("go");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !go.exists() {
        assert!(Instant::now() < deadline, "child {n}: no start signal");
        std::thread::yield_now();
    }
    let mut index = Index::open(&db).unwrap();
    index.add_layer(&layer_row("common")).unwrap();
    let mut parent = None;
    for i in 0..PER_CHILD {
        parent = Some(add(&mut index, parent, &format!("child {n} {i}"), i as i64));
    }
    assert_eq!(index.chain(&parent.unwrap()).unwrap().len(), PER_CHILD);
}

/// The end of a child's output: a failed migration's message quotes the whole schema.
fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(1500);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

#[test]
fn processes_race_on_a_fresh_database() {
    const ROUNDS: usize = 4;
    let exe = std::env::current_exe().unwrap();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        let children: Vec<_> = (0..CHILDREN)
            .map(|n| {
                Command::new(&exe)
                    .args([
                        "--exact",
                        "index::tests::child_open_and_write",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_DB, &db)
                    .env(CHILD_N, n.to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Release them together once all are waiting, so they open the fresh file at once.
        let deadline = Instant::now() + Duration::from_secs(120);
        while (0..CHILDREN).any(|n| !dir.path().join(format!("ready-{n}")).exists()) {
            assert!(Instant::now() < deadline, "children did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::File::create(dir.path().join("go"))
            .unwrap()
            .flush()
            .unwrap();
        let mut failures = Vec::new();
        for (n, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !stdout.contains("1 passed") {
                let stderr = String::from_utf8_lossy(&out.stderr);
                failures.push(format!(
                    "child {n}: {}\n{}\n{}",
                    out.status,
                    tail(&stdout),
                    tail(&stderr)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "round {round}: {} of {CHILDREN} children failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        let index = Index::open(&db).unwrap();
        let usage = index.usage().unwrap();
        assert_eq!(
            usage.snapshots,
            (CHILDREN * PER_CHILD) as u64,
            "round {round}"
        );
        assert_eq!(
            usage.layers,
            (CHILDREN * PER_CHILD + 1) as u64,
            "round {round}"
        );
    }
}

fn new_view(cache: &str, dir: &str, owner: Owner) -> NewCacheView {
    NewCacheView {
        cache: cache.to_owned(),
        dir: PathBuf::from(dir),
        owner,
        uid: 1,
        gid: 2,
        empty_layer: layer_row("empty"),
        now: 100,
    }
}

#[test]
fn cache_views_and_the_generation_swap() {
    let (_dir, mut index) = fresh();
    let me = Owner::current();
    let a = index.add_cache_view(&new_view("c", "/v/a", me)).unwrap();
    assert_eq!(a.cache.name, "c");
    assert_eq!((a.cache.snapshot, a.cache.generation), (None, 0));
    assert_eq!(
        (a.cache.owner_uid, a.cache.owner_gid, a.cache.views),
        (1, 2, 1)
    );
    assert_eq!((a.base.parent, a.base.depth), (None, 0));
    assert_eq!(a.base.layer, layer_row("empty").id);
    assert_eq!(a.view.snapshot, a.base.id);
    assert_eq!((a.view.base_generation, a.view.owner), (0, me));
    // The owner only counts when the cache is created.
    let mut other_owner = new_view("c", "/v/b", me);
    other_owner.uid = 9;
    let b = index.add_cache_view(&other_owner).unwrap();
    assert_eq!((b.cache.owner_uid, b.cache.views), (1, 2));
    assert_eq!(b.base.id, a.base.id, "one empty base");
    let err = index
        .add_cache_view(&new_view("c", "/v/b", me))
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyTracked { .. }), "{err}");
    for bad in ["", "a/b", ".", "..", "a\0b"] {
        let err = index
            .add_cache_view(&new_view(bad, "/v/x", me))
            .unwrap_err();
        assert!(matches!(err, Error::BadCacheName { .. }), "{bad:?}: {err}");
    }
    assert_eq!(index.cache_views(Some("c")).unwrap().len(), 2);
    assert_eq!(
        index.cache_view(Path::new("/v/a")).unwrap(),
        Some(a.view.clone())
    );

    // b releases first and wins; a loses and nothing changes.
    let from_b = add(&mut index, Some(b.base.id), "from b", 200);
    let from_a = add(&mut index, Some(a.base.id), "from a", 200);
    let won = index
        .publish_cache_version(Path::new("/v/b"), &CacheVersion::Snapshot(from_b), 300)
        .unwrap();
    let Publish::Won {
        snapshot,
        generation: 1,
    } = won
    else {
        panic!("{won:?}");
    };
    assert_eq!(snapshot.id, from_b);
    let lost = index
        .publish_cache_version(Path::new("/v/a"), &CacheVersion::Snapshot(from_a), 400)
        .unwrap();
    assert_eq!(lost, Publish::Lost { generation: 1 });
    let cache = index.cache("c").unwrap().unwrap();
    assert_eq!((cache.snapshot, cache.generation), (Some(from_b), 1));
    assert_eq!((cache.created, cache.updated), (100, 300));
    let err = index
        .publish_cache_version(Path::new("/v/none"), &CacheVersion::Snapshot(from_a), 1)
        .unwrap_err();
    assert!(matches!(err, Error::UnknownCacheView { .. }), "{err}");

    // A view of the new version, and a flattened release of it.
    let c = index.add_cache_view(&new_view("c", "/v/c", me)).unwrap();
    assert_eq!((c.base.id, c.view.base_generation), (from_b, 1));
    let missing = SnapshotId::derive(None, &LayerId::of(b"nowhere"));
    let err = index
        .publish_cache_version(Path::new("/v/c"), &CacheVersion::Snapshot(missing), 1)
        .unwrap_err();
    assert!(matches!(err, Error::MissingSnapshot { .. }), "{err}");
    let flat = CacheVersion::Flattened {
        layer: layer_row("flat"),
        root_path: None,
    };
    // A losing flattened release records nothing.
    assert_eq!(
        index
            .publish_cache_version(Path::new("/v/a"), &flat, 500)
            .unwrap(),
        Publish::Lost { generation: 1 }
    );
    assert!(index.layer(&layer_row("flat").id).unwrap().is_none());
    let Publish::Won {
        snapshot,
        generation: 2,
    } = index
        .publish_cache_version(Path::new("/v/c"), &flat, 500)
        .unwrap()
    else {
        panic!("c was taken at the current generation");
    };
    assert_eq!((snapshot.parent, snapshot.depth), (None, 0));
    assert!(index.layer(&layer_row("flat").id).unwrap().is_some());

    // Handing a view to another process.
    let other = Owner::new(me.pid, me.start_time + 1);
    assert!(
        index
            .set_cache_view_owner(Path::new("/v/c"), other)
            .unwrap()
    );
    assert!(
        !index
            .set_cache_view_owner(Path::new("/v/none"), other)
            .unwrap()
    );
    assert_eq!(
        index.cache_view(Path::new("/v/c")).unwrap().unwrap().owner,
        other
    );

    assert_eq!(
        index.remove_cache("c").unwrap(),
        RemoveCache::Busy { views: 3 }
    );
    for dir in ["/v/a", "/v/b", "/v/c"] {
        assert!(index.remove_cache_view(Path::new(dir)).unwrap());
    }
    assert!(!index.remove_cache_view(Path::new("/v/a")).unwrap());
    assert_eq!(index.remove_cache("c").unwrap(), RemoveCache::Removed);
    assert_eq!(index.remove_cache("c").unwrap(), RemoveCache::Missing);
    assert!(index.caches().unwrap().is_empty());
}

#[test]
fn prune_keeps_cache_versions_view_bases_and_releases_in_progress() {
    let (_dir, mut index) = fresh();
    let me = Owner::current();
    let lone = add(&mut index, None, "lone", 1);
    let first = index.add_cache_view(&new_view("c", "/v/1", me)).unwrap();
    let version = add(&mut index, Some(first.base.id), "version", 2);
    index
        .publish_cache_version(Path::new("/v/1"), &CacheVersion::Snapshot(version), 3)
        .unwrap();
    index.remove_cache_view(Path::new("/v/1")).unwrap();
    // A view of the version, and its release committed but not yet published.
    let view = index.add_cache_view(&new_view("c", "/v/2", me)).unwrap();
    assert_eq!(view.base.id, version);
    let pending = add(&mut index, Some(version), "pending", 4);

    let ids = |index: &Index| -> Vec<SnapshotId> {
        index
            .prune_candidates(i64::MAX, 100)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(ids(&index), [lone]);
    let err = index.remove_snapshot(&pending).unwrap_err();
    assert!(err.to_string().contains("cache view"), "{err}");

    // Once the view is gone the pending release is an ordinary leaf.
    index.remove_cache_view(Path::new("/v/2")).unwrap();
    assert_eq!(ids(&index), [lone, pending]);
    index.remove_snapshot(&pending).unwrap();
    // The current version stays, and with it the empty base below.
    assert_eq!(ids(&index), [lone]);
    let err = index.remove_snapshot(&version).unwrap_err();
    assert!(
        err.to_string().contains("current version of cache `c`"),
        "{err}"
    );
    index.remove_cache("c").unwrap();
    assert_eq!(ids(&index), [lone, version]);
    index.remove_snapshot(&version).unwrap();
    assert_eq!(
        ids(&index),
        [lone, first.base.id],
        "least recently used first"
    );

    // A view pins its base even before its checkout exists.
    let view = index.add_cache_view(&new_view("d", "/v/3", me)).unwrap();
    assert_eq!(view.base.id, first.base.id);
    assert_eq!(ids(&index), [lone]);
    let err = index.remove_snapshot(&view.base.id).unwrap_err();
    assert!(err.to_string().contains("cache view"), "{err}");
    index.remove_cache_view(Path::new("/v/3")).unwrap();
    assert_eq!(ids(&index), [lone, first.base.id]);
}

#[test]
fn a_version_1_index_is_migrated_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.db");
    let mut index = Index::open(&path).unwrap();
    let kept = add(&mut index, None, "kept", 1);
    drop(index);
    // What version 1 looked like: no cache tables, no OCI digests.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE cache_views; DROP TABLE caches;
         ALTER TABLE layers DROP COLUMN oci_diff_id; ALTER TABLE layers DROP COLUMN oci_digest;
         ALTER TABLE layers DROP COLUMN oci_size; PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let mut index = Index::open(&path).unwrap();
    assert!(index.snapshot(&kept).unwrap().is_some());
    assert!(index.caches().unwrap().is_empty());
    index
        .add_cache_view(&new_view("c", "/v/1", Owner::current()))
        .unwrap();
    assert_eq!(index.caches().unwrap().len(), 1);
}

#[test]
fn tag_names() {
    assert!(check_tag_name("ubuntu-24.04").is_ok());
    assert!(check_tag_name("abcd").is_ok());
    assert!(check_tag_name(&"a".repeat(63)).is_ok());
    assert!(check_tag_name("").is_err());
    assert!(check_tag_name("a b").is_err());
    assert!(check_tag_name("a\tb").is_err());
    assert!(check_tag_name("a\u{7}b").is_err());
    assert!(check_tag_name("a/b").is_err());
    assert!(check_tag_name(&"0".repeat(64)).is_err());
    assert!(check_tag_name(&"A".repeat(64)).is_err());
    assert!(check_tag_name(&"g".repeat(64)).is_ok());
    assert!(check_tag_name(&"x".repeat(256)).is_err());
}

#[test]
fn path_bytes_round_trip() {
    let p = Path::new("/tmp/strata/slot-01/root");
    assert_eq!(bytes_to_path(path_to_bytes(p)), p);
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe"));
        assert_eq!(bytes_to_path(path_to_bytes(odd)), odd);
    }
}

#[test]
fn cache_names() {
    assert!(check_cache_name("opam-archives").is_ok());
    assert!(check_cache_name("a b:c%d").is_ok());
    assert!(check_cache_name(&"x".repeat(255)).is_ok());
    assert!(check_cache_name("").is_err());
    assert!(check_cache_name(&"x".repeat(256)).is_err());
    assert!(check_cache_name("a/b").is_err());
    assert!(check_cache_name("a\0b").is_err());
    assert!(check_cache_name(".").is_err());
    assert!(check_cache_name("..").is_err());
    assert!(check_cache_name("...").is_ok());
}
