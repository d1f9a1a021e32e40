//! End to end on Windows (run under Wine by `cargo xtask wine-test`): import a layer made
//! by the CAS's walker, check it out portably, change it, commit, and check the child out
//! elsewhere.

use std::fs;
use std::path::Path;

use strata_cas::CreateOptions;
use strata_cas::create::write_tar;

use crate::{CheckoutMode, Engine};

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Every file under `dir` with its content, `/`-separated; directories end in `/`.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for item in fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/");
            if path.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(root, &path, out);
            } else {
                out.push((rel, fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_portable_checkout_commits_and_checks_out_again() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    write(&base.join("etc/config"), b"v1");
    write(&base.join("bin/tool.exe"), b"MZ tool");
    write(&base.join("keep/me"), b"kept");
    write(&base.join("gone/soon"), b"deleted by the step");
    write(&base.join("gone/too"), b"deleted with its directory");
    write(&base.join("readonly.txt"), b"locked");
    let mut perms = fs::metadata(base.join("readonly.txt"))
        .unwrap()
        .permissions();
    perms.set_readonly(true);
    fs::set_permissions(base.join("readonly.txt"), perms).unwrap();
    let tarball = tmp.path().join("base.tar");
    write_tar(
        &base,
        fs::File::create(&tarball).unwrap(),
        &CreateOptions::default(),
    )
    .unwrap();

    let engine = Engine::open(&tmp.path().join("store")).unwrap();
    let imported = engine.import(&tarball, Some("base")).unwrap();
    let first = tmp.path().join("first");
    engine
        .checkout(&imported.id, &first, Some(CheckoutMode::Portable))
        .unwrap();
    assert_eq!(tree(&first), tree(&base));
    assert!(
        fs::metadata(first.join("readonly.txt"))
            .unwrap()
            .permissions()
            .readonly()
    );

    // What a build step does.
    fs::write(first.join("etc/config"), b"v2, longer").unwrap();
    write(&first.join("new/dir/file.txt"), b"added");
    fs::remove_file(first.join("gone/soon")).unwrap();
    fs::remove_file(first.join("gone/too")).unwrap();
    fs::remove_dir(first.join("gone")).unwrap();
    fs::remove_file(first.join("bin/tool.exe")).unwrap();
    let child = engine.commit(&first, Some("child")).unwrap();
    assert_eq!(child.parent, Some(imported.id));
    assert!(!first.exists(), "a commit releases its checkout");

    let second = tmp.path().join("second");
    engine
        .checkout(&child.id, &second, Some(CheckoutMode::Portable))
        .unwrap();
    let expected: Vec<(String, Vec<u8>)> = [
        ("bin/", &b""[..]),
        ("etc/", b""),
        ("etc/config", b"v2, longer"),
        ("keep/", b""),
        ("keep/me", b"kept"),
        ("new/", b""),
        ("new/dir/", b""),
        ("new/dir/file.txt", b"added"),
        ("readonly.txt", b"locked"),
    ]
    .into_iter()
    .map(|(p, d)| (p.to_owned(), d.to_vec()))
    .collect();
    assert_eq!(tree(&second), expected);

    // A second generation on top of the first.
    fs::write(second.join("keep/me"), b"changed again").unwrap();
    let grandchild = engine.commit(&second, None).unwrap();
    let third = tmp.path().join("third");
    engine
        .checkout(&grandchild.id, &third, Some(CheckoutMode::Portable))
        .unwrap();
    assert_eq!(fs::read(third.join("keep/me")).unwrap(), b"changed again");
    assert_eq!(fs::read(third.join("etc/config")).unwrap(), b"v2, longer");
    assert!(!third.join("gone").exists());
    engine.release(&third).unwrap();
    assert!(!third.exists());
}

/// Recovery tells dead makers from live ones on Windows too: an entry named after this
/// process is kept, one named after an earlier process with its pid (another creation time)
/// or after an exited process is removed. (Liveness itself is tested in strata-process.)
#[test]
fn recovery_removes_what_dead_processes_left_and_keeps_what_live_ones_make() {
    use strata_process::Owner;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    drop(Engine::open(&store).unwrap());
    let me = Owner::current();
    assert_ne!(me.start_time, 0, "the creation time is known");
    let mut child = std::process::Command::new("cmd")
        .args(["/C", "exit 0"])
        .spawn()
        .unwrap();
    let exited = child.id();
    child.wait().unwrap();
    let states = store.join("checkouts-v1");
    let unpacked = store.join("unpacked-v1");
    let gone = [
        states.join(format!("c-{}.{}-1", me.pid, me.start_time + 1)),
        states.join(format!("x-{exited}-0-2")),
        unpacked.join(format!("tmp-{}.{}-3", me.pid, me.start_time - 1)),
    ];
    let kept = [
        states.join(format!("c-{me}-4")),
        unpacked.join(format!("tmp-{me}-5")),
    ];
    for dir in gone.iter().chain(&kept) {
        fs::create_dir_all(dir).unwrap();
    }
    drop(Engine::open(&store).unwrap());
    for dir in &gone {
        assert!(!dir.exists(), "{} was left", dir.display());
    }
    for dir in &kept {
        assert!(dir.exists(), "{} was removed", dir.display());
    }
}
