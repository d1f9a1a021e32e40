//! A deterministic tar writer: POSIX ustar headers plus PAX records only where needed.
//!
//! Determinism rules: numeric owners with empty user/group names, no atime/ctime, mtime in
//! whole seconds, PAX records in key order, a fixed PAX header name. Entry order is the
//! caller's job (see [`path_order`](super::path_order)).

use std::io::{self, Write};

use super::BLOCK;
use crate::{Entry, EntryKind};

const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";
/// Largest value an 11-digit octal field holds.
const MAX_OCTAL_11: u64 = 0o777_7777_7777;
/// Largest value a 7-digit octal field holds.
const MAX_OCTAL_7: u64 = 0o777_7777;

/// Writes tar entries to `out`.
#[derive(Debug)]
pub struct TarWriter<W> {
    out: W,
    /// Data bytes the current entry still expects.
    data_left: u64,
    /// Padding owed after the current entry's data.
    padding: usize,
    bytes: u64,
}

impl<W: Write> TarWriter<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        TarWriter {
            out,
            data_left: 0,
            padding: 0,
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// The underlying writer, for writing an entry's data directly. Report the bytes written
    /// with [`data_written`](Self::data_written).
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Records that `n` data bytes were written through [`inner_mut`](Self::inner_mut).
    pub fn data_written(&mut self, n: u64) {
        debug_assert!(n <= self.data_left, "more data than the header declared");
        self.data_left -= n;
        self.bytes += n;
    }

    /// Writes the headers of `entry`. For a file, exactly `entry.size` data bytes must follow
    /// (through [`write_data`](Self::write_data) or [`inner_mut`](Self::inner_mut)) before the
    /// next call.
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        self.end_entry()?;
        let mut header = [0u8; BLOCK];
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();

        let mut name = entry.path.clone();
        if entry.path.is_empty() {
            // The root, as GNU tar writes it: `/` alone would be an absolute path.
            name.extend_from_slice(b"./");
        } else if entry.kind == EntryKind::Dir {
            name.push(b'/');
        }
        if name.len() <= 100 {
            header[..name.len()].copy_from_slice(&name);
        } else {
            pax.push(("path", name));
        }
        let meta = &entry.meta;
        write_octal(&mut header[100..108], u64::from(meta.mode & 0o7777));
        for (range, key, value) in [(108..116, "uid", meta.uid), (116..124, "gid", meta.gid)] {
            if u64::from(value) <= MAX_OCTAL_7 {
                write_octal(&mut header[range], u64::from(value));
            } else {
                write_octal(&mut header[range], 0);
                pax.push((key, value.to_string().into_bytes()));
            }
        }
        if entry.size <= MAX_OCTAL_11 {
            write_octal(&mut header[124..136], entry.size);
        } else {
            write_octal(&mut header[124..136], 0);
            pax.push(("size", entry.size.to_string().into_bytes()));
        }
        match u64::try_from(meta.mtime) {
            Ok(t) if t <= MAX_OCTAL_11 => write_octal(&mut header[136..148], t),
            _ => {
                write_octal(&mut header[136..148], 0);
                pax.push(("mtime", meta.mtime.to_string().into_bytes()));
            }
        }
        let (typeflag, link, device) = match &entry.kind {
            EntryKind::File => (b'0', None, None),
            EntryKind::Hardlink(target) => (b'1', Some(target), None),
            EntryKind::Symlink(target) => (b'2', Some(target), None),
            EntryKind::CharDevice { major, minor } => (b'3', None, Some((*major, *minor))),
            EntryKind::BlockDevice { major, minor } => (b'4', None, Some((*major, *minor))),
            EntryKind::Dir => (b'5', None, None),
            EntryKind::Fifo => (b'6', None, None),
        };
        header[156] = typeflag;
        if let Some(link) = link {
            if link.len() <= 100 {
                header[157..157 + link.len()].copy_from_slice(link);
            } else {
                pax.push(("linkpath", link.clone()));
            }
        }
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        if let Some((major, minor)) = device {
            write_number(&mut header[329..337], u64::from(major));
            write_number(&mut header[337..345], u64::from(minor));
        }
        let mut xattr_keys = Vec::new();
        for (name, value) in &meta.xattrs {
            let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(name));
            xattr_keys.push((key, value.clone()));
        }

        if !pax.is_empty() || !xattr_keys.is_empty() {
            let mut records: Vec<(&str, &[u8])> =
                pax.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            records.extend(xattr_keys.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
            records.sort_by(|a, b| a.0.cmp(b.0));
            self.write_pax(&records)?;
        }
        set_checksum(&mut header);
        self.out.write_all(&header)?;
        self.bytes += BLOCK as u64;
        self.data_left = entry.size;
        self.padding = padding(entry.size);
        Ok(())
    }

    /// Writes data of the current entry.
    pub fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.data_written(data.len() as u64);
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.end_entry()?;
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.bytes += 2 * BLOCK as u64;
        Ok(self.out)
    }

    fn end_entry(&mut self) -> io::Result<()> {
        if self.data_left != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("entry data is {} bytes short of its header", self.data_left),
            ));
        }
        if self.padding > 0 {
            self.out.write_all(&[0u8; BLOCK][..self.padding])?;
            self.bytes += self.padding as u64;
            self.padding = 0;
        }
        Ok(())
    }

    fn write_pax(&mut self, records: &[(&str, &[u8])]) -> io::Result<()> {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3; // ' ', '=', '\n'
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            write!(data, "{len} {key}=")?;
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut header = [0u8; BLOCK];
        header[..PAX_HEADER_NAME.len()].copy_from_slice(PAX_HEADER_NAME);
        write_octal(&mut header[100..108], 0o644);
        write_octal(&mut header[108..116], 0);
        write_octal(&mut header[116..124], 0);
        write_octal(&mut header[124..136], data.len() as u64);
        write_octal(&mut header[136..148], 0);
        header[156] = b'x';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        set_checksum(&mut header);
        self.out.write_all(&header)?;
        self.out.write_all(&data)?;
        let pad = padding(data.len() as u64);
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        self.bytes += (BLOCK + data.len() + pad) as u64;
        Ok(())
    }
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Writes `value` in octal when it fits the field, else in GNU base-256 (a 0x80 byte, then
/// the value big-endian), which the reader and GNU tar read. Only device numbers need it:
/// other fields too large for octal go to PAX records.
fn write_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits >= 22 || value < 1 << (3 * digits) {
        write_octal(field, value);
        return;
    }
    field.fill(0);
    field[0] = 0x80;
    let bytes = value.to_be_bytes();
    let n = bytes.len().min(field.len() - 1);
    let len = field.len();
    field[len - n..].copy_from_slice(&bytes[bytes.len() - n..]);
}

