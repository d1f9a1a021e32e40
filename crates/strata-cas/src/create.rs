//! Commit: turn a directory, or a list of changes in one, into a layer in a single pass.
//!
//! walk (depth-first, children in byte order) → deterministic tar → blake3 of the tar →
//! framed zstd compressed on every core → `out`. File data is read straight into the
//! compressor's chunk buffer, so each byte is copied once. Files are opened relative to
//! their parent directory's handle with `O_NOFOLLOW`; the tree must not change while it is
//! being read (a file that shrinks is an error). On Windows (`create/walk_windows.rs`) the
//! walk goes by path; its module docs say what Windows files become in a layer.

use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;

use crate::frames::{DEFAULT_CHUNK_SIZE, FrameEncoder};
use crate::tar::{
    Limits, OPAQUE_MARKER, TarReader, TarWriter, WHITEOUT_PREFIX, normalize, path_order,
    split_parent,
};
use crate::{Error, LayerId, Progress, Result};

/// How to write a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// zstd level (3 matches `zstd -3`).
    pub level: i32,
    /// Compression threads; 0 means one per core.
    pub threads: usize,
    /// Uncompressed bytes per zstd frame.
    pub chunk_size: usize,
    /// Clamp every mtime to at most this (`SOURCE_DATE_EPOCH`).
    pub mtime_clamp: Option<i64>,
    /// Advanced by the uncompressed bytes written, as each chunk is handed to compression.
    pub progress: Progress,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            level: 3,
            threads: 0,
            chunk_size: DEFAULT_CHUNK_SIZE,
            mtime_clamp: None,
            progress: Progress::default(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// blake3 of the uncompressed tar.
    pub id: LayerId,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Bytes written (0 when writing an uncompressed tar).
    pub compressed_size: u64,
    /// zstd frames written (0 when writing an uncompressed tar).
    pub frames: u32,
    /// Tar entries written (PAX headers not counted).
    pub entries: u64,
}

/// What happened to one path since the parent snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ChangeKind {
    /// The path is new.
    Added,
    /// The path existed and changed (content or metadata).
    Modified,
    /// The path was removed: becomes a `.wh.<name>` whiteout.
    Deleted,
    /// The directory replaces, rather than merges with, the one below: becomes
    /// `.wh..wh..opq`. Its current children are listed as separate changes.
    Opaque,
}

/// One changed path, relative to the directory being committed. Directories are not
/// recursed into: every changed path inside a new directory is its own change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    /// The path, `/`-separated, relative, raw bytes.
    pub path: Vec<u8>,
    /// What happened to it.
    pub kind: ChangeKind,
}

impl Change {
    /// A change of `kind` at `path` (`/`-separated, relative).
    pub fn new(path: impl Into<Vec<u8>>, kind: ChangeKind) -> Self {
        Change {
            path: path.into(),
            kind,
        }
    }
}

/// The compressor `opts` asks for, advancing its progress counter.
fn encoder<W: Write>(out: W, opts: &CreateOptions) -> std::io::Result<FrameEncoder<W>> {
    Ok(
        FrameEncoder::new(out, opts.level, opts.chunk_size, opts.threads)?
            .with_progress(opts.progress.clone()),
    )
}

/// Writes the whole tree under `dir` as a framed zstd layer to `out`.
pub fn create_from_dir<W: Write>(dir: &Path, out: W, opts: &CreateOptions) -> Result<LayerInfo> {
    let encoder =
        encoder(out, opts).map_err(|e| Error::io("start compressing a layer of", dir, e))?;
    let (_, info) = write_with(dir, encoder, opts, Source::Tree)?;
    Ok(info)
}

/// Writes the listed changes of the tree under `dir` as a framed zstd layer to `out`.
/// Parents of changed paths are included with their current attributes.
pub fn create_from_changes<W: Write>(
    dir: &Path,
    changes: &[Change],
    out: W,
    opts: &CreateOptions,
) -> Result<LayerInfo> {
    let encoder =
        encoder(out, opts).map_err(|e| Error::io("start compressing a layer of", dir, e))?;
    let (_, info) = write_with(dir, encoder, opts, Source::Changes(changes))?;
    Ok(info)
}

