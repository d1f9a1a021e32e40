//! Crash safety, proved by killing real processes: a workload dies at every named failpoint
//! and at random moments; each time the next open plus `fsck --repair` must leave a store
//! that checks clean, whose every snapshot checks out with the expected content, with no
//! mount or state dir but those of checkouts still tracked. And two processes checking out,
//! committing and pruning on one store at once lose nothing.
//!
//! The children are this test binary run again on one ignored test (`child_*`), which fails
//! unless its parent set `STRATA_TEST_STORE`.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use strata_snapshot::maintenance::PruneOptions;
use strata_snapshot::{CheckoutMode, Engine, SnapshotId};
use strata_snapshot::{FAILPOINTS, overlay_available};
use strata_test_support::tree::{self, Fields};
use strata_test_support::{child_test, child_var, require};

use crate::engine::names_in;

/// Set for a child: the store it works on. Its siblings hold the tarball and work dirs.
const STORE_VAR: &str = "STRATA_TEST_STORE";
/// Set for a concurrency child: its name, which its files carry.
const WHO_VAR: &str = "STRATA_TEST_WHO";
/// How long a child may take before the test calls it hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

// ---- what the trees hold ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

type Tree = BTreeMap<String, Node>;

fn tool_bytes() -> Vec<u8> {
    (0..20_000u32).map(|i| (i % 251) as u8).collect()
}

fn base_tree() -> Tree {
    let file = |s: &str| Node::File(s.as_bytes().to_vec());
    BTreeMap::from([
        ("bin".into(), Node::Dir),
        ("bin/tool".into(), Node::File(tool_bytes())),
        ("dir".into(), Node::Dir),
        ("dir/gone".into(), file("gone\n")),
        ("dir/keep".into(), file("keep\n")),
        ("etc".into(), Node::Dir),
        ("etc/hostname".into(), file("strata\n")),
        ("etc/motd".into(), file("hello\n")),
        ("link".into(), Node::Link("etc/hostname".into())),
    ])
}

/// The tree of a snapshot made by step `step` of the workload, checked out at `root`.
fn expected_tree(step: Option<&str>, root: &Path) -> Tree {
    let file = |s: &str| Node::File(s.as_bytes().to_vec());
    let mut tree = base_tree();
    match step {
        None => {}
        Some("t") => {
            tree.insert("t.txt".into(), file("t\n"));
            tree.insert("step".into(), file("t"));
        }
        Some("p1" | "o1") => {
            tree.remove("dir/gone");
            tree.insert("p1.txt".into(), file("p1\n"));
            tree.insert("step".into(), file("p1"));
            // Committed at another root, relocated to this one.
            tree.insert("where".into(), file(&format!("{}\n", root.display())));
            if step == Some("o1") {
                tree.insert("o1.txt".into(), file("o1\n"));
                tree.insert("step".into(), file("o1"));
                tree.insert("etc/hostname".into(), file("o1\n"));
            }
        }
        Some(other) => panic!("unknown step {other:?}"),
    }
    tree
}

fn depth_of(step: Option<&str>) -> u32 {
    match step {
        None => 0,
        Some("o1") => 2,
        Some(_) => 1,
    }
}

/// The tree under `root` as [`strata_test_support::tree`] reads it, kept to what the
/// expected trees name: kinds, contents and link targets.
fn read_tree(root: &Path) -> Tree {
    tree::snapshot_of(root, Fields::CONTENT)
        .into_iter()
        .map(|(path, node)| {
            let path = String::from_utf8(path).unwrap();
            let node = match node.kind {
                "dir" => Node::Dir,
                "file" => Node::File(node.data),
                "symlink" => Node::Link(PathBuf::from(OsString::from_vec(node.data))),
                other => panic!("{path} is a {other}"),
            };
            (path, node)
        })
        .collect()
}

