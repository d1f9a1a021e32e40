//! `strata du|prune|gc|fsck` against a real store: counts, leaf-first pruning, garbage
//! collection, corruption found by fsck, and argument errors.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{Env, Run, assert_keys, id_field, os, rootfs, u64_field};

/// Checks `parent` out (portable), writes `file` with `content`, commits; returns the new id.
fn step(env: &Env, parent: &str, file: &str, content: &str) -> String {
    step_tagged(env, parent, file, content, None)
}

/// [`step`], naming the new snapshot `tag`.
fn step_tagged(env: &Env, parent: &str, file: &str, content: &str, tag: Option<&str>) -> String {
    let work = env.path("work");
    env.run([
        os("checkout"),
        os(parent),
        os(&work),
        os("--portable"),
        os("--json"),
    ])
    .json();
    fs::write(work.join(file), content).unwrap();
    let mut args = vec![os("commit"), os(&work), os("--json")];
    if let Some(tag) = tag {
        args.extend([os("--tag"), os(tag)]);
    }
    let committed = env.run(args).json();
    id_field(&committed, "id")
}

fn snapshot_ids(env: &Env) -> Vec<String> {
    let listing = env.run([os("snapshot"), os("ls"), os("--json")]).json();
    let rows = listing.as_array().expect("snapshot ls --json is an array");
    let mut ids: Vec<String> = rows.iter().map(|row| id_field(row, "id")).collect();
    ids.sort();
    ids
}

fn du(env: &Env) -> Value {
    let usage = env.run([os("du"), os("--json")]).json();
    assert_keys(
        &usage,
        &[
            "snapshots",
            "blobs",
            "compressed_bytes",
            "uncompressed_bytes",
            "unpacked_layers",
            "layer_variants",
            "checkouts",
        ],
    );
    usage
}

/// The blob file of layer `id`, from `cas ls --json`.
fn blob_path(env: &Env, id: &str) -> PathBuf {
    let listing = env.run([os("cas"), os("ls"), os("--json")]).json();
    let blob = listing
        .as_array()
        .expect("cas ls --json is an array")
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("layer {id} is not listed: {listing}"));
    PathBuf::from(blob["path"].as_str().expect("path is a string"))
}

fn corrupt(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(path, &bytes).unwrap();
}

/// A usage error: status 2, and stderr names the argument.
#[track_caller]
fn usage_error(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 2, "expected a usage error:\n{run:#?}");
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr does not mention `{needle}`:\n{}",
            run.stderr
        );
    }
}

#[test]
fn du_prune_gc_and_fsck() {
    let env = Env::new();
    let tarball = rootfs(&env);
    let imported = env.run([os("import"), os(&tarball), os("--json")]).json();
    let base = id_field(&imported, "id");
    let base_layer = id_field(&imported, "layer");

    // base ── a ── b
    //    └── c
    let a = step(&env, &base, "etc/hostname", "a\n");
    let b = step(&env, &a, "etc/hostname", "b\n");
    let c = step(&env, &base, "etc/motd", "c\n");

    let usage = du(&env);
    assert_eq!(u64_field(&usage, "snapshots"), 4, "{usage}");
    assert_eq!(u64_field(&usage, "blobs"), 4, "{usage}");
    assert_eq!(u64_field(&usage, "checkouts"), 0, "{usage}");
    // Portable checkouts stream the layers from their blobs where the filesystem cannot
    // clone files, and unpack base's and a's where it can (c's and b's were never checked
    // out).
    let unpacked = u64_field(&usage, "unpacked_layers");
    assert!(unpacked == 0 || unpacked >= 2, "{usage}");
    let compressed = u64_field(&usage, "compressed_bytes");
    assert!(compressed > 0, "{usage}");
    assert!(
        u64_field(&usage, "uncompressed_bytes") > compressed,
        "{usage}"
    );
    let text = env.run([os("du")]).ok();
    assert!(
        text.contains("snapshots") && text.contains("4 blobs"),
        "{text}"
    );

    // A tracked checkout is counted, and pins its snapshot.
    let held = env.path("held");
    env.run([os("checkout"), os(&c), os(&held), os("--portable")])
        .ok();
    assert_eq!(u64_field(&du(&env), "checkouts"), 1);

    // Leaves only: of the two leaves b and c, c is held, so b goes; a and base have children.
    let pruned = env
        .run([os("prune"), os("--keep"), os("3"), os("--json")])
        .json();
    assert_keys(&pruned, &["deleted", "snapshots", "gc", "seconds"]);
    assert_eq!(u64_field(&pruned, "deleted"), 1, "{pruned}");
    assert_eq!(pruned["snapshots"][0], b.as_str(), "{pruned}");
    assert_keys(
        &pruned["gc"],
        &["layers", "bytes", "orphans", "variants", "trash", "steps"],
    );
    assert_eq!(u64_field(&pruned["gc"], "layers"), 1, "{pruned}");
    assert!(u64_field(&pruned["gc"], "bytes") > 0, "{pruned}");
    let mut left = vec![base.clone(), a.clone(), c.clone()];
    left.sort();
    assert_eq!(snapshot_ids(&env), left);

    // --keep 1: a became a leaf and goes; c is still held; base has children and stays.
    let pruned = env
        .run([os("prune"), os("--keep"), os("1"), os("--json")])
        .json();
    assert_eq!(pruned["snapshots"], serde_json::json!([a]), "{pruned}");
    let mut left = vec![base.clone(), c.clone()];
    left.sort();
    assert_eq!(snapshot_ids(&env), left);

    // Once released, c can go; the base then becomes a leaf, and --keep 1 keeps it.
    env.run([os("release"), os(&held)]).ok();
    let text = env.run([os("prune"), os("--keep"), os("1")]).ok();
    assert!(text.contains("deleted 1 snapshot;"), "{text}");
    assert_eq!(snapshot_ids(&env), vec![base.clone()]);

    // gc frees what `snapshot rm` left behind.
    let d = step(&env, &base, "etc/hostname", "d\n");
    env.run([os("snapshot"), os("rm"), os(&d)]).ok();
    let collected = env.run([os("gc"), os("--json")]).json();
    assert_keys(
        &collected,
        &[
            "layers", "bytes", "orphans", "variants", "trash", "steps", "seconds",
        ],
    );
    assert_eq!(u64_field(&collected, "layers"), 1, "{collected}");
    assert!(u64_field(&collected, "bytes") > 0, "{collected}");
    let collected = env.run([os("gc"), os("--json")]).json();
    assert_eq!(u64_field(&collected, "layers"), 0, "gc twice: {collected}");
    let usage = du(&env);
    assert_eq!(u64_field(&usage, "snapshots"), 1, "{usage}");
    assert_eq!(u64_field(&usage, "blobs"), 1, "{usage}");

    // A clean store: fsck exits 0.
    let checked = env.run([os("fsck"), os("--json")]).json();
    assert_keys(&checked, &["problems", "unrepaired", "seconds"]);
    assert_eq!(checked["problems"], serde_json::json!([]), "{checked}");
    let text = env.run([os("fsck")]).ok();
    assert!(text.contains("no problems"), "{text}");

    // A corrupt blob: fsck exits 1 and names the layer, with or without --repair.
    corrupt(&blob_path(&env, &base_layer));
    let run = env.run([os("fsck")]);
    run.fails_with(&["1 problem remains"]);
    assert!(
        run.stdout_text().contains(&base_layer),
        "fsck does not name {base_layer}:\n{run:#?}"
    );
    let run = env.run([os("fsck"), os("--repair"), os("--json")]);
    assert_eq!(run.code, 1, "{run:#?}");
    let report: Value = serde_json::from_str(run.stdout_text().trim()).unwrap();
    assert_eq!(u64_field(&report, "unrepaired"), 1, "{report}");
    let what = report["problems"][0]["what"].as_str().unwrap();
    assert!(what.contains(&base_layer), "{report}");
    assert_eq!(report["problems"][0]["repaired"], false, "{report}");
}

