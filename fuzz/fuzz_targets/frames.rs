//! Fuzz target: framed zstd. Any bytes as a blob file (seek table, parallel reader dropped
//! early or read to the end, the streaming fallback), and any bytes compressed into frames
//! and read back. Decoding threads must all exit once their readers are dropped: each run
//! waits for them (which also keeps LeakSanitizer from seeing a thread's memory mid-exit).

#![no_main]

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use libfuzzer_sys::fuzz_target;
use strata_cas::extract::open_layer_file;
use strata_cas::frames::{ParallelFrameReader, SeekTable, compress_all};
use strata_fuzz::{threads, wait_for_threads};

/// Reads at most `limit` bytes, tolerating errors (corrupt input).
fn read_some(reader: &mut impl Read, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while out.len() < limit {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, blob)) = data.split_first() else {
        return;
    };
    let threads_before = threads();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(blob).unwrap();
    let f = file.as_file_mut();
    if let Ok(Some(table)) = SeekTable::read_from(f) {
        assert_eq!(
            table.compressed_size() + table.encoded_len(),
            blob.len() as u64,
            "a seek table that does not add up was accepted"
        );
        if let Ok(Some(mut reader)) = ParallelFrameReader::new(f, &table, 2 + usize::from(mode % 3))
        {
            // Dropped after reading nothing, a little, or (up to 16 MiB) everything.
            let limit = match mode / 3 % 3 {
                0 => 0,
                1 => usize::from(mode),
                _ => 16 << 20,
            };
            read_some(&mut reader, limit);
        }
    }
    f.seek(SeekFrom::Start(0)).unwrap();
    if let Ok(mut reader) = open_layer_file(file.path()) {
        read_some(&mut reader, 16 << 20);
    }

    // The writer's side: any bytes compressed into 64 KiB frames read back the same.
    let framed = compress_all(blob, 1, 64 << 10);
    let table = SeekTable::read_from(&mut Cursor::new(&framed))
        .expect("our own seek table reads")
        .expect("our own blobs have a seek table");
    assert_eq!(table.uncompressed_size(), blob.len() as u64);
    let mut framed_file = tempfile::tempfile().unwrap();
    framed_file.write_all(&framed).unwrap();
    match ParallelFrameReader::new(&framed_file, &table, 2).unwrap() {
        Some(mut reader) => {
            let mut back = Vec::new();
            reader
                .read_to_end(&mut back)
                .expect("our own frames decode");
            assert!(back == blob, "frames decode to other bytes");
        }
        None => panic!("our own frames are too large for the parallel reader"),
    }

    // Detached decoding threads return soon after their reader is dropped.
    wait_for_threads(threads_before);
});
