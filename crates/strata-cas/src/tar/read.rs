//! A strict, streaming tar reader: validates every header and yields normalised entries.
//!
//! Strict where readers have disagreed in the past (CVE-2025-62518): checksums are verified,
//! a PAX size must agree with the ustar size, non-regular entries may not carry data, sparse
//! and multi-volume entries are refused, and anything after the end-of-archive marker must be
//! zeros. PAX and GNU long-name data are bounded by [`Limits::max_header_bytes`].
//!
//! Every number read from the stream is range-checked before any arithmetic on it, and the
//! work per entry is linear in the entry's bytes: global PAX records, which apply to every
//! entry, are bounded to a few KiB so they cannot multiply.

use std::io::{self, Read};

use super::{BLOCK, Limits, normalize};
use crate::{Entry, EntryKind, EntryProblem, Error, Metadata, Result};

/// Bytes of extended attributes that global PAX headers may set: they are copied to every
/// entry, so a large global record would cost its size once per entry.
const MAX_GLOBAL_XATTR_BYTES: usize = 4096;

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
        self.skip(self.remaining.saturating_add(self.padding))?;
        self.remaining = 0;
        self.padding = 0;
        let mut local = Overrides::default();
        let mut gnu_name: Option<Vec<u8>> = None;
        let mut gnu_link: Option<Vec<u8>> = None;
        // Extended-header bytes attached to this entry so far, all its headers together.
        let mut meta_bytes = 0u64;
        // A bad local PAX record, reported once the entry's own header names it.
        let mut bad_record: Option<EntryProblem> = None;
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
            // Headers count too: a run of extended headers that never reaches an entry
            // must not slip past the bound on the stream's bytes.
            if self.offset > self.limits.max_bytes {
                return Err(Error::Limit {
                    what: "uncompressed bytes",
                    limit: self.limits.max_bytes,
                });
            }
            verify_checksum(&header).map_err(|p| self.tar_error(at, p))?;
            let typeflag = header[156];
            let size = parse_number(&header[124..136])
                .ok_or_else(|| self.tar_error(at, "invalid size field"))?;
            if matches!(typeflag, b'x' | b'L' | b'K') {
                meta_bytes = meta_bytes.saturating_add(size);
                if meta_bytes > self.limits.max_header_bytes {
                    return Err(Error::Limit {
                        what: "PAX or long-name header bytes",
                        limit: self.limits.max_header_bytes,
                    });
                }
            }
            match typeflag {
                b'x' => {
                    let data = self.read_meta_data(at, size)?;
                    if let Err(problem) = parse_pax(&data, &mut local, false) {
                        bad_record.get_or_insert(problem);
                    }
                }
                b'g' => {
                    let data = self.read_meta_data(at, size)?;
                    parse_pax(&data, &mut self.global, true)
                        .and_then(|()| {
                            self.global.xattrs =
                                merge_xattrs(&[], std::mem::take(&mut self.global.xattrs));
                            check_global_xattrs(&self.global.xattrs)
                        })
                        .map_err(|p| Error::entry(&header_name(&header), p))?;
                }
                b'L' => gnu_name = Some(trim_nul(self.read_meta_data(at, size)?)),
                b'K' => gnu_link = Some(trim_nul(self.read_meta_data(at, size)?)),
                _ => {
                    let raw_name = local
                        .path
                        .clone()
                        .or(gnu_name)
                        .unwrap_or_else(|| header_name(&header));
                    if let Some(problem) = bad_record {
                        return Err(Error::entry(&raw_name, problem));
                    }
                    return self
                        .finish_entry(at, &header, typeflag, size, local, raw_name, gnu_link)
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
        raw_name: Vec<u8>,
        gnu_link: Option<Vec<u8>>,
    ) -> Result<Entry> {
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

        let too_deep = |path: &[u8]| {
            let depth = depth(path);
            (depth > self.limits.max_depth as usize).then_some(EntryProblem::TooDeep {
                depth,
                limit: self.limits.max_depth,
            })
        };
        let is_dir_name = raw_name.last() == Some(&b'/');
        let kind = match typeflag {
            b'0' | b'\0' | b'7' if is_dir_name && size == 0 => EntryKind::Dir,
            b'0' | b'\0' | b'7' => EntryKind::File,
            b'1' => {
                let target = normalize(&link).map_err(fail)?;
                if target.is_empty() {
                    return Err(fail(EntryProblem::BadHardlink(crate::EntryName(link))));
                }
                if let Some(problem) = too_deep(&target) {
                    return Err(fail(problem));
                }
                EntryKind::Hardlink(target)
            }
            b'2' if link.contains(&0) => return Err(fail(EntryProblem::NulInSymlinkTarget)),
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
        if let Some(problem) = too_deep(&path) {
            return Err(fail(problem));
        }
        if self.offset.saturating_add(size) > self.limits.max_bytes {
            return Err(Error::Limit {
                what: "uncompressed bytes",
                limit: self.limits.max_bytes,
            });
        }

        let xattrs = merge_xattrs(&self.global.xattrs, local.xattrs);

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

    /// Reads the whole archive as a layer to be stored as it is: every header validated,
    /// whiteout names checked, the stream read to its end ([`finish`](Self::finish)).
    /// Returns the number of entries.
    pub(crate) fn validate_layer(mut self) -> Result<u64> {
        let mut entries = 0;
        while let Some(entry) = self.next_entry()? {
            super::whiteout(&entry.path)
                .map_err(|problem| crate::Error::entry(self.current_raw_name(), problem))?;
            entries += 1;
        }
        self.finish()?;
        Ok(entries)
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
        if self.offset.saturating_add(size) > self.limits.max_bytes {
            return Err(Error::Limit {
                what: "uncompressed bytes",
                limit: self.limits.max_bytes,
            });
        }
        let len = usize::try_from(size).map_err(|_| Error::Limit {
            what: "PAX or long-name header bytes",
            limit: usize::MAX as u64,
        })?;
        let mut data = vec![0u8; len];
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

/// Components of a normalised path (0 for the root).
fn depth(path: &[u8]) -> usize {
    if path.is_empty() {
        0
    } else {
        path.iter().filter(|&&b| b == b'/').count() + 1
    }
}

/// Global records then local ones, in the order they were read; for each name the last
/// record wins (POSIX: a later record overrides an earlier one, a local one a global one).
/// Sorted by name.
fn merge_xattrs(
    global: &[(Vec<u8>, Vec<u8>)],
    local: Vec<(Vec<u8>, Vec<u8>)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all: Vec<_> = global.iter().cloned().chain(local).collect();
    // Latest first, then a stable sort by name: the first of each name is the one to keep.
    all.reverse();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.dedup_by(|later, earlier| later.0 == earlier.0);
    all
}

fn check_global_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), EntryProblem> {
    let bytes: usize = xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > MAX_GLOBAL_XATTR_BYTES {
        return Err(EntryProblem::BadPax(format!(
            "global xattr records hold {bytes} bytes, more than {MAX_GLOBAL_XATTR_BYTES} \
             (they would be copied to every entry)"
        )));
    }
    Ok(())
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

/// A decimal record (`size`, `uid`, `gid`): ASCII digits only, within `T`'s range.
fn parse_decimal<T: std::str::FromStr>(value: &[u8], key: &str) -> Result<T, EntryProblem> {
    if !value.iter().all(u8::is_ascii_digit) {
        return Err(EntryProblem::BadPax(format!("invalid {key} value")));
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EntryProblem::BadPax(format!("{key} value out of range")))
}

/// A PAX time, `[-]SECONDS[.FRACTION]`, as whole seconds and nanoseconds (floored, so the
/// nanoseconds are always positive). Seconds outside `i64` are refused, not wrapped.
fn parse_pax_time(value: &[u8]) -> Result<(i64, u32), EntryProblem> {
    let bad = || EntryProblem::BadPax("invalid mtime value".into());
    let out_of_range = || EntryProblem::BadPax("mtime value out of range".into());
    let s = std::str::from_utf8(value).map_err(|_| bad())?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let negative = secs.starts_with('-');
    let digits = secs.strip_prefix('-').unwrap_or(secs);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| out_of_range())?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().map_err(|_| bad())?;
    // "-1.5" means 1.5 s before the epoch: whole seconds -2 plus 0.5 s.
    if negative && nsec > 0 {
        let secs = secs.checked_sub(1).ok_or_else(out_of_range)?;
        Ok((secs, 1_000_000_000 - nsec))
    } else {
        Ok((secs, nsec))
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`) into `out`. A value out of range is
/// reported after the other records are read, so that a `path` record after it still
/// names the entry in the error.
fn parse_pax(data: &[u8], out: &mut Overrides, global: bool) -> Result<(), EntryProblem> {
    let bad = |what: &str| EntryProblem::BadPax(what.to_owned());
    let mut bad_value = None;
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
            match key {
                "uid" => out.uid = None,
                "gid" => out.gid = None,
                "mtime" => out.mtime = None,
                _ => {}
            }
            continue;
        }
        match key {
            "path" | "linkpath" | "size" if global => {
                return Err(bad(&format!("global `{key}` records are not supported")));
            }
            "path" => out.path = Some(value.to_vec()),
            "linkpath" => out.linkpath = Some(value.to_vec()),
            "size" => out.size = keep_first(parse_decimal(value, key), &mut bad_value),
            "uid" => out.uid = keep_first(parse_decimal(value, key), &mut bad_value),
            "gid" => out.gid = keep_first(parse_decimal(value, key), &mut bad_value),
            "mtime" => out.mtime = keep_first(parse_pax_time(value), &mut bad_value),
            // atime, ctime, uname, gname, comment, hdrcharset and vendor keys carry nothing
            // a layer records.
            _ => {}
        }
    }
    bad_value.map_or(Ok(()), Err)
}

/// The value, or `None` with the first problem kept in `first`.
fn keep_first<T>(result: Result<T, EntryProblem>, first: &mut Option<EntryProblem>) -> Option<T> {
    result.map_err(|p| _ = first.get_or_insert(p)).ok()
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

    fn problem_text(r: Result<impl std::fmt::Debug, EntryProblem>) -> String {
        match r {
            Err(EntryProblem::BadPax(m)) => m,
            other => panic!("expected a BadPax problem, got {other:?}"),
        }
    }

    /// The shape: flooring `-9223372036854775808.5` subtracted past `i64::MIN`
    /// (a panic in debug builds, a time in the year 2446 in release).
    #[test]
    fn pax_times_at_the_edge_of_i64_are_refused_not_wrapped() {
        let m = problem_text(parse_pax_time(b"-9223372036854775808.5"));
        assert_eq!(m, "mtime value out of range");
        assert_eq!(
            parse_pax_time(b"-9223372036854775808").unwrap(),
            (i64::MIN, 0)
        );
        assert_eq!(
            parse_pax_time(b"-9223372036854775807.5").unwrap(),
            (i64::MIN, 500_000_000)
        );
        assert_eq!(
            parse_pax_time(b"9223372036854775807.9999999999").unwrap(),
            (i64::MAX, 999_999_999)
        );
        assert_eq!(parse_pax_time(b"-0.25").unwrap(), (-1, 750_000_000));
        for big in [
            &b"9223372036854775808"[..],
            b"-9223372036854775809",
            b"123456789012345678901234567890.5",
        ] {
            assert_eq!(
                problem_text(parse_pax_time(big)),
                "mtime value out of range"
            );
        }
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1e3",
            b"1.-5",
            b"--1",
            b"-.5",
            b".5",
        ] {
            assert_eq!(problem_text(parse_pax_time(bad)), "invalid mtime value");
        }
    }

    #[test]
    fn numeric_pax_records_are_digits_within_range() {
        let parse = |record: &[u8]| parse_pax(record, &mut Overrides::default(), false);
        assert_eq!(problem_text(parse(b"11 size=+5\n")), "invalid size value");
        assert_eq!(problem_text(parse(b"10 gid=-1\n")), "invalid gid value");
        assert_eq!(
            problem_text(parse(b"18 uid=4294967296\n")),
            "uid value out of range"
        );
        assert_eq!(
            problem_text(parse(b"29 size=18446744073709551616\n")),
            "size value out of range"
        );
        let mut o = Overrides::default();
        parse_pax(b"18 uid=4294967295\n", &mut o, false).unwrap();
        assert_eq!(o.uid, Some(u32::MAX));
    }

    /// A ustar header block of `typeflag` for `name` announcing `size` data bytes.
    fn header(typeflag: u8, name: &[u8], size: usize) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    /// A header of `typeflag` followed by `data`, padded to a block.
    fn with_data(typeflag: u8, name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = header(typeflag, name, data.len());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
        out
    }

    fn pax(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while len != body.len() + len.to_string().len() {
            len = body.len() + len.to_string().len();
        }
        format!("{len}{body}").into_bytes()
    }

    fn read_all(tar: &[u8], limits: &Limits) -> Result<Vec<Entry>> {
        let mut end = tar.to_vec();
        end.resize(end.len() + 2 * BLOCK, 0);
        let mut r = TarReader::new(&end[..], limits);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn a_pax_time_out_of_range_names_its_entry() {
        let mut tar = with_data(
            b'x',
            b"PaxHeaders/t",
            &pax("mtime", "-9223372036854775808.5"),
        );
        tar.extend(header(b'0', b"t", 0));
        let e = read_all(&tar, &Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "entry `t`: malformed PAX record: mtime value out of range"
        );
        // The path may come in a later record, or a later header, than the bad one.
        let mut records = pax("mtime", "1e9");
        records.extend(pax("path", "named"));
        let mut tar = with_data(b'x', b"PaxHeaders/t", &records);
        tar.extend(with_data(b'x', b"PaxHeaders/t", &pax("uid", "-1")));
        tar.extend(header(b'0', b"t", 0));
        let e = read_all(&tar, &Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "entry `named`: malformed PAX record: invalid mtime value"
        );
        // A bad global record is named by its own header, as it applies to no one entry.
        let mut tar = with_data(b'g', b"pax_global_header", &pax("mtime", "x"));
        tar.extend(header(b'0', b"t", 0));
        let e = read_all(&tar, &Limits::default()).unwrap_err();
        assert_eq!(e.entry_name().unwrap().0, b"pax_global_header");
    }

    #[test]
    fn later_xattr_records_win_and_local_ones_override_global_ones() {
        let mut global = pax("SCHILY.xattr.user.g", "global");
        global.extend(pax("SCHILY.xattr.user.both", "global"));
        let mut local = pax("SCHILY.xattr.user.both", "aa-first");
        local.extend(pax("SCHILY.xattr.user.both", "zz-local"));
        let mut tar = with_data(b'g', b"pax_global_header", &global);
        tar.extend(with_data(b'x', b"PaxHeaders/f", &local));
        tar.extend(header(b'0', b"f", 0));
        tar.extend(header(b'0', b"g", 0));
        let entries = read_all(&tar, &Limits::default()).unwrap();
        let xattrs = |e: &Entry| {
            e.meta
                .xattrs
                .iter()
                .map(|(n, v)| {
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(xattrs(&entries[0]), ["user.both=zz-local", "user.g=global"]);
        assert_eq!(xattrs(&entries[1]), ["user.both=global", "user.g=global"]);
    }

    /// Global records are copied to every entry, so they may not be large.
    #[test]
    fn global_xattrs_are_bounded() {
        let value = "v".repeat(3000);
        let fits = with_data(
            b'g',
            b"pax_global_header",
            &pax("SCHILY.xattr.user.a", &value),
        );
        let mut tar = fits.clone();
        tar.extend(header(b'0', b"f", 0));
        read_all(&tar, &Limits::default()).unwrap();
        // The same name again replaces it rather than adding to it...
        let mut tar = fits.clone();
        tar.extend(fits.clone());
        tar.extend(header(b'0', b"f", 0));
        read_all(&tar, &Limits::default()).unwrap();
        // ...but a second name goes over.
        let mut tar = fits;
        tar.extend(with_data(
            b'g',
            b"pax_global_header",
            &pax("SCHILY.xattr.user.b", &value),
        ));
        tar.extend(header(b'0', b"f", 0));
        let e = read_all(&tar, &Limits::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("global xattr records hold 6012 bytes, more than 4096"),
            "{e}"
        );
    }

    /// `max_header_bytes` bounds all extended headers of one entry together, not each.
    #[test]
    fn extended_headers_of_one_entry_are_bounded_together() {
        let limits = Limits {
            max_header_bytes: 1024,
            ..Limits::default()
        };
        let record = pax("comment", &"c".repeat(600));
        let mut tar = with_data(b'x', b"PaxHeaders/f", &record);
        tar.extend(header(b'0', b"f", 0));
        tar.extend(with_data(b'x', b"PaxHeaders/g", &record));
        tar.extend(header(b'0', b"g", 0));
        read_all(&tar, &limits).unwrap();
        let mut tar = with_data(b'x', b"PaxHeaders/f", &record);
        tar.extend(with_data(b'L', b"././@LongLink", b"f\0"));
        tar.extend(with_data(b'x', b"PaxHeaders/f", &record));
        tar.extend(header(b'0', b"f", 0));
        assert!(matches!(
            read_all(&tar, &limits),
            Err(Error::Limit { limit: 1024, .. })
        ));
    }

    /// Global headers never reach an entry, so only the bound on the stream's bytes stops a
    /// (highly compressible) run of them, and it must stop it as it goes, not at the end.
    #[test]
    fn headers_count_towards_the_bound_on_bytes() {
        let limits = Limits {
            max_bytes: 64 << 10,
            ..Limits::default()
        };
        let global = with_data(b'g', b"pax_global_header", &pax("comment", "x"));
        let mut tar = global.repeat(1000);
        tar.resize(tar.len() + 2 * BLOCK, 0);
        let mut r = TarReader::new(&tar[..], &limits);
        assert!(matches!(
            r.next_entry(),
            Err(Error::Limit {
                what: "uncompressed bytes",
                ..
            })
        ));
        assert!(
            r.offset() <= limits.max_bytes + BLOCK as u64,
            "{}",
            r.offset()
        );
        let mut r = TarReader::new(&tar[..], &Limits::default());
        assert!(r.next_entry().unwrap().is_none());
    }

    /// Found by the `tar_reader` fuzz target's round trip: a PAX `linkpath` may hold a NUL
    /// byte, which the writer's link field then cut short.
    #[test]
    fn a_nul_in_a_symlink_target_is_refused() {
        let mut tar = with_data(b'x', b"PaxHeaders/l", b"16 linkpath=a\0b\n");
        tar.extend(header(b'2', b"l", 0));
        let e = read_all(&tar, &Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "entry `l`: the symlink target contains a NUL byte"
        );
    }

    #[test]
    fn paths_and_link_targets_deeper_than_the_limit_are_refused() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let mut tar = header(b'0', b"a/b/c", 0);
        tar.extend(header(b'5', b"./a//b/c/", 0));
        read_all(&tar, &limits).unwrap();
        let e = read_all(&header(b'0', b"a/b/c/d", 0), &limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            "entry `a/b/c/d`: the path has 4 components, more than the limit of 3"
        );
        let mut link = header(b'1', b"l", 0);
        link[157..164].copy_from_slice(b"a/b/c/d");
        let sum: u32 = link
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        link[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let e = read_all(&link, &limits).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Entry {
                    problem: EntryProblem::TooDeep { depth: 4, limit: 3 },
                    ..
                }
            ),
            "{e}"
        );
    }
}
