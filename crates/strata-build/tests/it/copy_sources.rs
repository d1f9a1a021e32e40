//! `copy` sources are read inside their root: symlinks in the context or in a stage never
//! reach the host's files, a swap race never does either, and OBuilder's own `example.spec`
//! shape (an absolute source in a stage) builds.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{CWD, RenameFlags};
use strata_build::Error;

use crate::common::{Fixture, read_file, runc_ready, snapshot_tree};

const SH: &str = "(shell /bin/sh -c)";

/// A file on the host, outside every root, that no copy may ever read.
struct HostSecret {
    dir: tempfile::TempDir,
}

const SECRET: &str = "host secret: never in a snapshot\n";

impl HostSecret {
    fn new() -> HostSecret {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), SECRET).unwrap();
        HostSecret { dir }
    }

    /// Its directory, absolute, without the leading `/`.
    fn rel(&self) -> String {
        self.dir.path().to_str().unwrap()[1..].to_owned()
    }
}

fn host_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn a_context_symlink_to_the_host_root_reads_only_the_context() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let secret = HostSecret::new();
    let ctx = f.context(&[("etc/hostname", "the context's own\n")]);
    symlink("/", ctx.join("a")).unwrap();
    symlink("../../..", ctx.join("etc/up")).unwrap();

    // Through `a -> /` the context's own files are found, as if the context were `/`.
    let (r, log) = f.build(
        r#"((from busybox) (copy (src a/etc/hostname) (dst /one)) (copy (src etc/up/etc/hostname) (dst /two)))"#,
        &ctx,
    );
    let id = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    for file in ["one", "two"] {
        assert_eq!(
            read_file(&f.builder, &id, file).as_deref(),
            Some("the context's own\n"),
            "{file}"
        );
    }

    // What only the host has is not found.
    for src in [
        "a/etc/shadow".to_owned(),
        format!("a/{}/etc/hostname", secret.rel()),
        format!("etc/up/{}/etc/hostname", secret.rel()),
    ] {
        let (r, log) = f.build(
            &format!("((from busybox) (copy (src {src}) (dst /leak)))"),
            &ctx,
        );
        match r {
            Err(Error::Copy { src: s, reason }) => {
                assert_eq!(s, src);
                assert!(reason.contains("no such file"), "{reason}");
            }
            Err(e) => panic!("{src}: not a copy error: {e}"),
            Ok(id) => {
                let got = read_file(&f.builder, &id, "leak");
                assert_ne!(got.as_deref().map(str::as_bytes), Some(SECRET.as_bytes()));
                assert_ne!(
                    got.map(String::into_bytes),
                    Some(host_bytes("/etc/shadow")),
                    "{src} copied the host's /etc/shadow\n{log}"
                );
                panic!("{src} was copied from somewhere");
            }
        }
    }
}

#[test]
fn a_stage_symlink_to_the_host_root_reads_only_the_stage() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let secret = HostSecret::new();
    let ctx = f.context(&[]);
    let stage = format!(
        r#"(build stage
             ((from busybox) {SH}
              (run (shell "echo stage-host > /etc/stage && ln -s / /a && ln -s /etc /b && mkdir -p /c/d && ln -s ../../.. /c/d/up"))))"#
    );
    let spec = format!(
        r#"({stage}
            (from busybox) {SH}
            (copy (from (build stage)) (src a/etc/stage) (dst /one))
            (copy (from (build stage)) (src /b/stage) (dst /two))
            (copy (from (build stage)) (src c/d/up/etc/stage) (dst /three)))"#
    );
    let (r, log) = f.build(&spec, &ctx);
    let id = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    for file in ["one", "two", "three"] {
        assert_eq!(
            read_file(&f.builder, &id, file).as_deref(),
            Some("stage-host\n"),
            "{file}"
        );
    }
    let src = format!("a/{}/etc/hostname", secret.rel());
    let spec = format!(
        r#"({stage} (from busybox) {SH} (copy (from (build stage)) (src {src}) (dst /leak)))"#
    );
    let (r, _) = f.build(&spec, &ctx);
    match r {
        Err(Error::Copy { src: s, reason }) => {
            assert_eq!(s, src);
            assert!(reason.contains("no such file"), "{reason}");
        }
        Err(e) => panic!("not a copy error: {e}"),
        Ok(id) => panic!(
            "copied {:?} from the host",
            read_file(&f.builder, &id, "leak")
        ),
    }
}