/// Writes `value` as zero-padded octal filling the field but its last byte, which is NUL.
fn write_octal(field: &mut [u8], mut value: u64) {
    let digits = field.len() - 1;
    for i in (0..digits).rev() {
        field[i] = b'0' + (value & 7) as u8;
        value >>= 3;
    }
    field[digits] = 0;
}

fn set_checksum(header: &mut [u8; BLOCK]) {
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    // Six octal digits, NUL, space: the traditional layout.
    let mut field = [0u8; 7];
    write_octal(&mut field, sum);
    header[148..155].copy_from_slice(&field);
    header[155] = b' ';
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::{Limits, TarReader};
    use crate::{EntryKind, Metadata};

    fn entry(path: &[u8], kind: EntryKind, size: u64) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            meta: Metadata {
                mode: 0o4755,
                uid: 3_000_000,
                gid: 7,
                mtime: 1_700_000_000,
                mtime_nsec: 0,
                xattrs: vec![(b"security.capability".to_vec(), vec![1, 0, 2, 255])],
            },
            size,
        }
    }

    #[test]
    fn round_trips_through_the_reader() {
        let long = [b'x'; 300];
        let entries = vec![
            entry(b"dir", EntryKind::Dir, 0),
            entry(b"dir/file", EntryKind::File, 5),
            entry(&long, EntryKind::Symlink(long.to_vec()), 0),
            entry(b"hl", EntryKind::Hardlink(b"dir/file".to_vec()), 0),
            entry(b"dev", EntryKind::CharDevice { major: 1, minor: 3 }, 0),
            entry(b"\xff\xfe", EntryKind::Fifo, 0),
        ];
        let mut w = TarWriter::new(Vec::new());
        for e in &entries {
            w.append(e).unwrap();
            if e.kind == EntryKind::File {
                w.write_data(b"hello").unwrap();
            }
        }
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);

        let mut r = TarReader::new(&bytes[..], &Limits::default());
        let mut back = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            if e.kind == EntryKind::File {
                let mut data = Vec::new();
                r.read_data_to_vec(&mut data).unwrap();
                assert_eq!(data, b"hello");
            }
            back.push(e);
        }
        r.finish().unwrap();
        assert_eq!(back, entries);
    }

    fn round_trip(entries: &[Entry]) -> Vec<Entry> {
        let mut w = TarWriter::new(Vec::new());
        for e in entries {
            w.append(e).unwrap();
            w.write_data(&vec![b'x'; e.size as usize]).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = TarReader::new(&bytes[..], &Limits::default());
        let mut back = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            back.push(e);
        }
        r.finish().unwrap();
        back
    }

    /// Found by the `tar_reader` fuzz target's round trip: device numbers that do not fit
    /// the 7 octal digits of their fields were cut to their low bits.
    #[test]
    fn device_numbers_of_any_size_round_trip() {
        let mut entries = Vec::new();
        for (major, minor) in [(0o7777777, 0o7777777), (1 << 22, u32::MAX), (u32::MAX, 0)] {
            let mut dev = entry(b"dev", EntryKind::CharDevice { major, minor }, 0);
            dev.path = format!("dev{major}-{minor}").into_bytes();
            entries.push(dev);
        }
        assert_eq!(round_trip(&entries), entries);
    }

    /// Found by the `tar_reader` fuzz target: the root directory was written as `/`,
    /// which the reader refuses as an absolute path.
    #[test]
    fn the_root_directory_round_trips() {
        let mut root = entry(b"", EntryKind::Dir, 0);
        root.meta.xattrs.clear();
        root.meta.mode = 0o755;
        let entries = vec![root, entry(b"f", EntryKind::File, 1)];
        assert_eq!(round_trip(&entries), entries);
    }

    #[test]
    fn gnu_tar_reads_our_output() {
        let Ok(status) = std::process::Command::new("tar").arg("--version").output() else {
            return; // GNU tar is not installed; the round trip above still runs.
        };
        assert!(status.status.success());
        let mut w = TarWriter::new(Vec::new());
        let long_name = format!("{}/f", "d".repeat(150));
        for e in [
            entry(b"d", EntryKind::Dir, 0),
            entry(long_name.as_bytes(), EntryKind::File, 5),
        ] {
            w.append(&e).unwrap();
            if e.kind == EntryKind::File {
                w.write_data(b"hello").unwrap();
            }
        }
        let bytes = w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("t.tar");
        std::fs::write(&tar_path, bytes).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&tar_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains(&long_name), "{listing}");
        assert!(listing.contains("3000000/7"), "{listing}");
    }
}