/// Writes the whole tree under `dir` as an uncompressed tar to `out`.
pub fn write_tar<W: Write>(dir: &Path, out: W, opts: &CreateOptions) -> Result<LayerInfo> {
    let (_, info) = write_with(dir, PlainSink::new(out), opts, Source::Tree)?;
    Ok(info)
}

/// Writes the listed changes of the tree under `dir` as an uncompressed tar to `out`: the
/// bytes [`create_from_changes`] compresses, for a layer handed to another program first.
pub fn write_changes_tar<W: Write>(
    dir: &Path,
    changes: &[Change],
    out: W,
    opts: &CreateOptions,
) -> Result<LayerInfo> {
    let (_, info) = write_with(dir, PlainSink::new(out), opts, Source::Changes(changes))?;
    Ok(info)
}

/// Copies an existing uncompressed tar stream into a framed zstd layer, validating every
/// header on the way (the bytes, hence the id, are kept as they are).
pub fn compress_tar<R: Read, W: Write>(
    input: R,
    out: W,
    opts: &CreateOptions,
    limits: &Limits,
) -> Result<LayerInfo> {
    let encoder = encoder(out, opts).map_err(|e| Error::Stream {
        what: "being compressed".into(),
        source: e,
    })?;
    let mut tee = Tee {
        input,
        copy: encoder,
    };
    let entries = TarReader::new(&mut tee, limits).validate_layer()?;
    let (_, stats) = tee.copy.finish().map_err(|e| Error::Stream {
        what: "being compressed".into(),
        source: e,
    })?;
    Ok(LayerInfo {
        id: LayerId::from_bytes(stats.uncompressed_hash),
        uncompressed_size: stats.uncompressed_size,
        compressed_size: stats.compressed_size,
        frames: stats.frames,
        entries,
    })
}

/// A reader that copies everything it reads into `copy`.
struct Tee<R, W> {
    input: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Where tar bytes go: a framed encoder, or a plain writer that hashes.
pub(crate) trait Sink: Write {
    /// Reads up to `limit` bytes from `reader` into the sink; 0 at the reader's end.
    fn fill_from(&mut self, reader: &mut dyn Read, limit: u64) -> io::Result<usize>;
    /// Flushes and returns (hash, uncompressed size, compressed size, frames).
    fn finish_sink(self) -> io::Result<([u8; 32], u64, u64, u32)>;
}

impl<W: Write> Sink for FrameEncoder<W> {
    fn fill_from(&mut self, reader: &mut dyn Read, limit: u64) -> io::Result<usize> {
        FrameEncoder::fill_from(self, reader, limit)
    }

    fn finish_sink(self) -> io::Result<([u8; 32], u64, u64, u32)> {
        let (_, s) = self.finish()?;
        Ok((
            s.uncompressed_hash,
            s.uncompressed_size,
            s.compressed_size,
            s.frames,
        ))
    }
}

/// An uncompressed tar output that hashes what passes through.
pub(crate) struct PlainSink<W> {
    out: W,
    hasher: blake3::Hasher,
    bytes: u64,
    buf: Vec<u8>,
}

impl<W: Write> PlainSink<W> {
    pub(crate) fn new(out: W) -> Self {
        PlainSink {
            out,
            hasher: blake3::Hasher::new(),
            bytes: 0,
            buf: vec![0; 256 << 10],
        }
    }
}

impl<W: Write> Write for PlainSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write_all(buf)?;
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Sink for PlainSink<W> {
    fn fill_from(&mut self, reader: &mut dyn Read, limit: u64) -> io::Result<usize> {
        let want = self
            .buf
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX));
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            match reader.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let out = result.and_then(|n| self.write_all(&buf[..n]).map(|()| n));
        self.buf = buf;
        out
    }

    fn finish_sink(mut self) -> io::Result<([u8; 32], u64, u64, u32)> {
        self.out.flush()?;
        Ok((*self.hasher.finalize().as_bytes(), self.bytes, 0, 0))
    }
}

pub(crate) enum Source<'a> {
    Tree,
    Changes(&'a [Change]),
}

