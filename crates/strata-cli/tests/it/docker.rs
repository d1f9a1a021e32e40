//! `strata build --sandbox docker` and `strata import --docker` as a user runs them, against
//! the local docker engine (required under CI, which has one).

use crate::support::{Env, id_field};

fn engine_ready() -> bool {
    strata_test_support::require(
        "docker engine jobs",
        strata_test_support::runs("docker", &["version"]),
    )
}

#[test]
fn a_docker_build_runs_and_its_engine_image_imports_back() {
    if !engine_ready() {
        return;
    }
    let env = Env::new();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("build.spec"),
        r#"((from busybox) (shell /bin/sh -c) (run (shell "echo in-docker > /made")))"#,
    )
    .unwrap();
    let built = env.run(
        ["--json", "build", "--sandbox", "docker"]
            .into_iter()
            .chain([ctx.to_str().unwrap()]),
    );
    let id = id_field(&built.json(), "snapshot");
    let out = env.path("out");
    env.run(["checkout", "--copy", &id, out.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("made")).unwrap(),
        "in-docker\n"
    );
    // The step ran on the base's engine image: import it back as a snapshot.
    let list = env.run(["--json", "snapshot", "ls"]).json();
    let base = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["parent"].is_null())
        .map(|s| id_field(s, "id"))
        .unwrap();
    let image = format!("strata-snapshot:{base}");
    let imported = env.run(["--json", "import", "--docker", &image, "--tag", "again"]);
    let again = id_field(&imported.json(), "id");
    let tree = env.path("again");
    env.run(["checkout", "--copy", &again, tree.to_str().unwrap()])
        .ok();
    assert!(tree.join("bin/busybox").exists());
    env.run(["import", "--docker", "strata-test-no-such-image:1"])
        .fails_with(&["strata-test-no-such-image:1"]);
}
