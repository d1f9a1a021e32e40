//! The store: publishing, verification, corruption, concurrent writers (threads and
//! processes), stale temp files, layout versions, imports and OCI digests.

use std::fs;
use std::path::Path;
use std::process::Command;

use strata_cas::{CreateOptions, Error, ExtractOptions, LayerId, Store};
use strata_test_support::{child_test, child_var, require, tool};

use crate::common::{assert_same_tree, rich_tree, write};

fn small_tree(root: &Path) {
    write(&root.join("a/b"), b"hello", 0o644, 1_000);
    write(&root.join("c"), &vec![3u8; 100_000], 0o755, 1_000);
}

fn tmp_files(store: &Store) -> Vec<String> {
    fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn put_stat_list_apply_verify_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    let info = store.put_dir(&src, &CreateOptions::default()).unwrap();
    assert!(store.contains(&info.id));
    let stat = store.stat(&info.id).unwrap();
    assert_eq!(stat.uncompressed_size, info.uncompressed_size);
    assert_eq!(stat.compressed_size, info.compressed_size);
    assert_eq!(stat.frames, info.frames);
    assert_eq!(store.list().unwrap(), vec![stat.clone()]);

    let dst = tmp.path().join("dst");
    let opts = ExtractOptions {
        devices: strata_cas::DevicePolicy::Create,
        setuid: strata_cas::SetuidPolicy::Keep,
        ..ExtractOptions::default()
    };
    store.apply(&info.id, &dst, &opts).unwrap();
    assert_same_tree(&src, &dst);

    let report = store.verify().unwrap();
    assert_eq!(report.checked, 1);
    assert!(report.corrupt.is_empty(), "{report:?}");
    assert_eq!(report.bytes, info.uncompressed_size);

    // Putting the same tree again stores nothing new and leaves no temp file.
    assert_eq!(
        store.put_dir(&src, &CreateOptions::default()).unwrap(),
        info
    );
    assert!(tmp_files(&store).is_empty());

    assert!(store.remove(&info.id).unwrap());
    assert!(!store.remove(&info.id).unwrap());
    assert!(matches!(store.stat(&info.id), Err(Error::NotFound { .. })));
    assert!(matches!(
        store.apply(&info.id, &tmp.path().join("dst2"), &opts),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn corruption_is_detected_on_read_and_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let good = store.put_dir(&src, &CreateOptions::default()).unwrap();
    write(&src.join("other"), b"another layer", 0o644, 1_000);
    let bad = store.put_dir(&src, &CreateOptions::default()).unwrap();

    // Replace the blob with a validly framed blob of different content: only the hash can
    // tell, and it must.
    let impostor = strata_cas::frames::compress_all(
        &zstd::stream::decode_all(&fs::read(store.blob_path(&good.id)).unwrap()[..]).unwrap(),
        3,
        1 << 20,
    );
    fs::write(store.blob_path(&bad.id), &impostor).unwrap();

    let report = store.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    assert_eq!(report.corrupt[0].id, bad.id);
    assert!(
        report.corrupt[0].reason.contains(&bad.id.to_hex()),
        "{}",
        report.corrupt[0].reason
    );

    let err = store
        .apply(&bad.id, &tmp.path().join("dst"), &ExtractOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { expected, .. } if expected == bad.id),
        "{err}"
    );

    // Flipped bytes in the compressed data are caught too (by zstd or by the hash).
    let mut bytes = fs::read(store.blob_path(&good.id)).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x55;
    fs::write(store.blob_path(&good.id), &bytes).unwrap();
    assert!(store.verify_blob(&good.id).is_err());
    assert_eq!(store.verify().unwrap().corrupt.len(), 2);

    // Compressed data zstd cannot read: the error names the blob and keeps zstd's own
    // error as its source.
    let mut bytes = fs::read(store.blob_path(&good.id)).unwrap();
    bytes[20..120].fill(0xff);
    fs::write(store.blob_path(&good.id), &bytes).unwrap();
    let mut reader = store.open_layer(&good.id).unwrap();
    let err = std::io::copy(&mut reader, &mut std::io::sink()).unwrap_err();
    let err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .expect("the store's error inside");
    assert!(matches!(err, Error::Decompress { .. }), "{err}");
    assert!(err.to_string().contains(&good.id.to_hex()), "{err}");
    assert!(std::error::Error::source(err).is_some(), "{err}");
}

#[test]
fn concurrent_writers_of_one_layer_in_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    let ids: Vec<LayerId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| store.put_dir(&src, &CreateOptions::default()).unwrap().id))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(store.ids().unwrap(), vec![ids[0]]);
    assert!(store.verify().unwrap().corrupt.is_empty());
    assert!(tmp_files(&store).is_empty());
}

/// The body of a child process spawned by `concurrent_writers_of_one_layer_in_processes`.
#[test]
#[ignore = "child process of store::concurrent_writers_of_one_layer_in_processes"]
fn child_process_put() {
    let store = child_var("STRATA_TEST_STORE");
    let src = child_var("STRATA_TEST_SRC");
    let store = Store::open(Path::new(&store)).unwrap();
    for _ in 0..5 {
        let id = store
            .put_dir(Path::new(&src), &CreateOptions::default())
            .unwrap()
            .id;
        println!("id={id}");
    }
}

