//! `strata import|checkout|commit|release|snapshot` against a real store.

use std::fs;

use crate::support::{Env, os, rootfs};

#[test]
fn import_checkout_commit_list_and_copy() {
    let env = Env::new();
    let tarball = rootfs(&env);
    let imported = env
        .run([
            os("import"),
            os(&tarball),
            os("--tag"),
            os("base"),
            os("--json"),
        ])
        .json();
    let base = imported["id"].as_str().unwrap().to_owned();

    let work = env.path("work");
    let out = env
        .run([
            os("checkout"),
            os("base"),
            os(&work),
            os("--portable"),
            os("--json"),
        ])
        .json();
    assert_eq!(out["mode"], "portable");
    assert_eq!(
        fs::read_to_string(work.join("etc/hostname")).unwrap(),
        "builder\n"
    );
    fs::write(work.join("etc/hostname"), "step\n").unwrap();

    let committed = env
        .run([
            os("commit"),
            os(&work),
            os("--tag"),
            os("step1"),
            os("--json"),
        ])
        .json();
    assert_eq!(committed["parent"].as_str().unwrap(), base);
    assert!(!work.exists(), "commit releases the checkout");

    let listing = env.run([os("snapshot"), os("ls")]).ok();
    assert!(
        listing.contains(&base) && listing.contains("step1"),
        "{listing}"
    );

    let copy = env.path("copy");
    env.run([os("checkout"), os("--copy"), os("step1"), os(&copy)])
        .ok();
    assert_eq!(
        fs::read_to_string(copy.join("etc/hostname")).unwrap(),
        "step\n"
    );

    // In use: the base has a child, so removing it is refused and names it.
    env.run([os("snapshot"), os("rm"), os("base")])
        .fails_with(&["cannot remove snapshot base"]);
    env.run([os("snapshot"), os("rm"), os("step1")]).ok();
}

#[test]
fn release_and_errors_name_what_is_wrong() {
    let env = Env::new();
    let tarball = rootfs(&env);
    env.run([os("import"), os(&tarball), os("--tag"), os("base")])
        .ok();
    let work = env.path("work");
    env.run([os("checkout"), os("base"), os(&work), os("--portable")])
        .ok();
    env.run([os("release"), os(&work)]).ok();
    assert!(!work.exists());
    // The released tree went into the store's trash, and a detached `strata empty-trash`
    // deletes it after `release` exits.
    let trash = env.store().join("trash-v1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::read_dir(&trash).unwrap().next().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the trash was not emptied in the background"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    env.run([os("commit"), os(&work)])
        .fails_with(&["cannot commit"]);
    env.run([os("checkout"), os("no-such-tag"), os(env.path("x"))])
        .fails_with(&["no-such-tag"]);
    let junk = env.path("junk.tar");
    fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    env.run([os("import"), os(&junk)]).fails_with(&["junk.tar"]);
}
