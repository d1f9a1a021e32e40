//! The same spec built with runc and with docker gives the same file tree: content, modes,
//! owners, symlinks, hard links and deletions (whiteouts) of the base's files.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use strata_isolate::{DriverOptions, Limits};

use crate::common::{build, builder, docker_builder, engine_ready};

/// A step that exercises what a layer can say.
const SPEC: &str = r#"((from busybox) (shell /bin/sh -c)
  (run (shell "mkdir -p /w/d/e /w/gone && echo a > /w/a && chmod 640 /w/a && chown 1000:100 /w/a && ln -s a /w/link && ln -s /nowhere /w/dangling && mkdir -m 711 /w/private && echo x > /w/gone/x && touch /w/empty && ln /w/a /w/hard && mkfifo /w/fifo"))
  (run (shell "rm -rf /w/gone && rm /w/empty && echo b >> /w/a && rm -f /etc/group && chmod 1777 /w/d && chown -h 5:6 /w/link")))"#;

/// What a tree holds, path by path: type, mode, owner, size, content or link target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let what = if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                format!(
                    "file {:?}",
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap())
                )
            } else {
                "special".to_owned()
            };
            // A directory's size depends on the filesystem, not on the layer.
            let nlink = if ft.is_file() { meta.nlink() } else { 0 };
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{} links {nlink}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid()
                ),
            );
        }
    }
    out
}

#[test]
fn runc_and_docker_build_the_same_tree() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let docker = docker_builder(&dir.path().join("docker"));
    let (d, log) = build(&docker, SPEC);
    let d = d.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let runc_store = dir.path().join("runc");
    let runc = builder(
        &runc_store,
        strata_isolate::driver(
            "runc",
            &DriverOptions {
                slots: Some(2),
                limits: Limits::default(),
                ..DriverOptions::new(runc_store.join("isolate-v1/runc"))
            },
        )
        .unwrap(),
    );
    let (r, log) = build(&runc, SPEC);
    let r = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    docker.engine().copy_out(&d, &out.join("docker")).unwrap();
    runc.engine().copy_out(&r, &out.join("runc")).unwrap();
    let (d, r) = (tree(&out.join("docker")), tree(&out.join("runc")));
    assert!(d.contains_key("w/a") && !d.contains_key("w/gone") && !d.contains_key("etc/group"));
    let differ: Vec<_> = d
        .keys()
        .chain(r.keys())
        .filter(|k| d.get(*k) != r.get(*k))
        .map(|k| format!("{k}: docker {:?} runc {:?}", d.get(k), r.get(k)))
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
}
