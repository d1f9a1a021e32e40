//! Push and pull against a real registry (Debian's docker-registry, CNCF distribution 2.8)
//! started on a loopback port, read by skopeo and Docker Engine too.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;

use strata_oci::registry::{self, Options, Reference};
use strata_oci::testing::Registry;
use strata_oci::{Compression, Image, ImageMeta};

use crate::{Fixture, have, run};

/// Starts a registry, or None (skip) when docker-registry is missing outside CI.
pub(crate) fn start() -> Option<Registry> {
    let started = Registry::start();
    if !crate::require(
        "docker-registry",
        started.as_ref().err().map(|e| e.to_string()),
    ) {
        return None;
    }
    started.ok()
}

pub(crate) fn reference(reg: &Registry, repo_tag: &str) -> Reference {
    format!("{}/{repo_tag}", reg.host()).parse().unwrap()
}

fn image(f: &Fixture, compression: Compression) -> Image {
    let meta = ImageMeta::new()
        .env(vec![("GREETING".into(), "hi".into())])
        .workdir("/srv");
    Image::new(&f.engine, &f.top.id, &meta, compression).unwrap()
}

#[test]
fn push_then_pull_gives_the_same_snapshot_and_skips_what_is_there() {
    let Some(reg) = start() else {
        return;
    };
    let f = Fixture::new();
    let dest = reference(&reg, "team/app:1.0");
    let img = image(&f, Compression::Zstd);
    let first = registry::push(&f.engine, &img, &dest, &Options::new()).unwrap();
    assert_eq!((first.blobs_sent, first.blobs_skipped), (3, 0));
    let again = registry::push(&f.engine, &img, &dest, &Options::new()).unwrap();
    assert_eq!((again.blobs_sent, again.blobs_skipped), (0, 3));

    let store = f.other_store("puller");
    let pulled = registry::pull(&store, &dest, Some("app"), &Options::new().jobs(2)).unwrap();
    assert_eq!(pulled.snapshot.id, f.top.id);
    assert_eq!(store.resolve("app").unwrap(), f.top.id);
    assert_eq!(pulled.meta.workdir.as_deref(), Some("/srv"));
    // zstd blobs are kept as they were sent: no recompression on either side.
    for layer in [
        f.top.layer,
        f.engine
            .snapshot(&f.top.parent.unwrap())
            .unwrap()
            .unwrap()
            .layer,
    ] {
        assert_eq!(
            fs::read(store.cas().blob_path(&layer)).unwrap(),
            fs::read(f.engine.cas().blob_path(&layer)).unwrap()
        );
    }
    // By digest too, and into a store that has the layers: nothing to download.
    let by_digest: Reference = format!("127.0.0.1:{}/team/app@{}", reg.port(), img.manifest_digest)
        .parse()
        .unwrap();
    let again = registry::pull(&store, &by_digest, None, &Options::new()).unwrap();
    assert_eq!(again.snapshot.id, f.top.id);

    if have("skopeo", "--version") {
        let source = format!("docker://127.0.0.1:{}/team/app:1.0", reg.port());
        let out = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", &source]));
        assert!(out.contains(&img.manifest_digest.to_string()), "{out}");
        let copy = f.path("skopeo-copy");
        run(Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            &source,
            &format!("oci:{}:copied", copy.display()),
        ]));
        let from_skopeo = f.other_store("from-skopeo");
        let back = strata_oci::import_oci(&from_skopeo, &copy, None, None).unwrap();
        assert_eq!(back.snapshot.id, f.top.id);
    }
}

#[test]
fn docker_pulls_a_pushed_image_and_runs_it() {
    let Some(reg) = start() else {
        return;
    };
    let engine_ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !crate::require(
        "Docker Engine",
        (!engine_ok).then(|| "docker version failed".into()),
    ) {
        return;
    }
    let f = Fixture::new();
    // Engine 20.10 reads gzip layers, not zstd.
    let dest = reference(&reg, "team/runme:gzip");
    registry::push(
        &f.engine,
        &image(&f, Compression::Gzip),
        &dest,
        &Options::new(),
    )
    .unwrap();
    let name = dest.to_string();
    run(Command::new("docker").args(["pull", &name]));
    let out = run(Command::new("docker").args([
        "run",
        "--rm",
        "--network=none",
        &name,
        "sh",
        "-c",
        "cat /hello.txt; echo $GREETING; pwd",
    ]));
    let _ = Command::new("docker").args(["rmi", "-f", &name]).output();
    assert_eq!(out, "hello from strata\nhi\n/srv\n");
}

