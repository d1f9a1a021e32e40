//! sha256 digests as OCI names blobs (`sha256:<64 hex>`), and readers and writers that
//! compute them while bytes stream through.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// A sha256 digest, the only algorithm Strata writes or accepts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the algorithm (a blob's file name).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Parses `sha256:<64 lowercase hex>`; anything else (another algorithm, upper case,
    /// another length) is refused, since the digest becomes a file name.
    fn from_str(s: &str) -> Result<Digest, Error> {
        let bad = || Error::BadDigest {
            digest: s.chars().take(100).collect(),
        };
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
        Ok(Digest(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A sha256 being computed, with the byte count.
#[derive(Debug, Default, Clone)]
pub(crate) struct Hasher {
    sha: Sha256,
    pub(crate) len: u64,
}

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub(crate) fn finish(self) -> (Digest, u64) {
        (Digest(self.sha.finalize().into()), self.len)
    }
}

/// A writer that hashes what passes through to `inner`.
#[derive(Debug)]
pub(crate) struct HashWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Hasher,
}

impl<W> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Hasher::default(),
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that yields at most `expected.1` bytes of `inner` (when a size is known) and, at
/// its end, fails unless the bytes hashed to `expected.0` and were exactly that many: a
/// consumer that reads to the end (the store's tar reader does) never keeps what a lying
/// source sent.
#[derive(Debug)]
pub(crate) struct VerifyReader<R> {
    inner: R,
    hasher: Hasher,
    expected: (Digest, Option<u64>),
    what: String,
    checked: bool,
}

impl<R: Read> VerifyReader<R> {
    pub(crate) fn new(
        inner: R,
        digest: Digest,
        size: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        VerifyReader {
            inner,
            hasher: Hasher::default(),
            expected: (digest, size),
            what: what.into(),
            checked: false,
        }
    }

    fn mismatch(&self, actual: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            Error::DigestMismatch {
                what: self.what.clone(),
                expected: match self.expected.1 {
                    Some(size) => format!("{} ({size} bytes)", self.expected.0),
                    None => self.expected.0.to_string(),
                },
                actual,
            },
        )
    }
}

impl<R: Read> Read for VerifyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.checked {
            return Ok(0);
        }
        let left = self.expected.1.map(|size| size - self.hasher.len);
        if left == Some(0) {
            // One more byte than declared is a lie too.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(self.mismatch("more bytes than declared".into()));
            }
            return self.check();
        }
        let cap = left.map_or(buf.len(), |l| {
            buf.len().min(usize::try_from(l).unwrap_or(usize::MAX))
        });
        let n = self.inner.read(&mut buf[..cap])?;
        if n == 0 {
            if self.expected.1.is_some() {
                return Err(self.mismatch(format!("only {} bytes", self.hasher.len)));
            }
            return self.check();
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> VerifyReader<R> {
    fn check(&mut self) -> io::Result<usize> {
        self.checked = true;
        let (digest, _) = self.hasher.clone().finish();
        if digest != self.expected.0 {
            return Err(self.mismatch(digest.to_string()));
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_lowercase_sha256() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        for bad in [
            "sha512:00",
            "sha256:ABC",
            "sha256:../../etc/passwd",
            &d.to_string().to_uppercase(),
            &format!("{d}0"),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn verify_reader_refuses_lies() {
        let data = b"hello world".to_vec();
        let d = Digest::of(&data);
        let read_all = |r: &mut dyn Read| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        };
        let mut ok = VerifyReader::new(&data[..], d, Some(11), "blob");
        assert_eq!(read_all(&mut ok).unwrap(), data);
        let mut short = VerifyReader::new(&data[..5], d, Some(11), "blob");
        assert!(read_all(&mut short).is_err());
        let mut long = VerifyReader::new(&b"hello world!"[..], d, Some(11), "blob");
        assert!(read_all(&mut long).is_err());
        let mut wrong = VerifyReader::new(&b"hello worle"[..], d, None, "blob");
        let err = read_all(&mut wrong).unwrap_err().to_string();
        assert!(err.contains("blob"), "{err}");
    }
}
