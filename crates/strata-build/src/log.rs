//! Step logs: written to a file while the step runs, followed live by other requesters of the
//! same step, stored with the result and replayed on every cache hit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::events::{Event, Reporter};

/// Sends one step's output to a reporter as [`Event::Log`]s.
#[derive(Clone, Copy)]
pub(crate) struct LogSink<'a> {
    pub(crate) reporter: &'a dyn Reporter,
    pub(crate) step: u32,
}

impl LogSink<'_> {
    pub(crate) fn output(&self, data: &[u8]) {
        self.reporter.event(&Event::Log {
            step: self.step,
            data: data.to_vec(),
        });
    }
}

/// How often a follower polls a live log for more output.
const POLL: Duration = Duration::from_millis(20);

/// The most a step's log keeps by default; the rest of its output is counted, not kept.
pub const DEFAULT_LOG_LIMIT: u64 = 32 << 20;

/// What a masked secret value reads as in logs and live output.
const MASK: &[u8] = b"***";

/// Secret values shorter than this are not masked: masking every `ab` in a log would hide
/// the log, not the secret (a secret that short protects nothing anyway).
const MIN_MASKED: usize = 4;

/// Writes a running step's output to its log file and to the requester's reporter: secret
/// values masked, at most `limit` bytes kept, and a note where the log was cut.
pub(crate) struct StepLog<'a> {
    file: File,
    sink: LogSink<'a>,
    mask: Masker,
    limit: u64,
    kept: u64,
    dropped: u64,
}

impl<'a> StepLog<'a> {
    pub(crate) fn new(
        file: File,
        sink: LogSink<'a>,
        secrets: &[Vec<u8>],
        limit: u64,
    ) -> StepLog<'a> {
        StepLog {
            file,
            sink,
            mask: Masker::new(secrets),
            limit,
            kept: 0,
            dropped: 0,
        }
    }

    /// Sends out what masking held back and says how much output the limit cut.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        let tail = self.mask.finish();
        self.emit(&tail)?;
        if self.dropped > 0 {
            let note = format!(
                "\n[strata: {} more bytes of output were not kept]\n",
                self.dropped
            );
            self.send(note.as_bytes())?;
        }
        Ok(())
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let room = self.limit.saturating_sub(self.kept);
        let take = usize::try_from(room).map_or(data.len(), |r| r.min(data.len()));
        if take > 0 {
            self.send(&data[..take])?;
            self.kept += take as u64;
        }
        if take < data.len() && self.dropped == 0 {
            let note = format!(
                "\n[strata: the step's output reached the log limit of {} bytes; \
                 the rest is not kept]\n",
                self.limit
            );
            self.send(note.as_bytes())?;
        }
        self.dropped += (data.len() - take) as u64;
        Ok(())
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        // The file is unbuffered, so followers see output as soon as the step prints it.
        self.file.write_all(data)?;
        self.sink.output(data);
        Ok(())
    }
}

impl Write for StepLog<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self.mask.push(buf);
        self.emit(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Replaces secret values in a stream of output by `***`, across chunk boundaries: a chunk's
/// tail that could begin a secret is held back until the next chunk (or the end) decides.
pub(crate) struct Masker {
    /// `None` when there is nothing to mask: output passes through untouched.
    automaton: Option<aho_corasick::AhoCorasick>,
    patterns: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Masker {
    /// Masks each value, its form without trailing whitespace (a file's final newline rarely
    /// reaches the output), and each line of a multi-line value (printed line by line).
    pub(crate) fn new(secrets: &[Vec<u8>]) -> Masker {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for value in secrets {
            let trimmed = value.trim_ascii_end();
            let lines = trimmed.split(|&b| b == b'\n').map(<[u8]>::trim_ascii);
            for p in [value.as_slice(), trimmed].into_iter().chain(lines) {
                if p.len() >= MIN_MASKED && !patterns.iter().any(|q| q == p) {
                    patterns.push(p.to_vec());
                }
            }
        }
        let automaton = (!patterns.is_empty()).then(|| {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("secret patterns are plain bytes")
        });
        Masker {
            automaton,
            patterns,
            held: Vec::new(),
        }
    }

    /// Takes the next chunk; returns what can be shown now.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(automaton) = &self.automaton else {
            return chunk.to_vec();
        };
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(input.len());
        let mut done = 0;
        for m in automaton.find_iter(&input) {
            // A match that ends the input may be the start of a longer secret: decide later.
            if m.end() == input.len() && self.could_extend(&input[m.start()..]) {
                break;
            }
            out.extend_from_slice(&input[done..m.start()]);
            out.extend_from_slice(MASK);
            done = m.end();
        }
        let hold = self.undecided_tail(&input[done..]);
        let cut = input.len() - hold;
        out.extend_from_slice(&input[done..cut]);
        self.held = input[cut..].to_vec();
        out
    }

    /// What was held back, at the end of the output: no secret can complete any more.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        let Some(automaton) = &self.automaton else {
            return held;
        };
        let mut out = Vec::with_capacity(held.len());
        let mut done = 0;
        for m in automaton.find_iter(&held) {
            out.extend_from_slice(&held[done..m.start()]);
            out.extend_from_slice(MASK);
            done = m.end();
        }
        out.extend_from_slice(&held[done..]);
        out
    }

    /// Whether some pattern is longer than `text` and starts with it.
    fn could_extend(&self, text: &[u8]) -> bool {
        self.patterns
            .iter()
            .any(|p| p.len() > text.len() && p.starts_with(text))
    }

    /// The length of the longest suffix of `text` that is a proper prefix of a pattern.
    fn undecided_tail(&self, text: &[u8]) -> usize {
        let longest = self.patterns.iter().map(Vec::len).max().unwrap_or(0);
        let from = text.len().saturating_sub(longest.saturating_sub(1));
        (from..text.len())
            .find(|&i| self.could_extend(&text[i..]))
            .map_or(0, |i| text.len() - i)
    }
}

