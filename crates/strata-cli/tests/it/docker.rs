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

fn image_exists(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn gc_removes_the_engine_images_of_deleted_snapshots_only() {
    if !engine_ready() {
        return;
    }
    let env = Env::new();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // Two steps: the second runs on the first's snapshot, which becomes an engine image.
    let unique = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    std::fs::write(
        ctx.join("build.spec"),
        format!(
            r#"((from busybox) (shell /bin/sh -c) (run (shell "echo {unique} > /one"))
                (run (shell "cat /one > /two")))"#
        ),
    )
    .unwrap();
    let built = env.run([
        "--json",
        "build",
        "--sandbox",
        "docker",
        ctx.to_str().unwrap(),
    ]);
    let top = id_field(&built.json(), "snapshot");
    let list = env.run(["--json", "snapshot", "ls"]).json();
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| pred(s))
            .map(|s| id_field(s, "id"))
            .unwrap()
    };
    let base = find(&|s| s["parent"].is_null());
    let first = find(&|s| !s["parent"].is_null() && id_field(s, "id") != top);
    let (base_image, first_image) = (
        format!("strata-snapshot:{base}"),
        format!("strata-snapshot:{first}"),
    );
    assert!(image_exists(&first_image), "{first_image} was loaded");

    // Without the flag the engine is left alone; with it, only gone snapshots' images go.
    env.run(["delete", &first]).ok();
    env.run(["gc"]).ok();
    assert!(image_exists(&first_image));
    let out = env.run(["--json", "gc", "--docker-images"]).json();
    let removed: Vec<&str> = out["docker_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(removed.contains(&first_image.as_str()), "{out}");
    assert!(!removed.contains(&base_image.as_str()), "{out}");
    assert!(!image_exists(&first_image));
    assert!(image_exists(&base_image));
}