#[test]
fn fsck_repair_forgets_lost_checkouts() {
    let env = Env::new();
    let tarball = rootfs(&env);
    env.run([os("import"), os(&tarball), os("--tag"), os("base")])
        .ok();
    let work = env.path("work");
    env.run([os("checkout"), os("base"), os(&work), os("--portable")])
        .ok();
    fs::remove_dir_all(&work).unwrap();

    let run = env.run([os("fsck")]);
    run.fails_with(&["1 problem remains", "fsck --repair"]);
    assert!(run.stdout_text().contains("problem: "), "{run:#?}");

    let text = env.run([os("fsck"), os("--repair")]).ok();
    assert!(
        text.contains("repaired: ") && text.contains("1 repaired"),
        "{text}"
    );
    env.run([os("fsck")]).ok();
    assert_eq!(u64_field(&du(&env), "checkouts"), 0);
}

#[test]
fn prune_older_than_and_all() {
    let env = Env::new();
    let tarball = rootfs(&env);
    let imported = env.run([os("import"), os(&tarball), os("--json")]).json();
    let base = id_field(&imported, "id");
    let child = step(&env, &base, "etc/hostname", "child\n");

    // Everything was just used: nothing is a week old.
    let pruned = env
        .run([os("prune"), os("--older-than"), os("7d"), os("--json")])
        .json();
    assert_eq!(u64_field(&pruned, "deleted"), 0, "{pruned}");
    // Nor over the byte budget.
    let pruned = env
        .run([os("prune"), os("--keep-bytes"), os("1G"), os("--json")])
        .json();
    assert_eq!(u64_field(&pruned, "deleted"), 0, "{pruned}");

    // A tag pins its snapshot even under --all; the base has a child left, so it stays too.
    step_tagged(&env, &base, "etc/motd", "tagged\n", Some("keep-me"));
    let pruned = env.run([os("prune"), os("--all"), os("--json")]).json();
    let deleted: Vec<&str> = pruned["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(deleted, vec![child.as_str()], "{pruned}");
    assert_eq!(u64_field(&du(&env), "snapshots"), 2);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let env = Env::new();
    usage_error(
        &env.run([os("prune")]),
        &["--all", "--older-than", "--keep"],
    );
    usage_error(
        &env.run([os("prune"), os("--older-than"), os("7")]),
        &["--older-than", "`7` has no unit"],
    );
    usage_error(
        &env.run([os("prune"), os("--older-than"), os("7y")]),
        &["--older-than", "unknown unit `y`"],
    );
    usage_error(
        &env.run([os("prune"), os("--keep-bytes"), os("10X")]),
        &["--keep-bytes", "10X"],
    );
    usage_error(
        &env.run([os("prune"), os("--keep-bytes"), os("lots")]),
        &["--keep-bytes", "lots"],
    );
    usage_error(
        &env.run([os("prune"), os("--keep=-1")]),
        &["--keep <N>", "-1"],
    );
    usage_error(
        &env.run([os("prune"), os("--all"), os("--keep"), os("3")]),
        &["--all", "--keep"],
    );
    usage_error(&env.run([os("fsck"), os("--fix")]), &["--fix"]);
    // None of these touched a store.
    assert!(!env.store().exists());
}
