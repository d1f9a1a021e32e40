//! A tiny hand-rolled raw tar writer for tests, able to produce malformed and malicious archives.
//!
//! Nothing here validates anything: names, link names, sizes and checksums are written exactly as
//! given, so tests can build the archives a hostile layer would contain. [`Header`] is one
//! 512-byte header block; [`Tar`] appends headers, data, PAX and GNU long-name records and the
//! end-of-archive marker. The zstd/gzip helpers build compressed layers, including decompression
//! bombs that expand to gigabytes without ever holding more than a few MiB in memory.

use std::io::Write;

/// The tar block size.
pub(crate) const BLOCK: usize = 512;

/// How the checksum field of a header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checksum {
    /// The correct checksum.
    Correct,
    /// The correct checksum plus this (non-zero) delta: deliberately wrong.
    Wrong(i64),
    /// These exact 8 bytes.
    Raw([u8; 8]),
}

/// One ustar header block with every field settable, including nonsensical values.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// The name field (at most 100 bytes; see [`Header::set_path`] for longer paths).
    pub(crate) name: Vec<u8>,
    /// Mode bits, written in octal.
    pub(crate) mode: u64,
    /// Owner user id.
    pub(crate) uid: u64,
    /// Owner group id.
    pub(crate) gid: u64,
    /// The declared size, which may differ from the data actually appended.
    pub(crate) size: u64,
    /// Modification time, seconds since the epoch.
    pub(crate) mtime: u64,
    /// The type flag byte (`b'0'`, `b'5'`, `b'x'`, ...).
    pub(crate) typeflag: u8,
    /// The link name field (at most 100 bytes).
    pub(crate) linkname: Vec<u8>,
    /// The magic field (6 bytes).
    pub(crate) magic: [u8; 6],
    /// The version field (2 bytes).
    pub(crate) version: [u8; 2],
    /// Owner user name (at most 32 bytes).
    pub(crate) uname: Vec<u8>,
    /// Owner group name (at most 32 bytes).
    pub(crate) gname: Vec<u8>,
    /// Device major number.
    pub(crate) devmajor: u64,
    /// Device minor number.
    pub(crate) devminor: u64,
    /// The ustar prefix field (at most 155 bytes).
    pub(crate) prefix: Vec<u8>,
    /// How to write the checksum.
    pub(crate) checksum: Checksum,
    /// Raw byte overrides `(offset, bytes)` applied after the fields and before the checksum.
    pub(crate) patches: Vec<(usize, Vec<u8>)>,
}

impl Header {
    /// A ustar header of the given type and path, mode 0644 (0755 for directories), owned by
    /// 0:0, size 0, fixed mtime.
    pub(crate) fn new(typeflag: u8, path: impl AsRef<[u8]>) -> Self {
        let mut h = Header {
            name: Vec::new(),
            mode: if typeflag == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_700_000_000,
            typeflag,
            linkname: Vec::new(),
            magic: *b"ustar\0",
            version: *b"00",
            uname: Vec::new(),
            gname: Vec::new(),
            devmajor: 0,
            devminor: 0,
            prefix: Vec::new(),
            checksum: Checksum::Correct,
            patches: Vec::new(),
        };
        h.set_path(path.as_ref());
        h
    }

    /// Sets name (and prefix, splitting at a `/` when the path exceeds 100 bytes).
    ///
    /// Panics if the path cannot be expressed in ustar fields; use PAX or GNU long names then.
    pub(crate) fn set_path(&mut self, path: &[u8]) -> &mut Self {
        if path.len() <= 100 {
            self.name = path.to_vec();
            self.prefix.clear();
            return self;
        }
        let split = path
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'/' && i <= 155 && path.len() - i - 1 <= 100)
            .map(|(i, _)| i)
            .next_back()
            .unwrap_or_else(|| {
                panic!(
                    "path of {} bytes does not fit ustar name+prefix",
                    path.len()
                )
            });
        self.prefix = path[..split].to_vec();
        self.name = path[split + 1..].to_vec();
        self
    }

    /// Encodes the block.
    pub(crate) fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        put(&mut b[0..100], &self.name);
        octal(&mut b[100..108], self.mode);
        octal(&mut b[108..116], self.uid);
        octal(&mut b[116..124], self.gid);
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        put(&mut b[157..257], &self.linkname);
        b[257..263].copy_from_slice(&self.magic);
        b[263..265].copy_from_slice(&self.version);
        put(&mut b[265..297], &self.uname);
        put(&mut b[297..329], &self.gname);
        octal(&mut b[329..337], self.devmajor);
        octal(&mut b[337..345], self.devminor);
        put(&mut b[345..500], &self.prefix);
        for (offset, bytes) in &self.patches {
            b[*offset..*offset + bytes.len()].copy_from_slice(bytes);
        }
        match self.checksum {
            Checksum::Raw(raw) => b[148..156].copy_from_slice(&raw),
            Checksum::Correct | Checksum::Wrong(_) => {
                b[148..156].copy_from_slice(b"        ");
                let sum: i64 = b.iter().map(|&x| i64::from(x)).sum();
                let sum = match self.checksum {
                    Checksum::Wrong(delta) => sum + delta,
                    _ => sum,
                };
                let sum = u64::try_from(sum).expect("checksum delta makes the sum negative");
                let digits = format!("{sum:06o}");
                assert!(digits.len() <= 6, "checksum {sum} does not fit");
                b[148..154].copy_from_slice(digits.as_bytes());
                b[154] = 0;
                b[155] = b' ';
            }
        }
        b
    }
}

