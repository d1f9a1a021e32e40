//! Identical steps requested at once run once: within one builder (followers tail the live
//! log) and across builders sharing a store (the per-key file lock, as across processes).

use strata_isolate::Cancel;

use crate::common::{Fixture, build_on, builder_at, read_file, runc_ready};

const SPEC: &str = r#"((from busybox) (shell /bin/sh -c)
    (run (cache (count (target /count)))
         (shell "echo run >> /count/runs; echo first line; sleep 2; echo last line"))
    (run (shell "echo done > /done")))"#;

fn runs(f: &Fixture, id: &strata_snapshot::SnapshotId) -> usize {
    // The step ran once per line in the cache; read it through a step that copies it out.
    let spec = format!(
        r#"((from busybox) (shell /bin/sh -c)
            (run (cache (count (target /count))) (shell "cat /count/runs > /runs; echo {id}")))"#
    );
    let (r, _) = f.build(&spec, &f.context(&[]));
    read_file(&f.builder, &r.unwrap(), "runs")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn one_builder_runs_an_identical_step_once() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| f.build(SPEC, &ctx))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: Vec<_> = results.iter().map(|(r, _)| *r.as_ref().unwrap()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]));
    for (_, log) in &results {
        assert!(
            log.contains("first line\nlast line\n"),
            "every requester sees the log: {log}"
        );
    }
    assert_eq!(f.builder.stats().misses, 2, "each step ran once");
    assert_eq!(runs(&f, &ids[0]), 1);
}

#[test]
fn builders_sharing_a_store_wait_for_each_other() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let other = builder_at(&f.store());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| f.build(SPEC, &ctx));
        let b = s.spawn(|| build_on(&other, SPEC, &ctx, &[], &Cancel::new()));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (ia, ib) = (a.0.unwrap(), b.0.unwrap());
    assert_eq!(ia, ib);
    assert_eq!(
        f.builder.stats().misses + other.stats().misses,
        2,
        "each step ran in one builder only"
    );
    for log in [&a.1, &b.1] {
        assert!(
            log.contains("first line\nlast line\n"),
            "the waiter tails the runner's log: {log}"
        );
    }
    assert_eq!(runs(&f, &ia), 1);
}
