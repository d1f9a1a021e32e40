//! `strata build|healthcheck|delete|dockerfile` as a user runs them, with real runc.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::support::Env;

/// Whether runc tests can run here; in CI they must.
fn runc_ready() -> bool {
    strata_test_support::require("builds under runc", strata_test_support::runc())
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A build context holding just `build.spec` with this text.
fn spec_dir(env: &Env, spec: &str) -> PathBuf {
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("build.spec"), spec).unwrap();
    ctx
}

/// The `Got: "<id>"` line's id.
fn got(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Got: "))
        .unwrap_or_else(|| panic!("no Got line:\n{stdout}"));
    line.trim_start_matches("Got: \"")
        .trim_end_matches('"')
        .to_owned()
}

#[test]
fn the_readme_example_builds_then_comes_from_the_cache() {
    if !runc_ready() {
        return;
    }
    let env = Env::new();
    let hello = example("hello");
    let first = env.run([std::ffi::OsStr::new("build"), hello.as_os_str()]);
    let first_out = first.ok();
    let id = got(&first_out);
    assert!(
        first_out.contains("(from busybox)\n---> using \""),
        "{first_out}"
    );
    assert!(first_out.contains("Hello, world!\n"), "{first_out}");
    assert!(
        first_out.contains("this cache has seen 1 run(s)"),
        "{first_out}"
    );
    assert!(first_out.contains("---> saved as \""), "{first_out}");

    let second = env.run([std::ffi::OsStr::new("build"), hello.as_os_str()]);
    let second_out = second.ok();
    assert_eq!(got(&second_out), id);
    assert!(!second_out.contains("saved as"), "{second_out}");
    assert!(
        second_out.contains("this cache has seen 1 run(s)"),
        "the log is replayed: {second_out}"
    );

    let json = env
        .run([
            std::ffi::OsStr::new("--json"),
            "build".as_ref(),
            hello.as_os_str(),
        ])
        .json();
    assert_eq!(json["snapshot"], id);
    assert_eq!(json["hits"], 4);
    assert_eq!(json["misses"], 0);
}

#[test]
fn two_processes_building_one_spec_run_each_step_once() {
    if !runc_ready() {
        return;
    }
    let env = Env::new();
    let ctx = spec_dir(
        &env,
        r#"((from busybox) (shell /bin/sh -c)
            (run (cache (runs (target /runs))) (shell "echo x >> /runs/count; echo start; sleep 2; echo end"))
            (run (cache (runs (target /runs))) (shell "wc -l < /runs/count > /n")))"#,
    );
    // Make the base first so both processes start on equal terms.
    env.run(["healthcheck"]).ok();
    let spawn = || {
        env.command(["build".as_ref(), ctx.as_os_str()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout).into_owned(),
        String::from_utf8_lossy(&b.stdout).into_owned(),
    );
    assert_eq!(got(&a), got(&b));
    for out in [&a, &b] {
        assert!(
            out.contains("start\nend\n"),
            "both see the step's output: {out}"
        );
    }
    let saved = a.matches("saved as").count() + b.matches("saved as").count();
    assert_eq!(saved, 2, "two steps, each run by one process:\n{a}\n{b}");
    let n = env.path("n");
    env.run([
        "checkout".as_ref(),
        "--copy".as_ref(),
        got(&a).as_ref(),
        n.as_os_str(),
    ])
    .ok();
    assert_eq!(std::fs::read_to_string(n.join("n")).unwrap().trim(), "1");
}

#[test]
fn a_failing_step_exits_non_zero_naming_it() {
    if !runc_ready() {
        return;
    }
    let env = Env::new();
    let ctx = spec_dir(
        &env,
        "((from busybox) (shell /bin/sh -c)\n (run (shell \"echo oops; exit 7\")))",
    );
    let run = env.run(["build".as_ref(), ctx.as_os_str()]);
    run.fails_with(&["step /: (run (shell \"echo oops; exit 7\")) failed: exited with status 7"]);
    assert!(run.stdout_text().contains("oops"), "{run:?}");
}

#[test]
fn host_networking_needs_allow_network_host() {
    if !runc_ready() {
        return;
    }
    let env = Env::new();
    let ctx = spec_dir(
        &env,
        "((from busybox) (shell /bin/sh -c)\n (run (network host) (shell \"echo net=$((40+2))\")))",
    );
    let run = env.run(["build".as_ref(), ctx.as_os_str()]);
    run.fails_with(&["(run (network host)", "--allow network-host"]);
    assert!(!run.stdout_text().contains("net=42"), "{run:?}");
    let run = env.run([
        "build".as_ref(),
        "--allow".as_ref(),
        "network-host".as_ref(),
        ctx.as_os_str(),
    ]);
    assert!(run.ok().contains("net=42"), "{run:?}");
}