#[test]
fn a_corrupted_blob_is_refused_and_leaves_the_store_as_it_was() {
    let Some(reg) = start() else {
        return;
    };
    let f = Fixture::new();
    let dest = reference(&reg, "team/app:bad");
    let img = image(&f, Compression::Zstd);
    registry::push(&f.engine, &img, &dest, &Options::new()).unwrap();
    let data = reg.blob_data(&img.layers[1].digest);
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let store = f.other_store("victim");
    let err = registry::pull(&store, &dest, Some("bad"), &Options::new()).unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert!(store.snapshots().unwrap().is_empty(), "nothing lands");
    // Not even the corrupted layer's blob (the good base's may be, verified, for gc).
    assert!(!store.cas().contains(&f.top.layer));
    assert!(
        store
            .cas()
            .ids()
            .unwrap()
            .iter()
            .all(|id| *id != f.top.layer)
    );
    // The store and the registry's other images stay usable.
    let good = reference(&reg, "team/other:1");
    let base_only = Image::new(
        &f.engine,
        &f.top.parent.unwrap(),
        &ImageMeta::new(),
        Compression::Zstd,
    )
    .unwrap();
    registry::push(&f.engine, &base_only, &good, &Options::new()).unwrap();
    let pulled = registry::pull(&store, &good, None, &Options::new()).unwrap();
    assert_eq!(pulled.snapshot.id, f.top.parent.unwrap());
}

/// A Strata-framed layer is pinned by its blob digest and named by the blake3 of its tar;
/// the config's diff_id for it is not taken on trust: a config that lies about it changes
/// nothing that is stored, and the store answers the layer's real diff_id.
#[test]
fn a_config_lying_about_a_diff_id_is_never_believed() {
    let Some(reg) = start() else {
        return;
    };
    let f = Fixture::new();
    let mut img = image(&f, Compression::Zstd);
    let truth = img.layers[1].diff_id.to_string();
    let lie = strata_oci::Digest::of(b"not the layer").to_string();
    let config = String::from_utf8(img.config.clone()).unwrap();
    assert!(config.contains(&truth));
    img.config = config.replace(&truth, &lie).into_bytes();
    let old_config = img.config_digest.to_string();
    img.config_digest = strata_oci::Digest::of(&img.config);
    let manifest = String::from_utf8(img.manifest.clone()).unwrap();
    img.manifest = manifest
        .replace(&old_config, &img.config_digest.to_string())
        .into_bytes();
    img.manifest_digest = strata_oci::Digest::of(&img.manifest);
    let dest = reference(&reg, "team/liar:1");
    registry::push(&f.engine, &img, &dest, &Options::new()).unwrap();

    let store = f.other_store("puller");
    let pulled = registry::pull(&store, &dest, None, &Options::new()).unwrap();
    assert_eq!(
        pulled.snapshot.id, f.top.id,
        "the same bytes, the same snapshot"
    );
    let digests = store.oci_digests(&f.top.layer).unwrap();
    assert_eq!(digests.diff_id, truth);
    assert_eq!(digests, f.engine.oci_digests(&f.top.layer).unwrap());
}

/// A proxy to `port` that forwards `budget` bytes of requests, then drops every connection
/// and stops listening: a registry that disappears in the middle of an upload.
fn vanishing_proxy(port: u16, budget: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let own = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut left = budget;
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut server = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut back_client = client.try_clone().unwrap();
            let mut back_server = server.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut back_server, &mut back_client);
            });
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if n >= left {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return; // the listener goes too
                }
                left -= n;
                if server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    own
}

#[test]
fn a_registry_vanishing_mid_push_fails_clearly_and_a_retry_completes() {
    let Some(reg) = start() else {
        return;
    };
    let f = Fixture::new();
    let img = image(&f, Compression::None);
    // Enough for the first requests, not for the base layer's upload.
    let port = vanishing_proxy(reg.port(), 64 << 10);
    let through: Reference = format!("127.0.0.1:{port}/team/app:1").parse().unwrap();
    let err = registry::push(&f.engine, &img, &through, &Options::new().jobs(1)).unwrap_err();
    let message = format!("{err}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    // Nothing was tagged, the store is intact, and pushing again completes.
    let dest = reference(&reg, "team/app:1");
    assert!(registry::pull(&f.other_store("early"), &dest, None, &Options::new()).is_err());
    f.engine.cas().verify().unwrap();
    registry::push(&f.engine, &img, &dest, &Options::new()).unwrap();
    let pulled = registry::pull(&f.other_store("late"), &dest, None, &Options::new()).unwrap();
    assert_eq!(pulled.snapshot.id, f.top.id);
}

#[test]
fn plain_http_is_for_loopback_only() {
    let remote: Reference = "registry.example.invalid/app:1".parse().unwrap();
    assert!(!remote.is_loopback());
    let f = Fixture::new();
    let err = registry::pull(&f.engine, &remote, None, &Options::new()).unwrap_err();
    // An https URL is tried (and fails to resolve), never http.
    assert!(
        err.to_string().contains("https://registry.example.invalid"),
        "{err}"
    );
}