/// Copies `src` into a fixed-width field; panics if it does not fit (tests must say what they
/// mean: a truncated name is a different test).
fn put(dst: &mut [u8], src: &[u8]) {
    assert!(
        src.len() <= dst.len(),
        "field of {} bytes cannot hold {} bytes",
        dst.len(),
        src.len()
    );
    dst[..src.len()].copy_from_slice(src);
}

/// Writes `v` as NUL-terminated zero-padded octal, or as GNU base-256 when it does not fit.
fn octal(dst: &mut [u8], v: u64) {
    let width = dst.len() - 1;
    let digits = format!("{v:0width$o}");
    if digits.len() <= width {
        dst[..width].copy_from_slice(digits.as_bytes());
        dst[width] = 0;
    } else {
        dst.fill(0);
        let n = dst.len();
        for (i, byte) in v.to_be_bytes().iter().enumerate() {
            dst[n - 8 + i] = *byte;
        }
        dst[0] |= 0x80;
    }
}

/// One PAX record `"<len> <key>=<value>\n"` with the correct self-including length.
pub(crate) fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = len.to_string().into_bytes();
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Number of zero bytes that pad `len` to a whole block.
pub(crate) fn padding(len: u64) -> usize {
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// An uncompressed tar stream under construction.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    /// An empty stream.
    pub(crate) fn new() -> Self {
        Tar::default()
    }

    /// Appends a header block exactly as described.
    pub(crate) fn header(&mut self, h: &Header) -> &mut Self {
        self.buf.extend_from_slice(&h.encode());
        self
    }

    /// Appends data followed by zero padding to a whole block.
    pub(crate) fn data(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf
            .resize(self.buf.len() + padding(data.len() as u64), 0);
        self
    }

    /// Appends raw bytes, unpadded.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends a header whose size field is set to `data.len()`, then the padded data.
    pub(crate) fn entry(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.size = data.len() as u64;
        self.header(&h).data(data)
    }

    /// A regular file, mode 0644.
    pub(crate) fn file(&mut self, path: impl AsRef<[u8]>, data: &[u8]) -> &mut Self {
        self.entry(Header::new(b'0', path), data)
    }

    /// A regular file with the given mode.
    pub(crate) fn file_mode(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Header::new(b'0', path);
        h.mode = mode;
        self.entry(h, data)
    }

    /// A directory, mode 0755.
    pub(crate) fn dir(&mut self, path: impl AsRef<[u8]>) -> &mut Self {
        self.header(&Header::new(b'5', path))
    }

    /// A directory with the given mode.
    pub(crate) fn dir_mode(&mut self, path: impl AsRef<[u8]>, mode: u64) -> &mut Self {
        let mut h = Header::new(b'5', path);
        h.mode = mode;
        self.header(&h)
    }

    /// A symbolic link.
    pub(crate) fn symlink(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> &mut Self {
        let mut h = Header::new(b'2', path);
        h.mode = 0o777;
        h.linkname = target.as_ref().to_vec();
        self.header(&h)
    }

    /// A hard link.
    pub(crate) fn hardlink(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> &mut Self {
        let mut h = Header::new(b'1', path);
        h.linkname = target.as_ref().to_vec();
        self.header(&h)
    }

    /// A fifo.
    pub(crate) fn fifo(&mut self, path: impl AsRef<[u8]>) -> &mut Self {
        self.header(&Header::new(b'6', path))
    }

    /// A character (`b'3'`) or block (`b'4'`) device.
    pub(crate) fn device(
        &mut self,
        typeflag: u8,
        path: impl AsRef<[u8]>,
        major: u64,
        minor: u64,
    ) -> &mut Self {
        let mut h = Header::new(typeflag, path);
        h.devmajor = major;
        h.devminor = minor;
        self.header(&h)
    }

    /// A PAX extended header (`'x'`) with well-formed records, applying to the next entry.
    pub(crate) fn pax(&mut self, records: &[(&[u8], &[u8])]) -> &mut Self {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.pax_raw(&body)
    }

    /// A PAX extended header whose body is exactly `body` (possibly malformed).
    pub(crate) fn pax_raw(&mut self, body: &[u8]) -> &mut Self {
        self.entry(Header::new(b'x', b"PaxHeaders/entry"), body)
    }

    /// A GNU long name (`'L'`) for the next entry; the name is NUL-terminated as GNU tar does.
    pub(crate) fn gnu_long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        self.entry(Header::new(b'L', b"././@LongLink"), &data)
    }

    /// A GNU long link name (`'K'`) for the next entry.
    pub(crate) fn gnu_long_link(&mut self, target: &[u8]) -> &mut Self {
        let mut data = target.to_vec();
        data.push(0);
        self.entry(Header::new(b'K', b"././@LongLink"), &data)
    }

    /// The bytes so far, without an end-of-archive marker (a truncated archive).
    pub(crate) fn unterminated(&self) -> Vec<u8> {
        self.buf.clone()
    }

    /// The bytes so far followed by the two zero blocks that end an archive.
    pub(crate) fn finish(&self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }
}

/// One zstd frame of `bytes`.
pub(crate) fn zstd_frame(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 3).expect("zstd compress")
}

