//! Shared caches on real stores, in every checkout mode available: empty caches and their
//! owner, first release wins, release after a failed step, busy deletion and prune, flattening
//! of deep version chains, sweeping views of dead processes, and OBuilder's stress shape.

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_snapshot::caches::{self, CacheView, MAX_CACHE_DEPTH, ReleaseOutcome};
use strata_snapshot::maintenance::PruneOptions;
use strata_snapshot::{CheckoutMode, Engine};
use strata_test_support::require;

/// Both checkout modes, or portable only where overlay does not work (never under CI).
fn modes() -> Vec<CheckoutMode> {
    if require("overlay cache views", crate::overlay_problem()) {
        vec![CheckoutMode::Overlay, CheckoutMode::Portable]
    } else {
        vec![CheckoutMode::Portable]
    }
}

fn store() -> (tempfile::TempDir, Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    (tmp, engine)
}

/// The owner to create caches with: an arbitrary one as root, else our own (only root may
/// give files away).
fn user() -> (u32, u32) {
    if rustix::process::geteuid().is_root() {
        (123, 456)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }
}

fn acquire(engine: &Engine, name: &str, mode: CheckoutMode) -> CacheView {
    engine.cache_acquire_with(name, user(), Some(mode)).unwrap()
}

fn read(view: &CacheView, file: &str) -> Option<String> {
    fs::read_to_string(view.dir.join(file)).ok()
}

/// Nothing is left behind: no tracked checkout, no view row, no view directory.
fn assert_clean(engine: &Engine) {
    let checkouts = engine.checkouts().unwrap();
    assert!(
        checkouts.is_empty(),
        "tracked checkouts left: {checkouts:?}"
    );
    // A view's row names its cache, so counting every cache's views counts every row.
    let caches = engine.caches().unwrap();
    assert!(
        caches.iter().all(|c| c.views == 0),
        "cache views left: {caches:?}"
    );
    let dir = engine.cache_views_dir();
    if dir.exists() {
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "view directories left: {left:?}");
    }
}

fn current_depth(engine: &Engine, name: &str) -> u32 {
    let cache = engine.cache(name).unwrap().expect("the cache exists");
    let id = cache.snapshot.expect("the cache has a version");
    let version = engine.snapshot(&id).unwrap();
    version.expect("its version is recorded").depth
}

#[test]
fn an_empty_cache_is_owned_by_its_user_and_a_release_persists() {
    use std::os::unix::fs::MetadataExt;
    for mode in modes() {
        let (_tmp, engine) = store();
        let view = acquire(&engine, "opam-archives", mode);
        assert_eq!(view.mode, mode);
        assert_eq!(view.base_generation, 0);
        assert!(
            view.dir
                .starts_with(engine.cache_views_dir().canonicalize().unwrap())
        );
        let meta = fs::metadata(&view.dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), user(), "{mode:?}");
        assert_eq!(fs::read_dir(&view.dir).unwrap().count(), 0, "empty");
        fs::create_dir(view.dir.join("download")).unwrap();
        fs::write(view.dir.join("download/pkg.tgz"), "v1").unwrap();
        let outcome = engine.cache_release(view).unwrap();
        let ReleaseOutcome::Kept {
            snapshot,
            generation: 1,
            flattened: false,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_clean(&engine);
        let rows = engine.caches().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "opam-archives");
        assert_eq!(rows[0].snapshot, Some(snapshot));
        assert_eq!((rows[0].generation, rows[0].views), (1, 0));

        // v1 persists, and the root keeps its owner (an existing cache ignores the new one).
        let view = engine
            .cache_acquire_with("opam-archives", (7, 7), Some(mode))
            .unwrap();
        assert_eq!(view.base, snapshot);
        assert_eq!(view.base_generation, 1);
        assert_eq!(read(&view, "download/pkg.tgz").as_deref(), Some("v1"));
        let meta = fs::metadata(&view.dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), user(), "{mode:?}");
        assert_eq!(engine.caches().unwrap()[0].views, 1);
        assert!(engine.cache_release(view).unwrap().kept());
        assert_clean(&engine);
    }
}

