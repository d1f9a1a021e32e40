//! Path relocation: find where a layer's files mention the checkout root at commit, and
//! rewrite those places when the layer is checked out under another root.
//!
//! Tools such as opam and Python venvs embed the absolute path they were installed at, so a
//! tree built in `/strata/slots/s01` breaks when checked out in `/strata/slots/s02`. Jobs run
//! in slot directories of equal length, which lets most rewrites happen in place.
//!
//! # Forms
//!
//! The root is given as the checkout records it (`/strata/slots/s01`, `C:\strata\s01`). It is
//! searched in every spelling a toolchain may have written it in ([`Form`]), all in one pass:
//!
//! - a Unix root: as given, with every `/` turned into `\`, and the UTF-16LE of both;
//! - a Windows drive root such as `C:\strata\s01`: `C:\strata\s01`, `C:/strata/s01`, the
//!   doubled backslashes of JSON, opam and C strings (`C:\\strata\\s01`), Cygwin's
//!   `/cygdrive/c/strata/s01` and MSYS2's `/c/strata/s01`, each with an upper- and a
//!   lower-case drive letter, and the UTF-16LE of every one of them.
//!
//! Spellings that coincide are searched once; the UTF-16 ones only exist for UTF-8 roots.
//! Only the drive letter's case varies: the rest of a Windows root must appear as recorded
//! (tools print the path they were given or got from the system, and Strata gives them the
//! slot's). `docs/windows.md` explains where each form comes from.
//!
//! # Which occurrences count (the sibling rule)
//!
//! Anything may follow the root (`/strata/slots/s01/bin/python` is a hit). In a *text* file an
//! occurrence is rejected when the character right after it continues a file name: an ASCII
//! letter or digit, one of `._-+~`, or any non-ASCII character. So `/strata/slots/s010/x` and
//! `/strata/slots/s01-cache` are not hits, while `/strata/slots/s01/x`, `"/strata/slots/s01"`,
//! `s01:`, `s01;`, `s01 ` and a root at the end of the file are. In a *binary* file every
//! occurrence is a hit: binary formats store strings length-prefixed or packed back to back
//! (pyc constants, Go string tables), so the byte after a string is arbitrary and a rule there
//! would silently miss real roots. Nothing is required *before* the root, because flags glue
//! it to letters (`-I/strata/slots/s01/include`).
//!
//! # Text files
//!
//! [`is_text`] looks at the first 8 KiB only: text means no NUL byte there and valid UTF-8
//! there (a multi-byte character cut by the 8 KiB boundary is fine), or, as Windows writes
//! text (registry exports, PowerShell's output), a UTF-16LE byte-order mark followed by
//! valid UTF-16LE without a NUL character. Only text files may change length, so a Latin-1
//! file is treated as binary: refusing is safer than corrupting.
//!
//! # Relocating
//!
//! A file whose hits keep their byte length under the new root is rewritten in place at the
//! recorded offsets (same inode, mode and times). Any other file is rebuilt and atomically
//! replaced (temporary file in the same directory, then rename), keeping mode, owner and times;
//! that is only allowed for text files, and a binary one makes [`relocate`] refuse before it
//! changes anything. Every recorded offset is checked to hold the old root first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};
use serde::{Deserialize, Serialize};

/// How many leading bytes [`is_text`] inspects.
pub const TEXT_WINDOW: usize = 8 * 1024;

/// The tag [`Records::to_bytes`] writes, so a future format is not misread.
const FORMAT: &str = "strata-relocate-v1";