fn rootfs_tar(top: &Path) -> PathBuf {
    let tree = top.join("rootfs-src");
    for d in ["bin", "dir", "etc"] {
        fs::create_dir_all(tree.join(d)).unwrap();
    }
    fs::write(tree.join("bin/tool"), tool_bytes()).unwrap();
    fs::write(tree.join("dir/gone"), "gone\n").unwrap();
    fs::write(tree.join("dir/keep"), "keep\n").unwrap();
    fs::write(tree.join("etc/hostname"), "strata\n").unwrap();
    fs::write(tree.join("etc/motd"), "hello\n").unwrap();
    std::os::unix::fs::symlink("etc/hostname", tree.join("link")).unwrap();
    let out = top.join("rootfs.tar");
    let file = fs::File::create(&out).unwrap();
    strata_cas::create::write_tar(&tree, file, &Default::default()).unwrap();
    out
}

// ---- the children ----

/// The crash workload: meets every failpoint once it has run to the end (the overlay ones
/// only where overlay checkouts work).
#[test]
#[ignore = "child process of crash::a_crash_at_any_failpoint_is_recovered and a_kill_at_a_random_moment_is_recovered"]
fn child_workload() {
    let store = PathBuf::from(child_var(STORE_VAR));
    let top = store.parent().unwrap().to_path_buf();
    let work = top.join("work").join(std::process::id().to_string());
    fs::create_dir_all(&work).unwrap();
    let mode = if overlay_available() {
        CheckoutMode::Overlay
    } else {
        CheckoutMode::Portable
    };

    let engine = Engine::open(&store).unwrap();
    let base = engine
        .import(&top.join("rootfs.tar"), Some("base"))
        .unwrap();

    // A portable step whose file names its own root, so later checkouts relocate it.
    let p1 = work.join("p1");
    engine
        .checkout(&base.id, &p1, Some(CheckoutMode::Portable))
        .unwrap();
    let p1 = fs::canonicalize(&p1).unwrap();
    fs::write(p1.join("p1.txt"), "p1\n").unwrap();
    fs::write(p1.join("step"), "p1").unwrap();
    fs::write(p1.join("where"), format!("{}\n", p1.display())).unwrap();
    fs::remove_file(p1.join("dir/gone")).unwrap();
    let p1s = engine.commit(&p1, Some("p1")).unwrap();

    // An overlay step on top, at another root.
    let o1 = work.join("o1");
    engine.checkout(&p1s.id, &o1, Some(mode)).unwrap();
    let o1 = fs::canonicalize(&o1).unwrap();
    assert_eq!(
        fs::read_to_string(o1.join("where")).unwrap(),
        format!("{}\n", o1.display()),
        "relocated at checkout"
    );
    fs::write(o1.join("o1.txt"), "o1\n").unwrap();
    fs::write(o1.join("step"), "o1").unwrap();
    fs::write(o1.join("etc/hostname"), "o1\n").unwrap();
    // A layer of its own in every child (the mtime is in the layer): the same layer, made
    // within the same second by the previous child and unpacked when its store was checked,
    // would skip the rename that `commit.overlay.renamed` follows.
    let unique =
        std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + u64::from(std::process::id()));
    fs::File::options()
        .write(true)
        .open(o1.join("o1.txt"))
        .unwrap()
        .set_modified(unique)
        .unwrap();
    let o1s = engine.commit(&o1, Some("o1")).unwrap();

    // A checkout thrown away, mounted.
    let o2 = work.join("o2");
    engine.checkout(&o1s.id, &o2, Some(mode)).unwrap();
    fs::write(o2.join("scratch"), "scratch\n").unwrap();
    engine.release(&o2).unwrap();

    // An untagged leaf for prune and gc to collect.
    let t = work.join("t");
    engine
        .checkout(&base.id, &t, Some(CheckoutMode::Portable))
        .unwrap();
    fs::write(t.join("t.txt"), "t\n").unwrap();
    fs::write(t.join("step"), "t").unwrap();
    engine.commit(&t, None).unwrap();
    let pruned = engine.prune(&PruneOptions::default()).unwrap();
    assert!(!pruned.snapshots.is_empty() && pruned.gc.layers > 0);
}