/// A thread keeps exchanging a context directory with a symlink to the host's secret while
/// copies run: every copy either reads the context or fails with a copy error.
#[test]
fn a_swap_race_never_copies_host_files() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let secret = HostSecret::new();
    let ctx = f.context(&[("d/etc/hostname", "context\n"), ("d/sub/x", "x\n")]);
    symlink(secret.dir.path(), ctx.join("alt")).unwrap();
    let stop = AtomicBool::new(false);
    let (mut ok, mut failed) = (0, 0);
    std::thread::scope(|s| {
        // A failed assertion must stop the swapper too, or the scope never ends.
        let stopper = StopOnDrop(&stop);
        let swapper = s.spawn(|| {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&ctx, "d", "alt");
                swaps += 1;
            }
            swaps
        });
        for i in 0..30 {
            // A new destination each time: every build copies (no cache hit).
            let spec = format!(
                r#"((from busybox)
                    (copy (src d/etc/hostname) (dst /leak{i}))
                    (copy (src d) (dst /tree{i}/)))"#
            );
            let (r, log) = f.build(&spec, &ctx);
            match r {
                Ok(id) => {
                    ok += 1;
                    // Read without following symlinks: `d` may have been one when it was
                    // copied, and a copied symlink is only text.
                    let tree = snapshot_tree(&f.builder, &id);
                    let leak = tree.get(format!("leak{i}").as_bytes());
                    assert_eq!(
                        leak.map(|node| (node.kind, node.data.as_slice())),
                        Some(("file", &b"context\n"[..]))
                    );
                    for (path, node) in &tree {
                        assert!(
                            node.data != SECRET.as_bytes(),
                            "{} is the host's",
                            String::from_utf8_lossy(path)
                        );
                    }
                }
                Err(e @ (Error::Copy { .. } | Error::CopyIo { .. } | Error::CopySource { .. })) => {
                    failed += 1;
                    let text = e.to_string();
                    assert!(text.starts_with("copy d"), "{text}");
                    assert!(!text.contains("host secret"), "{text}");
                }
                Err(e) => panic!("not a copy error: {e}\n{log}"),
            }
        }
        drop(stopper);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 0);
    });
    assert_eq!(ok + failed, 30);
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn exchange(dir: &Path, a: &str, b: &str) {
    rustix::fs::renameat_with(CWD, dir.join(a), CWD, dir.join(b), RenameFlags::EXCHANGE).unwrap();
}

/// OBuilder's `example.spec`, on busybox: a `dev` stage builds `/src/_build/default/main.exe`
/// from the context; the final image copies it from the stage by its absolute path.
#[test]
fn obuilder_example_spec_shape_builds() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[
        ("obuilder.opam", "opam-version: \"2.0\"\n"),
        ("main.ml", "#!/bin/sh\necho \"obuilder: usage\"\n"),
        (".git/HEAD", "ref: refs/heads/master\n"),
        ("_build/stale", "from the host's build\n"),
    ]);
    let spec = r#"
((build dev
        ((from busybox)
         (shell /bin/sh -c)
         (workdir /src)
         (run (shell "chown 1000:1000 /src"))
         (user (uid 1000) (gid 1000))
         (copy (src obuilder.opam) (dst ./))
         (run (shell "test -f obuilder.opam"))
         (copy
          (src .)
          (dst /src/)
          (exclude .git _build _opam))
         (run (shell "test ! -e .git && test ! -e _build/stale && mkdir -p _build/default && cp main.ml _build/default/main.exe && chmod 755 _build/default/main.exe"))))
 (from busybox)
 (shell /bin/sh -c)
 (copy (from (build dev))
       (src /src/_build/default/main.exe)
       (dst /usr/local/bin/obuilder))
 (run (shell "/usr/local/bin/obuilder --help")))"#;
    let (r, log) = f.build(spec, &ctx);
    let id = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains("obuilder: usage"), "{log}");
    assert_eq!(
        read_file(&f.builder, &id, "usr/local/bin/obuilder").as_deref(),
        Some("#!/bin/sh\necho \"obuilder: usage\"\n")
    );
    // Built again: every step is a hit, the same snapshot.
    let (r, _) = f.build(spec, &ctx);
    assert_eq!(r.unwrap(), id);
}