/// How much of a file [`scan`] reads at a time.
const CHUNK: usize = 1 << 20;

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong scanning or relocating. Variants name the file (or root) involved.
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
    /// A root cannot be searched for or written.
    #[error("cannot relocate root {root:?}: {problem}")]
    InvalidRoot {
        /// The root, lossily decoded.
        root: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A file mentions the old root in a form the new (or old) root has no spelling in: a
    /// UTF-16 form of a root that is not UTF-8, a drive-letter or Cygwin form of a root
    /// without a drive.
    #[error(
        "cannot relocate {}: it mentions the root in {form} form, which root {root:?} cannot \
         be spelled in",
        path.display()
    )]
    NoSpelling {
        /// The root without that spelling, lossily decoded.
        root: String,
        /// The form.
        form: Form,
        /// The file.
        path: PathBuf,
    },
    /// A relative path (given to [`scan`] or found in records) is not a plain path in the tree.
    #[error("invalid relative path {path:?}: {problem}")]
    InvalidPath {
        /// The path, lossily decoded.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A file the records mention is no longer a regular file (or sits below a symlink).
    #[error("{} is not a regular file, but the relocation records list it", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// The old root is not where the records say: the tree does not match the records.
    #[error(
        "{} does not match the relocation records: no {form} old root at byte {offset}",
        path.display()
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The recorded offset.
        offset: u64,
        /// The recorded form.
        form: Form,
    },
    /// The hits recorded for a file are unusable (unsorted or overlapping).
    #[error("invalid relocation records for {}: {problem}", path.display())]
    InvalidRecords {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The new root has another length and binary files mention the old one.
    #[error(
        "cannot relocate to a root of another length: binary files mention the old root: {}",
        list(.paths)
    )]
    BinaryFiles {
        /// Every binary file that would change length.
        paths: Vec<PathBuf>,
    },
    /// [`Records::from_bytes`] got something that is not relocation records. There is no file
    /// involved: the caller knows where the bytes came from.
    #[error("cannot decode relocation records: {source}")]
    Decode {
        #[source]
        source: serde_json::Error,
    },
    /// [`Records::from_bytes`] got records of another format version.
    #[error("relocation records have unknown format {format:?}, expected {FORMAT:?}")]
    Format {
        /// The format tag found.
        format: String,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// How the separators (and, for a drive root, the prefix) of the root are spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Style {
    /// `/` separators: `/strata/slots/s01`, `C:/strata/s01` (a Windows root given with `\`
    /// is spelled with `/` here).
    Slash,
    /// Every `/` turned into `\`: `C:\strata\s01`.
    Backslash,
    /// Every separator written `\\`, as JSON, opam files and C string literals escape it:
    /// `C:\\strata\\s01`. Windows roots only.
    DoubledBackslash,
    /// Cygwin's view of a drive: `/cygdrive/c/strata/s01`. Drive roots only.
    Cygdrive,
    /// MSYS2's view of a drive (also Git for Windows' and WSL's mount tail):
    /// `/c/strata/s01`. Drive roots only.
    Msys,
}

/// How the drive letter of a Windows root (`C:\…`) is spelled. Windows paths are
/// case-insensitive and tools disagree: `C:` from the shell, `c:` from some runtimes and
/// every Cygwin path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drive {
    /// As the root spells it; the only choice for a root without a drive letter. Records
    /// written before drive-letter forms existed use it.
    AsGiven,
    /// Upper case, whatever the root's case.
    Upper,
    /// Lower case, whatever the root's case.
    Lower,
}

/// How the spelling is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// The bytes themselves (UTF-8 for a Windows root).
    Narrow,
    /// UTF-16LE (Windows resources, registry dumps, .NET strings); only for UTF-8 roots.
    Utf16Le,
}

/// How the root appears in a file: a [`Style`], a [`Drive`] case and an [`Encoding`].
///
/// Relocation rewrites an occurrence into the same form of the new root, so a file keeps
/// its own spelling: `c:/strata/s01` becomes `c:/strata/s02`, `/cygdrive/c/strata/s01`
/// becomes `/cygdrive/c/strata/s02`. Stored records name forms as strings (`slash`,
/// `lower_drive_cygdrive`, `utf16le_upper_drive_doubled_backslash`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Form {
    pub style: Style,
    pub drive: Drive,
    pub encoding: Encoding,
}

const STYLES: [Style; 5] = [
    Style::Slash,
    Style::Backslash,
    Style::DoubledBackslash,
    Style::Cygdrive,
    Style::Msys,
];

/// Upper and lower before as-given: a drive root's as-given spelling is one of them, and the
/// case-specific form is the one recorded, so a file keeps its own drive case.
const DRIVES: [Drive; 3] = [Drive::Upper, Drive::Lower, Drive::AsGiven];

const fn all_forms() -> [Form; 30] {
    let mut out = [Form::SLASH; 30];
    let mut i = 0;
    while i < 30 {
        out[i] = Form {
            style: STYLES[(i / 3) % 5],
            drive: DRIVES[i % 3],
            encoding: if i < 15 {
                Encoding::Narrow
            } else {
                Encoding::Utf16Le
            },
        };
        i += 1;
    }
    out
}

impl Form {
    /// The root with `/` separators, as given.
    pub const SLASH: Form = Form::new(Style::Slash, Drive::AsGiven, Encoding::Narrow);
    /// The root with `\` separators, as given.
    pub const BACKSLASH: Form = Form::new(Style::Backslash, Drive::AsGiven, Encoding::Narrow);
    /// UTF-16LE of [`Form::SLASH`].
    pub const UTF16LE_SLASH: Form = Form::new(Style::Slash, Drive::AsGiven, Encoding::Utf16Le);
    /// UTF-16LE of [`Form::BACKSLASH`].
    pub const UTF16LE_BACKSLASH: Form =
        Form::new(Style::Backslash, Drive::AsGiven, Encoding::Utf16Le);

    /// Every form, in search-priority order: where two forms spell a root the same way, the
    /// earlier one is searched and recorded.
    pub const ALL: [Form; 30] = all_forms();