#[test]
fn concurrent_writers_of_one_layer_in_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let src = tmp.path().join("src");
    rich_tree(&src);
    let children: Vec<_> = (0..4)
        .map(|_| {
            child_test("store::child_process_put")
                .env("STRATA_TEST_STORE", &store_dir)
                .env("STRATA_TEST_SRC", &src)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        ids.extend(
            stdout
                .lines()
                .filter_map(|l| l.split_once("id="))
                .map(|(_, id)| id.to_owned()),
        );
    }
    assert_eq!(ids.len(), 20, "every child put the layer five times");
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let store = Store::open(&store_dir).unwrap();
    assert_eq!(store.ids().unwrap().len(), 1);
    assert!(store.verify().unwrap().corrupt.is_empty());
    assert!(tmp_files(&store).is_empty());
}

#[test]
fn stale_temp_files_are_swept_but_live_ones_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = Store::open(&root).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let stale = root.join("tmp/crashed.partial");
    fs::write(&stale, b"half a blob").unwrap();
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let live = root.join("tmp/live.partial");
    fs::write(&live, b"being written").unwrap();
    let held = fs::File::options().write(true).open(&live).unwrap();
    held.set_modified(old).unwrap();
    held.lock().unwrap();
    let young = root.join("tmp/young.partial");
    fs::write(&young, b"just created").unwrap();

    assert_eq!(store.sweep_tmp().unwrap(), 1);
    assert!(!stale.exists());
    assert!(live.exists(), "a locked temp file belongs to a live writer");
    assert!(young.exists(), "a young temp file may not be locked yet");
    drop(held);
    Store::open(&root).unwrap();
    assert!(!live.exists(), "reopening sweeps once the writer is gone");
}

#[test]
fn an_unknown_layout_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    Store::open(&root).unwrap();
    fs::write(root.join("layout"), "strata-cas-v99\n").unwrap();
    let err = Store::open(&root).unwrap_err();
    assert!(matches!(err, Error::StoreVersion { .. }), "{err}");
    assert!(err.to_string().contains("strata-cas-v99"), "{err}");
    assert_eq!(
        fs::read_to_string(root.join("layout")).unwrap(),
        "strata-cas-v99\n"
    );
}

#[test]
fn imports_keep_tar_bytes_and_refuse_bad_input_without_touching_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let mut tar = Vec::new();
    strata_cas::create::write_tar(&src, &mut tar, &CreateOptions::default()).unwrap();
    let plain = tmp.path().join("layer.tar");
    fs::write(&plain, &tar).unwrap();
    let info = store.put_file(&plain).unwrap();
    assert_eq!(info.id, LayerId::of(&tar));

    let gz = tmp.path().join("layer.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &tar).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(store.put_file(&gz).unwrap().id, info.id);

    let before = store.list().unwrap();
    let junk = tmp.path().join("junk.tar");
    fs::write(&junk, vec![0x42u8; 5000]).unwrap();
    let err = store.put_file(&junk).unwrap_err();
    assert!(matches!(err, Error::Tar { .. }), "{err}");
    let truncated = tmp.path().join("truncated.tar");
    fs::write(&truncated, &tar[..tar.len() / 2]).unwrap();
    assert!(store.put_file(&truncated).is_err());
    let missing = store.put_file(&tmp.path().join("missing.tar")).unwrap_err();
    assert!(missing.to_string().contains("missing.tar"), "{missing}");
    assert_eq!(store.list().unwrap(), before);
    assert!(tmp_files(&store).is_empty());
    assert!(store.verify().unwrap().corrupt.is_empty());
}

#[test]
fn oci_digests_match_sha256sum() {
    if !require("comparing digests with sha256sum", tool("sha256sum")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let info = store.put_dir(&src, &CreateOptions::default()).unwrap();
    let digests = store.oci_digests(&info.id).unwrap();
    let sum = |path: &Path| {
        let out = Command::new("sha256sum").arg(path).output().unwrap();
        format!(
            "sha256:{}",
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
        )
    };
    assert_eq!(digests.digest, sum(&store.blob_path(&info.id)));
    let raw = tmp.path().join("raw.tar");
    fs::write(
        &raw,
        zstd::stream::decode_all(&fs::read(store.blob_path(&info.id)).unwrap()[..]).unwrap(),
    )
    .unwrap();
    assert_eq!(digests.diff_id, sum(&raw));
    assert_eq!(digests.size, info.compressed_size);
}

#[test]
fn imports_refuse_invalid_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let mut w = strata_cas::tar::TarWriter::new(Vec::new());
    w.append(&strata_cas::Entry {
        path: b"dir/.wh.".to_vec(),
        kind: strata_cas::EntryKind::File,
        meta: strata_cas::Metadata::default(),
        size: 0,
    })
    .unwrap();
    let tar = w.finish().unwrap();
    let err = store
        .put_tar(
            &tar[..],
            &CreateOptions::default(),
            &strata_cas::Limits::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("dir/.wh."), "{err}");
    assert!(store.ids().unwrap().is_empty());
}

