//! End-to-end builds with real runc: results, cache hits, invalidation, secrets, failures,
//! cancellation, stages.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use strata_build::{Error, Secret};
use strata_isolate::Cancel;

use crate::common::{
    Fixture, SH, leftover_containers, read_file, runc_ready, sandbox, snapshot_tree,
};

#[test]
fn runs_steps_then_takes_them_all_from_the_cache() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[("greeting.txt", "hi there\n")]);
    let spec = format!(
        r#"((from busybox) {SH}
            (workdir /src)
            (copy (src greeting.txt) (dst /src/))
            (run (shell "cat greeting.txt; echo out; echo err >&2; id -u; hostname; pwd"))
            (env A "1")
            (run (shell "echo A=$A > /a.txt")))"#
    );
    let (first, log1) = f.build(&spec, &ctx);
    let first = first.unwrap();
    // The engine copies a container's stdout and stderr separately: their relative order
    // is not kept there, so the stderr line may come anywhere among the others.
    let in_order = "hi there\nout\nerr\n0\nbuilder\n/src\n";
    let step_output = |log: &str| {
        let from = log.find("/src: (run (shell \"cat").unwrap();
        let body = &log[from..];
        let body = &body[body.find('\n').unwrap() + 1..];
        body[..body
            .find("---> saved as")
            .or(body.find("---> using"))
            .unwrap()]
            .to_owned()
    };
    let seen = step_output(&log1);
    if sandbox() == "docker" {
        assert_eq!(seen.matches("err\n").count(), 1, "{log1}");
        assert_eq!(
            seen.replacen("err\n", "", 1),
            "hi there\nout\n0\nbuilder\n/src\n",
            "{log1}"
        );
    } else {
        assert_eq!(seen, in_order, "{log1}");
    }
    assert!(
        log1.contains("/src: (run (shell"),
        "headings name the workdir: {log1}"
    );
    assert_eq!(log1.matches("---> saved as").count(), 3, "{log1}");
    assert_eq!(
        read_file(&f.builder, &first, "a.txt").as_deref(),
        Some("A=1\n")
    );
    assert_eq!(
        read_file(&f.builder, &first, "src/greeting.txt").as_deref(),
        Some("hi there\n")
    );

    let (second, log2) = f.build(&spec, &ctx);
    assert_eq!(second.unwrap(), first);
    assert_eq!(
        log2.matches("from cache").count(),
        4,
        "base + 3 steps: {log2}"
    );
    assert!(!log2.contains("saved as"), "{log2}");
    assert_eq!(step_output(&log2), seen, "hits replay the log: {log2}");
    assert_eq!(f.builder.stats().hits, 3);
    assert_eq!(f.builder.stats().misses, 3);
}

#[test]
fn a_changed_context_file_rebuilds_exactly_the_steps_after_its_copy() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[("a.txt", "one"), ("b.txt", "bee")]);
    let spec = format!(
        r#"((from busybox) {SH}
            (run (shell "echo before > /before"))
            (copy (src a.txt) (dst /a.txt))
            (run (shell "cat /a.txt > /after"))
            (copy (src b.txt) (dst /b.txt)))"#
    );
    let (r, _) = f.build(&spec, &ctx);
    let v1 = r.unwrap();
    std::fs::write(ctx.join("a.txt"), "two").unwrap();
    let (r, log) = f.build(&spec, &ctx);
    let v2 = r.unwrap();
    assert_ne!(v1, v2);
    assert_eq!(
        log.matches("from cache").count(),
        2,
        "base and the first run: {log}"
    );
    assert_eq!(
        log.matches("saved as").count(),
        3,
        "the copy and both steps after it: {log}"
    );
    assert_eq!(read_file(&f.builder, &v2, "after").as_deref(), Some("two"));

    // A chmod alone changes the key too (OBuilder missed this).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(ctx.join("b.txt"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let (r, log) = f.build(&spec, &ctx);
        assert_ne!(r.unwrap(), v2);
        assert_eq!(log.matches("saved as").count(), 1, "{log}");
    }
}