    pub const fn new(style: Style, drive: Drive, encoding: Encoding) -> Form {
        Form {
            style,
            drive,
            encoding,
        }
    }

    /// How `root` is spelled in this form, or `None` where the form does not apply: a UTF-16
    /// form of a non-UTF-8 root, a drive-letter form of a root without one, a Windows-only
    /// style of a Unix root.
    pub fn encode(self, root: &[u8]) -> Option<Vec<u8>> {
        let drive = matches!(root, [d, b':', b'\\' | b'/', ..] if d.is_ascii_alphabetic());
        // Only a Windows root (`C:\…`, `\\server\…`) has `\` as a separator; on Unix it
        // is an ordinary file-name byte and stays.
        let windows = drive || root.starts_with(b"\\\\");
        let mut root = root.to_vec();
        match self.drive {
            Drive::AsGiven => {}
            Drive::Upper if drive => root[0].make_ascii_uppercase(),
            Drive::Lower if drive => root[0].make_ascii_lowercase(),
            Drive::Upper | Drive::Lower => return None,
        }
        let to = |bytes: &[u8], from: u8, to: &[u8]| -> Vec<u8> {
            let mut out = Vec::with_capacity(bytes.len() + 16);
            for &b in bytes {
                if b == from {
                    out.extend_from_slice(to);
                } else {
                    out.push(b);
                }
            }
            out
        };
        let narrow = match self.style {
            Style::Slash if windows => to(&root, b'\\', b"/"),
            Style::Slash => root,
            Style::Backslash => to(&root, b'/', b"\\"),
            Style::DoubledBackslash if windows => to(&to(&root, b'/', b"\\"), b'\\', b"\\\\"),
            Style::Cygdrive | Style::Msys if drive => {
                let prefix: &[u8] = if self.style == Style::Cygdrive {
                    b"/cygdrive/"
                } else {
                    b"/"
                };
                let mut out = prefix.to_vec();
                out.push(root[0]);
                out.extend(to(&root[2..], b'\\', b"/"));
                out
            }
            Style::DoubledBackslash | Style::Cygdrive | Style::Msys => return None,
        };
        match self.encoding {
            Encoding::Narrow => Some(narrow),
            Encoding::Utf16Le => {
                let s = std::str::from_utf8(&narrow).ok()?;
                Some(s.encode_utf16().flat_map(u16::to_le_bytes).collect())
            }
        }
    }

    /// The distinct spellings of `root` that [`scan`] searches for, each with the form it
    /// records them as, in [`Form::ALL`] order.
    pub fn spellings(root: &[u8]) -> Vec<(Form, Vec<u8>)> {
        let mut out: Vec<(Form, Vec<u8>)> = Vec::new();
        for form in Form::ALL {
            if let Some(p) = form.encode(root)
                && !out.iter().any(|(_, q)| *q == p)
            {
                out.push((form, p));
            }
        }
        out
    }

    fn is_utf16(self) -> bool {
        self.encoding == Encoding::Utf16Le
    }

    /// The stored name: `[utf16le_][upper_drive_|lower_drive_]<style>`.
    fn name(self) -> String {
        let encoding = match self.encoding {
            Encoding::Narrow => "",
            Encoding::Utf16Le => "utf16le_",
        };
        let drive = match self.drive {
            Drive::AsGiven => "",
            Drive::Upper => "upper_drive_",
            Drive::Lower => "lower_drive_",
        };
        format!("{encoding}{drive}{}", self.style.name())
    }

    fn from_name(name: &str) -> Option<Form> {
        let (encoding, rest) = match name.strip_prefix("utf16le_") {
            Some(rest) => (Encoding::Utf16Le, rest),
            None => (Encoding::Narrow, name),
        };
        let (drive, rest) = if let Some(rest) = rest.strip_prefix("upper_drive_") {
            (Drive::Upper, rest)
        } else if let Some(rest) = rest.strip_prefix("lower_drive_") {
            (Drive::Lower, rest)
        } else {
            (Drive::AsGiven, rest)
        };
        let style = STYLES.into_iter().find(|s| s.name() == rest)?;
        Some(Form::new(style, drive, encoding))
    }
}

impl Style {
    fn name(self) -> &'static str {
        match self {
            Style::Slash => "slash",
            Style::Backslash => "backslash",
            Style::DoubledBackslash => "doubled_backslash",
            Style::Cygdrive => "cygdrive",
            Style::Msys => "msys",
        }
    }
}

impl Serialize for Form {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Form {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Form, D::Error> {
        let name = String::deserialize(d)?;
        Form::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown root form {name:?}")))
    }
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.encoding == Encoding::Utf16Le {
            f.write_str("utf-16le ")?;
        }
        match self.drive {
            Drive::AsGiven => {}
            Drive::Upper => f.write_str("upper-case drive ")?,
            Drive::Lower => f.write_str("lower-case drive ")?,
        }
        f.write_str(&self.style.name().replace('_', " "))
    }
}

