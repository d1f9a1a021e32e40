//! Helpers shared by the fuzz targets: a sandbox to extract into whose surroundings are
//! checked for changes, a wait for detached threads, tar checksums fixed up after mutation,
//! and the bytes-to-parameters decoding of the structured targets.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `base/target`, the extraction root, beside `base/canary`, which nothing may change, and
/// a lower layer in the target whose symlinks lead out of it every way a symlink can.
pub struct Sandbox {
    _dir: tempfile::TempDir,
    pub base: PathBuf,
    pub target: PathBuf,
    before: BTreeMap<PathBuf, Node>,
}

/// What can be observed of one path outside the target.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = fs::canonicalize(dir.path()).expect("canonical temporary directory");
        let target = base.join("target");
        let canary = base.join("canary");
        fs::create_dir_all(canary.join("dir")).unwrap();
        fs::write(canary.join("file"), b"canary").unwrap();
        fs::write(canary.join("dir/file"), b"canary").unwrap();
        fs::write(base.join("beside"), b"beside").unwrap();
        // The lower layer.
        fs::create_dir_all(target.join("d/e")).unwrap();
        fs::write(target.join("d/f"), b"lower").unwrap();
        fs::write(target.join("f"), b"lower").unwrap();
        symlink("../canary", target.join("up")).unwrap();
        symlink(&canary, target.join("abs")).unwrap();
        symlink("/", target.join("root")).unwrap();
        symlink("../../..", target.join("d/dotdot")).unwrap();
        symlink(canary.join("file"), target.join("abs_file")).unwrap();
        symlink("up/dir", target.join("chain")).unwrap();
        let before = snapshot(&base, &target);
        Sandbox {
            _dir: dir,
            base,
            target,
            before,
        }
    }

    /// Panics if anything outside the target changed, or a path in the target shares an
    /// inode with one outside it.
    pub fn check(&self) {
        let after = snapshot(&self.base, &self.target);
        for (path, node) in &self.before {
            assert_eq!(
                Some(node),
                after.get(path),
                "{} changed outside the target",
                path.display()
            );
        }
        for path in after.keys() {
            assert!(
                self.before.contains_key(path),
                "{} appeared outside the target",
                path.display()
            );
        }
        let outside: Vec<u64> = self.before.values().map(|n| n.ino).collect();
        let mut stack = vec![self.target.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                assert!(
                    !outside.contains(&meta.ino()),
                    "{} is a hard link to a path outside the target",
                    entry.path().display()
                );
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

/// Everything under `base` but `target`, without following symlinks.
fn snapshot(base: &Path, target: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path == target {
                continue;
            }
            let m = path.symlink_metadata().unwrap();
            let kind = if m.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if m.is_symlink() {
                "symlink"
            } else if m.is_file() {
                "file"
            } else {
                "other"
            };
            out.insert(
                path.clone(),
                Node {
                    kind,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: m.size(),
                    ino: m.ino(),
                    nlink: m.nlink(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    content: m.is_file().then(|| fs::read(&path).unwrap()),
                    link: m.is_symlink().then(|| fs::read_link(&path).unwrap()),
                },
            );
        }
    }
    out
}

/// Reads parameters off the front of a fuzz input.
pub struct Params<'a>(pub &'a [u8]);

impl Params<'_> {
    pub fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

/// Threads of this process, from `/proc/self/status`.
pub fn threads() -> usize {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until no more than `before` threads run, and panics if that takes 10 s: the
/// parallel frame reader's decoding threads are detached and return soon after their reader
/// is dropped. Waiting also keeps LeakSanitizer from seeing a thread's memory mid-exit.
pub fn wait_for_threads(before: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let extra = threads().saturating_sub(before);
        if extra == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{extra} threads still running 10 s after the run"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Rewrites the checksum of every header a reader would meet, following the size fields
/// (octal digits, leniently): nearly every mutation of a header breaks its checksum, and
/// the reader would refuse it before anything deeper is tried.
pub fn fix_checksums(tar: &mut [u8]) {
    const BLOCK: usize = 512;
    let mut pos = 0;
    while pos + BLOCK <= tar.len() {
        let block = &mut tar[pos..pos + BLOCK];
        if block.iter().all(|&b| b == 0) {
            break;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = block[124..136]
            .iter()
            .filter(|b| (b'0'..=b'7').contains(b))
            .fold(0u64, |n, &d| {
                n.saturating_mul(8).saturating_add(u64::from(d - b'0'))
            });
        let data =
            usize::try_from(size.div_ceil(BLOCK as u64) * BLOCK as u64).unwrap_or(usize::MAX);
        pos = pos.saturating_add(BLOCK).saturating_add(data);
    }
}