#[test]
fn secrets_are_mounted_but_never_stored_or_logged_and_never_in_the_key() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let secret = f.dir.path().join("token");
    std::fs::write(&secret, "s3cr3t-value-1").unwrap();
    let spec = format!(
        r#"((from busybox) {SH}
            (run (secrets (token (target /run/secrets/token)))
                 (shell "test \"$(tr a-z A-Z < /run/secrets/token)\" = S3CR3T-VALUE-1 && echo secret ok && wc -c < /run/secrets/token > /len")))"#
    );
    let secrets = [Secret::new("token", secret.clone())];
    let (r, log) = f.build_with(&spec, &ctx, &secrets, &Cancel::new());
    let id = r.unwrap();
    assert!(log.contains("secret ok"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
    for (path, node) in snapshot_tree(&f.builder, &id) {
        let path = Path::new(OsStr::from_bytes(&path));
        assert!(
            !path.starts_with("run/secrets"),
            "secret mount point left in the snapshot: {path:?}"
        );
        assert!(
            !node.data.windows(6).any(|w| w == b"s3cr3t"),
            "secret value in {path:?}"
        );
    }
    for e in std::fs::read_dir(f.store().join("build-v1/logs")).unwrap() {
        let text = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!text.windows(6).any(|w| w == b"s3cr3t"));
    }
    // Rotating the value does not rebuild: the key holds the id and target only.
    std::fs::write(&secret, "s3cr3t-value-2").unwrap();
    let (r, log) = f.build_with(&spec, &ctx, &secrets, &Cancel::new());
    assert_eq!(r.unwrap(), id);
    assert!(log.contains("from cache"), "{log}");
    // A missing secret is named.
    let (r, _) = f.build_with(
        &spec.replace("echo secret ok", "echo other"),
        &ctx,
        &[],
        &Cancel::new(),
    );
    let e = r.unwrap_err();
    assert!(matches!(e, Error::MissingSecret { .. }), "{e}");
    assert!(e.to_string().contains("--secret token:PATH"), "{e}");
}

#[test]
fn failures_are_not_cached_and_name_the_step() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let marker = f.dir.path().join("fail");
    std::fs::write(&marker, "").unwrap();
    let spec = format!(
        r#"((from busybox) {SH}
            (run (cache (c (target /c))) (shell "echo attempt >> /c/attempts; echo trying; exit 3")))"#
    );
    let (r, log) = f.build(&spec, &ctx);
    let e = r.unwrap_err();
    assert!(matches!(e, Error::StepFailed { .. }), "{e}");
    assert!(
        e.to_string().contains("exit 3") && e.to_string().contains("exited with status 3"),
        "{e}"
    );
    assert!(log.contains("trying"), "{log}");
    let (r, log) = f.build(&spec, &ctx);
    assert!(r.is_err());
    assert!(
        log.contains("trying") && log.matches("from cache").count() == 1,
        "ran again: {log}"
    );
    assert_eq!(f.builder.stats().misses, 0);
    // Both attempts reached the cache (released on failure too, first release wins).
    let fixed = spec.replace("exit 3", "cat /c/attempts | wc -l > /n");
    let (r, _) = f.build(&fixed, &ctx);
    assert_eq!(
        read_file(&f.builder, &r.unwrap(), "n")
            .map(|s| s.trim().to_owned())
            .as_deref(),
        Some("3")
    );
}

#[test]
fn cancellation_stops_the_step_and_leaves_no_container() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let spec = format!(r#"((from busybox) {SH} (run (shell "echo started; sleep 1000")))"#);
    let cancel = Cancel::new();
    let started = Instant::now();
    let (r, log) = std::thread::scope(|s| {
        let c = cancel.clone();
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            c.cancel();
        });
        f.build_with(&spec, &ctx, &[], &cancel)
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(log.contains("started"), "{log}");
    assert_eq!(leftover_containers(&f.store()), Vec::<String>::new());
    let out = std::process::Command::new("pgrep")
        .args(["-f", "sleep 1000"])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "the step's process survived");
    // Nothing was cached: the next build runs it again (and we cancel it again at once).
    let cancel = Cancel::new();
    cancel.cancel();
    let (r, _) = f.build_with(&spec, &ctx, &[], &cancel);
    assert!(matches!(r, Err(Error::Cancelled)));
}