/// Where one file mentions the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the tree, `/`-separated; hex in JSON so any bytes round-trip.
    #[serde(with = "hex_bytes")]
    pub path: Vec<u8>,
    /// Whether [`is_text`] held for the file, which allows changing its length.
    pub text: bool,
    /// Byte offsets of the root and how it was spelled there, ascending, never overlapping.
    pub hits: Vec<(u64, Form)>,
}

/// The relocation records of one layer, with the root they were recorded against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// The root as the job saw it, `/`-separated; hex in JSON.
    #[serde(with = "hex_bytes")]
    pub root: Vec<u8>,
    /// Files that mention the root, sorted by path; files without hits are left out.
    pub files: Vec<FileRecord>,
}

/// [`Records`] tagged with their format version, as stored.
#[derive(Serialize)]
struct TaggedRef<'a> {
    format: &'a str,
    #[serde(flatten)]
    records: &'a Records,
}

#[derive(Deserialize)]
struct Tagged {
    format: String,
    #[serde(flatten)]
    records: Records,
}

impl Records {
    /// Compact JSON with a format tag; paths and the root are hex.
    pub fn to_bytes(&self) -> Vec<u8> {
        let tagged = TaggedRef {
            format: FORMAT,
            records: self,
        };
        // Only strings, integers and unit variants: serde_json cannot fail on them.
        serde_json::to_vec(&tagged).expect("relocation records always serialize")
    }

    /// Reads what [`Records::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Records> {
        let tagged: Tagged =
            serde_json::from_slice(bytes).map_err(|source| Error::Decode { source })?;
        if tagged.format != FORMAT {
            return Err(Error::Format {
                format: tagged.format,
            });
        }
        Ok(tagged.records)
    }

    /// Whether no file mentions the root (relocating is then free).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(D::Error::custom)
    }
}

/// What [`relocate`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelocateReport {
    /// Files rewritten.
    pub files: usize,
    /// Occurrences of the root rewritten.
    pub hits: usize,
    /// Of `files`, how many were replaced by a new file (length changed) rather than patched
    /// in place; those have a new inode.
    pub replaced: usize,
}

/// Whether `data` looks like text: no NUL byte in its first [`TEXT_WINDOW`] bytes, and those
/// bytes are valid UTF-8, except that a character cut by the window's end is accepted when
/// `data` goes on past it; or UTF-16LE text (see [`is_utf16le_text`]).
pub fn is_text(data: &[u8]) -> bool {
    is_utf16le_text(data) || is_utf8_text(data)
}

/// Whether `data` is UTF-16LE text as Windows writes it: a byte-order mark (`FF FE`), then,
/// in the first [`TEXT_WINDOW`] bytes, valid UTF-16LE with no NUL character (a surrogate
/// pair or a unit cut by the window's end is accepted when `data` goes on past it).
pub fn is_utf16le_text(data: &[u8]) -> bool {
    let Some(body) = data.strip_prefix(&[0xFF, 0xFE]) else {
        return false;
    };
    let window = &body[..body.len().min(TEXT_WINDOW - 2)];
    let cut = body.len() > window.len();
    if window.len() % 2 == 1 && !cut {
        return false;
    }
    let units = window
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]));
    let mut decoded = char::decode_utf16(units).peekable();
    while let Some(c) = decoded.next() {
        match c {
            Ok('\0') => return false,
            Ok(_) => {}
            // A high surrogate whose pair lies past the window.
            Err(e) if decoded.peek().is_none() && cut => {
                return (0xD800..0xDC00).contains(&e.unpaired_surrogate());
            }
            Err(_) => return false,
        }
    }
    true
}

fn is_utf8_text(data: &[u8]) -> bool {
    let window = &data[..data.len().min(TEXT_WINDOW)];
    if memchr::memchr(0, window).is_some() {
        return false;
    }
    match std::str::from_utf8(window) {
        Ok(_) => true,
        // `error_len() == None` means the input ended inside a character.
        Err(e) => e.error_len().is_none() && data.len() > TEXT_WINDOW,
    }
}

/// Whether the character starting `rest` would continue a file name, making an occurrence
/// just before it part of a longer sibling name.
fn continues_name(form: Form, rest: &[u8]) -> bool {
    let unit = if form.is_utf16() {
        match rest {
            [lo, hi, ..] => u32::from(u16::from_le_bytes([*lo, *hi])),
            _ => return false,
        }
    } else {
        match rest.first() {
            Some(&b) => u32::from(b),
            None => return false,
        }
    };
    unit >= 0x80
        || char::from_u32(unit)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '~'))
}

