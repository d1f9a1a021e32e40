//! The driver on its own: exit statuses, live output, cleanup of dead processes'
//! containers, cached images, and the builder's cache with it.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_docker::plan::{JOB_LABEL, LABEL};
use strata_docker::{DockerDriver, DockerOptions};
use strata_isolate::Driver;

use crate::common::{build, builder, docker_builder, engine_ready, options};

#[test]
fn exit_statuses_fail_the_step_and_nothing_is_cached_or_left() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let b = docker_builder(&store);
    let (r, log) = build(
        &b,
        r#"((from busybox) (shell /bin/sh -c) (run (shell "echo before; exit 3")))"#,
    );
    let e = r.unwrap_err().to_string();
    assert!(e.contains("exited with status 3"), "{e}");
    assert!(log.contains("before"), "{log}");
    assert_eq!(b.stats().misses, 0);
    let driver = DockerDriver::new(options(&store));
    assert_eq!(
        driver
            .containers_labelled("strata.test", &store.display().to_string())
            .unwrap(),
        Vec::<String>::new()
    );
    // A rerun builds again: the failure was not cached.
    let (r, log) = build(
        &b,
        r#"((from busybox) (shell /bin/sh -c) (run (shell "echo ok > /ok")))"#,
    );
    r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (r2, log) = build(
        &b,
        r#"((from busybox) (shell /bin/sh -c) (run (shell "echo ok > /ok")))"#,
    );
    r2.unwrap();
    assert!(log.contains("from cache"), "{log}");
}

#[test]
fn cleanup_removes_containers_of_dead_processes_only() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Make the busybox image through a build, then leave a container named after a process
    // that is gone, and one of this (live) process.
    let b = docker_builder(&store);
    let (r, log) = build(
        &b,
        r#"((from busybox) (shell /bin/sh -c) (run (shell "true")))"#,
    );
    let id = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let image = strata_docker::plan::snapshot_image(&b.engine().chain(&id).unwrap()[0].id.to_hex());
    let driver = DockerDriver::new(options(&store));
    let dead = strata_process::Owner::new(999_999, 1);
    let dead_name = format!("strata-{}.{}-0", dead.pid, dead.start_time);
    let live_name = strata_isolate::job_name(9_999_999);
    for name in [&dead_name, &live_name] {
        let status = std::process::Command::new("docker")
            .args(["create", "--name", name, "--label", &format!("{LABEL}=1")])
            .args(["--label", &format!("{JOB_LABEL}={name}")])
            .args(["--label", &format!("strata.test={}", store.display())])
            .args([&image, "/bin/sh"])
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
    }
    // Another test's builder may sweep the dead one first (its first step cleans up too):
    // what counts is that it is gone and the live one stays.
    let removed = driver.cleanup().unwrap();
    assert!(!removed.contains(&live_name), "{removed:?}");
    let left = driver
        .containers_labelled("strata.test", &store.display().to_string())
        .unwrap();
    assert_eq!(left, std::slice::from_ref(&live_name));
    std::process::Command::new("docker")
        .args(["rm", "-f", &live_name])
        .output()
        .unwrap();
}

#[test]
fn an_unreachable_engine_is_named() {
    let mut options = DockerOptions::new(1);
    options.host = Some("unix:///nonexistent/docker.sock".to_owned());
    let driver = DockerDriver::new(options);
    let e = driver.check().unwrap_err();
    let text = format!("{e}: {:?}", std::error::Error::source(&e));
    assert!(text.contains("/nonexistent/docker.sock"), "{text}");
}