#[test]
fn stages_feed_copies_from_their_results() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let spec = format!(
        r#"((build tool
             ((from busybox) {SH}
              (run (shell "mkdir -p /out && echo built > /out/artifact && chmod 750 /out/artifact"))))
            (from busybox) {SH}
            (user (uid 1000) (gid 1000))
            (copy (from (build tool)) (src out/artifact) (dst /home/artifact))
            (run (shell "id -u > /tmp/who; cat /home/artifact; ls -ln /home/artifact")))"#
    );
    let (r, log) = f.build(&spec, &ctx);
    let id = r.unwrap();
    assert!(log.contains("built\n"), "{log}");
    assert!(
        log.contains("-rwxr-x---    1 1000     1000"),
        "mode kept, owner from the context user: {log}"
    );
    assert_eq!(
        read_file(&f.builder, &id, "tmp/who").as_deref(),
        Some("1000\n")
    );
}

#[test]
fn bad_input_is_named() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let (r, _) = f.build("((from nosuchimage))", &ctx);
    assert!(
        r.unwrap_err()
            .to_string()
            .contains("`nosuchimage` is not in the store")
    );
    let (r, _) = f.build(r#"((from busybox) (copy (src ../x) (dst /x)))"#, &ctx);
    assert!(r.unwrap_err().to_string().contains("`..`"));
    let (r, _) = f.build(
        r#"((from busybox) (run (network bridge) (shell "true")))"#,
        &ctx,
    );
    assert!(r.unwrap_err().to_string().contains("network `bridge`"));
    let (r, _) = f.build(
        r#"((from busybox) (user (name opam)) (run (shell "id")))"#,
        &ctx,
    );
    if sandbox() == "docker" {
        // Docker takes user names; busybox has no `opam`, so the step fails.
        assert!(r.is_err());
        return;
    }
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("(run (shell id))") && e.contains("named user `opam`"),
        "{e}"
    );
}

#[test]
fn a_step_timeout_kills_the_step_and_names_it() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let spec = strata_spec::parse(&format!(
        r#"((from busybox) {SH} (run (shell "sleep 1000")))"#
    ))
    .unwrap();
    let log = strata_build::Transcript::new();
    let opts = strata_build::BuildOptions::new(&ctx)
        .reporter(log.clone())
        .step_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let e = f.builder.build(&spec, &opts).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        e.to_string().contains("sleep 1000") && e.to_string().contains("timed out"),
        "{e}"
    );
    assert_eq!(leftover_containers(&f.store()), Vec::<String>::new());
}

#[test]
fn pruned_steps_are_forgotten_with_their_logs() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let spec =
        format!(r#"((from busybox) {SH} (run (shell "echo one")) (run (shell "echo two")))"#);
    let (r, _) = f.build(&spec, &ctx);
    r.unwrap();
    let logs = f.store().join("build-v1/logs");
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 2);
    // A crashed run's live log, with nobody holding its lock.
    std::fs::write(logs.join(format!("{}.running", "0".repeat(64))), "half").unwrap();
    let engine = f.builder.engine();
    let pruned = engine
        .prune(&strata_snapshot::maintenance::PruneOptions {
            older_than: Some(strata_snapshot::now_millis() + 1),
            keep_count: None,
            keep_bytes: None,
        })
        .unwrap();
    assert_eq!(
        pruned.snapshots.len(),
        2,
        "both steps; the tagged base stays"
    );
    assert_eq!(strata_build::forget_missing(engine).unwrap(), 2);
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 0);
    // The next build runs both steps again instead of trusting stale records.
    let (r, log) = f.build(&spec, &ctx);
    r.unwrap();
    assert_eq!(log.matches("saved as").count(), 2, "{log}");
}