/// Rejects roots that cannot be searched for meaningfully.
fn check_root(root: &[u8]) -> Result<()> {
    let problem = if root.is_empty() {
        "it is empty"
    } else if root.contains(&0) {
        "it contains a nul byte"
    } else if matches!(root.last(), Some(b'/' | b'\\')) {
        "it ends with a path separator"
    } else {
        return Ok(());
    };
    Err(Error::InvalidRoot {
        root: String::from_utf8_lossy(root).into_owned(),
        problem,
    })
}

/// Turns a `/`-separated relative path into a native one, refusing anything that could leave
/// the tree.
fn rel_path(bytes: &[u8]) -> Result<PathBuf> {
    let bad = |problem| Error::InvalidPath {
        path: String::from_utf8_lossy(bytes).into_owned(),
        problem,
    };
    if bytes.is_empty() {
        return Err(bad("it is empty"));
    }
    if bytes.contains(&0) {
        return Err(bad("it contains a nul byte"));
    }
    for part in bytes.split(|&b| b == b'/') {
        match part {
            b"" => return Err(bad("it is absolute or has an empty component")),
            b"." | b".." => return Err(bad("it has a `.` or `..` component")),
            _ => {}
        }
    }
    native_path(bytes)
        .ok_or_else(|| bad("it is not utf-8 or has a character this platform forbids"))
}

#[cfg(unix)]
fn native_path(bytes: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

#[cfg(not(unix))]
fn native_path(bytes: &[u8]) -> Option<PathBuf> {
    let s = std::str::from_utf8(bytes).ok()?;
    // A `\` or `:` would change what the path means on Windows.
    if s.contains(['\\', ':']) {
        return None;
    }
    Some(s.split('/').collect())
}

/// Finds files in a tree without following symlinks on the way, remembering directories it
/// already checked.
struct Tree<'a> {
    root: &'a Path,
    dirs: HashSet<PathBuf>,
}

impl<'a> Tree<'a> {
    fn new(root: &'a Path) -> Self {
        Tree {
            root,
            dirs: HashSet::new(),
        }
    }

    /// The full path of `rel` and its metadata if it is a regular file reached only through
    /// real directories; `None` if it is anything else (symlink, directory, device, or below a
    /// symlink).
    fn regular_file(&mut self, rel: &Path) -> Result<Option<(PathBuf, Metadata)>> {
        let mut ancestors: Vec<&Path> = rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        // Check from the top so a symlinked directory is caught before anything below it.
        ancestors.reverse();
        for dir in ancestors {
            if self.dirs.contains(dir) {
                continue;
            }
            let full = self.root.join(dir);
            let meta = fs::symlink_metadata(&full).map_err(io_err("inspect", &full))?;
            if !meta.is_dir() {
                return Ok(None);
            }
            self.dirs.insert(dir.to_owned());
        }
        let full = self.root.join(rel);
        let meta = fs::symlink_metadata(&full).map_err(io_err("inspect", &full))?;
        Ok(meta.is_file().then_some((full, meta)))
    }
}

/// The spellings of one root, compiled into a single automaton.
struct Needles {
    forms: Vec<Form>,
    automaton: AhoCorasick,
    longest: usize,
}

impl Needles {
    fn new(root: &[u8]) -> Result<Self> {
        // Forms that spell the root alike (a root without `/` in both separator styles) are
        // searched once, as the first of them.
        let (forms, patterns): (Vec<Form>, Vec<Vec<u8>>) =
            Form::spellings(root).into_iter().unzip();
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        // Standard semantics so overlapping search works: a rejected sibling must not hide
        // a real occurrence that starts inside it.
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .map_err(|_| Error::InvalidRoot {
                root: String::from_utf8_lossy(root).into_owned(),
                problem: "it is too long to search for",
            })?;
        Ok(Needles {
            forms,
            automaton,
            longest,
        })
    }
}

/// Searches files for a root, reusing one buffer.
struct Scanner {
    needles: Needles,
    buf: Vec<u8>,
    candidates: Vec<(usize, usize, Form)>,
}

impl Scanner {
    fn new(needles: Needles) -> Self {
        // Room for the overlap carried between chunks plus a useful amount of new data.
        let size = CHUNK.max(4 * (needles.longest + 2)).max(TEXT_WINDOW + 1);
        Scanner {
            needles,
            buf: vec![0; size],
            candidates: Vec::new(),
        }
    }

