//! Extraction: apply a layer onto a directory, safely and in parallel.
//!
//! The reading thread decompresses, verifies and parses the stream, resolves every parent
//! directory from directory handles (never from path strings), and handles directories,
//! links, whiteouts and devices itself, because later entries depend on them. Regular files
//! are handed, with their data and their parent's handle, to writer threads that create them
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` and set metadata on the open handle.
//!
//! Safety rules, whatever the tar says:
//! - nothing is written outside the target: parent symlinks are resolved *inside* the root
//!   (like `openat2(RESOLVE_IN_ROOT)`: absolute targets and `..` stop at the root), and the
//!   final component is never followed; an existing entry is unlinked and recreated;
//! - absolute paths, `..`, duplicate paths, malformed whiteouts and a whiteout of this layer's
//!   own entries are errors naming the entry;
//! - device nodes and setuid/setgid files (and file capabilities) are refused unless the
//!   caller allows them ([`DevicePolicy`], [`SetuidPolicy`]); overlayfs's attributes
//!   (`trusted.overlay.*`, `user.overlay.*`: [`overlay_xattr`](crate::tar::overlay_xattr))
//!   are always refused, since they would change what an overlay mount of the result shows;
//!   the root entry (`./`) is checked like any other;
//! - total bytes, entries, header sizes and path depth are bounded ([`Limits`]), and the work
//!   per entry is linear in its size (every path is hashed once, whatever its depth).
//!
//! A whiteout or opaque marker whose directory does not exist (lexically, or once resolved
//! inside the root) hides nothing and is a no-op, as OCI whiteouts of absent paths are.
//!
//! On Windows (`windows.rs`) the same rules hold, resolved by path rather than by handle,
//! and names Windows cannot hold (`\`, `:`, device names, paths differing only by case)
//! are refused; its module docs list what each entry becomes there. The policies themselves
//! (devices, setuid bits, overlayfs attributes, duplicate paths, the directory cache) are
//! written once, in `core.rs`, and both engines call them.
//!
//! On error the target is left partly extracted; callers extract into a fresh directory and
//! discard it on failure.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use crate::frames::{ParallelFrameReader, SeekTable};
use crate::{Error, Result};

pub use crate::tar::Limits;

/// What to do with character and block device entries (on Windows, which has neither, with
/// fifos too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// Fail with [`EntryProblem::DeviceRefused`](crate::EntryProblem::DeviceRefused).
    #[default]
    Refuse,
    /// Leave them out and record them in [`ExtractReport::skipped`].
    Skip,
    /// Create them (needs `CAP_MKNOD`; an error on Windows).
    Create,
}

/// What to do with setuid/setgid files and `security.capability` attributes. setgid on
/// directories is always kept: it only steers group inheritance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetuidPolicy {
    /// Fail with [`EntryProblem::SetuidRefused`](crate::EntryProblem::SetuidRefused).
    #[default]
    Refuse,
    /// Create the file without the bits and the capability, and record it in
    /// [`ExtractReport::skipped`].
    Strip,
    /// Keep them.
    Keep,
}

/// Whether to restore owners recorded in the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// Restore them when running as root, else leave files owned by the caller.
    #[default]
    Auto,
    /// Always restore them (fails without the privilege, and on Windows).
    Restore,
    /// Never restore them.
    Ignore,
}

/// How whiteouts are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Remove what they name from the target (the target holds the layers below).
    #[default]
    Apply,
    /// Record them in overlayfs's format, for a directory that will be an overlay lower
    /// layer: `.wh.<name>` becomes a 0/0 character device `<name>`, and `.wh..wh..opq` sets
    /// `trusted.overlay.opaque=y` on its directory. Needs `CAP_MKNOD` and `CAP_SYS_ADMIN`;
    /// an error on Windows.
    Overlay,
    /// Keep them as the empty `.wh.` files they are in the tar, for a directory that holds
    /// one layer on its own and is merged with others later (without privileges).
    Keep,
}

/// How to extract.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtractOptions {
    /// Device nodes.
    pub devices: DevicePolicy,
    /// setuid/setgid files and file capabilities.
    pub setuid: SetuidPolicy,
    /// File owners.
    pub ownership: Ownership,
    /// Bounds on the input.
    pub limits: Limits,
    /// Writer threads; 0 means one per core.
    pub threads: usize,
    /// `syncfs` the target once at the end.
    pub sync: bool,
    /// How whiteouts are applied.
    pub whiteouts: WhiteoutMode,
}

/// An entry that was left out or changed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's path.
    pub path: Vec<u8>,
    /// Why.
    pub reason: String,
}

impl Serialize for Skipped {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Skipped", 2)?;
        st.serialize_field("path", &String::from_utf8_lossy(&self.path))?;
        st.serialize_field("reason", &self.reason)?;
        st.end()
    }
}

/// What an extraction did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ExtractReport {
    /// Entries read (whiteouts included).
    pub entries: u64,
    /// File data bytes written.
    pub bytes: u64,
    /// Regular files created.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Entries left out or changed by a policy.
    pub skipped: Vec<Skipped>,
}

/// Applies an uncompressed tar stream onto `dir` (created if missing).
pub fn apply_tar<R: Read>(input: R, dir: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
    imp::apply(input, dir, opts)
}

/// Applies a layer file onto `dir`: zstd (framed or not), gzip or plain tar, detected from
/// the first bytes.
pub fn apply_file(path: &Path, dir: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
    let reader = open_layer_file(path)?;
    imp::apply(reader, dir, opts).map_err(|e| name_stream(e, path))
}

/// Opens a layer file for reading its uncompressed tar, whatever its compression.
pub fn open_layer_file(path: &Path) -> Result<Box<dyn Read + Send>> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io("read", path, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("read", path, e))?;
    Ok(match &magic[..n] {
        [0x28, 0xb5, 0x2f, 0xfd] | [0x50..=0x5f, 0x2a, 0x4d, 0x18] => zstd_reader(file, path)?,
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(
            BufReader::with_capacity(1 << 20, file),
        )),
        _ => Box::new(BufReader::with_capacity(1 << 20, file)),
    })
}

/// Decompresses a zstd file: frames decoded ahead on every core when the file has a seek
/// table (every blob this crate writes does), else one streaming decoder.
pub(crate) fn zstd_reader(mut file: File, path: &Path) -> Result<Box<dyn Read + Send>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A file without a usable seek table is still a valid zstd stream: decode it in order.
    if let Ok(Some(table)) = SeekTable::read_from(&mut file)
        && threads > 1
        && table.frames.len() > 1
        && let Some(reader) = ParallelFrameReader::new(&file, &table, threads)
            .map_err(|e| Error::io("start decompressing", path, e))?
    {
        return Ok(Box::new(reader));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("read", path, e))?;
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| Error::io("start decompressing", path, e))?;
    // 2^27 is zstd's default decoding window limit; say it explicitly so a blob cannot ask
    // for more memory.
    decoder
        .window_log_max(27)
        .map_err(|e| Error::io("start decompressing", path, e))?;
    Ok(Box::new(decoder))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Adds the file name to errors about the compressed stream.
fn name_stream(e: Error, path: &Path) -> Error {
    match e {
        Error::Stream { what, source } => Error::Stream {
            what: format!("{} ({what})", path.display()),
            source,
        },
        other => other,
    }
}

#[cfg(any(unix, windows))]
mod core;

#[cfg(unix)]
#[path = "unix.rs"]
mod imp;

#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

#[cfg(not(any(unix, windows)))]
mod imp {
    //! Extraction is implemented for Unix and Windows only.
    use super::*;

    pub(super) fn apply<R: Read>(
        _input: R,
        _dir: &Path,
        _opts: &ExtractOptions,
    ) -> Result<ExtractReport> {
        Err(Error::Unsupported {
            what: "extracting a layer",
        })
    }
}
