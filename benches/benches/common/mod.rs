//! Inputs shared by the benchmark targets: a deterministic generator, source-like text and
//! temporary directories on the benchmark scratch filesystem.

use std::path::PathBuf;

/// xorshift64: deterministic inputs without a dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    #[allow(dead_code, reason = "the cas bench does not use it")]
    pub(crate) fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "return",
    "self",
    "struct",
    "impl",
    "pub",
    "use",
    "match",
    "if",
    "else",
    "for",
    "while",
    "in",
    "loop",
    "const",
    "static",
    "type",
    "where",
    "layer",
    "tar",
    "entry",
    "path",
    "read",
    "write",
    "buffer",
    "error",
    "result",
    "options",
    "header",
    "frame",
    "zstd",
    "blake3",
    "hash",
    "directory",
    "file",
    "symlink",
    "0",
    "1",
    "42",
    "4096",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "==",
    "->",
    "&",
    "*",
    "+",
    "-",
    "//",
    "#",
    "\"",
    "<",
    ">",
];

/// Source-code-like text: compresses roughly like real sources do.
pub(crate) fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let word = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.extend_from_slice(word.as_bytes());
        out.push(match rng.below(10) {
            0 => b'\n',
            1 => b'\t',
            _ => b' ',
        });
    }
    out.truncate(len);
    out
}

pub(crate) fn scratch_root() -> PathBuf {
    std::env::var_os("STRATA_BENCH_TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(std::env::temp_dir, PathBuf::from)
}

pub(crate) fn tempdir() -> tempfile::TempDir {
    let root = scratch_root();
    std::fs::create_dir_all(&root).expect("creating the benchmark temporary directory");
    tempfile::Builder::new()
        .prefix("strata-bench-")
        .tempdir_in(root)
        .expect("creating a temporary directory")
}