    /// Reads `file` once, chunk by chunk, and returns whether it is text and its hits.
    fn scan_file(&mut self, file: &mut File) -> io::Result<(bool, Vec<(u64, Form)>)> {
        // Keeping this many bytes between chunks lets every match that starts before the
        // kept tail end, plus two bytes to look past it, inside the current chunk.
        let keep = self.needles.longest + 1;
        let mut hits = Vec::new();
        let mut len = 0;
        let mut base: u64 = 0;
        let mut next_free: u64 = 0;
        let mut first_chunk_text = None;
        loop {
            let eof = fill(file, &mut self.buf, &mut len)?;
            let data = &self.buf[..len];
            // The first chunk holds the whole text window (the buffer is bigger than it).
            let text = *first_chunk_text.get_or_insert_with(|| is_text(data));
            let limit = if eof { len } else { len - keep };
            self.candidates.clear();
            for m in self.needles.automaton.find_overlapping_iter(data) {
                if m.start() >= limit {
                    continue;
                }
                let form = self.needles.forms[m.pattern().as_usize()];
                if text && continues_name(form, &data[m.end()..]) {
                    continue;
                }
                self.candidates.push((m.start(), m.end(), form));
            }
            self.candidates.sort_unstable();
            for &(start, end, form) in &self.candidates {
                let start = base + start as u64;
                // Leftmost wins; an occurrence overlapping an accepted one cannot be rewritten.
                if start >= next_free {
                    hits.push((start, form));
                    next_free = base + end as u64;
                }
            }
            if eof {
                return Ok((text, hits));
            }
            self.buf.copy_within(limit..len, 0);
            len -= limit;
            base += limit as u64;
        }
    }
}