/// One zstd frame that decodes to `len` zero bytes, built by streaming so that memory stays at a
/// few MiB whatever `len` is.
pub(crate) fn zstd_zero_frame(len: u64) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    enc.set_pledged_src_size(Some(len)).expect("pledge size");
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).expect("zstd write");
        left -= n as u64;
    }
    enc.finish().expect("zstd finish")
}

/// A zstd decompression bomb: concatenated frames forming a *valid* tar of `files` regular
/// files, each of `file_size` zero bytes, built from one repeated 64 MiB zero frame.
///
/// `file_size` must be a multiple of 64 MiB. 16 files of 1 GiB compress to well under a MiB.
pub(crate) fn zstd_bomb(files: u32, file_size: u64) -> Vec<u8> {
    const CHUNK: u64 = 64 << 20;
    assert_eq!(
        file_size % CHUNK,
        0,
        "bomb file size must be a multiple of 64 MiB"
    );
    let zeros = zstd_zero_frame(CHUNK);
    let mut out = Vec::new();
    for i in 0..files {
        let mut h = Header::new(b'0', format!("bomb{i:04}"));
        h.size = file_size;
        out.extend_from_slice(&zstd_frame(&h.encode()));
        for _ in 0..file_size / CHUNK {
            out.extend_from_slice(&zeros);
        }
    }
    out.extend_from_slice(&zstd_frame(&[0u8; 2 * BLOCK]));
    out
}

/// A gzip stream of `bytes`.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip write");
    enc.finish().expect("gzip finish")
}

/// A gzip stream of a valid tar holding one file of `len` zero bytes, streamed in 1 MiB chunks.
pub(crate) fn gzip_zero_tar(len: u64) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut h = Header::new(b'0', "gzbomb");
    h.size = len;
    enc.write_all(&h.encode()).expect("gzip write");
    let chunk = vec![0u8; 1 << 20];
    let mut left = len + padding(len) as u64 + 2 * BLOCK as u64;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).expect("gzip write");
        left -= n as u64;
    }
    enc.finish().expect("gzip finish")
}

#[test]
fn pax_record_lengths_are_self_consistent() {
    for value_len in [
        0usize, 1, 5, 6, 7, 90, 95, 96, 97, 98, 995, 996, 997, 9994, 9995,
    ] {
        let value = vec![b'v'; value_len];
        let r = pax_record(b"path", &value);
        let space = r.iter().position(|&b| b == b' ').unwrap();
        let declared: usize = std::str::from_utf8(&r[..space]).unwrap().parse().unwrap();
        assert_eq!(declared, r.len(), "record for a {value_len}-byte value");
    }
}

#[test]
fn header_checksum_and_octal_fields() {
    let mut h = Header::new(b'0', "a/b");
    h.size = 0o17;
    let b = h.encode();
    assert_eq!(&b[124..136], b"00000000017\0");
    let stored = u64::from_str_radix(std::str::from_utf8(&b[148..154]).unwrap(), 8).unwrap();
    let mut copy = b;
    copy[148..156].copy_from_slice(b"        ");
    let sum: u64 = copy.iter().map(|&x| u64::from(x)).sum();
    assert_eq!(stored, sum);
    h.checksum = Checksum::Wrong(1);
    assert_ne!(h.encode()[148..154], b[148..154]);
    // Long paths split into prefix + name.
    let long = format!("{}/{}", "p".repeat(120), "n".repeat(90));
    let h = Header::new(b'0', &long);
    assert_eq!(h.prefix.len(), 120);
    assert_eq!(h.name.len(), 90);
}

#[test]
fn zstd_bomb_is_small() {
    let bomb = zstd_bomb(2, 64 << 20);
    assert!(bomb.len() < 64 << 10, "bomb is {} bytes", bomb.len());
}
