//! Fuzz target: a whole `layer apply` of any bytes (a tar with its header checksums fixed
//! up, or zstd, gzip, plain tar through the file detection) onto a target holding a lower
//! layer whose symlinks lead out of it. Whatever happens, nothing outside the target may
//! change.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_cas::extract::{apply_file, apply_tar};
use strata_cas::{DevicePolicy, ExtractOptions, Limits, Ownership, SetuidPolicy, WhiteoutMode};
use strata_fuzz::{Sandbox, fix_checksums, threads, wait_for_threads};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, layer)) = data.split_first() else {
        return;
    };
    let threads_before = threads();
    let sandbox = Sandbox::new();
    let opts = ExtractOptions {
        // Created device nodes would be real ones; refusing and skipping is what is fuzzed.
        devices: if mode & 1 == 0 {
            DevicePolicy::Refuse
        } else {
            DevicePolicy::Skip
        },
        setuid: [
            SetuidPolicy::Refuse,
            SetuidPolicy::Strip,
            SetuidPolicy::Keep,
        ][usize::from(mode >> 1 & 3) % 3],
        ownership: if mode & 8 == 0 {
            Ownership::Auto
        } else {
            Ownership::Ignore
        },
        limits: Limits {
            max_bytes: 16 << 20,
            ..Limits::default()
        },
        threads: 1 + usize::from(mode >> 4 & 1),
        sync: false,
        whiteouts: [
            WhiteoutMode::Apply,
            WhiteoutMode::Keep,
            WhiteoutMode::Overlay,
        ][usize::from(mode >> 5 & 3) % 3],
    };
    if mode >> 7 == 0 {
        // Checksums fixed up, so mutated headers reach extraction (`tar_reader` fuzzes
        // them as they are).
        let mut layer = layer.to_vec();
        fix_checksums(&mut layer);
        let _ = apply_tar(&layer[..], &sandbox.target, &opts);
    } else {
        // Compressed or not, detected from the first bytes.
        let file = sandbox.base.join("layer");
        std::fs::write(&file, layer).unwrap();
        let _ = apply_file(&file, &sandbox.target, &opts);
        std::fs::remove_file(&file).unwrap();
    }
    sandbox.check();
    // A framed layer was decoded by detached threads.
    wait_for_threads(threads_before);
});