#[test]
fn an_engine_image_is_read_back_layer_by_layer() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = docker_builder(&dir.path().join("store"));
    let (r, log) = build(
        &b,
        r#"((from busybox) (shell /bin/sh -c) (run (shell "echo made > /made && rm /etc/passwd")))"#,
    );
    r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    // The step's container ran on the base's image; the step's own image is made on demand.
    let chain = b.engine().snapshots().unwrap();
    let base = chain.iter().find(|s| s.parent.is_none()).unwrap();
    let image = strata_docker::plan::snapshot_image(&base.id.to_hex());
    let driver = DockerDriver::new(options(&dir.path().join("store")));
    let other = strata_snapshot::Engine::open(&dir.path().join("other")).unwrap();
    let mut layers = std::collections::HashMap::new();
    let order = driver
        .save_image(&image, &mut |path, layer| {
            let s = other.import_layer(None, layer, None)?;
            layers.insert(path.to_owned(), s.layer);
            Ok(())
        })
        .unwrap();
    assert_eq!(order.len(), 1);
    let mut parent = None;
    for path in &order {
        parent = Some(
            other
                .add_snapshot(parent.as_ref(), &layers[path], None)
                .unwrap()
                .id,
        );
    }
    let out = dir.path().join("out");
    other.copy_out(&parent.unwrap(), &out).unwrap();
    assert!(out.join("bin/busybox").exists());
    let e = driver
        .save_image("strata-test-no-such-image:1", &mut |_, _| Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("strata-test-no-such-image:1"), "{e}");
}

/// A stand-in for the engine's socket that can be cut: connections through it are relayed
/// to the real socket until [`Relay::cut`] closes them all, as an engine that stops does.
struct Relay {
    path: PathBuf,
    streams: Arc<Mutex<Vec<UnixStream>>>,
}

impl Relay {
    fn start(path: &Path) -> Relay {
        let listener = UnixListener::bind(path).unwrap();
        let streams: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let kept = streams.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
                    return;
                };
                for (from, to) in [(&client, &engine), (&engine, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let mut buf = vec![0; 64 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        // Half-close, as the end that finished did.
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
                kept.lock().unwrap().extend([client, engine]);
            }
        });
        Relay {
            path: path.to_path_buf(),
            streams,
        }
    }

    /// Closes every relayed connection, and the socket itself (nothing connects to a
    /// removed socket file).
    fn cut(&self) {
        let _ = fs::remove_file(&self.path);
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn an_engine_that_goes_away_mid_step_is_named_and_nothing_is_recorded() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let relay = Relay::start(&dir.path().join("engine.sock"));
    let mut opts = options(&store);
    opts.host = Some(format!("unix://{}", relay.path.display()));
    let b = builder(&store, Box::new(DockerDriver::new(opts)));
    let before = b.engine().snapshot_ids().unwrap();

    let spec = strata_spec::parse(
        r#"((from busybox) (shell /bin/sh -c) (run (shell "echo ready-$((6 * 7)); sleep 60")))"#,
    )
    .unwrap();
    let ctx = tempfile::tempdir().unwrap();
    let log = strata_build::Transcript::new();
    let build_opts = strata_build::BuildOptions::new(ctx.path()).reporter(log.clone());
    let started = Instant::now();
    let err = std::thread::scope(|s| {
        let building = s.spawn(|| b.build(&spec, &build_opts));
        // What the step prints, not its command line, which the transcript shows too.
        while !log.text().contains("ready-42") {
            assert!(!building.is_finished(), "the build ended: {}", log.text());
            assert!(started.elapsed().as_secs() < 120, "the step never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        relay.cut();
        building.join().unwrap().unwrap_err()
    });
    assert!(
        started.elapsed().as_secs() < 60,
        "the build waited for the step instead of noticing"
    );
    let mut chain = vec![err.to_string()];
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let chain = chain.join(": ");
    assert!(chain.contains("docker engine stopped"), "{chain}");

    // Nothing of the step was recorded: no snapshot, and the store is sound.
    assert_eq!(b.engine().snapshot_ids().unwrap(), before);
    b.engine().cas().verify().unwrap();

    // The container the engine still runs is this (live) process's: removed by hand.
    let direct = DockerDriver::new(options(&store));
    for name in direct
        .containers_labelled("strata.test", &store.display().to_string())
        .unwrap()
    {
        std::process::Command::new("docker")
            .args(["rm", "-f", &name])
            .output()
            .unwrap();
    }
}
