//! A strict, streaming tar reader: validates every header and yields normalised entries.
//!
//! Strict where readers have disagreed in the past (CVE-2025-62518): checksums are verified,
//! a PAX size must agree with the ustar size, non-regular entries may not carry data, sparse
//! and multi-volume entries are refused, and anything after the end-of-archive marker must be
//! zeros. PAX and GNU long-name data are bounded by [`Limits::max_header_bytes`].

use std::io::{self, Read};

use super::{BLOCK, Limits, normalize};
use crate::{Entry, EntryKind, EntryProblem, Error, Metadata, Result};

/// Reads entries one by one from an uncompressed tar stream.
#[derive(Debug)]
pub struct TarReader<R> {
    inner: R,
    limits: Limits,
    /// Bytes consumed from `inner`.
    offset: u64,
    /// Data bytes left in the current entry, then its padding.
    remaining: u64,
    padding: u64,
    entries: u64,
    done: bool,
    global: Overrides,
    /// Name of the current entry, for errors raised while reading its data.
    current: Vec<u8>,
}

/// Attributes set by PAX records (local or global) or GNU long-name entries.
#[derive(Debug, Default, Clone)]
struct Overrides {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<R: Read> TarReader<R> {
    /// Reads from `inner`, which must yield an uncompressed tar stream.
    pub fn new(inner: R, limits: &Limits) -> Self {
        TarReader {
            inner,
            limits: *limits,
            offset: 0,
            remaining: 0,
            padding: 0,
            entries: 0,
            done: false,
            global: Overrides::default(),
            current: Vec::new(),
        }
    }