/// One of two processes sharing a store: check out the tagged base, add a file of its own,
/// commit, copy the result out and verify it, prune; 20 times. Reports on stdout what it
/// committed and what its prunes deleted.
#[test]
#[ignore = "child process of crash::two_processes_check_out_commit_and_prune_on_one_store"]
fn child_concurrent() {
    let store = PathBuf::from(child_var(STORE_VAR));
    let who = std::env::var(WHO_VAR).unwrap();
    let top = store.parent().unwrap().to_path_buf();
    let work = top.join(format!("work-{who}"));
    fs::create_dir_all(&work).unwrap();
    let engine = Engine::open(&store).unwrap();
    let base = engine.resolve("base").unwrap();
    for i in 0..20 {
        // Both kinds of checkout where overlay works: commits then also move upper dirs into
        // the unpacked cache while the other process collects garbage.
        let mode = if overlay_available() && i % 2 == 1 {
            CheckoutMode::Overlay
        } else {
            CheckoutMode::Portable
        };
        let dir = work.join(format!("c{i}"));
        engine.checkout(&base, &dir, Some(mode)).unwrap();
        let name = format!("f-{who}-{i}");
        fs::write(dir.join(&name), format!("{who} {i}\n")).unwrap();
        let committed = engine.commit(&dir, None).unwrap();
        println!("committed {} {name}", committed.id);

        let copy = work.join(format!("v{i}"));
        engine.copy_out(&committed.id, &copy).unwrap();
        let mut expected = base_tree();
        expected.insert(
            name.clone(),
            Node::File(format!("{who} {i}\n").into_bytes()),
        );
        assert_eq!(read_tree(&copy), expected, "{who}: copy of {name}");
        fs::remove_dir_all(&copy).unwrap();

        let report = engine
            .prune(&PruneOptions {
                keep_count: Some(10),
                ..PruneOptions::default()
            })
            .unwrap();
        for id in report.snapshots {
            println!("pruned {id}");
        }
    }
}

// ---- running children ----

