//! Prune, gc, du and fsck on real stores.

use std::collections::HashSet;

use strata_cas::LayerId;
use strata_snapshot::index::LayerRow;
use strata_snapshot::maintenance::PruneOptions;
use strata_snapshot::{Engine, SnapshotId};

/// Records `n` snapshots in a tree (each parent has up to 4 children), without blobs.
fn tree(engine: &Engine, n: usize) -> Vec<SnapshotId> {
    engine
        .with_index(|ix| {
            let mut ids: Vec<SnapshotId> = Vec::with_capacity(n);
            for i in 0..n {
                let layer = LayerRow {
                    id: LayerId::of(format!("layer {i}").as_bytes()),
                    uncompressed_size: 1000,
                    compressed_size: 100,
                    unpacked: false,
                    created: 0,
                };
                let parent = (i > 0).then(|| ids[(i - 1) / 4]);
                // Older snapshots were used longer ago.
                let row = ix.add_layer_and_snapshot(&layer, parent, None, i as i64)?;
                ids.push(row.id);
            }
            Ok(ids)
        })
        .unwrap()
}

#[test]
fn prune_is_leaf_first_lru_and_keeps_what_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    let ids = tree(&engine, 2_000);
    // Pin one leaf by a tag: it and its ancestors must survive.
    let pinned = ids[1_999];
    engine
        .with_index(|ix| Ok(ix.set_tag("keep", &pinned)?))
        .unwrap();

    let report = engine
        .prune(&PruneOptions {
            keep_count: Some(500),
            ..PruneOptions::default()
        })
        .unwrap();
    let remaining: HashSet<SnapshotId> = engine
        .with_index(|ix| Ok(ix.snapshots()?))
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(remaining.len(), 500, "pruned {}", report.snapshots.len());
    assert_eq!(report.snapshots.len(), 1_500);
    // Leaf-first: every remaining snapshot still has its parent.
    let chain = engine.with_index(|ix| Ok(ix.chain(&pinned)?)).unwrap();
    assert!(
        chain.iter().all(|r| remaining.contains(&r.id)),
        "the tagged chain survives"
    );
    for row in engine.with_index(|ix| Ok(ix.snapshots()?)).unwrap() {
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
    assert!(
        engine
            .with_index(|ix| Ok(ix.snapshots()?))
            .unwrap()
            .is_empty()
    );
}