/// Sends all of a finished log to `reporter`. A missing log replays as nothing.
pub(crate) fn replay(path: &Path, sink: LogSink<'_>) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => pump(f, sink).map(drop),
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
    pub(crate) fn poll(&mut self, path: &Path, sink: LogSink<'_>) -> io::Result<u64> {
        if self.file.is_none() {
            match File::open(path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        match self.file.as_mut() {
            Some(f) => pump(f, sink),
            None => Ok(0),
        }
    }

    /// Follows until `done()`; then drains what is left.
    pub(crate) fn follow(
        &mut self,
        path: &Path,
        sink: LogSink<'_>,
        mut done: impl FnMut() -> bool,
    ) -> io::Result<()> {
        loop {
            let finished = done();
            let n = self.poll(path, sink)?;
            if finished {
                return Ok(());
            }
            if n == 0 {
                std::thread::sleep(POLL);
            }
        }
    }
}

fn pump(mut r: impl Read, sink: LogSink<'_>) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                sink.output(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through a masker for `secrets` and returns everything shown.
    fn masked(secrets: &[&str], chunks: &[&str]) -> String {
        let secrets: Vec<Vec<u8>> = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        let mut m = Masker::new(&secrets);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.push(c.as_bytes()));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn secrets_are_masked_whole_trimmed_and_by_line() {
        assert_eq!(masked(&["hunter22\n"], &["pw=hunter22!"]), "pw=***!");
        assert_eq!(
            masked(&["line-one\nline-two\n"], &["a line-two b line-one c"]),
            "a *** b *** c"
        );
        // Too short to mask without destroying the log.
        assert_eq!(masked(&["ab"], &["abcab"]), "abcab");
        assert_eq!(masked(&[], &["plain"]), "plain");
    }

    #[test]
    fn a_secret_split_across_chunks_is_still_masked() {
        let text = "before s3cr3t-value after s3cr3t-value";
        let want = "before *** after ***";
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(masked(&["s3cr3t-value"], &[a, b]), want, "cut at {cut}");
        }
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(masked(&["s3cr3t-value"], &chunks), want);
    }

    #[test]
    fn a_longer_secret_wins_over_its_prefix() {
        let secrets = ["token", "token-extended"];
        assert_eq!(masked(&secrets, &["x token-extended y"]), "x *** y");
        assert_eq!(masked(&secrets, &["x token", "-extended y"]), "x *** y");
        assert_eq!(masked(&secrets, &["x token", " y"]), "x *** y");
    }

    #[test]
    fn output_not_near_a_secret_is_not_held_back() {
        let mut m = Masker::new(&[b"s3cr3t".to_vec()]);
        assert_eq!(m.push(b"hello "), b"hello ");
        // `s3` could begin the secret: held until the next chunk decides.
        assert_eq!(m.push(b"x s3"), b"x ");
        assert_eq!(m.push(b"3"), b"s33");
        assert_eq!(m.finish(), b"");
    }

    #[derive(Default)]
    struct Sink(std::sync::Mutex<Vec<u8>>);

    impl Reporter for Sink {
        fn event(&self, event: &Event) {
            if let Event::Log { step: 7, data } = event {
                self.0.lock().unwrap().extend_from_slice(data);
            }
        }
    }

    #[test]
    fn the_log_is_cut_at_its_limit_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let sink = Sink::default();
        let to = LogSink {
            reporter: &sink,
            step: 7,
        };
        let mut log = StepLog::new(File::create(&path).unwrap(), to, &[], 10);
        log.write_all(b"0123456").unwrap();
        log.write_all(b"789abcdef").unwrap();
        log.write_all(b"more").unwrap();
        log.finish().unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert!(kept.starts_with("0123456789\n[strata: "), "{kept}");
        assert!(kept.contains("log limit of 10 bytes"), "{kept}");
        assert!(
            kept.contains("10 more bytes of output were not kept"),
            "{kept}"
        );
        assert_eq!(kept.as_bytes(), &sink.0.lock().unwrap()[..]);
    }
}
