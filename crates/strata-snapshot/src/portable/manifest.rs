//! The manifest of a portable checkout: the stat of every entry at one moment, in
//! depth-first byte order, and its serialised form.

use std::cmp::Ordering;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{EntryStat, Error, Result, Timestamp, WalkDir, sorted_names, walk_err};

/// The format tag written into every manifest, checked on reading.
const MANIFEST_FORMAT: &str = "strata-portable-manifest-v1";

/// The stat of every entry of a directory tree (the root excluded) at one moment, kept in
/// depth-first byte order ([`strata_cas::tar::path_order`]), plus that moment. Deserialising
/// checks the order, which [`diff`](super::diff) relies on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ManifestRepr")]
pub struct Manifest {
    format: String,
    pub(super) taken: Timestamp,
    pub(super) entries: Vec<ManifestEntry>,
}

/// A manifest as read, before its checks.
#[derive(Deserialize)]
struct ManifestRepr {
    format: String,
    taken: Timestamp,
    entries: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ManifestEntry {
    #[serde(with = "path_text")]
    pub(super) path: Vec<u8>,
    pub(super) stat: EntryStat,
}

impl TryFrom<ManifestRepr> for Manifest {
    type Error = String;

    fn try_from(m: ManifestRepr) -> Result<Self, String> {
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "format `{}`, expected `{MANIFEST_FORMAT}`",
                m.format
            ));
        }
        if m.entries.iter().any(|e| e.path.is_empty()) {
            return Err("an entry has an empty path".to_owned());
        }
        for w in m.entries.windows(2) {
            if strata_cas::tar::path_order(&w[0].path, &w[1].path) != Ordering::Less {
                return Err(format!(
                    "entry `{}` does not come after `{}` (entries must be unique and in \
                     depth-first byte order)",
                    path_text::encode(&w[1].path),
                    path_text::encode(&w[0].path)
                ));
            }
        }
        Ok(Manifest {
            format: m.format,
            taken: m.taken,
            entries: m.entries,
        })
    }
}

impl Manifest {
    /// Builds a manifest from entries already in depth-first byte order.
    #[cfg_attr(
        not(any(unix, windows)),
        allow(
            dead_code,
            reason = "only the Unix and Windows walkers build manifests"
        )
    )]
    pub(super) fn new(taken: Timestamp, entries: Vec<ManifestEntry>) -> Self {
        debug_assert!(
            entries
                .windows(2)
                .all(|w| strata_cas::tar::path_order(&w[0].path, &w[1].path) == Ordering::Less)
        );
        Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            taken,
            entries,
        }
    }

    /// Serialises the manifest (JSON; paths as UTF-8 with `%XX` for other bytes and `%`).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// Reads a manifest written by [`Manifest::to_bytes`], checking its format and order.
    pub fn from_bytes(b: &[u8]) -> Result<Manifest> {
        serde_json::from_slice(b).map_err(|source| Error::Manifest { source })
    }

    /// Number of entries (the root is not one).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree had nothing but its root.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the manifest was taken, on the filesystem's clock where it could be read from the
    /// filesystem: an entry whose mtime is not older than this is racy.
    pub fn taken(&self) -> Timestamp {
        self.taken
    }

    /// The recorded stat of `path` (relative, `/`-separated).
    pub fn get(&self, path: &[u8]) -> Option<&EntryStat> {
        self.entries
            .binary_search_by(|e| strata_cas::tar::path_order(&e.path, path))
            .ok()
            .map(|i| &self.entries[i].stat)
    }

    /// Every recorded path and stat, in depth-first byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &EntryStat)> {
        self.entries.iter().map(|e| (e.path.as_slice(), &e.stat))
    }
}

/// Paths as JSON strings: valid UTF-8 as is, other bytes and `%` as `%XX`, so any Unix name
/// round-trips and the common case stays readable.
mod path_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn encode(path: &[u8]) -> String {
        let mut out = String::with_capacity(path.len());
        for chunk in path.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c == '%' {
                    out.push_str("%25");
                } else {
                    out.push(c);
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn decode(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        Some(out)
    }

    pub(super) fn serialize<S: Serializer>(path: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(path))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad `%` escape in path `{text}`")))
    }
}

/// Stats every entry below `dir`, depth-first with children in byte order. Entries that
/// vanish meanwhile are left out.
pub(super) fn collect<D: WalkDir>(
    root: &Path,
    dir: &D,
    prefix: &mut Vec<u8>,
    out: &mut Vec<ManifestEntry>,
) -> Result<()> {
    for name in sorted_names(dir).map_err(walk_err("list", root, prefix))? {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(&name);
        if let Some(stat) = dir.stat(&name).map_err(walk_err("stat", root, prefix))? {
            out.push(ManifestEntry {
                path: prefix.clone(),
                stat,
            });
            if stat.is_dir()
                && let Some(child) = dir.open(&name).map_err(walk_err("open", root, prefix))?
            {
                collect(root, &child, prefix, out)?;
            }
        }
        prefix.truncate(len);
    }
    Ok(())
}
