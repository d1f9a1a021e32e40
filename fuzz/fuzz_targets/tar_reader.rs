//! Fuzz target: the strict tar reader on any bytes, and on the same bytes with their header
//! checksums fixed up (so mutations get past them). Every entry it yields must be
//! normalised, and what it reads must come back unchanged through the writer and the reader.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_cas::Entry;
use strata_cas::tar::{Limits, TarReader, TarWriter, whiteout};
use strata_fuzz::fix_checksums;

/// Reads every entry with its data; `None` where the reader refuses the input.
fn read_all(data: &[u8], limits: &Limits) -> Option<Vec<(Entry, Vec<u8>)>> {
    let mut reader = TarReader::new(data, limits);
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().ok()? {
        assert_normalised(&entry.path, limits);
        let _ = whiteout(&entry.path);
        // In small reads, so a header declaring much more data than follows costs nothing.
        let mut body = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read_data(&mut buf).ok()? {
                0 => break,
                n => body.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(body.len() as u64, entry.size);
        entries.push((entry, body));
    }
    reader.finish().ok()?;
    Some(entries)
}

fn assert_normalised(path: &[u8], limits: &Limits) {
    assert!(!path.contains(&0), "NUL in {path:?}");
    assert!(!path.starts_with(b"/"), "absolute {path:?}");
    if !path.is_empty() {
        let components: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        assert!(
            components
                .iter()
                .all(|c| !c.is_empty() && *c != b"." && *c != b".."),
            "not normalised: {path:?}"
        );
        assert!(components.len() <= limits.max_depth as usize);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut fixed = data.to_vec();
    fix_checksums(&mut fixed);
    if fixed != data {
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let limits = Limits {
        max_bytes: 64 << 20,
        ..Limits::default()
    };
    let Some(entries) = read_all(data, &limits) else {
        return;
    };
    let mut writer = TarWriter::new(Vec::new());
    for (entry, body) in &entries {
        writer.append(entry).expect("writing to memory");
        writer.write_data(body).expect("writing to memory");
    }
    let written = writer.finish().expect("writing to memory");
    let back = read_all(&written, &limits).unwrap_or_else(|| {
        let mut reader = TarReader::new(&written[..], &limits);
        let error = loop {
            match reader.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => break reader.finish().err(),
                Err(e) => break Some(e),
            }
        };
        panic!("the writer's output does not read back: {error:?}")
    });
    assert_eq!(back.len(), entries.len());
    for ((entry, body), (again, body_again)) in entries.iter().zip(&back) {
        // The writer keeps whole seconds only.
        let mut expected = entry.clone();
        expected.meta.mtime_nsec = 0;
        assert_eq!(again, &expected);
        assert_eq!(body_again, body);
    }
}