/// Reads into `buf[*len..]` until it is full or the file ends; true at end of file.
fn fill(file: &mut File, buf: &mut [u8], len: &mut usize) -> io::Result<bool> {
    while *len < buf.len() {
        match file.read(&mut buf[*len..]) {
            Ok(0) => return Ok(true),
            Ok(n) => *len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Finds every occurrence of `root` in `files` (relative, `/`-separated paths of new or
/// changed files under `tree`). Symlinks, directories and other non-regular entries, and
/// anything below a symlinked directory, are skipped; files without hits are left out.
/// Each file is read once, searching all forms at the same time.
pub fn scan(tree: &Path, root: &[u8], files: &[Vec<u8>]) -> Result<Records> {
    check_root(root)?;
    let mut scanner = Scanner::new(Needles::new(root)?);
    let mut sorted: Vec<&Vec<u8>> = files.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut walker = Tree::new(tree);
    let mut records = Vec::new();
    for path in sorted {
        let rel = rel_path(path)?;
        let Some((full, _)) = walker.regular_file(&rel)? else {
            continue;
        };
        let mut file = File::open(&full).map_err(io_err("open", &full))?;
        let (text, hits) = scanner
            .scan_file(&mut file)
            .map_err(io_err("read", &full))?;
        if !hits.is_empty() {
            records.push(FileRecord {
                path: path.clone(),
                text,
                hits,
            });
        }
    }
    Ok(Records {
        root: root.to_vec(),
        files: records,
    })
}

/// The old and new spelling of the root in each form that can be spelled for both.
struct Spellings {
    pairs: HashMap<Form, (Vec<u8>, Vec<u8>)>,
}

impl Spellings {
    fn new(old: &[u8], new: &[u8]) -> Self {
        let pairs = Form::ALL
            .into_iter()
            .filter_map(|form| Some((form, (form.encode(old)?, form.encode(new)?))))
            .collect();
        Spellings { pairs }
    }

    fn get(&self, form: Form) -> Option<(&[u8], &[u8])> {
        self.pairs
            .get(&form)
            .map(|(o, n)| (o.as_slice(), n.as_slice()))
    }
}

/// One recorded file, checked and ready to rewrite.
struct Plan<'r> {
    record: &'r FileRecord,
    path: PathBuf,
    meta: Metadata,
    in_place: bool,
}

/// Rewrites every occurrence recorded in `records` under `tree` to `new_root`.
///
/// Nothing happens when `new_root` is the recorded root. Before anything is written, every
/// file is checked: it must still be a regular file holding the old root at each recorded
/// offset ([`Error::Mismatch`] otherwise), and no binary file may need to change length
/// ([`Error::BinaryFiles`] lists them all). Files whose hits keep their length are patched in
/// place; the others (text only) are rebuilt and renamed over the original. Modes and times
/// are kept either way; a replaced file also keeps its owner (Unix) but gets a new inode.
pub fn relocate(tree: &Path, records: &Records, new_root: &[u8]) -> Result<RelocateReport> {
    if records.root == new_root {
        return Ok(RelocateReport::default());
    }
    check_root(&records.root)?;
    check_root(new_root)?;
    let spellings = Spellings::new(&records.root, new_root);
    let mut walker = Tree::new(tree);
    let mut plans = Vec::with_capacity(records.files.len());
    let mut binary = Vec::new();
    for record in &records.files {
        let rel = rel_path(&record.path)?;
        let full = tree.join(&rel);
        let mut in_place = true;
        let mut next_free = 0;
        for &(offset, form) in &record.hits {
            let Some((old, new)) = spellings.get(form) else {
                let which = if form.encode(&records.root).is_none() {
                    &records.root[..]
                } else {
                    new_root
                };
                return Err(Error::NoSpelling {
                    root: String::from_utf8_lossy(which).into_owned(),
                    form,
                    path: full,
                });
            };
            if offset < next_free {
                return Err(Error::InvalidRecords {
                    path: full,
                    problem: format!("hit at byte {offset} is out of order or overlaps another"),
                });
            }
            next_free = offset.saturating_add(old.len() as u64);
            in_place &= old.len() == new.len();
        }
        if !in_place && !record.text {
            binary.push(full);
            continue;
        }
        let Some((path, meta)) = walker.regular_file(&rel)? else {
            return Err(Error::NotRegular { path: full });
        };
        plans.push(Plan {
            record,
            path,
            meta,
            in_place,
        });
    }
    if !binary.is_empty() {
        return Err(Error::BinaryFiles { paths: binary });
    }
    // Verify everything first so a stale tree is reported before any file changes.
    let mut probe = Vec::new();
    for plan in &plans {
        let file = File::open(&plan.path).map_err(io_err("open", &plan.path))?;
        for &(offset, form) in &plan.record.hits {
            let (old, _) = spellings.get(form).expect("checked above");
            probe.resize(old.len(), 0);
            let found = match read_at(&file, &mut probe, offset) {
                Ok(()) => probe == old,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
                Err(e) => return Err(io_err("read", &plan.path)(e)),
            };
            if !found {
                return Err(Error::Mismatch {
                    path: plan.path.clone(),
                    offset,
                    form,
                });
            }
        }
    }
    let mut report = RelocateReport::default();
    for plan in &plans {
        if plan.in_place {
            patch_in_place(plan, &spellings)?;
        } else {
            replace(plan, &spellings)?;
            report.replaced += 1;
        }
        report.files += 1;
        report.hits += plan.record.hits.len();
    }
    Ok(report)
}

/// The times to put back after writing, taken before the file was read or written.
fn times_of(meta: &Metadata) -> FileTimes {
    let mut times = FileTimes::new();
    if let Ok(t) = meta.accessed() {
        times = times.set_accessed(t);
    }
    if let Ok(t) = meta.modified() {
        times = times.set_modified(t);
    }
    times
}

/// Overwrites each hit at its offset: same inode, so hard links and open handles see it.
fn patch_in_place(plan: &Plan<'_>, spellings: &Spellings) -> Result<()> {
    let path = &plan.path;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open for writing", path))?;
    for &(offset, form) in &plan.record.hits {
        let (_, new) = spellings.get(form).expect("checked by relocate");
        write_at(&file, new, offset).map_err(io_err("write", path))?;
    }
    // Writing may drop set-id bits (without CAP_FSETID) and always bumps mtime: put them back.
    file.set_permissions(plan.meta.permissions())
        .map_err(io_err("restore the mode of", path))?;
    file.set_times(times_of(&plan.meta))
        .map_err(io_err("restore the times of", path))?;
    Ok(())
}

/// Rebuilds a text file with the new root and renames it over the original.
fn replace(plan: &Plan<'_>, spellings: &Spellings) -> Result<()> {
    let path = &plan.path;
    let data = fs::read(path).map_err(io_err("read", path))?;
    let mut out = Vec::with_capacity(data.len() + 64 * plan.record.hits.len());
    let mut pos = 0;
    for &(offset, form) in &plan.record.hits {
        let (old, new) = spellings.get(form).expect("checked by relocate");
        // Checked once already; checked again because this is the copy that gets written.
        let start = usize::try_from(offset).ok().filter(|&s| {
            s.checked_add(old.len())
                .is_some_and(|end| data.get(s..end) == Some(old))
        });
        let Some(start) = start else {
            return Err(Error::Mismatch {
                path: path.clone(),
                offset,
                form,
            });
        };
        out.extend_from_slice(&data[pos..start]);
        out.extend_from_slice(new);
        pos = start + old.len();
    }
    out.extend_from_slice(&data[pos..]);

    // Taken before the temporary file appears in the directory, which changes its times.
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_meta = fs::metadata(dir).map_err(io_err("inspect", dir))?;
    let (tmp, file) = create_temp(path)?;
    let written = finish_temp(plan, &tmp, file, &out).and_then(|()| {
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
        restore_dir_times(dir, &dir_meta)
    });
    if written.is_err() {
        // Best effort: the error being returned matters more than a leftover temp file.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Gives the temporary file its content and the original's owner, mode and times.
fn finish_temp(plan: &Plan<'_>, tmp: &Path, mut file: File, content: &[u8]) -> Result<()> {
    file.write_all(content).map_err(io_err("write", tmp))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::fchown(&file, Some(plan.meta.uid()), Some(plan.meta.gid()))
            .map_err(io_err("restore the owner of", tmp))?;
    }
    // After chown, which clears set-id bits.
    file.set_permissions(plan.meta.permissions())
        .map_err(io_err("restore the mode of", tmp))?;
    file.set_times(times_of(&plan.meta))
        .map_err(io_err("restore the times of", tmp))?;
    Ok(())
}

/// Creates a fresh file next to `path` to build its replacement in.
fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    for attempt in 0..100u32 {
        let tmp = path.with_file_name(format!(
            ".{name}.strata-relocate.{}.{attempt}",
            std::process::id()
        ));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            // Private until the original mode is put on it.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &tmp)(e)),
        }
    }
    Err(Error::Io {
        op: "create a temporary file for",
        path: path.to_owned(),
        source: io::ErrorKind::AlreadyExists.into(),
    })
}

/// The rename touched the directory; put its times back so the tree looks untouched.
#[cfg(unix)]
fn restore_dir_times(dir: &Path, meta: &Metadata) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.set_times(times_of(meta)))
        .map_err(io_err("restore the times of", dir))
}

