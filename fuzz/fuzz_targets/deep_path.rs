//! Fuzz target for the shape of a quadratic-time defect: one entry at a path of up to
//! 600,000 components (a 1.2 MB PAX path), applied and stored. Paths within
//! `Limits::max_depth` must extract, deeper ones be refused, in time linear in the path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_cas::extract::apply_tar;
use strata_cas::tar::TarWriter;
use strata_cas::{
    CreateOptions, Entry, EntryKind, EntryProblem, Error, ExtractOptions, Limits, Metadata,
};
use strata_fuzz::{Params, Sandbox};

fuzz_target!(|data: &[u8]| {
    let mut p = Params(data);
    let depth = 1 + p.u32() as usize % 600_000;
    let kind = p.byte();
    // Components from the rest of the input, made valid: non-empty, no `/` or NUL, not
    // `.` or `..`, at most 16 bytes.
    let mut path = Vec::new();
    let mut pieces = p.0.chunks(1 + usize::from(kind % 16)).cycle();
    for i in 0..depth {
        if i > 0 {
            path.push(b'/');
        }
        let piece = pieces.next().unwrap_or(b"a");
        let start = path.len();
        path.extend(
            piece
                .iter()
                .map(|&b| if b == b'/' || b == 0 { b'_' } else { b }),
        );
        if matches!(&path[start..], b"." | b"..") || path.len() == start {
            path.push(b'x');
        }
    }
    let entry = Entry {
        path,
        kind: if kind & 0x80 == 0 {
            EntryKind::File
        } else {
            EntryKind::Dir
        },
        meta: Metadata {
            mode: 0o755,
            ..Metadata::default()
        },
        size: 0,
    };
    let mut writer = TarWriter::new(Vec::new());
    writer.append(&entry).unwrap();
    let tar = writer.finish().unwrap();

    let limit = Limits::default().max_depth as usize;
    let sandbox = Sandbox::new();
    let result = apply_tar(&tar[..], &sandbox.target, &ExtractOptions::default());
    let stored = strata_cas::create::compress_tar(
        &tar[..],
        std::io::sink(),
        &CreateOptions {
            threads: 1,
            ..CreateOptions::default()
        },
        &Limits::default(),
    );
    if depth <= limit {
        // A component may name a lower layer's file or symlink; only depth is checked here.
        if let Err(e) = &result {
            assert!(
                !matches!(
                    e,
                    Error::Entry {
                        problem: EntryProblem::TooDeep { .. },
                        ..
                    }
                ),
                "depth {depth} refused: {e}"
            );
        }
        stored.unwrap_or_else(|e| panic!("depth {depth} not stored: {e}"));
    } else {
        // Refused as too deep, or before that as a PAX path over its 1 MiB bound.
        let header_limit = Limits::default().max_header_bytes;
        for outcome in [result.err(), stored.err()] {
            assert!(
                matches!(
                    outcome,
                    Some(Error::Entry { problem: EntryProblem::TooDeep { depth: d, .. }, .. })
                        if d == depth
                ) || matches!(outcome, Some(Error::Limit { limit, .. }) if limit == header_limit),
                "depth {depth} not refused as too deep: {outcome:?}"
            );
        }
    }
    sandbox.check();
});
