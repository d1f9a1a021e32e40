//! The error type of the store, the layer format and extraction.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::LayerId;

/// Anything that can go wrong in this crate. Every variant names what it was about: a path,
/// a layer id, a byte offset or a tar entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operation on a file or directory failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb phrase ("open", "rename into place").
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or decompressing a layer stream failed (truncated or corrupt compression).
    #[error("cannot read layer stream {what}: {source}")]
    Stream {
        /// Which stream: a file name or a layer id.
        what: String,
        #[source]
        source: io::Error,
    },
    /// The tar stream is malformed (bad checksum, bad number, truncated record).
    #[error("malformed tar at byte {offset}: {problem}")]
    Tar {
        /// Offset of the 512-byte header or record at fault, in the uncompressed stream.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// One entry of a layer is unacceptable or could not be applied.
    #[error("entry {entry}: {problem}")]
    Entry {
        /// The entry's path as it appears in the tar.
        entry: EntryName,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// A configured bound (bytes, entries, header size) was exceeded.
    #[error("layer exceeds the limit on {what} ({limit})")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The store has no blob with this id.
    #[error("layer {id} is not in the store at {}", store.display())]
    NotFound {
        /// The id that was asked for.
        id: LayerId,
        /// The store's root.
        store: PathBuf,
    },
    /// A stored blob's content does not hash to its name.
    #[error("blob {} is corrupt: its content hashes to {actual}, not {expected}", path.display())]
    Corrupt {
        /// The blob's path.
        path: PathBuf,
        /// The id the blob is stored under.
        expected: LayerId,
        /// What its content hashes to.
        actual: LayerId,
    },
    /// A layer's compressed stream does not decompress.
    #[error("{}: cannot decompress: {source}", path.display())]
    Decompress {
        /// The blob or layer file.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A blob or layer file is not in a format this crate reads.
    #[error("{}: {problem}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The store directory was written by an incompatible version of strata.
    #[error("store {} has layout `{found}`; this strata reads `{expected}`", path.display())]
    StoreVersion {
        /// The store's root.
        path: PathBuf,
        /// The layout found on disk.
        found: String,
        /// The layout this build understands.
        expected: &'static str,
    },
    /// A store directory that other users can enter, owned by another user: this process
    /// may not make it private, and uses it as it is no more.
    #[error(
        "{} is owned by uid {owner} and open to other users (mode {mode:04o}): only its owner \
         may use it as a store, which makes it private (mode 0700)",
        path.display()
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory given as a store that others may enter and that holds files, but no
    /// store: it is not made private (and so is not used).
    #[error(
        "{} holds files but no strata store, and others may enter it (mode {mode:04o}): a \
         store is private to its owner (mode 0700), so give a new or empty directory",
        path.display()
    )]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// What was given as a layer id is neither an id nor a prefix of one.
    #[error(
        "`{given}` is not a layer id: expected hex digits (64 for a full id, at least \
         {min} for a prefix), optionally preceded by `blake3:`",
        min = crate::id::MIN_PREFIX
    )]
    BadLayerRef {
        /// What was given.
        given: String,
    },
    /// No stored layer has this id or starts with this prefix.
    #[error("no layer {} `{given}` in the store at {}", if *.prefix { "id starts with" } else { "has the id" }, store.display())]
    NoSuchLayer {
        /// What was given.
        given: String,
        /// Whether it was a prefix.
        prefix: bool,
        /// The store's directory.
        store: PathBuf,
    },
    /// A prefix that more than one stored layer starts with.
    #[error("{}", ambiguous(given, matches))]
    AmbiguousLayerRef {
        /// What was given.
        given: String,
        /// The layers it matches, sorted.
        matches: Vec<crate::LayerId>,
    },
    /// The operation is not available on this platform.
    #[error("{what} is not supported on this platform")]
    Unsupported {
        /// What was attempted.
        what: &'static str,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn entry(entry: &[u8], problem: EntryProblem) -> Self {
        Error::Entry {
            entry: EntryName(entry.to_vec()),
            problem,
        }
    }

    /// The entry this error is about, if it is about one.
    pub fn entry_name(&self) -> Option<&EntryName> {
        match self {
            Error::Entry { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

/// A tar entry's path: raw bytes, displayed quoted with non-UTF-8 bytes escaped.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryName(pub Vec<u8>);

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`")?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("`")
    }
}

impl fmt::Debug for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a tar entry was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    /// The path starts with `/`.
    #[error("absolute paths are not allowed in a layer")]
    Absolute,
    /// The path has a `..` component.
    #[error("`..` components are not allowed in a layer")]
    DotDot,
    /// The path is empty or contains a NUL byte.
    #[error("the path is empty or contains a NUL byte")]
    InvalidPath,
    /// The same path appears twice in one layer.
    #[error("the path appears twice in this layer")]
    Duplicate,
    /// A bare `.wh.` or a whiteout of `.`/`..`.
    #[error("invalid whiteout name")]
    BadWhiteout,
    /// A file or directory whose name starts with `.wh.`: in a layer that name is a
    /// whiteout (OCI), so no such file can be written into one.
    #[error(
        "names starting with `.wh.` mean whiteouts in a layer, so a file or directory named so \
         cannot be put in one"
    )]
    ReservedName,
    /// A 0/0 character device: overlayfs's whiteout. Unpacked for an overlay mount it would
    /// delete the path rather than be a device, so a layer is not written with one.
    #[error("a 0/0 character device is overlayfs's whiteout, so a layer cannot hold one")]
    WhiteoutDevice,
    /// A whiteout names a path that this same layer creates.
    #[error("a whiteout may only remove paths of lower layers, but this layer creates it")]
    WhiteoutOfOwnEntry,
    /// A path component is a non-directory created by this layer.
    #[error("a parent path component is not a directory")]
    ParentNotDirectory,
    /// A device node, refused by [`DevicePolicy::Refuse`](crate::extract::DevicePolicy).
    #[error("device nodes are refused (allow them with DevicePolicy::Create or skip them)")]
    DeviceRefused,
    /// A setuid/setgid file or a file capability, refused by
    /// [`SetuidPolicy::Refuse`](crate::extract::SetuidPolicy).
    #[error(
        "setuid/setgid bits and file capabilities are refused (allow them with SetuidPolicy::Keep or strip them)"
    )]
    SetuidRefused,
    /// An extended attribute that must never come from a layer.
    #[error("extended attribute `{0}` is not allowed in a layer")]
    ForbiddenXattr(String),
    /// A hard link to a directory, or to something that does not exist.
    #[error("hard link target {0} is missing or is a directory")]
    BadHardlink(EntryName),
    /// An entry type this store does not accept (sparse files, multi-volume, unknown types).
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(char),
    /// A non-regular entry that carries data.
    #[error("a {kind} entry must not carry data (size {size})")]
    UnexpectedData {
        /// The entry's kind.
        kind: &'static str,
        /// Its declared size.
        size: u64,
    },
    /// The PAX size and the ustar size disagree.
    #[error("PAX size {pax} disagrees with header size {ustar}")]
    SizeMismatch {
        /// Size in the PAX record.
        pax: u64,
        /// Size in the ustar header.
        ustar: u64,
    },
    /// A PAX record is malformed or holds a value out of range.
    #[error("malformed PAX record: {0}")]
    BadPax(String),
    /// A symlink's target contains a NUL byte, which no file system can store.
    #[error("the symlink target contains a NUL byte")]
    NulInSymlinkTarget,
    /// The path (or a hard link's target) has more components than
    /// [`Limits::max_depth`](crate::Limits::max_depth) allows.
    #[error("the path has {depth} components, more than the limit of {limit}")]
    TooDeep {
        /// Components in the path.
        depth: usize,
        /// The limit.
        limit: u32,
    },
    /// A path component that cannot name a file on Windows: reserved characters, a
    /// trailing dot or space, a device name, or bytes that are not UTF-8.
    #[error("component `{component}` cannot be a file name on Windows: {reason}")]
    InvalidWindowsName {
        /// The component, lossily decoded.
        component: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Another path of this layer differs from this one only by letter case, which Windows
    /// file systems do not tell apart.
    #[error(
        "the path differs only by case from {0} in this layer, which Windows cannot tell apart"
    )]
    CaseConflict(EntryName),
    /// A symlink met while resolving a parent points where no path inside the target
    /// directory can follow (a drive, a UNC or device path, an unusable name).
    #[error("a parent symlink points to `{0}`, which cannot be resolved inside the target")]
    SymlinkOutsideRoot(String),
    /// Creating a symlink needs a privilege the process lacks.
    #[error(
        "creating a symlink needs the SeCreateSymbolicLinkPrivilege (enable developer mode or run elevated): {0}"
    )]
    SymlinkPrivilege(io::Error),
    /// The entry cannot be created on this platform.
    #[error("{0}")]
    NotSupportedHere(&'static str),
    /// A system call on this entry failed.
    #[error("cannot {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// How many candidates an "ambiguous prefix" error lists before summarising the rest.
const MAX_LISTED: usize = 10;

/// The message of [`Error::AmbiguousLayerRef`].
fn ambiguous(given: &str, matches: &[LayerId]) -> String {
    let mut message = format!(
        "id prefix `{given}` is ambiguous: it matches {} layers; give more digits",
        matches.len()
    );
    for id in matches.iter().take(MAX_LISTED) {
        message.push_str("\n  ");
        message.push_str(&id.to_hex());
    }
    if matches.len() > MAX_LISTED {
        message.push_str(&format!("\n  … and {} more", matches.len() - MAX_LISTED));
    }
    message
}