/// Windows cannot open a directory with `File::open`; its times are left as they are.
#[cfg(not(unix))]
fn restore_dir_times(_dir: &Path, _meta: &Metadata) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Drive, Encoding, Form, Style};

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn windows_roots_are_found_with_either_separator() {
        let root = br"C:\strata\s01";
        assert_eq!(Form::SLASH.encode(root).unwrap(), b"C:/strata/s01");
        assert_eq!(Form::BACKSLASH.encode(root).unwrap(), br"C:\strata\s01");
        let given_with_slashes = b"C:/strata/s01";
        assert_eq!(
            Form::BACKSLASH.encode(given_with_slashes).unwrap(),
            br"C:\strata\s01"
        );
        assert_eq!(
            Form::SLASH.encode(given_with_slashes).unwrap(),
            b"C:/strata/s01"
        );
        assert_eq!(
            Form::UTF16LE_SLASH.encode(root).unwrap(),
            utf16("C:/strata/s01")
        );
    }

    #[test]
    fn a_backslash_in_a_unix_root_is_a_file_name_byte() {
        let root = br"/strata/odd\name";
        assert_eq!(Form::SLASH.encode(root).unwrap(), root.to_vec());
    }

    /// Every spelling a Windows toolchain writes, each searched once.
    #[test]
    fn a_drive_root_is_searched_in_every_windows_spelling() {
        let narrow = [
            r"C:\strata\s01",
            r"c:\strata\s01",
            "C:/strata/s01",
            "c:/strata/s01",
            r"C:\\strata\\s01",
            r"c:\\strata\\s01",
            "/cygdrive/C/strata/s01",
            "/cygdrive/c/strata/s01",
            "/C/strata/s01",
            "/c/strata/s01",
        ];
        let found: Vec<Vec<u8>> = Form::spellings(br"C:\strata\s01")
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let mut expected: Vec<Vec<u8>> = narrow.iter().map(|s| s.as_bytes().to_vec()).collect();
        expected.extend(narrow.iter().map(|s| utf16(s)));
        let mut sorted_found = found.clone();
        sorted_found.sort();
        expected.sort();
        assert_eq!(sorted_found, expected);
        // Each spelling is recorded with its drive case, never as-given.
        for (form, _) in Form::spellings(br"C:\strata\s01") {
            assert_ne!(form.drive, Drive::AsGiven, "{form}");
        }
    }

    #[test]
    fn unix_and_unc_roots_have_no_drive_forms() {
        let unix: Vec<Form> = Form::spellings(b"/strata/slots/s01")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            unix,
            [
                Form::SLASH,
                Form::BACKSLASH,
                Form::UTF16LE_SLASH,
                Form::UTF16LE_BACKSLASH
            ]
        );
        let unc: Vec<Vec<u8>> = Form::spellings(br"\\host\share\s01")
            .into_iter()
            .filter(|(f, _)| f.encoding == Encoding::Narrow)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(
            unc,
            [
                b"//host/share/s01".to_vec(),
                br"\\host\share\s01".to_vec(),
                br"\\\\host\\share\\s01".to_vec()
            ]
        );
    }

    #[test]
    fn form_names_round_trip_and_old_names_still_read() {
        for form in Form::ALL {
            assert_eq!(Form::from_name(&form.name()), Some(form), "{form}");
        }
        assert_eq!(Form::from_name("slash"), Some(Form::SLASH));
        assert_eq!(
            Form::from_name("utf16le_backslash"),
            Some(Form::UTF16LE_BACKSLASH)
        );
        assert_eq!(
            Form::from_name("utf16le_lower_drive_cygdrive"),
            Some(Form::new(Style::Cygdrive, Drive::Lower, Encoding::Utf16Le))
        );
        assert_eq!(Form::from_name("sideways"), None);
        assert_eq!(
            Form::new(Style::DoubledBackslash, Drive::Lower, Encoding::Utf16Le).to_string(),
            "utf-16le lower-case drive doubled backslash"
        );
    }
}
