//! Exports read back by Strata itself, skopeo, umoci and Docker Engine.

use std::fs;
use std::process::Command;

use strata_oci::{Compression, Image, ImageMeta};
use strata_test_support::tree::{self, Fields};

use crate::{Fixture, have, run};

fn image(f: &Fixture, compression: Compression) -> Image {
    let meta = ImageMeta::new()
        .env(vec![
            ("PATH".into(), "/bin:/usr/bin".into()),
            ("GREETING".into(), "hi".into()),
        ])
        .workdir("/srv")
        .user("0:0")
        .name("strata-test/app:1.0");
    Image::new(&f.engine, &f.top.id, &meta, compression).unwrap()
}

#[test]
fn every_format_and_compression_imports_back_to_the_same_snapshot() {
    let f = Fixture::new();
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let image = image(&f, compression);
        let dir = f.path(&format!("layout-{compression:?}"));
        strata_oci::write_oci_dir(&f.engine, &image, &dir).unwrap();
        let oci_tar = f.path(&format!("layout-{compression:?}.tar"));
        strata_oci::write_oci_tar(&f.engine, &image, fs::File::create(&oci_tar).unwrap()).unwrap();
        let docker = f.path(&format!("docker-{compression:?}.tar"));
        strata_oci::write_docker_archive(&f.engine, &image, fs::File::create(&docker).unwrap())
            .unwrap();
        let store = f.other_store(&format!("store-{compression:?}"));
        let a = strata_oci::import_oci(&store, &dir, None, Some("a")).unwrap();
        let b = strata_oci::import_oci(&store, &oci_tar, Some("1.0"), None).unwrap();
        let c = strata_oci::import_docker_archive(&store, &docker, None, None).unwrap();
        for imported in [&a, &b, &c] {
            // Layers keep their bytes, so the ids are the builder's.
            assert_eq!(imported.snapshot.id, f.top.id, "{compression:?}");
            assert_eq!(imported.layers, 2);
            assert_eq!(imported.meta.workdir.as_deref(), Some("/srv"));
            assert_eq!(imported.meta.env[1], ("GREETING".into(), "hi".into()));
        }
        assert_eq!(store.resolve("a").unwrap(), f.top.id);
    }
    // zstd layers are the stored blobs, byte for byte.
    let image = image(&f, Compression::Zstd);
    let dir = f.path("layout-Zstd");
    for layer in &image.layers {
        let sent = fs::read(dir.join("blobs/sha256").join(layer.digest.hex())).unwrap();
        assert_eq!(
            sent,
            fs::read(f.engine.cas().blob_path(&layer.layer)).unwrap()
        );
    }
    // The same snapshot gives the same image.
    assert_eq!(
        image.manifest_digest,
        self::image(&f, Compression::Zstd).manifest_digest
    );
    assert_eq!(
        self::image(&f, Compression::Gzip).manifest_digest,
        self::image(&f, Compression::Gzip).manifest_digest
    );
}

#[test]
fn tampered_layouts_are_refused_and_nothing_is_stored() {
    let f = Fixture::new();
    let image = image(&f, Compression::Gzip);
    let dir = f.path("layout");
    strata_oci::write_oci_dir(&f.engine, &image, &dir).unwrap();
    let top = dir.join("blobs/sha256").join(image.layers[1].digest.hex());
    let mut bytes = fs::read(&top).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&top, &bytes).unwrap();
    let store = f.other_store("victim");
    let err = strata_oci::import_oci(&store, &dir, None, Some("x")).unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert!(store.resolve("x").is_err());
    // Only the good base layer was stored.
    assert_eq!(store.snapshots().unwrap().len(), 1);

    // A config whose diff_id lies about a layer whose blob is intact.
    let dir = f.path("layout-none");
    let image = self::image(&f, Compression::None);
    strata_oci::write_oci_dir(&f.engine, &image, &dir).unwrap();
    let docker = f.path("docker.tar");
    strata_oci::write_docker_archive(&f.engine, &image, fs::File::create(&docker).unwrap())
        .unwrap();
    let unpacked = f.path("docker-unpacked");
    fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&docker)
        .arg("-C")
        .arg(&unpacked));
    let config_name = format!("{}.json", image.config_digest.hex());
    let config = fs::read_to_string(unpacked.join(&config_name)).unwrap();
    let lying = config.replace(&image.layers[1].diff_id.hex(), &"0".repeat(64));
    fs::write(unpacked.join(&config_name), lying).unwrap();
    let retarred = f.path("lying.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&retarred)
        .arg("-C")
        .arg(&unpacked)
        .arg("."));
    let store = f.other_store("victim2");
    let err = strata_oci::import_docker_archive(&store, &retarred, None, Some("y")).unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert!(store.resolve("y").is_err());
}