    /// Bytes of the tar stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry, or `None` at the end-of-archive marker. Any data of the previous entry
    /// that was not read is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut local = Overrides::default();
        let mut gnu_name: Option<Vec<u8>> = None;
        let mut gnu_link: Option<Vec<u8>> = None;
        loop {
            let at = self.offset;
            let mut header = [0u8; BLOCK];
            if !self.read_block(&mut header)? {
                return Err(
                    self.tar_error(at, "unexpected end of stream: no end-of-archive marker")
                );
            }
            if header.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&header).map_err(|p| self.tar_error(at, p))?;
            let typeflag = header[156];
            let size = parse_number(&header[124..136])
                .ok_or_else(|| self.tar_error(at, "invalid size field"))?;
            match typeflag {
                b'x' | b'g' => {
                    let data = self.read_meta_data(at, size)?;
                    let target = if typeflag == b'x' {
                        &mut local
                    } else {
                        &mut self.global
                    };
                    parse_pax(&data, target, typeflag == b'g').map_err(|p| {
                        let name = local.path.clone().unwrap_or_else(|| header_name(&header));
                        Error::entry(&name, p)
                    })?;
                }
                b'L' => gnu_name = Some(trim_nul(self.read_meta_data(at, size)?)),
                b'K' => gnu_link = Some(trim_nul(self.read_meta_data(at, size)?)),
                _ => {
                    return self
                        .finish_entry(at, &header, typeflag, size, local, gnu_name, gnu_link)
                        .map(Some);
                }
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, all parts of one header"
    )]
    fn finish_entry(
        &mut self,
        at: u64,
        header: &[u8; BLOCK],
        typeflag: u8,
        ustar_size: u64,
        local: Overrides,
        gnu_name: Option<Vec<u8>>,
        gnu_link: Option<Vec<u8>>,
    ) -> Result<Entry> {
        let raw_name = local
            .path
            .clone()
            .or(gnu_name)
            .unwrap_or_else(|| header_name(header));
        let fail = |problem| Error::entry(&raw_name, problem);

        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::Limit {
                what: "entries",
                limit: self.limits.max_entries,
            });
        }

        let size = match local.size.or(self.global.size) {
            Some(pax) => {
                // A ustar field of 0, or one too small to hold the size, is what writers emit
                // alongside a PAX size; anything else is a disagreement that readers resolve
                // differently, so it is refused.
                if ustar_size != 0 && ustar_size != pax && pax < 0o777_7777_7777 {
                    return Err(fail(EntryProblem::SizeMismatch {
                        pax,
                        ustar: ustar_size,
                    }));
                }
                pax
            }
            None => ustar_size,
        };
        let field = |range: std::ops::Range<usize>, what: &'static str| {
            parse_number(&header[range]).ok_or_else(|| self.tar_error(at, what))
        };
        let mode = (field(100..108, "invalid mode field")? & 0o7777) as u32;
        let uid = match local.uid.or(self.global.uid) {
            Some(uid) => uid,
            None => u32::try_from(field(108..116, "invalid uid field")?)
                .map_err(|_| self.tar_error(at, "uid out of range"))?,
        };
        let gid = match local.gid.or(self.global.gid) {
            Some(gid) => gid,
            None => u32::try_from(field(116..124, "invalid gid field")?)
                .map_err(|_| self.tar_error(at, "gid out of range"))?,
        };
        let (mtime, mtime_nsec) = match local.mtime.or(self.global.mtime) {
            Some(t) => t,
            None => (
                parse_mtime(&header[136..148])
                    .ok_or_else(|| self.tar_error(at, "invalid mtime field"))?,
                0,
            ),
        };
        let link = local
            .linkpath
            .clone()
            .or(gnu_link)
            .unwrap_or_else(|| field_bytes(&header[157..257]).to_vec());

        let is_dir_name = raw_name.last() == Some(&b'/');
        let kind = match typeflag {
            b'0' | b'\0' | b'7' if is_dir_name && size == 0 => EntryKind::Dir,
            b'0' | b'\0' | b'7' => EntryKind::File,
            b'1' => {
                let target = normalize(&link).map_err(fail)?;
                if target.is_empty() {
                    return Err(fail(EntryProblem::BadHardlink(crate::EntryName(link))));
                }
                EntryKind::Hardlink(target)
            }
            b'2' => EntryKind::Symlink(link),
            b'3' | b'4' => {
                let major = u32::try_from(field(329..337, "invalid device major")?)
                    .map_err(|_| self.tar_error(at, "device major out of range"))?;
                let minor = u32::try_from(field(337..345, "invalid device minor")?)
                    .map_err(|_| self.tar_error(at, "device minor out of range"))?;
                if typeflag == b'3' {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                }
            }
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            other => return Err(fail(EntryProblem::UnsupportedType(other as char))),
        };
        if kind != EntryKind::File && size != 0 {
            return Err(fail(EntryProblem::UnexpectedData {
                kind: kind.noun(),
                size,
            }));
        }
        let path = normalize(&raw_name).map_err(fail)?;
        if path.is_empty() && kind != EntryKind::Dir {
            return Err(fail(EntryProblem::InvalidPath));
        }
        if self.offset.saturating_add(size) > self.limits.max_bytes {
            return Err(Error::Limit {
                what: "uncompressed bytes",
                limit: self.limits.max_bytes,
            });
        }

        let mut xattrs = self.global.xattrs.clone();
        xattrs.extend(local.xattrs);
        xattrs.sort();
        xattrs.dedup_by(|later, earlier| later.0 == earlier.0);

        self.remaining = size;
        self.padding = padding(size);
        self.current = raw_name;
        Ok(Entry {
            path,
            kind,
            meta: Metadata {
                mode,
                uid,
                gid,
                mtime,
                mtime_nsec,
                xattrs,
            },
            size,
        })
    }

    /// Reads data of the current entry into `buf`; returns 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(
                        self.tar_error(self.offset, "unexpected end of stream inside entry data")
                    );
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_error(e)),
            }
        };
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Reads all remaining data of the current entry into `out` (which is cleared first).
    pub fn read_data_to_vec(&mut self, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        let len = usize::try_from(self.remaining).map_err(|_| Error::Limit {
            what: "in-memory entry size",
            limit: usize::MAX as u64,
        })?;
        out.resize(len, 0);
        let mut filled = 0;
        while filled < len {
            filled += self.read_data(&mut out[filled..])?;
        }
        Ok(())
    }

    /// Data bytes of the current entry not read yet.
    pub fn data_remaining(&self) -> u64 {
        self.remaining
    }

    /// The path of the current entry as written in the tar.
    pub fn current_raw_name(&self) -> &[u8] {
        &self.current
    }

    /// Consumes the rest of the stream, which after the end-of-archive marker must be zeros,
    /// and returns the inner reader. Call after [`next_entry`](Self::next_entry) returned
    /// `None`; reading to the end lets a verifying inner reader check its hash.
    pub fn finish(mut self) -> Result<R> {
        if !self.done {
            return Err(self.tar_error(self.offset, "finish called before the end of the archive"));
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.inner.read(&mut buf) {
                Ok(0) => return Ok(self.inner),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream_error(e)),
            };
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Err(self.tar_error(
                    self.offset + i as u64,
                    "data after the end-of-archive marker",
                ));
            }
            self.offset += n as u64;
            if self.offset > self.limits.max_bytes {
                return Err(Error::Limit {
                    what: "uncompressed bytes",
                    limit: self.limits.max_bytes,
                });
            }
        }
    }

    fn read_meta_data(&mut self, at: u64, size: u64) -> Result<Vec<u8>> {
        if size > self.limits.max_header_bytes {
            return Err(Error::Limit {
                what: "PAX or long-name header bytes",
                limit: self.limits.max_header_bytes,
            });
        }
        let mut data = vec![0u8; size as usize];
        self.read_exact_or(&mut data, at)?;
        self.skip(padding(size))?;
        Ok(data)
    }

    /// Reads one block; `false` on a clean end of stream before any byte of it.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(self.tar_error(self.offset, "unexpected end of stream in a header"));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_error(e)),
            }
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }

    fn read_exact_or(&mut self, buf: &mut [u8], at: u64) -> Result<()> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.tar_error(at, "unexpected end of stream in header data"))
            }
            Err(e) => Err(self.stream_error(e)),
        }
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let got = match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(self.tar_error(self.offset, "unexpected end of stream"));
                }
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream_error(e)),
            };
            self.offset += got as u64;
            n -= got as u64;
        }
        Ok(())
    }

    fn tar_error(&self, offset: u64, problem: &str) -> Error {
        Error::Tar {
            offset,
            problem: problem.to_owned(),
        }
    }

    fn stream_error(&self, source: io::Error) -> Error {
        // A verifying reader reports corruption as InvalidData carrying a crate::Error.
        if source
            .get_ref()
            .is_some_and(|inner| inner.is::<crate::Error>())
        {
            let inner = source.into_inner().expect("checked above");
            return *inner.downcast::<crate::Error>().expect("checked above");
        }
        Error::Stream {
            what: format!("at byte {}", self.offset),
            source,
        }
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The bytes of a NUL-terminated header field.
fn field_bytes(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|&b| b == 0) {
        v.truncate(i);
    }
    v
}

