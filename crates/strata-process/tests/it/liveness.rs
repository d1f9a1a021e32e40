//! Liveness of real processes: this test binary runs itself as the child, so the tests work
//! alike on every OS (Windows under Wine included).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use strata_process::{Owner, name_owner, unique_name};
use strata_test_support::{child_test, child_var};

/// Set in the child's environment: the child test then prints a name it made and waits for
/// its stdin to close.
const CHILD: &str = "STRATA_PROCESS_TEST_CHILD";

#[test]
#[ignore = "child process of the liveness tests, through `spawn`"]
fn child() {
    child_var(CHILD);
    // Straight to stdout: the parent reads it, whatever libtest captures.
    let mut out = std::io::stdout();
    writeln!(out, "NAME {}", unique_name("t-")).unwrap();
    out.flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

/// A child process that has printed the name it made and runs until its stdin closes.
fn spawn() -> (Child, String) {
    let mut child = child_test("liveness::child")
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let name = loop {
        let line = lines.next().expect("the child printed its name").unwrap();
        // libtest may have started the line (`test liveness::child ... `).
        if let Some((_, name)) = line.split_once("NAME ") {
            break name.to_owned();
        }
    };
    (child, name)
}

/// Waits until `owner` counts as dead; the child must have been told to exit.
fn until_dead(owner: Owner) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while owner.is_alive() {
        assert!(Instant::now() < deadline, "{owner} never counted as dead");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_child_is_alive_until_it_exits_and_dead_before_it_is_reaped() {
    let (mut child, name) = spawn();
    let owner = Owner::of(child.id()).expect("the child runs");
    assert_eq!(owner.pid, child.id());
    assert!(owner.is_alive());
    assert_eq!(
        name_owner(&name, "t-"),
        Some(owner),
        "the child's own name carries the identity the parent sees"
    );
    if cfg!(any(target_os = "linux", target_os = "macos", windows)) {
        assert_ne!(owner.start_time, 0, "start times are known here");
    }
    drop(child.stdin.take());
    // Exited, not yet reaped (a zombie; on Windows the `Child` keeps a handle to it): dead,
    // although its pid is still taken.
    until_dead(owner);
    assert_eq!(Owner::of(owner.pid), None, "a zombie is no running process");
    child.wait().unwrap();
    assert!(!owner.is_alive());
    assert!(!Owner::new(owner.pid, 0).is_alive(), "nor is its bare pid");
}

#[test]
fn a_process_with_the_owners_pid_but_another_start_time_is_not_the_owner() {
    let (mut child, name) = spawn();
    let owner = name_owner(&name, "t-").unwrap();
    assert!(owner.is_alive());
    if cfg!(any(target_os = "linux", target_os = "macos", windows)) {
        // As if the owner had died and its pid been given to this child.
        let earlier = Owner::new(owner.pid, owner.start_time - 1);
        assert!(!earlier.is_alive(), "{earlier} is not {owner}");
        let me = Owner::current();
        assert!(!Owner::new(me.pid, me.start_time + 1).is_alive());
    }
    // A name from an older Strata, pid only: any process with the pid may be its owner.
    let legacy = name_owner(&format!("t-{}-1712345678901-0", owner.pid), "t-").unwrap();
    assert_eq!(legacy.start_time, 0);
    assert!(legacy.is_alive());
    drop(child.stdin.take());
    child.wait().unwrap();
    assert!(!owner.is_alive());
    assert!(!legacy.is_alive());
}