#[test]
fn skopeo_reads_the_layout_and_umoci_unpacks_the_checkout_tree() {
    if !have("skopeo", "--version") || !have("umoci", "--version") {
        return;
    }
    let f = Fixture::new();
    let image = image(&f, Compression::Gzip);
    let dir = f.path("layout");
    strata_oci::write_oci_dir(&f.engine, &image, &dir).unwrap();
    let tar = f.path("layout.tar");
    strata_oci::write_oci_tar(&f.engine, &image, fs::File::create(&tar).unwrap()).unwrap();
    for source in [
        format!("oci:{}:1.0", dir.display()),
        format!("oci-archive:{}", tar.display()),
    ] {
        let out = run(Command::new("skopeo").args(["inspect", &source]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{out}");
        assert!(out.contains("GREETING=hi"), "{out}");
        assert_eq!(v["Digest"], image.manifest_digest.to_string());
    }
    // skopeo copies it (re-reading every blob) to another layout, which imports back.
    let copy = f.path("copy");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:1.0", dir.display()),
        &format!("oci:{}:copied", copy.display()),
    ]));
    let store = f.other_store("from-skopeo");
    let back = strata_oci::import_oci(&store, &copy, Some("copied"), None).unwrap();
    assert_eq!(back.snapshot.id, f.top.id);

    // umoci's unpacked rootfs is the tree `strata checkout --copy` gives.
    let bundle = f.path("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:1.0", dir.display()))
        .arg(&bundle));
    let ours = f.path("ours");
    f.engine.copy_out(&f.top.id, &ours).unwrap();
    let theirs = tree::snapshot_of(&bundle.join("rootfs"), Fields::CONTENT);
    let mine = tree::snapshot_of(&ours, Fields::CONTENT);
    assert!(mine.contains_key(&b"hello.txt"[..]) && !mine.contains_key(&b"etc/removed"[..]));
    tree::assert_same_trees(&theirs, &mine);
}

#[test]
fn docker_loads_the_archive_and_runs_it() {
    let engine_ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| o.status.success());
    if !crate::require(
        "Docker Engine",
        (!matches!(engine_ok, Ok(true))).then(|| format!("docker version: {engine_ok:?}")),
    ) {
        return;
    }
    let f = Fixture::new();
    // Engine 20.10 reads plain and gzip layers only.
    for (compression, tag) in [(Compression::None, "plain"), (Compression::Gzip, "gzip")] {
        let name = format!("strata-oci-test/{}:{tag}", std::process::id());
        let meta = ImageMeta::new()
            .env(vec![("GREETING".into(), "hi".into())])
            .workdir("/srv")
            .name(name.clone());
        let image = Image::new(&f.engine, &f.top.id, &meta, compression).unwrap();
        let tar = f.path(&format!("docker-{tag}.tar"));
        strata_oci::write_docker_archive(&f.engine, &image, fs::File::create(&tar).unwrap())
            .unwrap();
        run(Command::new("docker").arg("load").arg("-i").arg(&tar));
        let out = run(Command::new("docker").args([
            "run",
            "--rm",
            "--network=none",
            &name,
            "sh",
            "-c",
            "cat /hello.txt; echo $GREETING; pwd; ls /etc/removed 2>&1 || true",
        ]));
        let _ = Command::new("docker").args(["rmi", "-f", &name]).output();
        assert!(out.contains("hello from strata"), "{out}");
        assert!(out.contains("hi\n/srv\n"), "{out}");
        assert!(out.contains("No such file"), "{out}");
    }
}
