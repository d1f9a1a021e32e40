//! The shared step cache against a real registry: entries fetched into empty stores give the
//! same snapshots, roots and relocation included; concurrent publications and bad entries.

use std::fs;

use strata_oci::registry::{Options, StepCache};
use strata_snapshot::CheckoutMode;

use crate::Fixture;
use crate::registry::start;

const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const OTHER_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

#[test]
fn a_step_fetched_into_an_empty_store_is_the_same_snapshot_relocated_there() {
    let Some(reg) = start() else {
        return;
    };
    let f = Fixture::new();
    // A committed step whose file mentions the root it ran at.
    let root_a = f.path("roots-a/r0000");
    fs::create_dir_all(root_a.parent().unwrap()).unwrap();
    f.engine
        .checkout(&f.top.id, &root_a, Some(CheckoutMode::Portable))
        .unwrap();
    fs::write(
        root_a.join("where.txt"),
        format!("built at {}\n", root_a.display()),
    )
    .unwrap();
    let step = f.engine.commit(&root_a, None).unwrap();
    assert!(step.root_path.is_some());

    let cache = StepCache::new(&format!("{}/cache", reg.host()), Options::new()).unwrap();
    assert!(!cache.contains(KEY).unwrap());
    assert!(cache.fetch(&f.engine, KEY).unwrap().is_none());
    cache
        .publish(&f.engine, KEY, &step.id, b"step log\n")
        .unwrap();
    assert!(cache.contains(KEY).unwrap());

    let b = f.other_store("builder-b");
    let (id, log) = cache.fetch(&b, KEY).unwrap().unwrap();
    assert_eq!(id, step.id);
    assert_eq!(log, b"step log\n");
    let row = b.snapshot(&id).unwrap().unwrap();
    assert_eq!(row.root_path, step.root_path);
    assert_eq!(b.chain(&id).unwrap().len(), 3);
    // Checked out at another root of the same length, the file names that root.
    let root_b = f.path("roots-b/r0000");
    fs::create_dir_all(root_b.parent().unwrap()).unwrap();
    b.checkout(&id, &root_b, Some(CheckoutMode::Portable))
        .unwrap();
    assert_eq!(
        fs::read_to_string(root_b.join("where.txt")).unwrap(),
        format!("built at {}\n", root_b.display())
    );
    b.release(&root_b).unwrap();
    // Fetching again into a store that has it all downloads nothing and agrees.
    assert_eq!(cache.fetch(&b, KEY).unwrap().unwrap().0, step.id);
}

#[test]
fn concurrent_publications_of_one_key_leave_a_whole_entry() {
    let Some(reg) = start() else {
        return;
    };
    let f = Fixture::new();
    let repo = format!("{}/cache", reg.host());
    std::thread::scope(|s| {
        for n in 0..4 {
            let (f, repo) = (&f, &repo);
            s.spawn(move || {
                let cache = StepCache::new(repo, Options::new().jobs(2)).unwrap();
                cache
                    .publish(&f.engine, KEY, &f.top.id, format!("log {n}\n").as_bytes())
                    .unwrap();
            });
        }
    });
    let cache = StepCache::new(&repo, Options::new()).unwrap();
    let b = f.other_store("b");
    let (id, log) = cache.fetch(&b, KEY).unwrap().unwrap();
    assert_eq!(id, f.top.id);
    assert!(String::from_utf8(log).unwrap().starts_with("log "));
}

#[test]
fn a_corrupted_entry_is_refused_and_the_cache_stays_usable() {
    let Some(reg) = start() else {
        return;
    };
    let f = Fixture::new();
    let cache = StepCache::new(&format!("{}/cache", reg.host()), Options::new()).unwrap();
    cache.publish(&f.engine, KEY, &f.top.id, b"log").unwrap();
    let base = f.top.parent.unwrap();
    cache
        .publish(&f.engine, OTHER_KEY, &base, b"base log")
        .unwrap();
    let image = strata_oci::Image::new(
        &f.engine,
        &f.top.id,
        &strata_oci::ImageMeta::new(),
        strata_oci::Compression::Zstd,
    )
    .unwrap();
    let data = reg.blob_data(&image.layers[1].digest);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&data, &bytes).unwrap();

    let b = f.other_store("b");
    let err = cache.fetch(&b, KEY).unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert!(b.snapshot(&f.top.id).unwrap().is_none());
    // The entry of the base, whose blobs are intact, still serves.
    let (id, log) = cache.fetch(&b, OTHER_KEY).unwrap().unwrap();
    assert_eq!((id, log.as_slice()), (base, &b"base log"[..]));
    // Bad keys never become tags.
    assert!(cache.contains("../../etc").is_err());
}
