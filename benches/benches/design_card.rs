//! Criterion comparisons behind `docs/architecture.md`'s "The design card's crates": where
//! Strata does a job itself instead of using a crate the design card names, the same inputs
//! through both.
//!
//! - `design-card tar/read …`: a layer tarball of ~3,000 entries (source-like files of 100 B
//!   to 8 KiB, one in ten of 16–128 KiB, one in a hundred of 256 KiB–1 MiB, directories,
//!   symlinks, hard links, names past 100 bytes) read in memory, every header and every data
//!   byte, with the `tar` crate (`Archive::entries`) and with [`strata_cas::tar::TarReader`];
//! - `design-card tar/extract …`: the same tarball unpacked into an empty directory by
//!   `tar::Archive::unpack` and by [`strata_cas::extract::apply_tar`] (owners not restored
//!   by either; one writer thread, then one per core); creating the directory and removing
//!   the tree are not timed;
//! - `design-card frames/…`: 64 MiB of source-like text cut into 8 MiB chunks
//!   ([`strata_cas::frames::DEFAULT_CHUNK_SIZE`]) compressed at level 3 into independent
//!   frames, by [`strata_cas::frames::compress_all`] (its own worker threads, bounded
//!   queue, blake3 of the input on the caller's thread) and by `rayon` `par_chunks` +
//!   `zstd::bulk::compress` on the global pool, with the blake3 of the input beside it
//!   (`rayon::join`), the frames then concatenated.
//!
//! Under `cargo bench`, before the timings, the frames pair is run once more with the heap
//! counted, on 64 MiB and on 256 MiB, and the peak heap of each besides its input is printed
//! to stderr (see [`report_frames_memory`]).
//!
//! Temporary trees go under `$STRATA_BENCH_TMPDIR` when set, else the system temporary
//! directory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use rayon::prelude::*;
use strata_cas::create::{CreateOptions, write_tar};
use strata_cas::extract::{ExtractOptions, Ownership, apply_tar};
use strata_cas::frames::{DEFAULT_CHUNK_SIZE, compress_all};
use strata_cas::tar::{Limits, TarReader};

mod common;
use common::{Rng, tempdir, text};

/// Files in the layer.
const FILES: usize = 3_000;
/// Bytes compressed into frames.
const BIG: usize = 64 << 20;
/// zstd level of both compressors.
const LEVEL: i32 = 3;

/// The system allocator, counting live heap bytes and their peak while `COUNTING` is set.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl CountingAlloc {
    fn grew(by: usize) {
        if COUNTING.load(Ordering::Relaxed) {
            let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn shrank(by: usize) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(by, Ordering::Relaxed);
        }
    }
}

#[allow(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; every call is forwarded to System unchanged"
)]
// SAFETY: each method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counting touches only atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the one `System.alloc` needs.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::grew(new_size);
            Self::shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Peak heap bytes, above what was live before, while `f` runs (the counter counts only
/// allocations made while it is on, so a block allocated earlier and freed inside `f`
/// lowers the figure: run `f` with its input already allocated and keep its output).
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LIVE.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (out, PEAK.load(Ordering::SeqCst))
}

/// A tree like a package layer: `FILES` files of mixed sizes in 60 directories (some with
/// names past ustar's 100 bytes), a symlink every 50 files and a hard link every 200.
fn layer_tree(dir: &Path) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for i in 0..FILES {
        let sub = if i % 7 == 0 {
            dir.join(format!(
                "usr/lib/python3/site-packages/strata_bench_package_{:02}/some/deeply/nested/module_directory",
                i % 60
            ))
        } else {
            dir.join(format!("usr/share/pkg{:02}/mod{}", i % 60, i % 3))
        };
        std::fs::create_dir_all(&sub).expect("creating a directory");
        let len = if i % 100 == 0 {
            rng.between(256 << 10, 1 << 20)
        } else if i % 10 == 0 {
            rng.between(16 << 10, 128 << 10)
        } else {
            rng.between(100, 8 << 10)
        };
        let name = format!("file{i:04}.rs");
        std::fs::write(sub.join(&name), text(&mut rng, len)).expect("writing a file");
        if i % 50 == 0 {
            std::os::unix::fs::symlink(&name, sub.join(format!("link{i:04}")))
                .expect("creating a symlink");
        }
        if i % 200 == 0 {
            std::fs::hard_link(sub.join(&name), sub.join(format!("hard{i:04}.rs")))
                .expect("creating a hard link");
        }
    }
}

/// The layer tarball, as Strata writes it (ustar plus PAX for long names).
fn layer_tar() -> (Vec<u8>, u64) {
    let tree = tempdir();
    layer_tree(tree.path());
    let mut tar = Vec::new();
    let info =
        write_tar(tree.path(), &mut tar, &CreateOptions::default()).expect("writing the tar");
    let mut entries = 0u64;
    let mut reader = TarReader::new(&tar[..], &Limits::default());
    while reader.next_entry().expect("parsing").is_some() {
        entries += 1;
    }
    assert!(info.uncompressed_size == tar.len() as u64);
    (tar, entries)
}

