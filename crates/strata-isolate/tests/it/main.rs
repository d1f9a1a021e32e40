//! Integration tests: the drivers against real processes, real runc and a busybox rootfs.
//!
//! Tests that need runc, root or a static busybox skip themselves when those are missing,
//! except under CI (`CI` set), where a missing tool fails them (`strata_test_support::require`).

#[cfg(unix)]
mod host;
#[cfg(target_os = "linux")]
mod runc;

#[cfg(unix)]
use std::io;
#[cfg(target_os = "linux")]
use std::time::{Duration, Instant};

/// Whether a process whose argv is exactly `argv` is alive (zombies have no argv).
#[cfg(target_os = "linux")]
pub(crate) fn process_exists(argv: &[&str]) -> bool {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
}

/// Polls `done` for up to `limit`.
#[cfg(target_os = "linux")]
pub(crate) fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A log that refuses every write.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct BrokenLog;

#[cfg(unix)]
impl io::Write for BrokenLog {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::BrokenPipe, "log closed"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
