//! The builder against hostile specs and careless operators: host networking needs consent,
//! secrets are masked in every log, logs are private and bounded, a step that fills the disk
//! leaves nothing behind, and checkouts reuse a pool of roots.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_build::{DEFAULT_LOG_LIMIT, Error, Secret};
use strata_isolate::Cancel;

use crate::common::{Fixture, SH, build_on, builder_at, runc_ready};

#[test]
fn host_network_needs_the_operators_consent() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let spec =
        format!(r#"((from busybox) {SH} (run (network host) (shell "echo net=$((40+2))")))"#);
    let (r, log) = f.build_opts(&spec, &ctx, &[], false, DEFAULT_LOG_LIMIT);
    let e = r.unwrap_err();
    assert!(matches!(e, Error::NetworkNotAllowed { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("(network host)") && msg.contains("--allow network-host"),
        "{msg}"
    );
    assert!(!log.contains("net=42"), "{log}");
    let (r, log) = f.build_opts(&spec, &ctx, &[], true, DEFAULT_LOG_LIMIT);
    r.unwrap();
    assert!(log.contains("net=42"), "{log}");
}

#[test]
fn secrets_printed_by_a_step_are_masked_live_stored_and_replayed() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let secret = f.dir.path().join("token");
    std::fs::write(&secret, "hunter2-topsecret\n").unwrap();
    let secrets = [Secret::new("token", secret)];
    let spec = format!(
        r#"((from busybox) {SH}
            (run (secrets (token (target /run/secrets/token)))
                 (shell "printf 'value=%s;' \"$(cat /run/secrets/token)\"; echo done")))"#
    );
    let (r, live) = f.build_opts(&spec, &ctx, &secrets, false, DEFAULT_LOG_LIMIT);
    r.unwrap();
    assert!(live.contains("value=***;done"), "{live}");
    assert!(!live.contains("topsecret"), "{live}");
    let logs = f.store().join("build-v1/logs");
    assert_eq!(
        mode(&logs),
        0o700,
        "the logs directory is the owner's alone"
    );
    let mut stored = 0;
    for e in std::fs::read_dir(&logs).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("topsecret"), "{}: {text}", path.display());
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        stored += usize::from(text.contains("value=***;"));
    }
    assert_eq!(stored, 1, "the step's log is stored, masked");
    let (r, replayed) = f.build_opts(&spec, &ctx, &secrets, false, DEFAULT_LOG_LIMIT);
    r.unwrap();
    assert!(
        replayed.contains("from cache") && replayed.contains("value=***;done"),
        "{replayed}"
    );
}

#[test]
fn a_secret_may_be_given_by_a_relative_path() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let secret = f.dir.path().join("token");
    std::fs::write(&secret, "relative-secret").unwrap();
    let relative = relative_to_cwd(&secret);
    assert!(relative.is_relative());
    let spec = format!(
        r#"((from busybox) {SH}
            (run (secrets (token (target /run/secrets/token)))
                 (shell "test \"$(cat /run/secrets/token)\" = relative-secret && echo read it")))"#
    );
    let secrets = [Secret::new("token", relative)];
    let (r, log) = f.build_opts(&spec, &ctx, &secrets, false, DEFAULT_LOG_LIMIT);
    r.unwrap();
    assert!(log.contains("read it"), "{log}");
}

#[test]
fn a_step_log_is_cut_at_the_limit_with_a_note() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let spec = format!(r#"((from busybox) {SH} (run (shell "yes 0123456789 | head -c 100000")))"#);
    let (r, live) = f.build_opts(&spec, &ctx, &[], false, 4096);
    r.unwrap();
    assert!(
        live.contains("reached the log limit of 4096 bytes"),
        "{live}"
    );
    assert!(
        live.contains("95904 more bytes of output were not kept"),
        "{live}"
    );
    let logs = f.store().join("build-v1/logs");
    for e in std::fs::read_dir(&logs).unwrap() {
        let len = e.unwrap().metadata().unwrap().len();
        assert!(len < 4096 + 512, "a stored log of {len} bytes");
    }
}

#[test]
fn a_step_that_fills_the_disk_leaves_nothing_behind() {
    if !runc_ready() {
        return;
    }
    if crate::common::sandbox() == "docker" {
        // The job writes to the engine's storage, not the store's filesystem.
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&top.path().join("small"), "64m");
    let store = small.0.join("store");
    let builder = builder_at(&store);
    let ctx = top.path().join("context");
    std::fs::create_dir(&ctx).unwrap();
    let blobs_before = builder.engine().cas().ids().unwrap().len();
    let snapshots_before = builder.engine().snapshots().unwrap().len();
    // The step itself meets the full disk; then one that ignores it, so the commit does.
    for (shell, commit_fails) in [
        ("head -c 200000000 /dev/urandom > /fill", false),
        // Leaves room for the log but not for the committed layer.
        ("head -c 40000000 /dev/urandom > /fill", true),
    ] {
        let spec = format!(r#"((from busybox) {SH} (run (shell "{shell}")))"#);
        let (r, _) = build_on(&builder, &spec, &ctx, &[], &Cancel::new());
        let e = r.unwrap_err();
        let Error::StoreFull { source, .. } = &e else {
            panic!("{shell}: not reported as a full disk: {e}");
        };
        if commit_fails {
            assert!(
                matches!(**source, Error::Commit { .. }),
                "{shell}: {source}"
            );
        }
        assert!(e.to_string().contains("is full"), "{e}");
        let engine = builder.engine();
        let problems = engine.fsck(false).unwrap();
        assert!(problems.is_empty(), "fsck after `{shell}`: {problems:?}");
        assert!(engine.checkouts().unwrap().is_empty());
        assert_eq!(engine.cas().ids().unwrap().len(), blobs_before, "{shell}");
        let snapshots = engine.snapshots().unwrap();
        assert_eq!(snapshots.len(), snapshots_before, "{shell}");
        assert_eq!(
            std::fs::read_dir(store.join("tmp")).unwrap().count(),
            0,
            "temp files of the failed commit"
        );
    }
    // With the space back, building works.
    let spec = format!(r#"((from busybox) {SH} (run (shell "echo small > /small")))"#);
    let (r, log) = build_on(&builder, &spec, &ctx, &[], &Cancel::new());
    r.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

#[test]
fn checkouts_reuse_a_pool_of_equally_long_roots() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[("a", "a")]);
    for n in 0..4 {
        let spec = format!(
            r#"((from busybox) {SH} (copy (src a) (dst /a)) (run (shell "echo {n} > /n")))"#
        );
        let (r, log) = f.build(&spec, &ctx);
        r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    }
    // Steps ran one after the other: one root served them all.
    let roots: Vec<String> = std::fs::read_dir(f.store().join("build-v1/roots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(roots, vec!["r0000.lock".to_owned()], "{roots:?}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `path` written relative to the current directory.
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.join(path.strip_prefix("/").unwrap())
}

/// A size-limited tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