#[cfg(unix)]
#[test]
fn the_store_root_is_private_to_its_owner_and_narrowed_never_widened() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("a/b/store");
    Store::open(&root).unwrap();
    assert_eq!(mode(&root), 0o700);
    // Parents are ordinary directories.
    assert_eq!(mode(&tmp.path().join("a")) & 0o055, 0o055);

    // An older store, open to its group and others, is narrowed; special bits stay.
    set(&root, 0o2775);
    Store::open(&root).unwrap();
    assert_eq!(mode(&root), 0o2700);
    // A narrower one is left as it is.
    set(&root, 0o500);
    Store::open(&root).unwrap();
    assert_eq!(mode(&root), 0o500);
    set(&root, 0o700);

    // Through a symlink, the directory it names is what is made private.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    set(&root, 0o755);
    Store::open(&link).unwrap();
    assert_eq!(mode(&root), 0o700);

    // An empty directory made beforehand becomes a store; one that holds someone's files
    // is not made private behind their back.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    set(&empty, 0o755);
    Store::open(&empty).unwrap();
    assert_eq!(mode(&empty), 0o700);
    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    fs::write(theirs.join("notes.txt"), "mine").unwrap();
    set(&theirs, 0o1777);
    let err = Store::open(&theirs).unwrap_err();
    assert!(
        matches!(err, Error::NotAStore { .. }) && err.to_string().contains("theirs"),
        "{err}"
    );
    assert_eq!(mode(&theirs), 0o1777);
    assert!(!theirs.join("layout").exists() && !theirs.join("blobs-v1").exists());
    // Private already, it is used as it is (as before).
    set(&theirs, 0o700);
    Store::open(&theirs).unwrap();

    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let err = strata_cas::private_dir(&file).unwrap_err();
    assert!(err.to_string().contains(file.to_str().unwrap()), "{err}");
}

#[test]
fn a_blob_of_another_store_is_stored_as_it_is_after_checking() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Store::open(&tmp.path().join("a")).unwrap();
    let b = Store::open(&tmp.path().join("b")).unwrap();
    let tree = tmp.path().join("tree");
    rich_tree(&tree);
    // Incompressible and larger than what a stream's end is kept of (2 MiB at most).
    let mut noise = Vec::with_capacity(3 << 20);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    while noise.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(tree.join("noise.bin"), &noise).unwrap();
    let opts = CreateOptions {
        chunk_size: 64 << 10, // several frames
        ..CreateOptions::default()
    };
    let info = a.put_dir(&tree, &opts).unwrap();
    let blob = a.blob_path(&info.id);
    let limits = strata_cas::Limits::default();

    // A check that fails its read stores nothing.
    let refused = b.put_framed(&blob, &limits, |r| {
        Box::new(std::io::Read::chain(r, &[1u8][..]))
    });
    assert!(refused.is_err());
    assert!(b.ids().unwrap().is_empty());
    assert!(tmp_files(&b).is_empty());

    let stored = b.put_framed(&blob, &limits, |r| r).unwrap().unwrap();
    assert_eq!(stored.id, info.id);
    assert_eq!(stored.frames, info.frames);
    assert!(stored.frames > 1);
    assert_eq!(
        fs::read(b.blob_path(&info.id)).unwrap(),
        fs::read(&blob).unwrap()
    );
    b.verify_blob(&info.id).unwrap();

    // The same from a stream, checked as it goes by.
    let c = Store::open(&tmp.path().join("c")).unwrap();
    let bytes = fs::read(&blob).unwrap();
    let streamed = c
        .put_framed_stream(&bytes[..], "download", &limits)
        .unwrap();
    assert_eq!((streamed.id, streamed.frames), (info.id, info.frames));
    assert_eq!(fs::read(c.blob_path(&info.id)).unwrap(), bytes);
    let d = Store::open(&tmp.path().join("d")).unwrap();
    let cut = &bytes[..bytes.len() - 3];
    assert!(d.put_framed_stream(cut, "cut", &limits).is_err());
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut a.open_layer(&info.id).unwrap(), &mut tar).unwrap();
    let unframed = zstd::encode_all(&tar[..], 3).unwrap();
    let err = d
        .put_framed_stream(&unframed[..], "plain zstd", &limits)
        .unwrap_err();
    assert!(err.to_string().contains("seek table"), "{err}");
    assert!(d.ids().unwrap().is_empty());
    assert!(tmp_files(&d).is_empty());

    // Not the blob format: said so, for the caller to recompress.
    let plain = tmp.path().join("plain.tar.zst");
    fs::write(&plain, zstd::encode_all(&b"not framed"[..], 3).unwrap()).unwrap();
    assert!(b.put_framed(&plain, &limits, |r| r).unwrap().is_none());
    // Frames whose content is not a valid tar are refused.
    let bad = tmp.path().join("bad.zst");
    fs::write(
        &bad,
        strata_cas::frames::compress_all(&[7u8; 5000], 3, 1024),
    )
    .unwrap();
    assert!(b.put_framed(&bad, &limits, |r| r).is_err());
}