#[test]
fn the_first_release_wins_and_the_other_view_is_discarded() {
    for mode in modes() {
        let (_tmp, engine) = store();
        let v1 = acquire(&engine, "c", mode);
        fs::write(v1.dir.join("x"), "v1").unwrap();
        assert!(engine.cache_release(v1).unwrap().kept());

        let a = acquire(&engine, "c", mode);
        let b = acquire(&engine, "c", mode);
        assert_ne!(a.dir, b.dir);
        assert_eq!(read(&a, "x").as_deref(), Some("v1"));
        fs::write(a.dir.join("x"), "a").unwrap();
        fs::write(b.dir.join("x"), "b").unwrap();
        assert_eq!(read(&a, "x").as_deref(), Some("a"), "views are private");
        let won = engine.cache_release(b).unwrap();
        assert!(
            matches!(won, ReleaseOutcome::Kept { generation: 2, .. }),
            "{won:?}"
        );
        let lost = engine.cache_release(a).unwrap();
        assert_eq!(lost, ReleaseOutcome::Discarded { generation: 2 });
        assert_clean(&engine);

        let next = acquire(&engine, "c", mode);
        assert_eq!(read(&next, "x").as_deref(), Some("b"), "v2b wins");
        assert_eq!(next.base_generation, 2);
        engine.cache_discard(next).unwrap();
        assert_clean(&engine);
        assert_eq!(
            engine.caches().unwrap()[0].generation,
            2,
            "discard keeps it"
        );
    }
}

/// A release carries no success flag (as in OBuilder): what a failed step left in its view
/// is kept like anything else, under the same first-release-wins rule.
#[test]
fn a_release_after_a_failed_step_follows_the_same_rule() {
    for mode in modes() {
        let (_tmp, engine) = store();
        let view = acquire(&engine, "c", mode);
        fs::write(view.dir.join("partial"), "half a download").unwrap();
        let step: Result<(), &str> = Err("the step exited with status 1");
        assert!(step.is_err());
        let outcome = engine.cache_release(view).unwrap();
        assert!(outcome.kept(), "{outcome:?}");
        let view = acquire(&engine, "c", mode);
        assert_eq!(read(&view, "partial").as_deref(), Some("half a download"));

        // A failed step that lost the race is discarded like a successful one.
        let other = acquire(&engine, "c", mode);
        assert!(engine.cache_release(other).unwrap().kept());
        fs::write(view.dir.join("partial"), "overwritten").unwrap();
        assert!(!engine.cache_release(view).unwrap().kept());
        let view = acquire(&engine, "c", mode);
        assert_eq!(read(&view, "partial").as_deref(), Some("half a download"));
        engine.cache_discard(view).unwrap();
        assert_clean(&engine);
    }
}

#[test]
fn deletion_is_refused_while_views_are_out_and_prune_keeps_current_versions() {
    for mode in modes() {
        let (_tmp, engine) = store();
        let keep = acquire(&engine, "keep", mode);
        fs::write(keep.dir.join("k"), "kept").unwrap();
        let ReleaseOutcome::Kept { snapshot: kept, .. } = engine.cache_release(keep).unwrap()
        else {
            panic!("the only release wins");
        };

        let view = acquire(&engine, "gone", mode);
        fs::write(view.dir.join("g"), "g").unwrap();
        let err = engine.cache_delete("gone").unwrap_err();
        assert!(
            matches!(&err, caches::Error::Busy { name, views: 1 } if name == "gone"),
            "{err:?}"
        );
        assert!(err.to_string().contains("`gone`"), "{err}");
        assert!(view.dir.join("g").exists(), "the view is untouched");

        // While the view is out, prune leaves its base and the other cache's version alone.
        engine.prune(&PruneOptions::default()).unwrap();
        assert_eq!(read(&view, "g").as_deref(), Some("g"));
        assert!(engine.cache_release(view).unwrap().kept());
        engine.cache_delete("gone").unwrap();
        engine.cache_delete("never-existed").unwrap();
        let names: Vec<String> = engine
            .caches()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["keep"]);

        let report = engine.prune(&PruneOptions::default()).unwrap();
        assert!(!report.snapshots.contains(&kept));
        assert!(
            !report.snapshots.is_empty(),
            "the deleted cache's versions go"
        );
        let remaining = engine.snapshots().unwrap();
        // The kept version and the empty base below it.
        assert_eq!(remaining.len(), 2, "{remaining:?}");
        let view = acquire(&engine, "keep", mode);
        assert_eq!(read(&view, "k").as_deref(), Some("kept"));
        engine.cache_discard(view).unwrap();
        assert_clean(&engine);

        let err = engine.cache_delete("a/b").unwrap_err();
        assert!(matches!(err, caches::Error::BadName { .. }), "{err:?}");
        for bad in ["", ".", "..", "a\0b"] {
            assert!(engine.cache_acquire(bad, user()).is_err(), "{bad:?}");
        }
        assert_clean(&engine);
    }
}