fn bench_tar(c: &mut Criterion) {
    let (tar, entries) = layer_tar();
    let limits = Limits::default();

    let mut group = c.benchmark_group("design-card tar");
    group
        .sample_size(20)
        .throughput(Throughput::Bytes(tar.len() as u64));
    let read_name = format!("read {entries} entries");
    group.bench_function(format!("{read_name}/tar crate"), |b| {
        let mut buf = vec![0u8; 64 << 10];
        b.iter(|| {
            let mut archive = tar::Archive::new(black_box(&tar[..]));
            let (mut n, mut bytes) = (0u64, 0usize);
            for entry in archive.entries().expect("parsing") {
                let mut entry = entry.expect("parsing");
                black_box(entry.header());
                black_box(entry.path().expect("a path"));
                black_box(entry.link_name().expect("a link name"));
                n += 1;
                loop {
                    let got = entry.read(&mut buf).expect("reading data");
                    if got == 0 {
                        break;
                    }
                    bytes += got;
                }
            }
            assert_eq!(n, entries);
            bytes
        });
    });
    group.bench_function(format!("{read_name}/strata TarReader"), |b| {
        let mut buf = vec![0u8; 64 << 10];
        b.iter(|| {
            let mut reader = TarReader::new(black_box(&tar[..]), &limits);
            let (mut n, mut bytes) = (0u64, 0usize);
            while let Some(entry) = reader.next_entry().expect("parsing") {
                black_box(&entry);
                n += 1;
                loop {
                    let got = reader.read_data(&mut buf).expect("reading data");
                    if got == 0 {
                        break;
                    }
                    bytes += got;
                }
            }
            assert_eq!(n, entries);
            bytes
        });
    });

    let extract_name = format!("extract {entries} entries");
    group.bench_function(format!("{extract_name}/tar crate unpack"), |b| {
        b.iter_batched(
            tempdir,
            |dst| {
                let root = dst.path().join("root");
                std::fs::create_dir(&root).expect("creating the target");
                tar::Archive::new(black_box(&tar[..]))
                    .unpack(&root)
                    .expect("unpacking");
                dst
            },
            BatchSize::PerIteration,
        );
    });
    for threads in [1, 0] {
        let opts = ExtractOptions {
            ownership: Ownership::Ignore,
            threads,
            ..ExtractOptions::default()
        };
        let label = if threads == 1 {
            "1 writer"
        } else {
            "writer per core"
        };
        group.bench_function(format!("{extract_name}/strata apply_tar {label}"), |b| {
            b.iter_batched(
                tempdir,
                |dst| {
                    apply_tar(black_box(&tar[..]), &dst.path().join("root"), &opts)
                        .expect("extracting");
                    // Returned, so that the tree is removed outside the timed section.
                    dst
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Strata's framing done with rayon: every chunk compressed on the global pool into its own
/// buffer, the input hashed beside it, the frames concatenated once all are done.
fn rayon_frames(data: &[u8], level: i32, chunk_size: usize) -> (Vec<u8>, blake3::Hash) {
    let (hash, frames) = rayon::join(
        || blake3::hash(data),
        || {
            data.par_chunks(chunk_size)
                .map(|chunk| zstd::bulk::compress(chunk, level).expect("compressing"))
                .collect::<Vec<Vec<u8>>>()
        },
    );
    let mut out = Vec::with_capacity(frames.iter().map(Vec::len).sum());
    for frame in &frames {
        out.extend_from_slice(frame);
    }
    (out, hash)
}

fn bench_frames(c: &mut Criterion) {
    let data = text(&mut Rng(0x9E37_79B9_7F4A_7C15), BIG);
    let chunk_size = DEFAULT_CHUNK_SIZE;

    let mut group = c.benchmark_group("design-card frames");
    group
        .sample_size(10)
        .throughput(Throughput::Bytes(BIG as u64));
    group.bench_function("compress 64 MiB level 3/strata FrameEncoder", |b| {
        b.iter(|| compress_all(black_box(&data), LEVEL, chunk_size).len());
    });
    group.bench_function("compress 64 MiB level 3/rayon par_chunks", |b| {
        b.iter(|| rayon_frames(black_box(&data), LEVEL, chunk_size).0.len());
    });
    group.finish();
}

/// Prints the peak heap of each side of the frames pair (run once, outside criterion): on the
/// 64 MiB input both hold it whole; on 256 MiB the encoder is fed the 64 MiB buffer four
/// times, as a layer streams into it, while `par_chunks` needs the 256 MiB as one slice
/// (allocated before counting starts, so not in its figure).
#[allow(
    clippy::print_stderr,
    reason = "a figure criterion does not measure, printed beside its output"
)]
fn report_frames_memory() {
    use std::io::Write as _;

    let data = text(&mut Rng(0x9E37_79B9_7F4A_7C15), BIG);
    let chunk_size = DEFAULT_CHUNK_SIZE;
    let mib = |n: usize| n as f64 / f64::from(1 << 20);
    // Start the global pool first, so that its threads' allocations are not counted.
    rayon::broadcast(|_| ());
    for copies in [1, 4] {
        let (ours, ours_peak) = peak_heap(|| {
            let mut enc = strata_cas::frames::FrameEncoder::new(Vec::new(), LEVEL, chunk_size, 0)
                .expect("creating the encoder");
            for _ in 0..copies {
                enc.write_all(&data).expect("compressing");
            }
            enc.finish().expect("compressing").0
        });
        let whole = data.repeat(copies);
        let (theirs, theirs_peak) = peak_heap(|| rayon_frames(&whole, LEVEL, chunk_size));
        drop(whole);
        eprintln!(
            "design-card frames: {} MiB in {} MiB chunks, peak heap besides the input: \
             strata FrameEncoder {:.1} MiB (streamed, output {:.1} MiB), \
             rayon par_chunks {:.1} MiB (whole input as a slice, output {:.1} MiB)",
            (BIG * copies) >> 20,
            chunk_size >> 20,
            mib(ours_peak),
            mib(ours.len()),
            mib(theirs_peak),
            mib(theirs.0.len()),
        );
    }
}

criterion_group!(benches, bench_tar, bench_frames);

fn main() {
    if std::env::args().any(|a| a == "--bench") {
        report_frames_memory();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