/// Runs `test` of this binary as a child on `store`, logging to `logs/<label>.*`.
fn spawn_child(test: &str, store: &Path, env: &[(&str, &str)], logs: &Path, label: &str) -> Child {
    fs::create_dir_all(logs).unwrap();
    let out = fs::File::create(logs.join(format!("{label}.out"))).unwrap();
    let err = fs::File::create(logs.join(format!("{label}.err"))).unwrap();
    let mut command = child_test(test);
    command
        .env(STORE_VAR, store)
        .env_remove("STRATA_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

fn wait(child: &mut Child, label: &str) -> ExitStatus {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{label}: the child hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn log_of(logs: &Path, label: &str) -> String {
    let read =
        |ext: &str| fs::read_to_string(logs.join(format!("{label}.{ext}"))).unwrap_or_default();
    format!("stdout:\n{}\nstderr:\n{}", read("out"), read("err"))
}

/// Detaches overlay mounts left under the test's directory, even when the test fails.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Ok(points) = strata_snapshot::overlay::mounts_under(&self.0) {
            for point in points {
                let _ = strata_snapshot::overlay::unmount_detach(&point);
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    strata_snapshot::overlay::mounts_under(dir).unwrap()
}

#[cfg(not(target_os = "linux"))]
fn mounts_under(_: &Path) -> Vec<PathBuf> {
    Vec::new()
}

// ---- checking a store after a crash ----

/// Opens the store after a crash and checks everything the issue promises; leaves it with
/// no checkouts.
fn check_recovered(store: &Path, top: &Path, label: &str) {
    let engine = Engine::open(store).unwrap();

    // What the open alone must have done: no unpack in progress, no stray or broken state.
    let unpacks = names_in(&store.join("unpacked-v1"));
    assert!(
        unpacks.iter().all(|n| !n.starts_with("tmp-")),
        "{label}: unpacks left after open: {unpacks:?}"
    );
    let rows = engine.checkouts().unwrap();
    let tracked_states: HashSet<String> = rows
        .iter()
        .map(|r| {
            let state = crate::engine::state_of(&engine, r);
            let name = state.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                state.is_dir(),
                "{label}: {} lost its state",
                r.dir.display()
            );
            let marker = if r.mode == CheckoutMode::Overlay {
                "upper"
            } else {
                "manifest"
            };
            assert!(
                state.join(marker).exists(),
                "{label}: {} was left half made or half discarded",
                r.dir.display()
            );
            name
        })
        .collect();
    let states: HashSet<String> = names_in(&store.join("checkouts-v1")).into_iter().collect();
    assert_eq!(
        states, tracked_states,
        "{label}: state dirs are exactly those of tracked checkouts"
    );
    assert!(
        mounts_under(&store.join("checkouts-v1")).is_empty(),
        "{label}: no mount sits on a state dir"
    );

    // Repair, then nothing is left to repair.
    let problems = engine.fsck(true).unwrap();
    if !problems.is_empty() {
        eprintln!("{label}: fsck repaired {problems:?}");
    }
    assert!(
        problems.iter().all(|p| p.repaired),
        "{label}: unrepaired {problems:?}"
    );
    let again = engine.fsck(false).unwrap();
    assert!(again.is_empty(), "{label}: after repair: {again:?}");

    // Only tracked overlay checkouts are mounted, and all of them are.
    let rows = engine.checkouts().unwrap();
    let overlay_dirs: HashSet<PathBuf> = rows
        .iter()
        .filter(|r| r.mode == CheckoutMode::Overlay)
        .map(|r| r.dir.clone())
        .collect();
    let mounted: HashSet<PathBuf> = mounts_under(top).into_iter().collect();
    assert_eq!(
        mounted, overlay_dirs,
        "{label}: mounted dirs are exactly the tracked overlay checkouts"
    );

    // Every snapshot checks out whole, with the content of the step that made it.
    let verify = top.join("verify");
    fs::create_dir_all(&verify).unwrap();
    for (n, snapshot) in engine.snapshots().unwrap().iter().enumerate() {
        let dir = verify.join(format!("{label}-{n}"));
        engine
            .checkout(&snapshot.id, &dir, Some(CheckoutMode::Portable))
            .unwrap_or_else(|e| panic!("{label}: {} does not check out: {e}", snapshot.id));
        let dir = fs::canonicalize(&dir).unwrap();
        let tree = read_tree(&dir);
        let step = match tree.get("step") {
            Some(Node::File(b)) => Some(String::from_utf8(b.clone()).unwrap()),
            _ => None,
        };
        assert_eq!(
            tree,
            expected_tree(step.as_deref(), &dir),
            "{label}: content of {}",
            snapshot.id
        );
        assert_eq!(snapshot.depth, depth_of(step.as_deref()), "{label}: depth");
        engine.release(&dir).unwrap();
    }

    // Leave no checkout behind: the next child starts clean, and mounts do not pile up.
    for row in rows {
        engine.release(&row.dir).unwrap();
    }
    assert!(mounts_under(top).is_empty(), "{label}: mounts left");
    engine.wait_for_deletions();
    assert!(names_in(&store.join("checkouts-v1")).is_empty());
    // Trees a dead deleter claimed are deleted too: the trash holds nothing.
    assert_eq!(
        names_in(&store.join("trash-v1")),
        Vec::<String>::new(),
        "{label}: trash left"
    );
}

/// Whether the workload's overlay checkouts, and their crash points, are tried: elsewhere
/// the workload runs portable checkouts only.
fn overlay_note() -> bool {
    require(
        "the crash points of overlay checkouts",
        crate::overlay_problem(),
    )
}

#[test]
fn a_crash_at_any_failpoint_is_recovered() {
    let overlay = overlay_note();
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let _guard = MountGuard(top.clone());
    rootfs_tar(&top);
    // One store for every crash: each child also starts on a store repaired after the last.
    let store = top.join("store");
    let logs = top.join("logs");
    let started = Instant::now();
    let mut ran = 0;
    for &name in FAILPOINTS {
        if !overlay && name.contains(".overlay.") {
            continue;
        }
        let mut child = spawn_child(
            "crash::child_workload",
            &store,
            &[("STRATA_FAILPOINT", name)],
            &logs,
            name,
        );
        let status = wait(&mut child, name);
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "{name}: the workload should die there, but {status}\n{}",
            log_of(&logs, name)
        );
        check_recovered(&store, &top, name);
        ran += 1;
    }
    eprintln!(
        "{ran} failpoints crashed and recovered in {:.1?}",
        started.elapsed()
    );
}

/// A tiny xorshift generator: enough to spread kill times, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn a_kill_at_a_random_moment_is_recovered() {
    overlay_note();
    let seed = std::env::var("STRATA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("random kills with STRATA_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let _guard = MountGuard(top.clone());
    rootfs_tar(&top);
    let store = top.join("store");
    let logs = top.join("logs");
    let (mut killed, mut finished) = (0, 0);
    for i in 0..20 {
        let label = format!("kill-{i}");
        let delay = Duration::from_millis(rng.below(301));
        let mut child = spawn_child("crash::child_workload", &store, &[], &logs, &label);
        std::thread::sleep(delay);
        // SIGKILL; an error only means it already exited.
        let _ = child.kill();
        let status = wait(&mut child, &label);
        match status.signal() {
            Some(SIGKILL) => killed += 1,
            None if status.success() => finished += 1,
            _ => panic!(
                "{label} (after {delay:?}, seed {seed}): {status}\n{}",
                log_of(&logs, &label)
            ),
        }
        check_recovered(
            &store,
            &top,
            &format!("{label} after {delay:?}, seed {seed}"),
        );
    }
    eprintln!("{killed} killed mid-way, {finished} finished before the kill");
}

#[test]
fn two_processes_check_out_commit_and_prune_on_one_store() {
    overlay_note();
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let _guard = MountGuard(top.clone());
    let store = top.join("store");
    let logs = top.join("logs");
    {
        let engine = Engine::open(&store).unwrap();
        engine.import(&rootfs_tar(&top), Some("base")).unwrap();
    }
    let started = Instant::now();
    let mut children: Vec<(String, Child)> = ["a", "b"]
        .into_iter()
        .map(|who| {
            let child = spawn_child(
                "crash::child_concurrent",
                &store,
                &[(WHO_VAR, who)],
                &logs,
                who,
            );
            (who.to_owned(), child)
        })
        .collect();
    let mut committed: BTreeMap<SnapshotId, String> = BTreeMap::new();
    let mut pruned: HashSet<SnapshotId> = HashSet::new();
    for (who, child) in &mut children {
        let status = wait(child, who);
        assert!(status.success(), "{who}: {status}\n{}", log_of(&logs, who));
        let out = fs::read_to_string(logs.join(format!("{who}.out"))).unwrap();
        for line in out.lines() {
            // The harness may print its own words ahead of a report on the same line.
            let report = ["committed ", "pruned "]
                .iter()
                .filter_map(|w| line.find(w))
                .min()
                .map_or("", |at| &line[at..]);
            let words: Vec<&str> = report.split_whitespace().collect();
            match words.as_slice() {
                ["committed", id, name] => {
                    let id: SnapshotId = id.parse().unwrap();
                    if let Some(other) = committed.insert(id, (*name).to_owned()) {
                        panic!("{name} and {other} were both committed as {id}");
                    }
                }
                ["pruned", id] => {
                    pruned.insert(id.parse().unwrap());
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "two processes: {} commits, {} pruned, in {:.1?}",
        committed.len(),
        pruned.len(),
        started.elapsed()
    );
    assert_eq!(committed.len(), 40, "every commit made a distinct snapshot");

    let engine = Engine::open(&store).unwrap();
    let problems = engine.fsck(false).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(engine.checkouts().unwrap().is_empty());
    let base = engine.resolve("base").unwrap();
    let remaining = engine.snapshots().unwrap();
    let remaining_ids: HashSet<SnapshotId> = remaining.iter().map(|r| r.id).collect();
    // No loss: a reported commit is either still there or was pruned by policy.
    for (id, name) in &committed {
        assert!(
            remaining_ids.contains(id) != pruned.contains(id),
            "{name} ({id}) is neither kept nor reported pruned (or both)"
        );
    }
    for (n, row) in remaining.iter().enumerate() {
        let dir = top.join(format!("verify-{n}"));
        engine
            .checkout(&row.id, &dir, Some(CheckoutMode::Portable))
            .unwrap();
        let mut expected = base_tree();
        if row.id != base {
            let name = committed
                .get(&row.id)
                .unwrap_or_else(|| panic!("{} was never reported committed", row.id));
            let (who, i) = name["f-".len()..].split_once('-').unwrap();
            expected.insert(
                name.clone(),
                Node::File(format!("{who} {i}\n").into_bytes()),
            );
        }
        assert_eq!(read_tree(&dir), expected, "content of {}", row.id);
        engine.release(&dir).unwrap();
    }
}
