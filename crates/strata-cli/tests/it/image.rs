//! `strata export|import --oci|--docker-archive|push|pull` and `build --cache-to|--cache-from`
//! as a user runs them, against a real registry (docker-registry on a loopback port).

use strata_oci::testing::Registry;

use crate::support::{Env, id_field};

fn registry() -> Option<Registry> {
    match Registry::start() {
        Ok(registry) => Some(registry),
        Err(e) => {
            strata_test_support::require("a docker-registry", Some(e.to_string()));
            None
        }
    }
}

fn runc_ready() -> bool {
    strata_test_support::require("runc jobs", strata_test_support::runc())
}

const SPEC: &str = r#"((from busybox)
 (workdir /app)
 (env GREETING hello)
 (run (shell "echo built > /app/out.txt; echo first step says hi"))
 (run (shell "cat /app/out.txt /app/out.txt > /app/twice.txt; echo second")))
"#;

#[test]
fn a_builder_with_an_empty_store_takes_every_step_from_the_registry() {
    if !runc_ready() {
        return;
    }
    let Some(reg) = registry() else {
        return;
    };
    let env = Env::new();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("build.spec"), SPEC).unwrap();
    let cache = format!("{}/farm/cache", reg.host());
    let a = env
        .run([
            "--json",
            "build",
            ctx.to_str().unwrap(),
            "--cache-to",
            &cache,
        ])
        .json();
    assert_eq!(a["misses"], 2, "{a}");

    let store_b = env.path("store-b");
    let b = env.run([
        "--store",
        store_b.to_str().unwrap(),
        "build",
        ctx.to_str().unwrap(),
        "--cache-from",
        &cache,
    ]);
    let text = b.ok();
    assert_eq!(text.matches("from the registry cache").count(), 2, "{text}");
    assert!(
        text.contains("first step says hi"),
        "the log is replayed:\n{text}"
    );
    assert!(
        text.contains(&format!("Got: \"{}\"", id_field(&a, "snapshot"))),
        "{text}"
    );
    // B's result is a snapshot like any other: export it and it shows the built files.
    let out = env.path("b-layout");
    env.run([
        "--store",
        store_b.to_str().unwrap(),
        "export",
        &id_field(&a, "snapshot"),
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    // A third builder whose registry vanished still builds, running the steps itself.
    drop(reg);
    let store_c = env.path("store-c");
    let c = env.run([
        "--store",
        store_c.to_str().unwrap(),
        "--json",
        "build",
        ctx.to_str().unwrap(),
        "--cache-from",
        &cache,
    ]);
    let c = c.json();
    // Run again, the steps write files with new times: another (equally valid) result.
    assert_eq!(c["misses"], 2, "{c}");
}

#[test]
fn export_import_push_and_pull_round_trip_through_the_cli() {
    let Some(reg) = registry() else {
        return;
    };
    let env = Env::new();
    let tarball = crate::support::rootfs(&env);
    let base = env
        .run([
            "--json",
            "import",
            tarball.to_str().unwrap(),
            "--tag",
            "base",
        ])
        .json();
    let id = id_field(&base, "id");
    for (format, file) in [
        ("oci", "img.tar"),
        ("oci", "img-dir"),
        ("docker-archive", "d.tar"),
    ] {
        let out = env.path(file);
        let exported = env
            .run([
                "--json",
                "export",
                "base",
                "-o",
                out.to_str().unwrap(),
                "--format",
                format,
                "--tag",
                "demo:1",
            ])
            .json();
        assert_eq!(exported["layers"], 1);
        let flag = if format == "oci" {
            "--oci"
        } else {
            "--docker-archive"
        };
        let other = env.path(&format!("store-{file}"));
        let imported = env
            .run([
                "--store",
                other.to_str().unwrap(),
                "--json",
                "import",
                flag,
                out.to_str().unwrap(),
                "--tag",
                "again",
            ])
            .json();
        assert_eq!(id_field(&imported, "id"), id, "{format} {file}");
    }
    let dest = format!("{}/demo/base:1", reg.host());
    let pushed = env.run(["--json", "push", "base", &dest]).json();
    assert_eq!(pushed["blobs_sent"], 2, "{pushed}");
    let again = env.run(["--json", "push", "base", &dest]).json();
    assert_eq!(again["blobs_skipped"], 2, "{again}");
    let puller = env.path("puller");
    let pulled = env
        .run([
            "--store",
            puller.to_str().unwrap(),
            "--json",
            "pull",
            &dest,
            "--tag",
            "pulled",
        ])
        .json();
    assert_eq!(id_field(&pulled, "id"), id);
    // Bad input is refused by name.
    env.run(["push", "base", "127.0.0.1:1/UPPER:1"])
        .fails_with(&["UPPER", "repository"]);
    env.run(["import", "--oci", env.path("missing").to_str().unwrap()])
        .fails_with(&["missing"]);
}