/// The name from a ustar header, joined with the POSIX prefix field when present.
fn header_name(header: &[u8; BLOCK]) -> Vec<u8> {
    let name = field_bytes(&header[0..100]);
    // Only POSIX ustar ("ustar\0") has a prefix field; GNU keeps other data there.
    if &header[257..263] == b"ustar\0" {
        let prefix = field_bytes(&header[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(name);
            return full;
        }
    }
    name.to_vec()
}

fn verify_checksum(header: &[u8; BLOCK]) -> Result<(), &'static str> {
    let stored = parse_number(&header[148..156]).ok_or("invalid checksum field")?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err("header checksum mismatch")
    }
}

/// Parses a numeric header field: octal (space/NUL padded) or GNU base-256 (positive only).
fn parse_number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] != 0x80 {
            return None;
        }
        let mut value: u64 = 0;
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let trimmed = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    let mut value: u64 = 0;
    for &b in trimmed {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// Parses the mtime field, which GNU tar may write as negative base-256.
fn parse_mtime(field: &[u8]) -> Option<i64> {
    if field[0] == 0xff {
        let mut value: i64 = -1;
        for &b in &field[1..] {
            value = value.checked_mul(256)? | i64::from(b);
        }
        return Some(value);
    }
    parse_number(field).and_then(|v| i64::try_from(v).ok())
}

fn parse_decimal<T: std::str::FromStr>(value: &[u8], key: &str) -> Result<T, EntryProblem> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EntryProblem::BadPax(format!("invalid {key} value")))
}

fn parse_pax_time(value: &[u8]) -> Result<(i64, u32), EntryProblem> {
    let bad = || EntryProblem::BadPax("invalid mtime value".into());
    let s = std::str::from_utf8(value).map_err(|_| bad())?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().map_err(|_| bad())?;
    // "-1.5" means 1.5 s before the epoch: whole seconds -2 plus 0.5 s.
    if s.starts_with('-') && nsec > 0 {
        Ok((secs - 1, 1_000_000_000 - nsec))
    } else {
        Ok((secs, nsec))
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`) into `out`.
fn parse_pax(data: &[u8], out: &mut Overrides, global: bool) -> Result<(), EntryProblem> {
    let bad = |what: &str| EntryProblem::BadPax(what.to_owned());
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("record without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("invalid record length"))?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("record length does not match its content"));
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("record without `=`"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let key = std::str::from_utf8(key).map_err(|_| bad("key is not UTF-8"))?;
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            out.xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
            continue;
        }
        if key.starts_with("GNU.sparse.") {
            return Err(EntryProblem::UnsupportedType('S'));
        }
        // An empty value removes a global setting; locally it means "use the header".
        if value.is_empty() {
            continue;
        }
        match key {
            "path" | "linkpath" | "size" if global => {
                return Err(bad(&format!("global `{key}` records are not supported")));
            }
            "path" => out.path = Some(value.to_vec()),
            "linkpath" => out.linkpath = Some(value.to_vec()),
            "size" => out.size = Some(parse_decimal(value, key)?),
            "uid" => out.uid = Some(parse_decimal(value, key)?),
            "gid" => out.gid = Some(parse_decimal(value, key)?),
            "mtime" => out.mtime = Some(parse_pax_time(value)?),
            // atime, ctime, uname, gname, comment, hdrcharset and vendor keys carry nothing
            // a layer records.
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"0009\0"), None);
        assert_eq!(parse_number(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_mtime(&[0xff; 12]), Some(-1));
    }

    #[test]
    fn pax_records() {
        let mut o = Overrides::default();
        parse_pax(
            b"16 path=abc/def\n21 mtime=1.500000000\n27 SCHILY.xattr.user.k=v\0w\n",
            &mut o,
            false,
        )
        .unwrap();
        assert_eq!(o.path.as_deref(), Some(&b"abc/def"[..]));
        assert_eq!(o.mtime, Some((1, 500_000_000)));
        assert_eq!(o.xattrs, vec![(b"user.k".to_vec(), b"v\0w".to_vec())]);
        assert_eq!(parse_pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert!(parse_pax(b"99 path=x\n", &mut o, false).is_err());
        assert!(parse_pax(b"9 path=x\n", &mut o, true).is_err());
    }
}
