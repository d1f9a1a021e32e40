//! Command-line conventions: usage errors, help, global options, broken pipes, the default store.

use std::fs;
use std::process::Stdio;

use crate::support::{Env, os, sample_tree};

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let env = Env::new();
    assert_eq!(env.run(["cas", "frobnicate"]).code, 2);
    assert_eq!(
        env.run(["layer", "create", "dir"]).code,
        2,
        "-o is required"
    );
    assert_eq!(
        env.run(["layer", "apply", "x", "y", "--devices", "maybe"])
            .code,
        2
    );
    assert_eq!(
        env.run(["layer", "create", "d", "-o", "o", "--threads", "0"])
            .code,
        2
    );
    assert_eq!(env.run(["cas", "rm"]).code, 2, "rm needs an id");
    for help in [
        &["--help"][..],
        &["layer", "create", "--help"],
        &["cas", "verify", "--help"],
    ] {
        let run = env.run(help);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout_text().contains("Usage:"), "{run:?}");
    }
}

#[test]
fn json_is_accepted_anywhere() {
    let env = Env::new();
    for args in [
        &["--json", "cas", "ls"][..],
        &["cas", "--json", "ls"],
        &["cas", "ls", "--json"],
    ] {
        assert_eq!(env.run(args).json(), serde_json::json!([]), "{args:?}");
    }
}

#[test]
fn store_comes_from_the_flag_then_the_environment_then_the_cache_dir() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);

    // --store beats STRATA_STORE.
    let flag_store = env.path("flag-store");
    env.run([
        os("--store"),
        os(&flag_store),
        os("cas"),
        os("put"),
        os(&src),
    ])
    .ok();
    assert!(flag_store.join("layout").is_file());
    assert!(!env.store().exists());

    // Without either: $XDG_CACHE_HOME/strata, else $HOME/.cache/strata.
    let xdg = env.path("xdg");
    let mut cmd = env.command([os("cas"), os("ls")]);
    cmd.env_remove("STRATA_STORE").env("XDG_CACHE_HOME", &xdg);
    assert!(cmd.output().unwrap().status.success());
    assert!(xdg.join("strata/layout").is_file());

    let mut cmd = env.command([os("cas"), os("ls")]);
    cmd.env_remove("STRATA_STORE");
    assert!(cmd.output().unwrap().status.success());
    assert!(env.path("home/.cache/strata/layout").is_file());
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let put = env
        .run([os("cas"), os("put"), os(&src), os("--json")])
        .json();
    let id = put["id"].as_str().unwrap().to_owned();

    // The reader of stdout goes away before strata writes: every write gets EPIPE.
    let mut child = env
        .command(["cas", "cat", id.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cat_refuses_nothing_when_redirected_to_a_file() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let put = env
        .run([os("cas"), os("put"), os(&src), os("--json")])
        .json();
    let id = put["id"].as_str().unwrap().to_owned();
    let file = env.path("out.tar");
    let status = env
        .command(["cas", "cat", id.as_str()])
        .stdout(fs::File::create(&file).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::metadata(&file).unwrap().len(),
        put["uncompressed_size"].as_u64().unwrap()
    );
}
