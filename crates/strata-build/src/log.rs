//! Step logs: written to a file while the step runs, followed live by other requesters of the
//! same step, stored with the result and replayed on every cache hit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::builder::Reporter;

/// How often a follower polls a live log for more output.
const POLL: Duration = Duration::from_millis(20);

/// Writes a running step's output to its log file and to the requester's reporter.
pub(crate) struct Tee<'a> {
    pub(crate) file: File,
    pub(crate) reporter: &'a dyn Reporter,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The file is unbuffered, so followers see output as soon as the step prints it.
        self.file.write_all(buf)?;
        self.reporter.output(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends all of a finished log to `reporter`. A missing log replays as nothing.
pub(crate) fn replay(path: &Path, reporter: &dyn Reporter) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => pump(f, reporter).map(drop),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Follows a live log: sends what is there and what gets appended, until `done()` says the
/// writer finished (then sends the rest). Reads through one open handle, so the writer
/// renaming the file meanwhile loses nothing.
#[derive(Debug)]
pub(crate) struct Follower {
    file: Option<File>,
}

impl Follower {
    pub(crate) fn new() -> Follower {
        Follower { file: None }
    }

    /// Whether this follower has sent any of a live log.
    pub(crate) fn attached(&self) -> bool {
        self.file.is_some()
    }

    /// Sends whatever is new in the log at `path`; opens it on first sight.
    pub(crate) fn poll(&mut self, path: &Path, reporter: &dyn Reporter) -> io::Result<u64> {
        if self.file.is_none() {
            match File::open(path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        match self.file.as_mut() {
            Some(f) => pump(f, reporter),
            None => Ok(0),
        }
    }

    /// Follows until `done()`; then drains what is left.
    pub(crate) fn follow(
        &mut self,
        path: &Path,
        reporter: &dyn Reporter,
        mut done: impl FnMut() -> bool,
    ) -> io::Result<()> {
        loop {
            let finished = done();
            let n = self.poll(path, reporter)?;
            if finished {
                return Ok(());
            }
            if n == 0 {
                std::thread::sleep(POLL);
            }
        }
    }
}

fn pump(mut r: impl Read, reporter: &dyn Reporter) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                reporter.output(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