#[test]
fn an_untouched_view_keeps_the_version_and_counts_as_a_release() {
    for mode in modes() {
        let (_tmp, engine) = store();
        // An untouched empty cache becomes the empty base snapshot itself.
        let view = acquire(&engine, "c", mode);
        let empty = view.base;
        let outcome = engine.cache_release(view).unwrap();
        assert_eq!(
            outcome,
            ReleaseOutcome::Kept {
                snapshot: empty,
                generation: 1,
                flattened: false
            }
        );
        let layer = engine.snapshot(&empty).map(|s| s.unwrap().layer).unwrap();
        assert_eq!(layer, strata_cas::LayerId::of(&[0; 1024]), "an empty tar");

        let view = acquire(&engine, "c", mode);
        fs::write(view.dir.join("x"), "x").unwrap();
        let ReleaseOutcome::Kept { snapshot: v2, .. } = engine.cache_release(view).unwrap() else {
            panic!("the only release wins");
        };
        let before = engine.snapshots().unwrap().len();
        let view = acquire(&engine, "c", mode);
        let outcome = engine.cache_release(view).unwrap();
        assert_eq!(
            outcome,
            ReleaseOutcome::Kept {
                snapshot: v2,
                generation: 3,
                flattened: false
            }
        );
        let after = engine.snapshots().unwrap().len();
        assert_eq!(before, after, "no snapshot is left for an untouched view");
        assert_clean(&engine);
    }
}

/// overlayfs cannot stack one layer directory twice, so a release whose layer repeats one
/// below it is stored flat.
#[test]
fn a_change_identical_to_an_earlier_one_is_flattened() {
    use std::time::{Duration, SystemTime};
    let write_x = |view: &CacheView| {
        let path = view.dir.join("x");
        fs::write(&path, "same bytes").unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
    };
    for mode in modes() {
        let (_tmp, engine) = store();
        let view = acquire(&engine, "c", mode);
        write_x(&view);
        let first = engine.cache_release(view).unwrap();
        assert!(
            matches!(
                first,
                ReleaseOutcome::Kept {
                    flattened: false,
                    ..
                }
            ),
            "{first:?}"
        );
        let view = acquire(&engine, "c", mode);
        fs::remove_file(view.dir.join("x")).unwrap();
        assert!(engine.cache_release(view).unwrap().kept());
        let view = acquire(&engine, "c", mode);
        write_x(&view);
        let again = engine.cache_release(view).unwrap();
        assert!(
            matches!(
                again,
                ReleaseOutcome::Kept {
                    flattened: true,
                    ..
                }
            ),
            "{mode:?}: {again:?}"
        );
        assert_eq!(current_depth(&engine, "c"), 0);
        let view = acquire(&engine, "c", mode);
        assert_eq!(read(&view, "x").as_deref(), Some("same bytes"));
        engine.cache_discard(view).unwrap();
        assert_clean(&engine);
    }
}

#[test]
fn deep_version_chains_are_flattened() {
    const RELEASES: usize = 70;
    for mode in modes() {
        let (_tmp, engine) = store();
        let mut flattened = 0;
        for i in 0..RELEASES {
            let view = acquire(&engine, "deep", mode);
            let mut log = read(&view, "log").unwrap_or_default();
            assert_eq!(log.lines().count(), i, "{mode:?}");
            log.push_str(&format!("line {i}\n"));
            fs::write(view.dir.join("log"), &log).unwrap();
            fs::write(view.dir.join(format!("file-{i}")), i.to_string()).unwrap();
            if i == 10 {
                // Deletions must survive flattening too.
                fs::remove_file(view.dir.join("file-3")).unwrap();
            }
            let outcome = engine.cache_release(view).unwrap();
            let ReleaseOutcome::Kept {
                flattened: flat, ..
            } = outcome
            else {
                panic!("{outcome:?}");
            };
            flattened += usize::from(flat);
            let depth = current_depth(&engine, "deep");
            assert!(depth <= MAX_CACHE_DEPTH, "depth {depth} after release {i}");
            if flat {
                assert_eq!(depth, 0);
            }
        }
        assert_eq!(flattened, 1, "{mode:?}");
        let view = acquire(&engine, "deep", mode);
        let log = read(&view, "log").unwrap();
        let expected: String = (0..RELEASES).map(|i| format!("line {i}\n")).collect();
        assert_eq!(log, expected);
        for i in 0..RELEASES {
            let content = read(&view, &format!("file-{i}"));
            if i == 3 {
                assert_eq!(content, None);
            } else {
                assert_eq!(content, Some(i.to_string()));
            }
        }
        engine.cache_discard(view).unwrap();
        assert_clean(&engine);
    }
}

