//! `strata layer create|apply`.

use std::fs;

use crate::support::{
    Env, assert_keys, assert_same_tree, id_field, inode, latin1_name, os, sample_tree, u64_field,
};

#[test]
fn create_then_apply_round_trips_a_tree() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let out = env.path("layer.tar.zst");

    let created = env
        .run([
            os("layer"),
            os("create"),
            os(&src),
            os("-o"),
            os(&out),
            os("--json"),
        ])
        .json();
    assert_keys(
        &created,
        &[
            "id",
            "uncompressed_size",
            "compressed_size",
            "frames",
            "entries",
            "seconds",
        ],
    );
    id_field(&created, "id");
    assert!(u64_field(&created, "entries") >= 11, "{created}");
    assert!(u64_field(&created, "frames") >= 1, "{created}");
    assert_eq!(
        u64_field(&created, "compressed_size"),
        fs::metadata(&out).unwrap().len(),
        "compressed_size is not the size of the file written"
    );
    assert!(
        u64_field(&created, "uncompressed_size") > 300 * 1024,
        "{created}"
    );
    assert!(
        created["seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{created}"
    );

    let dest = env.path("dest/nested");
    let applied = env
        .run([os("--json"), os("layer"), os("apply"), os(&out), os(&dest)])
        .json();
    assert_keys(
        &applied,
        &[
            "entries",
            "bytes",
            "files",
            "dirs",
            "symlinks",
            "hardlinks",
            "whiteouts",
            "skipped",
            "seconds",
        ],
    );
    assert_eq!(u64_field(&applied, "symlinks"), 2, "{applied}");
    assert_eq!(u64_field(&applied, "hardlinks"), 1, "{applied}");
    assert_eq!(u64_field(&applied, "whiteouts"), 0, "{applied}");
    assert_eq!(applied["skipped"], serde_json::json!([]), "{applied}");

    assert_same_tree(&src, &dest);
    assert_eq!(
        inode(&dest.join("a/hard")),
        inode(&dest.join("a/hello.txt")),
        "the hard link was not restored as a hard link"
    );
    assert!(dest.join(latin1_name()).exists());
}

#[test]
fn human_output_names_id_sizes_and_time() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let out = env.path("layer.tar.zst");
    let text = env
        .run([os("layer"), os("create"), os(&src), os("-o"), os(&out)])
        .ok();
    let mut lines = text.lines();
    let id = lines.next().unwrap();
    assert_eq!(id.len(), 64, "first line is not the id: {text}");
    let summary = lines.next().unwrap();
    for needle in ["entries", "KiB uncompressed", "compressed (", "x)", " s"] {
        assert!(
            summary.contains(needle),
            "`{needle}` missing from: {summary}"
        );
    }

    let dest = env.path("dest");
    let text = env
        .run([os("layer"), os("apply"), os(&out), os(&dest)])
        .ok();
    assert!(text.starts_with("applied "), "{text}");
    assert!(
        text.contains("2 symlinks") && text.contains("1 hard link"),
        "{text}"
    );
}

#[test]
fn create_is_deterministic_across_runs_and_thread_counts() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let mut ids = Vec::new();
    let mut bytes = Vec::new();
    for (name, threads) in [
        ("one.tar.zst", "1"),
        ("two.tar.zst", "4"),
        ("three.tar.zst", "1"),
    ] {
        let out = env.path(name);
        let created = env
            .run([
                os("layer"),
                os("create"),
                os(&src),
                os("--output"),
                os(&out),
                os("--threads"),
                os(threads),
                os("--json"),
            ])
            .json();
        ids.push(id_field(&created, "id"));
        bytes.push(fs::read(&out).unwrap());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "ids differ: {ids:?}");
    assert!(bytes.iter().all(|b| *b == bytes[0]), "layer bytes differ");

    // Only the three layers and the source: no temporary files left behind.
    let mut names: Vec<String> = fs::read_dir(env.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["one.tar.zst", "src", "three.tar.zst", "two.tar.zst"]
    );
}

#[test]
fn level_changes_compression_not_the_id() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let fast = env
        .run([
            os("layer"),
            os("create"),
            os(&src),
            os("-o"),
            os(env.path("1.zst")),
            os("--level"),
            os("1"),
            os("--json"),
        ])
        .json();
    let slow = env
        .run([
            os("layer"),
            os("create"),
            os(&src),
            os("-o"),
            os(env.path("19.zst")),
            os("--level"),
            os("19"),
            os("--json"),
        ])
        .json();
    assert_eq!(fast["id"], slow["id"]);
}

#[test]
fn failed_create_leaves_existing_output_untouched() {
    let env = Env::new();
    let out = env.path("layer.tar.zst");
    fs::write(&out, b"previous content").unwrap();
    env.run([
        os("layer"),
        os("create"),
        os(env.path("missing")),
        os("-o"),
        os(&out),
    ])
    .fails_with(&["missing"]);
    assert_eq!(fs::read(&out).unwrap(), b"previous content");
    assert_eq!(
        fs::read_dir(env.tmp.path()).unwrap().count(),
        1,
        "temporary files left behind"
    );
}

#[test]
fn create_refuses_an_output_inside_the_tree() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    env.run([
        os("layer"),
        os("create"),
        os(&src),
        os("-o"),
        os(src.join("a/self.tar.zst")),
    ])
    .fails_with(&["self.tar.zst", "inside"]);
    assert!(!src.join("a/self.tar.zst").exists());
}

#[test]
fn apply_reads_an_uncompressed_tar_from_stdin() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let out = env.path("layer.tar.zst");
    let id = id_field(
        &env.run([
            os("layer"),
            os("create"),
            os(&src),
            os("-o"),
            os(&out),
            os("--json"),
        ])
        .json(),
        "id",
    );
    env.run([os("cas"), os("put"), os(&out)]).ok();
    let tar = env.run(["cas", "cat", id.as_str()]);
    assert_eq!(tar.code, 0, "{tar:?}");

    let dest = env.path("dest");
    env.run_with_stdin([os("layer"), os("apply"), os("-"), os(&dest)], &tar.stdout)
        .ok();
    assert_same_tree(&src, &dest);
}

#[test]
fn apply_of_a_file_that_is_not_a_layer_names_it() {
    let env = Env::new();
    let bogus = env.path("notes.txt");
    fs::write(
        &bogus,
        "this is not a tar file, just some words\n".repeat(40),
    )
    .unwrap();
    env.run([os("layer"), os("apply"), os(&bogus), os(env.path("dest"))])
        .fails_with(&["notes.txt"]);
}

#[test]
fn apply_of_a_missing_file_names_it() {
    let env = Env::new();
    env.run([
        os("layer"),
        os("apply"),
        os(env.path("nope.tar.zst")),
        os(env.path("dest")),
    ])
    .fails_with(&["nope.tar.zst"]);
}

#[test]
fn apply_into_a_regular_file_names_it() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let out = env.path("layer.tar.zst");
    env.run([os("layer"), os("create"), os(&src), os("-o"), os(&out)])
        .ok();
    let file = env.path("plain-file");
    fs::write(&file, b"x").unwrap();
    env.run([os("layer"), os("apply"), os(&out), os(&file)])
        .fails_with(&["plain-file", "not a directory"]);
    assert_eq!(fs::read(&file).unwrap(), b"x");
}
