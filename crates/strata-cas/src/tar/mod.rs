//! The layer format: a tar stream with OCI semantics, read strictly and written deterministically.
//!
//! Paths inside a layer are raw bytes, `/`-separated and relative to the root. The reader
//! normalises them (drops `./` and empty components) and refuses absolute paths and `..`,
//! so every consumer works with the same, already validated, names.

mod read;
mod write;

pub use read::TarReader;
pub use write::TarWriter;

use crate::EntryProblem;

/// The size of a tar block.
pub(crate) const BLOCK: usize = 512;

/// Prefix of an OCI whiteout file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Bounds on what a layer may make the reader and extractor do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total uncompressed bytes of the tar stream, headers included. This is what bounds
    /// decompression bombs.
    pub max_bytes: u64,
    /// Number of entries.
    pub max_entries: u64,
    /// Size of the PAX and GNU long-name data attached to one entry, all its extended
    /// headers together.
    pub max_header_bytes: u64,
    /// Components in an entry's path (and a hard link's target). Real trees stay far below;
    /// the default, 4096, is twice what fits in Linux's `PATH_MAX`.
    pub max_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 40,
            max_entries: 50_000_000,
            max_header_bytes: 1 << 20,
            max_depth: 4096,
        }
    }
}

/// What a whiteout entry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Remove `name` from the directory `parent` (paths of lower layers only).
    Remove {
        /// The directory, normalised, empty for the root.
        parent: &'a [u8],
        /// The name to remove.
        name: &'a [u8],
    },
    /// Hide every lower-layer child of `dir`.
    Opaque {
        /// The directory, normalised, empty for the root.
        dir: &'a [u8],
    },
}

/// Classifies a normalised path: `Ok(None)` for an ordinary entry, `Ok(Some(..))` for a
/// whiteout, `Err` for names in the reserved `.wh.` space that mean nothing valid.
pub fn whiteout(path: &[u8]) -> Result<Option<Whiteout<'_>>, EntryProblem> {
    let (parent, name) = split_parent(path);
    let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(None);
    };
    if name == OPAQUE_MARKER {
        return Ok(Some(Whiteout::Opaque { dir: parent }));
    }
    if target.is_empty() || target == b"." || target == b".." || target.starts_with(WHITEOUT_PREFIX)
    {
        return Err(EntryProblem::BadWhiteout);
    }
    Ok(Some(Whiteout::Remove {
        parent,
        name: target,
    }))
}

/// Whether an extended attribute is overlayfs's: `trusted.overlay.*`, `user.overlay.*`, or
/// `overlay.*` under any other namespace. Overlayfs reads them from a layer directory as
/// whiteouts, opaque markers, redirects and more, so a layer that carried one would show
/// one tree in an overlay mount and another everywhere else: layers never carry them.
pub fn overlay_xattr(name: &[u8]) -> bool {
    let mut parts = name.splitn(3, |&b| b == b'.');
    let _namespace = parts.next();
    parts.next() == Some(b"overlay") && parts.next().is_some()
}

/// Splits a normalised path into its parent (empty for top-level names) and last component.
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Normalises a path from a tar header: drops a leading `./`, empty and `.` components and a
/// trailing `/`. Absolute paths, `..` components and NUL bytes are refused. The root is the
/// empty path.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, EntryProblem> {
    if raw.contains(&0) {
        return Err(EntryProblem::InvalidPath);
    }
    if raw.first() == Some(&b'/') {
        return Err(EntryProblem::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(EntryProblem::DotDot),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Orders paths as a depth-first walk with children sorted by name bytes (GNU tar's
/// `--sort=name`): a directory comes right before its contents.
pub fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_accepts_and_refuses() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b".").unwrap(), b"");
        assert!(matches!(normalize(b"/etc"), Err(EntryProblem::Absolute)));
        assert!(matches!(normalize(b"a/../b"), Err(EntryProblem::DotDot)));
        assert!(matches!(normalize(b".."), Err(EntryProblem::DotDot)));
        assert!(matches!(normalize(b"a\0b"), Err(EntryProblem::InvalidPath)));
    }

    #[test]
    fn whiteouts_are_classified() {
        assert_eq!(whiteout(b"a/b").unwrap(), None);
        assert_eq!(
            whiteout(b"a/.wh.b").unwrap(),
            Some(Whiteout::Remove {
                parent: b"a",
                name: b"b"
            })
        );
        assert_eq!(
            whiteout(b".wh..wh..opq").unwrap(),
            Some(Whiteout::Opaque { dir: b"" })
        );
        for bad in [&b".wh."[..], b"a/.wh..", b".wh...", b".wh..wh.x"] {
            assert!(whiteout(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn overlay_attributes_are_recognised_in_every_namespace() {
        for name in [
            &b"trusted.overlay.opaque"[..],
            b"user.overlay.opaque",
            b"user.overlay.whiteout",
            b"trusted.overlay.overlay.opaque",
            b"security.overlay.x",
        ] {
            assert!(overlay_xattr(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"user.overlay"[..],
            b"user.overlayfs.x",
            b"user.note",
            b"security.capability",
            b"overlay.opaque",
        ] {
            assert!(!overlay_xattr(name), "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn path_order_is_depth_first() {
        let mut v: Vec<&[u8]> = vec![b"a.txt", b"a/b", b"a", b"a-b", b"b"];
        v.sort_by(|x, y| path_order(x, y));
        assert_eq!(v, vec![&b"a"[..], b"a/b", b"a-b", b"a.txt", b"b"]);
    }
}