#[test]
fn progress_json_prints_one_event_per_line() {
    if !runc_ready() {
        return;
    }
    let env = Env::new();
    let ctx = spec_dir(
        &env,
        "((from busybox) (shell /bin/sh -c)\n (run (shell \"echo hello-json\")))",
    );
    let run = env.run([
        "build".as_ref(),
        "--progress".as_ref(),
        "json".as_ref(),
        ctx.as_os_str(),
    ]);
    let out = run.ok();
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "stage_started",
            "step_started",
            "step_started",
            "log",
            "saved",
            "finished"
        ],
        "{out}"
    );
    assert_eq!(events[3]["data"], "hello-json\n");
    assert_eq!(events[2]["key"].as_str().map(str::len), Some(64));
    assert_eq!(events[5]["snapshot"], events[4]["snapshot"]);
    // With --json the result keeps stdout and the events go to stderr.
    let run = env.run([
        "--json".as_ref(),
        "build".as_ref(),
        "--progress".as_ref(),
        "json".as_ref(),
        ctx.as_os_str(),
    ]);
    let result = run.json();
    assert_eq!(result["snapshot"], events[5]["snapshot"]);
    assert!(run.stderr.contains("\"event\":\"cache_hit\""), "{run:?}");
}

#[test]
fn spec_errors_point_into_the_file() {
    let env = Env::new();
    let ctx = spec_dir(&env, "((from busybox)\n (rnu (shell \"true\")))\n");
    let run = env.run(["build".as_ref(), ctx.as_os_str()]);
    run.fails_with(&["build.spec:2:3", "rnu", "did you mean", "^^^"]);
    let run = env.run(["build".as_ref(), env.path("missing").as_os_str()]);
    run.fails_with(&["missing", "not a directory"]);
    let run = env.run(["build", "--secret", "nocolon", "."]);
    run.fails_with(&["--secret nocolon", "ID:PATH"]);
    let run = env.run(["build", "--sandbox", "nope", "."]);
    assert_ne!(run.code, 0);
}

#[test]
fn dockerfile_prints_the_spec_as_a_dockerfile() {
    let env = Env::new();
    let spec = example("hello").join("build.spec");
    let out = env
        .run(["dockerfile".as_ref(), "-f".as_ref(), spec.as_os_str()])
        .ok();
    assert!(out.starts_with("FROM busybox"), "{out}");
    assert!(out.contains("SHELL [ \"/bin/sh\", \"-c\" ]"), "{out}");
    assert!(out.contains("COPY hello.sh greeting.txt /src/"), "{out}");
    let bk = env
        .run([
            "dockerfile".as_ref(),
            "--buildkit".as_ref(),
            "-f".as_ref(),
            spec.as_os_str(),
        ])
        .ok();
    assert!(
        bk.contains("--mount=type=cache,id=hello-runs,target=/var/cache/hello"),
        "{bk}"
    );
    let win = env
        .run([
            "dockerfile".as_ref(),
            "--os".as_ref(),
            "windows".as_ref(),
            "-f".as_ref(),
            spec.as_os_str(),
        ])
        .ok();
    assert!(win.starts_with("#escape=`"), "{win}");
}

#[test]
fn delete_removes_a_snapshot_and_what_was_built_on_it() {
    if !runc_ready() {
        return;
    }
    let env = Env::new();
    let ctx = spec_dir(
        &env,
        "((from busybox) (shell /bin/sh -c)\n (run (shell \"echo one > /1\"))\n (run (shell \"echo two > /2\")))",
    );
    let out = env.run(["build".as_ref(), ctx.as_os_str()]).ok();
    let saved: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("---> saved as"))
        .collect();
    let first = saved[0]
        .trim_start_matches("---> saved as \"")
        .trim_end_matches('"');
    let deleted = env.run(["delete", first]).ok();
    assert_eq!(
        deleted.lines().count(),
        2,
        "the step and its child: {deleted}"
    );
    let again = env.run(["build".as_ref(), ctx.as_os_str()]).ok();
    assert_eq!(
        again.matches("saved as").count(),
        2,
        "both steps ran again: {again}"
    );
    env.run(["delete", "0000"]).fails_with(&["0000"]);
}

#[test]
fn ctrl_c_stops_the_step_and_leaves_no_container() {
    use std::io::{BufRead as _, BufReader};
    if !runc_ready() {
        return;
    }
    let env = Env::new();
    let ctx = spec_dir(
        &env,
        "((from busybox) (shell /bin/sh -c)\n (run (shell \"echo started; sleep 1000\")))",
    );
    let mut child = env
        .command(["build".as_ref(), ctx.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("started") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no `started` line"
        );
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("build cancelled"), "{stderr}");
    let runc_root = env.store().join("isolate-v1/runc/runc");
    let list = std::process::Command::new("runc")
        .arg("--root")
        .arg(&runc_root)
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(
        list.stdout.is_empty(),
        "containers left: {}",
        String::from_utf8_lossy(&list.stdout)
    );
}
