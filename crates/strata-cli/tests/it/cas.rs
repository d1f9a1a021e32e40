//! `strata cas …` against a real store.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;

use strata_cas::LayerId;
use strata_test_support::{require, tool};

use crate::support::{
    Env, assert_keys, assert_same_tree, id_field, os, sample_tree, tar_with_file, u64_field,
};

/// Puts `sample_tree` into the store; returns its id.
fn put_sample(env: &Env) -> String {
    let src = env.path("src");
    sample_tree(&src);
    let put = env
        .run([os("cas"), os("put"), os(&src), os("--json")])
        .json();
    assert_keys(
        &put,
        &[
            "id",
            "uncompressed_size",
            "compressed_size",
            "frames",
            "entries",
            "seconds",
        ],
    );
    id_field(&put, "id")
}

#[test]
fn put_ls_verify_corrupt_rm() {
    let env = Env::new();
    let id = put_sample(&env);

    // ls, as a table and as JSON.
    let table = env.run(["cas", "ls"]).ok();
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with(&id)),
        "{id} not listed:\n{table}"
    );
    let listing = env.run(["cas", "ls", "--json"]).json();
    let blobs = listing.as_array().expect("ls --json is an array");
    assert_eq!(blobs.len(), 1, "{listing}");
    assert_eq!(id_field(&blobs[0], "id"), id);
    assert!(u64_field(&blobs[0], "compressed_size") > 0);
    assert!(u64_field(&blobs[0], "uncompressed_size") > 0);
    assert!(u64_field(&blobs[0], "frames") >= 1);
    let blob_path = PathBuf::from(blobs[0]["path"].as_str().expect("path is a string"));
    assert!(blob_path.is_file(), "{}", blob_path.display());

    // verify: everything, and by prefix.
    let text = env.run(["cas", "verify"]).ok();
    assert!(
        text.contains("1 layer") && text.contains("all intact"),
        "{text}"
    );
    let report = env.run(["cas", "verify", "--json", &id[..8]]).json();
    assert_keys(&report, &["checked", "bytes", "corrupt"]);
    assert_eq!(u64_field(&report, "checked"), 1);

    // Flip one byte in the middle of the blob.
    let mut bytes = fs::read(&blob_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::set_permissions(&blob_path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&blob_path, &bytes).unwrap();

    let run = env.run(["cas", "verify"]);
    run.fails_with(&[&id]);
    assert!(
        run.stderr.contains(&format!("corrupt: {id}: ")),
        "{}",
        run.stderr
    );
    let run = env.run(["cas", "verify", "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["corrupt"][0]["id"], id.as_str(), "{report}");
    assert!(report["corrupt"][0]["reason"].is_string(), "{report}");
    env.run(["cas", "verify", &id]).fails_with(&[&id]);

    // rm by prefix.
    let text = env.run(["cas", "rm", &id[..6]]).ok();
    assert_eq!(text.trim(), format!("removed {id}"));
    assert!(!blob_path.exists());
    assert_eq!(
        env.run(["cas", "ls", "--json"]).json(),
        serde_json::json!([])
    );
    env.run(["cas", "verify"]).ok();
}

#[test]
fn rm_of_an_unknown_id_fails_unless_forced() {
    let env = Env::new();
    let id = put_sample(&env);
    let unknown = "0000000000000000000000000000000000000000000000000000000000000000";
    let unknown = if id == unknown {
        "f".repeat(64)
    } else {
        unknown.to_owned()
    };

    // One unknown id among known ones: nothing is removed.
    env.run(["cas", "rm", &id, &unknown])
        .fails_with(&[&unknown, "nothing was removed"]);
    env.run(["cas", "verify", &id]).ok();

    let removed = env
        .run(["cas", "rm", "--force", &unknown, &id, "--json"])
        .json();
    assert_eq!(removed["removed"], serde_json::json!([id]));
    env.run(["cas", "rm", &id]).fails_with(&[&id]);
    env.run(["cas", "rm", "-f", &id]).ok();
}

#[test]
fn ids_resolve_from_full_oci_and_prefix_forms() {
    let env = Env::new();
    let id = put_sample(&env);
    let want = env.run(["cas", "digest", "--json", &id]).json();
    assert_keys(&want, &["id", "diff_id", "digest", "size"]);
    for form in [
        format!("blake3:{id}"),
        id[..4].to_owned(),
        format!("blake3:{}", &id[..10]),
        id.to_uppercase(),
    ] {
        assert_eq!(
            env.run(["cas", "digest", "--json", &form]).json(),
            want,
            "{form}"
        );
    }
    for key in ["diff_id", "digest"] {
        let digest = want[key].as_str().unwrap();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 7 + 64,
            "{want}"
        );
    }
    let text = env.run(["cas", "digest", &id]).ok();
    assert!(text.contains(want["diff_id"].as_str().unwrap()), "{text}");

    // diff_id is the sha256 of what `cas cat` prints.
    if require("comparing with sha256sum", tool("sha256sum")) {
        let tar = env.path("layer.tar");
        let cat = env.run(["cas", "cat", &id]);
        assert_eq!(cat.code, 0, "{cat:?}");
        fs::write(&tar, &cat.stdout).unwrap();
        let sum = Command::new("sha256sum").arg(&tar).output().unwrap();
        let sum = String::from_utf8(sum.stdout).unwrap();
        assert_eq!(
            format!("sha256:{}", sum.split_whitespace().next().unwrap()),
            want["diff_id"].as_str().unwrap()
        );
    }
}

#[test]
fn bad_and_unknown_ids_are_named() {
    let env = Env::new();
    let id = put_sample(&env);
    let other = if id.starts_with("abcd") {
        "dcba"
    } else {
        "abcd"
    };
    env.run(["cas", "digest", other])
        .fails_with(&[other, "store"]);
    env.run(["cas", "cat", other]).fails_with(&[other]);
    env.run([os("cas"), os("apply"), os(other), os(env.path("d"))])
        .fails_with(&[other]);
    env.run(["cas", "verify", other]).fails_with(&[other]);
    env.run(["cas", "digest", "abc"])
        .fails_with(&["`abc`", "at least 4"]);
    env.run(["cas", "digest", "nothex"])
        .fails_with(&["`nothex`"]);
    let full_unknown = "e".repeat(64);
    if full_unknown != id {
        env.run(["cas", "digest", &full_unknown])
            .fails_with(&[&full_unknown]);
    }
}

#[test]
fn ambiguous_prefix_lists_the_candidates() {
    // Two tars whose ids share their first 4 hex digits: found by hashing candidates here
    // (`cas put` of a plain tar keeps its bytes, so the id is the blake3 of the file).
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    let (first, second) = (0u32..)
        .find_map(|i| {
            let tar = tar_with_file("f", format!("{i}\n").as_bytes());
            let prefix = LayerId::of(&tar).to_hex()[..4].to_owned();
            seen.insert(prefix, tar.clone())
                .map(|earlier| (earlier, tar))
        })
        .unwrap();
    let env = Env::new();
    let mut ids = Vec::new();
    for (name, tar) in [("one.tar", &first), ("two.tar", &second)] {
        let path = env.path(name);
        fs::write(&path, tar).unwrap();
        let put = env
            .run([os("cas"), os("put"), os(&path), os("--json")])
            .json();
        let id = id_field(&put, "id");
        assert_eq!(id, LayerId::of(tar).to_hex(), "put changed the tar's bytes");
        ids.push(id);
    }
    env.run(["cas", "digest", &ids[0][..4]]).fails_with(&[
        "ambiguous",
        &ids[0][..4],
        &ids[0],
        &ids[1],
    ]);
    // One more digit may still be shared; the full ids always resolve.
    env.run(["cas", "digest", &ids[0]]).ok();
    env.run(["cas", "digest", &ids[1]]).ok();
}

#[test]
fn put_of_a_gnu_tar_applies_back() {
    if !require("storing a GNU tar", tool("tar")) {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let tar = env.path("gnu.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());

    let put = env
        .run([os("cas"), os("put"), os(&tar), os("--json")])
        .json();
    let id = id_field(&put, "id");
    // The tar's bytes are kept, so the id is the blake3 of the file GNU tar wrote: putting
    // the same file again gives the same id.
    let again = env
        .run([os("cas"), os("put"), os(&tar), os("--json")])
        .json();
    assert_eq!(again["id"], put["id"]);

    let dest = env.path("dest");
    let applied = env
        .run([
            os("cas"),
            os("apply"),
            os(&id[..8]),
            os(&dest),
            os("--json"),
        ])
        .json();
    assert_eq!(applied["skipped"], serde_json::json!([]));
    assert_same_tree(&src, &dest);

    // Also as a layer file, and compressed with gzip when available.
    let dest2 = env.path("dest2");
    env.run([os("layer"), os("apply"), os(&tar), os(&dest2)])
        .ok();
    assert_same_tree(&src, &dest2);
    if require("storing a gzipped tar", tool("gzip")) {
        let status = Command::new("gzip").arg("-k").arg(&tar).status().unwrap();
        assert!(status.success());
        let gz = env.path("gnu.tar.gz");
        let from_gz = env
            .run([os("cas"), os("put"), os(&gz), os("--json")])
            .json();
        assert_eq!(
            from_gz["id"], put["id"],
            "a gzipped tar should store the same tar bytes"
        );
    }
}

#[test]
fn apply_into_a_regular_file_names_it() {
    let env = Env::new();
    let id = put_sample(&env);
    let file = env.path("plain-file");
    fs::write(&file, b"x").unwrap();
    env.run([os("cas"), os("apply"), os(&id), os(&file)])
        .fails_with(&["plain-file"]);
}

#[test]
fn put_of_a_non_tar_names_it() {
    let env = Env::new();
    let bogus = env.path("bogus.tar");
    fs::write(&bogus, vec![0x42u8; 4096]).unwrap();
    env.run([os("cas"), os("put"), os(&bogus)])
        .fails_with(&["bogus.tar"]);
    assert_eq!(
        env.run(["cas", "ls", "--json"]).json(),
        serde_json::json!([])
    );
}

/// `cas rm` of a layer that snapshots need: refused, naming them and their tags, unless
/// --force removes them too (listed), which is refused while one is checked out.
#[test]
fn rm_refuses_layers_that_snapshots_need_and_force_removes_those_snapshots() {
    use crate::support::rootfs;
    let env = Env::new();
    let tarball = rootfs(&env);
    let base = env
        .run([
            os("import"),
            os(&tarball),
            os("--tag"),
            os("base"),
            os("--json"),
        ])
        .json();
    let (base_id, base_layer) = (id_field(&base, "id"), id_field(&base, "layer"));
    let work = env.path("work");
    env.run([os("checkout"), os("base"), os(&work), os("--portable")])
        .ok();
    fs::write(work.join("step"), "1\n").unwrap();
    let child = env
        .run([
            os("commit"),
            os(&work),
            os("--tag"),
            os("child"),
            os("--json"),
        ])
        .json();
    let child_id = id_field(&child, "id");

    env.run(["cas", "rm", &base_layer[..8]]).fails_with(&[
        &base_layer,
        &base_id,
        "`base`",
        &child_id,
        "`child`",
        "nothing was removed",
        "--force",
    ]);
    assert_eq!(
        env.run(["fsck", "--json"]).json()["problems"],
        serde_json::json!([])
    );
    env.run([
        os("checkout"),
        os("child"),
        os(env.path("again")),
        os("--portable"),
    ])
    .ok();

    // Forced, but a snapshot that needs it is checked out: still nothing is removed.
    env.run(["cas", "rm", "--force", &base_layer])
        .fails_with(&[&child_id, "checkout"]);
    env.run(["cas", "verify", &base_layer]).ok();
    env.run([os("release"), os(env.path("again"))]).ok();

    let text = env.run(["cas", "rm", "--force", &base_layer]).ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(&format!("removed snapshot {child_id} (tags: child)")),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!("removed snapshot {base_id} (tags: base)")),
        "{text}"
    );
    assert_eq!(lines[2], format!("removed {base_layer}"));
    let listing = env.run(["snapshot", "ls", "--json"]).json();
    assert_eq!(listing, serde_json::json!([]));
    assert_eq!(
        env.run(["fsck", "--json"]).json()["problems"],
        serde_json::json!([])
    );
}
