//! Integration tests: images written and read by real tools (skopeo, umoci, Docker Engine)
//! and a real registry (Debian's docker-registry, CNCF distribution) started on a loopback
//! port. A test whose tool is missing skips, except under CI (`CI` set), where it fails.

mod cache;
mod layout;
mod registry;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_snapshot::{Engine, Snapshot};

pub(crate) use strata_test_support::require;

/// Whether `program` runs (`program ARG` succeeds); under CI it must.
pub(crate) fn have(program: &str, arg: &str) -> bool {
    require(program, strata_test_support::runs(program, &[arg]))
}

/// Runs a command, asserting success; returns stdout.
#[track_caller]
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A store with a two-layer image: a busybox base and a layer adding `/hello.txt`, a
/// directory, a symlink, and deleting `/bin/true`'s neighbour `/etc/removed` (a whiteout).
pub(crate) struct Fixture {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) engine: Engine,
    pub(crate) top: Snapshot,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(&tmp.path().join("store")).unwrap();
        let base_dir = tmp.path().join("base");
        fs::create_dir(&base_dir).unwrap();
        strata_isolate::busybox::busybox_rootfs(&base_dir).unwrap();
        fs::create_dir_all(base_dir.join("etc")).unwrap();
        fs::write(base_dir.join("etc/removed"), "gone in the next layer\n").unwrap();
        let base = engine
            .cas()
            .put_dir(&base_dir, &strata_cas::CreateOptions::default())
            .unwrap();
        let base = engine.add_snapshot(None, &base.id, None).unwrap();
        let top = tmp.path().join("top.tar");
        write_top_layer(&top);
        let top = engine
            .import_layer(Some(&base.id), fs::File::open(&top).unwrap(), Some("app"))
            .unwrap();
        Fixture { tmp, engine, top }
    }

    /// Another empty store beside this one.
    pub(crate) fn other_store(&self, name: &str) -> Engine {
        Engine::open(&self.tmp.path().join(name)).unwrap()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// A layer tar: files, a directory, a symlink, and a whiteout of `etc/removed`.
fn write_top_layer(path: &Path) {
    use strata_cas::tar::TarWriter;
    use strata_cas::{Entry, EntryKind, Metadata};
    let mut tar = TarWriter::new(fs::File::create(path).unwrap());
    let meta = |mode| Metadata {
        mode,
        mtime: 1_700_000_000,
        ..Metadata::default()
    };
    let entry = |path: &str, kind, mode, size| Entry {
        path: path.as_bytes().to_vec(),
        kind,
        meta: meta(mode),
        size,
    };
    let hello = b"hello from strata\n";
    tar.append(&entry("etc", EntryKind::Dir, 0o755, 0)).unwrap();
    tar.append(&entry("etc/.wh.removed", EntryKind::File, 0o644, 0))
        .unwrap();
    tar.append(&entry(
        "hello.txt",
        EntryKind::File,
        0o644,
        hello.len() as u64,
    ))
    .unwrap();
    tar.write_data(hello).unwrap();
    tar.append(&entry(
        "link",
        EntryKind::Symlink(b"hello.txt".to_vec()),
        0o777,
        0,
    ))
    .unwrap();
    tar.append(&entry("srv", EntryKind::Dir, 0o750, 0)).unwrap();
    tar.append(&entry("srv/run.sh", EntryKind::File, 0o755, 10))
        .unwrap();
    tar.write_data(b"echo run\n\n").unwrap();
    tar.finish().unwrap();
}
