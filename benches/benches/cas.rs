//! Criterion micro-benchmarks of `strata-cas`, on small in-memory or temporary inputs so that
//! the whole suite runs in well under a minute with `cargo xtask bench --quick`.
//!
//! - `tar/parse 2k files`, `tar/headers 2k files`: [`strata_cas::tar::TarReader`] over an
//!   in-memory tar of ~2,000 small files, reading all data or skipping it;
//! - `frames/compress 32 MiB level 3`: [`strata_cas::frames::compress_all`] (framed zstd,
//!   every core);
//! - `blake3/hash 32 MiB`: single-threaded `blake3::hash`, the layer id's cost;
//! - `layer/create 2k files to sink`: [`strata_cas::create::create_from_dir`] into
//!   [`std::io::sink`];
//! - `layer/extract 2k files`: [`strata_cas::extract::apply_file`] of that layer into a fresh
//!   directory (creation of the directory and its removal are not timed).
//!
//! Temporary trees go under `$STRATA_BENCH_TMPDIR` when set (`cargo xtask bench` points it at
//! its scratch filesystem), else the system temporary directory.

use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use strata_cas::create::{CreateOptions, create_from_dir, write_tar};
use strata_cas::extract::{ExtractOptions, apply_file};
use strata_cas::frames::compress_all;
use strata_cas::tar::{Limits, TarReader};

mod common;
use common::{Rng, tempdir, text};

/// Files in the small tree.
const FILES: usize = 2_000;
/// Size of the buffers for compression and hashing.
const BIG: usize = 32 << 20;

/// A tree of `FILES` small files (100 B to 6 KiB) in 40 directories, plus a few symlinks.
fn small_tree(dir: &Path) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for i in 0..FILES {
        let sub = dir.join(format!("pkg{:02}/mod{}", i % 40, i % 3));
        std::fs::create_dir_all(&sub).expect("creating a directory");
        let len = 100 + rng.below(6 * 1024) as usize;
        std::fs::write(sub.join(format!("file{i:04}.rs")), text(&mut rng, len))
            .expect("writing a file");
        if i % 100 == 0 {
            std::os::unix::fs::symlink(format!("file{i:04}.rs"), sub.join(format!("link{i:04}")))
                .expect("creating a symlink");
        }
    }
}

fn bench_tar(c: &mut Criterion) {
    let tree = tempdir();
    small_tree(tree.path());
    let mut tar = Vec::new();
    write_tar(tree.path(), &mut tar, &CreateOptions::default()).expect("writing the tar");
    let limits = Limits::default();

    let mut group = c.benchmark_group("tar");
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.bench_function("parse 2k files", |b| {
        let mut buf = vec![0u8; 64 << 10];
        b.iter(|| {
            let mut reader = TarReader::new(black_box(&tar[..]), &limits);
            let (mut entries, mut bytes) = (0u64, 0usize);
            while let Some(entry) = reader.next_entry().expect("parsing") {
                black_box(&entry);
                entries += 1;
                loop {
                    let n = reader.read_data(&mut buf).expect("reading data");
                    if n == 0 {
                        break;
                    }
                    bytes += n;
                }
            }
            (entries, bytes)
        });
    });
    group.bench_function("headers 2k files", |b| {
        b.iter(|| {
            let mut reader = TarReader::new(black_box(&tar[..]), &limits);
            let mut entries = 0u64;
            while let Some(entry) = reader.next_entry().expect("parsing") {
                black_box(&entry);
                entries += 1;
            }
            entries
        });
    });
    group.finish();
}

fn bench_frames_and_hash(c: &mut Criterion) {
    let data = text(&mut Rng(0x9E37_79B9_7F4A_7C15), BIG);
    let chunk_size = CreateOptions::default().chunk_size;

    let mut group = c.benchmark_group("frames");
    group
        .sample_size(10)
        .throughput(Throughput::Bytes(BIG as u64));
    group.bench_function("compress 32 MiB level 3", |b| {
        b.iter(|| compress_all(black_box(&data), 3, chunk_size).len());
    });
    group.finish();

    let mut group = c.benchmark_group("blake3");
    group
        .sample_size(20)
        .throughput(Throughput::Bytes(BIG as u64));
    group.bench_function("hash 32 MiB", |b| b.iter(|| blake3::hash(black_box(&data))));
    group.finish();
}

fn bench_layer(c: &mut Criterion) {
    let tree = tempdir();
    small_tree(tree.path());
    let opts = CreateOptions::default();
    let layer_dir = tempdir();
    let layer = layer_dir.path().join("layer.tar.zst");
    let file = std::fs::File::create(&layer).expect("creating the layer file");
    let info = create_from_dir(tree.path(), std::io::BufWriter::new(file), &opts)
        .expect("creating the layer");

    let mut group = c.benchmark_group("layer");
    group
        .sample_size(20)
        .throughput(Throughput::Bytes(info.uncompressed_size));
    group.bench_function("create 2k files to sink", |b| {
        b.iter(|| create_from_dir(black_box(tree.path()), std::io::sink(), &opts).expect("create"));
    });
    let extract = ExtractOptions::default();
    group.bench_function("extract 2k files", |b| {
        b.iter_batched(
            tempdir,
            |dst| {
                apply_file(&layer, &dst.path().join("root"), &extract).expect("extract");
                // Returned, so that the tree is removed outside the timed section.
                dst
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_tar, bench_frames_and_hash, bench_layer);
criterion_main!(benches);