/// What to put in the tar for one item of a change list.
pub(crate) enum Item {
    /// The entry at this path, as it is on disk.
    Path(Vec<u8>),
    /// An empty marker file (whiteout or opaque marker).
    Marker,
}

/// Refuses a name that a layer would read as a whiteout: whatever starts with `.wh.`. OCI
/// says such files cannot exist; written into a layer, `.wh.x` would delete `x` in some
/// checkouts and show as a file in others (the entry's `path` is named).
pub(crate) fn check_name(name: &[u8], path: &[u8]) -> Result<()> {
    if name.starts_with(WHITEOUT_PREFIX) {
        return Err(Error::entry(path, crate::EntryProblem::ReservedName));
    }
    Ok(())
}

/// The tar paths a change list makes, in layer order, each once: the changed paths, their
/// parents (with their current attributes), and whiteout and opaque markers. Shared by the
/// walkers, which only differ in how they read what is on disk. A path with a component
/// in the `.wh.` space is refused ([`check_name`]), a deleted one too: its whiteout would
/// not be one.
pub(crate) fn plan_changes(changes: &[Change]) -> Result<Vec<(Vec<u8>, Item)>> {
    let mut items: Vec<(Vec<u8>, Item)> = Vec::new();
    for change in changes {
        let path = normalize(&change.path).map_err(|p| Error::entry(&change.path, p))?;
        if path.is_empty() {
            return Err(Error::entry(&change.path, crate::EntryProblem::InvalidPath));
        }
        for component in path.split(|&b| b == b'/') {
            check_name(component, &path)?;
        }
        let mut ancestor = split_parent(&path).0;
        while !ancestor.is_empty() {
            items.push((ancestor.to_vec(), Item::Path(ancestor.to_vec())));
            ancestor = split_parent(ancestor).0;
        }
        let (parent, name) = split_parent(&path);
        let marker = |tail: &[u8]| {
            let mut p = parent.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(tail);
            p
        };
        match change.kind {
            ChangeKind::Added | ChangeKind::Modified => {
                items.push((path.clone(), Item::Path(path)));
            }
            ChangeKind::Deleted => {
                items.push((marker(&[WHITEOUT_PREFIX, name].concat()), Item::Marker));
            }
            ChangeKind::Opaque => {
                let mut opq = path.clone();
                opq.push(b'/');
                opq.extend_from_slice(OPAQUE_MARKER);
                items.push((opq, Item::Marker));
                items.push((path.clone(), Item::Path(path)));
            }
        }
    }
    items.sort_by(|a, b| path_order(&a.0, &b.0));
    items.dedup_by(|later, earlier| later.0 == earlier.0);
    Ok(items)
}

fn write_with<S: Sink>(
    dir: &Path,
    sink: S,
    opts: &CreateOptions,
    source: Source<'_>,
) -> Result<((), LayerInfo)> {
    let mut tar = TarWriter::new(sink);
    let entries = walk::write_entries(dir, &mut tar, opts, source)?;
    let sink = tar
        .finish()
        .map_err(|e| Error::io("write the layer of", dir, e))?;
    let (hash, uncompressed_size, compressed_size, frames) = sink
        .finish_sink()
        .map_err(|e| Error::io("write the layer of", dir, e))?;
    Ok((
        (),
        LayerInfo {
            id: LayerId::from_bytes(hash),
            uncompressed_size,
            compressed_size,
            frames,
            entries,
        },
    ))
}

#[cfg(unix)]
#[path = "create/walk_unix.rs"]
mod walk;

#[cfg(windows)]
#[path = "create/walk_windows.rs"]
mod walk;

#[cfg(not(any(unix, windows)))]
mod walk {
    //! Directory walking is implemented for Unix and Windows only.
    use super::*;

    pub(super) fn write_entries<S: Sink>(
        _dir: &Path,
        _tar: &mut TarWriter<S>,
        _opts: &CreateOptions,
        _source: Source<'_>,
    ) -> Result<u64> {
        Err(Error::Unsupported {
            what: "creating a layer from a directory",
        })
    }
}
