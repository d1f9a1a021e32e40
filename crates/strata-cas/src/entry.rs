//! The in-memory model of one layer entry, shared by the tar reader, the writer and extraction.

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its data follows in the stream.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to the given target (raw bytes, never resolved by this crate).
    Symlink(Vec<u8>),
    /// A hard link to an earlier path of the same tree (normalised, relative to the root).
    Hardlink(Vec<u8>),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl EntryKind {
    /// A short lowercase noun for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink(_) => "symlink",
            EntryKind::Hardlink(_) => "hard link",
            EntryKind::CharDevice { .. } => "character device",
            EntryKind::BlockDevice { .. } => "block device",
            EntryKind::Fifo => "fifo",
        }
    }
}

/// The attributes a layer records for an entry. Owners are numeric; names are never stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits plus setuid/setgid/sticky (`0o7777`), without the file type.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time (only read from PAX; always 0 when written).
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One entry of a layer: a normalised path (relative, `/`-separated, no `.` or `..`, empty for
/// the root), what it is, and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The normalised path, raw bytes.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Its attributes.
    pub meta: Metadata,
    /// Size of the data that follows (regular files only; 0 otherwise).
    pub size: u64,
}