#[cfg(unix)]
#[test]
fn views_of_dead_processes_are_swept() {
    for mode in modes() {
        let (_tmp, engine) = store();
        let v1 = acquire(&engine, "c", mode);
        fs::write(v1.dir.join("x"), "v1").unwrap();
        assert!(engine.cache_release(v1).unwrap().kept());

        // A process took a view, wrote to it and died.
        let view = acquire(&engine, "c", mode);
        fs::write(view.dir.join("x"), "lost").unwrap();
        let dead = crate::engine::dead_owner();
        let dir = view.dir.clone();
        drop(view);
        assert!(engine.set_cache_view_owner(&dir, dead).unwrap());
        // Another died after recording its view but before checking it out.
        let early = engine
            .cache_views_dir()
            .canonicalize()
            .unwrap()
            .join("early");
        fs::create_dir(&early).unwrap();
        engine.record_cache_view("c", &early, dead).unwrap();
        // A live view is not touched.
        let live = acquire(&engine, "c", mode);
        assert_eq!(engine.caches().unwrap()[0].views, 3);

        let mut swept = engine.cache_sweep_dead_views().unwrap();
        swept.sort();
        let mut expected = vec![dir.clone(), early.clone()];
        expected.sort();
        assert_eq!(swept, expected);
        assert!(!dir.exists() && !early.exists());
        assert!(live.dir.exists());
        assert_eq!(engine.caches().unwrap()[0].views, 1);
        assert!(engine.cache_sweep_dead_views().unwrap().is_empty());
        assert_eq!(read(&live, "x").as_deref(), Some("v1"));
        engine.cache_discard(live).unwrap();
        assert_clean(&engine);
        let view = acquire(&engine, "c", mode);
        assert_eq!(
            read(&view, "x").as_deref(),
            Some("v1"),
            "the dead view lost"
        );
        engine.cache_discard(view).unwrap();
        assert_clean(&engine);
    }
}

#[test]
fn a_view_that_cannot_be_checked_out_leaves_nothing() {
    for mode in modes() {
        let (_tmp, engine) = store();
        let view = acquire(&engine, "c", mode);
        fs::write(view.dir.join("kept"), "1").unwrap();
        engine.cache_release(view).unwrap();
        // Every layer's bytes gone, blobs and unpacked copies: no checkout can be made.
        for id in engine.cas().ids().unwrap() {
            fs::remove_file(engine.cas().blob_path(&id)).unwrap();
        }
        let unpacked = engine.root().join("unpacked-v1");
        if unpacked.exists() {
            for entry in fs::read_dir(&unpacked).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    fs::remove_dir_all(&path).unwrap();
                } else {
                    fs::remove_file(&path).unwrap();
                }
            }
        }
        let err = engine
            .cache_acquire_with("c", user(), Some(mode))
            .unwrap_err();
        assert!(err.to_string().contains("cache `c`"), "{mode:?}: {err}");
        assert_clean(&engine);
    }
}

/// OBuilder's stress test shape: threads take views of one cache, each appends a line and
/// releases; the cache ends up holding exactly the winners' lines, each complete.
#[test]
fn threads_racing_on_one_cache_keep_exactly_the_winners() {
    const THREADS: usize = 10;
    const ITERATIONS: usize = 10;
    for mode in modes() {
        let (_tmp, engine) = store();
        let wins = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (engine, wins) = (&engine, &wins);
                s.spawn(move || {
                    for i in 0..ITERATIONS {
                        let view = acquire(engine, "stress", mode);
                        let path = view.dir.join("log");
                        let mut log = fs::read_to_string(&path).unwrap_or_default();
                        log.push_str(&format!("thread {t} iteration {i} done\n"));
                        fs::write(&path, log).unwrap();
                        if engine.cache_release(view).unwrap().kept() {
                            wins.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let wins = wins.load(Ordering::Relaxed);
        assert!(wins >= 1);
        let cache = &engine.caches().unwrap()[0];
        assert_eq!(cache.generation, wins, "one generation per winning release");
        let view = acquire(&engine, "stress", mode);
        let log = read(&view, "log").unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len() as u64, wins, "{mode:?}: {log}");
        let mut seen = HashSet::new();
        for line in &lines {
            let ok = line.starts_with("thread ") && line.ends_with(" done");
            assert!(ok, "incomplete line {line:?}");
            assert!(seen.insert(*line), "duplicate line {line:?}");
        }
        assert!(log.ends_with('\n'));
        engine.cache_discard(view).unwrap();
        assert_clean(&engine);
        eprintln!("{mode:?}: {wins} of {} releases won", THREADS * ITERATIONS);
    }
}
