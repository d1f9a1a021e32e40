//! Mounted-state mode with Linux containers: `(from IMAGE)` names an engine image, the chain
//! holds only the state under the target.

use strata_docker::DockerDriver;

use crate::common::{build, builder, docker_builder, engine_ready, options};

#[test]
fn a_two_step_state_build_reads_its_own_state_and_reruns_from_the_cache() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An engine image to run in: the busybox base, loaded by a full-rootfs build.
    let full = docker_builder(&dir.path().join("full"));
    let (r, log) = build(
        &full,
        r#"((from busybox) (shell /bin/sh -c) (run (shell "true")))"#,
    );
    let id = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let base = full.engine().chain(&id).unwrap()[0].id.to_hex();
    let image = strata_docker::plan::snapshot_image(&base);

    let store = dir.path().join("state");
    let mut opts = options(&store);
    opts.state_targets = vec!["/home/opam/.opam".to_owned()];
    let b = builder(&store, Box::new(DockerDriver::new(opts)));
    let spec = format!(
        r#"((from {image})
            (run (shell "mkdir -p /home/opam/.opam/lib && echo built > /home/opam/.opam/lib/x && echo outside > /tmp/y"))
            (run (shell "cat /home/opam/.opam/lib/x; test ! -e /tmp/y && echo fresh-os")))"#
    );
    let (r, log) = build(&b, &spec);
    let state = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains("built\nfresh-os\n"), "{log}");
    // The snapshot is the state alone.
    let out = dir.path().join("out");
    b.engine().copy_out(&state, &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("lib/x")).unwrap(),
        "built\n"
    );
    assert!(!out.join("tmp").exists() && !out.join("bin").exists());
    // All cache hits the second time.
    let (r, log) = build(&b, &spec);
    assert_eq!(r.unwrap(), state);
    assert_eq!(log.matches("saved as").count(), 0, "{log}");
    assert_eq!(log.matches("from cache").count(), 3, "{log}");
    // An image the engine lacks is named.
    let (r, _) = build(
        &b,
        "((from strata-test-no-such-image:1) (run (shell true)))",
    );
    let e = r.unwrap_err();
    let text = format!("{e} {:?}", std::error::Error::source(&e));
    assert!(text.contains("strata-test-no-such-image:1"), "{text}");
}
