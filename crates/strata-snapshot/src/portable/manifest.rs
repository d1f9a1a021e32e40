//! The manifest of a portable checkout: the stat of every entry at one moment, in
//! depth-first byte order, and its serialised form.
//!
//! A commit reads the manifest back before anything else, so its form is binary: fixed-size
//! little-endian fields, each path stored as the length it shares with the one before plus
//! the rest, and a blake3 checksum at the end. On a 19k-entry tree it reads in about a
//! millisecond, where the JSON of the first version took over ten. That JSON form (v1) is
//! still read, for checkouts made before.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::{EntryStat, Error, Result, Timestamp};

/// The format tag of the JSON form, checked on reading it.
const MANIFEST_FORMAT: &str = "strata-portable-manifest-v1";

/// The first bytes of the binary form, then its version.
const MAGIC: &[u8; 16] = b"strata-manifest\n";
const VERSION: u32 = 2;
/// Magic, version, `taken` and the entry count.
const HEADER_LEN: usize = MAGIC.len() + 4 + 12 + 8;
/// An entry's fixed part: shared and suffix lengths, then the stat.
const ENTRY_FIXED_LEN: usize = 4 + 4 + STAT_LEN;
/// dev, ino, size, mtime, ctime, mode, uid, gid.
const STAT_LEN: usize = 8 * 3 + 12 * 2 + 4 * 3;
const CHECKSUM_LEN: usize = blake3::OUT_LEN;

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
            check_order(&w[0].path, &w[1].path)?;
        }
        Ok(Manifest {
            format: m.format,
            taken: m.taken,
            entries: m.entries,
        })
    }
}

/// Refuses `path` unless it comes after `before` in depth-first byte order.
fn check_order(before: &[u8], path: &[u8]) -> Result<(), String> {
    if strata_cas::tar::path_order(before, path) == Ordering::Less {
        return Ok(());
    }
    Err(format!(
        "entry `{}` does not come after `{}` (entries must be unique and in depth-first byte \
         order)",
        path_text::encode(path),
        path_text::encode(before)
    ))
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

    /// Serialises the manifest in its binary form (see the module's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let paths: usize = self.entries.iter().map(|e| e.path.len()).sum();
        let mut out = Vec::with_capacity(
            HEADER_LEN + self.entries.len() * ENTRY_FIXED_LEN + paths + CHECKSUM_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        put_time(&mut out, self.taken);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        let mut before: &[u8] = &[];
        for e in &self.entries {
            let shared = before
                .iter()
                .zip(&e.path)
                .take_while(|(a, b)| a == b)
                .count();
            let rest = &e.path[shared..];
            out.extend_from_slice(&len_u32(shared).to_le_bytes());
            out.extend_from_slice(&len_u32(rest.len()).to_le_bytes());
            out.extend_from_slice(rest);
            let st = &e.stat;
            for n in [st.dev, st.ino, st.size] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            put_time(&mut out, st.mtime);
            put_time(&mut out, st.ctime);
            for n in [st.mode, st.uid, st.gid] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            before = &e.path;
        }
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }

    /// Reads a manifest written by [`Manifest::to_bytes`] (or the JSON of the first
    /// version), checking its checksum, format and order.
    pub fn from_bytes(b: &[u8]) -> Result<Manifest> {
        if b.first() == Some(&b'{') {
            return serde_json::from_slice(b).map_err(|source| Error::Manifest { source });
        }
        Self::from_binary(b).map_err(|(offset, what)| Error::BadManifest { offset, what })
    }

    /// The binary form; an error names the byte offset where reading stopped.
    fn from_binary(b: &[u8]) -> Result<Manifest, (usize, String)> {
        if !b.starts_with(MAGIC) {
            return Err((0, "not a manifest (no `strata-manifest` header)".to_owned()));
        }
        if b.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err((b.len(), "cut short".to_owned()));
        }
        let (body, checksum) = b.split_at(b.len() - CHECKSUM_LEN);
        if blake3::hash(body).as_bytes() != checksum {
            return Err((
                body.len(),
                "checksum mismatch: the file was changed or cut short".to_owned(),
            ));
        }
        let mut r = Reader {
            b: body,
            pos: MAGIC.len(),
        };
        let version = r.u32()?;
        if version != VERSION {
            return Err((
                MAGIC.len(),
                format!("version {version}, expected {VERSION}"),
            ));
        }
        let taken = r.time()?;
        let count = r.u64()?;
        // Every entry takes at least its fixed part: a count beyond that is a lie, and
        // must not size an allocation.
        let room = (body.len() - HEADER_LEN) / ENTRY_FIXED_LEN;
        let count = usize::try_from(count)
            .ok()
            .filter(|&n| n <= room)
            .ok_or_else(|| (r.pos - 8, format!("{count} entries cannot fit in the file")))?;
        let mut entries: Vec<ManifestEntry> = Vec::with_capacity(count);
        for _ in 0..count {
            let at = r.pos;
            let shared = r.u32()? as usize;
            let rest = r.u32()? as usize;
            let before = entries.last().map_or(&[][..], |e| e.path.as_slice());
            if shared > before.len() {
                return Err((at, format!("shares {shared} bytes with a shorter path")));
            }
            let mut path = Vec::with_capacity(shared + rest);
            path.extend_from_slice(&before[..shared]);
            path.extend_from_slice(r.take(rest)?);
            if path.is_empty() {
                return Err((at, "an entry has an empty path".to_owned()));
            }
            if !before.is_empty() {
                check_order(before, &path).map_err(|what| (at, what))?;
            }
            let (dev, ino, size) = (r.u64()?, r.u64()?, r.u64()?);
            let (mtime, ctime) = (r.time()?, r.time()?);
            let (mode, uid, gid) = (r.u32()?, r.u32()?, r.u32()?);
            let stat = EntryStat {
                dev,
                ino,
                size,
                mtime,
                ctime,
                mode,
                uid,
                gid,
            };
            entries.push(ManifestEntry { path, stat });
        }
        if r.pos != body.len() {
            return Err((r.pos, "trailing bytes after the last entry".to_owned()));
        }
        Ok(Manifest::new(taken, entries))
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

fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    out.extend_from_slice(&t.sec.to_le_bytes());
    out.extend_from_slice(&t.nsec.to_le_bytes());
}

/// A length as the format's `u32`: no path or name comes near 4 GiB.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a path shorter than 4 GiB")
}

/// A cursor over the binary form, failing with the offset where the bytes ran out.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], (usize, String)> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.b.len())
            .ok_or_else(|| (self.pos, "cut short".to_owned()))?;
        let out = &self.b[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], (usize, String)> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, (usize, String)> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, (usize, String)> {
        self.array().map(u64::from_le_bytes)
    }

    fn time(&mut self) -> Result<Timestamp, (usize, String)> {
        let sec = i64::from_le_bytes(self.array()?);
        let nsec = self.u32()?;
        Ok(Timestamp { sec, nsec })
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
