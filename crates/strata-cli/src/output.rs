//! Writing results: stdout that tolerates a closed pipe, JSON, warnings and human-readable units.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

/// The error a command returns when stdout's reader went away (`strata … | head`).
///
/// `main` treats it as success: the reader has all it wanted.
#[derive(Debug)]
pub(crate) struct BrokenPipe;

impl fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for BrokenPipe {}

/// Turns an error writing stdout into the command's error: [`BrokenPipe`] for a closed pipe.
pub(crate) fn stdout_error(err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(BrokenPipe)
    } else {
        anyhow::Error::new(err).context("cannot write to stdout")
    }
}

/// Runs `write` on locked stdout and flushes it, mapping write errors with [`stdout_error`].
pub(crate) fn with_stdout(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let mut out = io::stdout().lock();
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Prints `value` as one line of JSON on stdout.
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string(value).context("cannot encode the result as JSON")?;
    with_stdout(|out| writeln!(out, "{text}"))
}

/// Prints text (one or more lines, newline added) on stdout.
pub(crate) fn print_text(text: &str) -> Result<()> {
    with_stdout(|out| writeln!(out, "{text}"))
}

/// Prints a `warning:` line on stderr. Failing to write stderr is not worth failing for.
pub(crate) fn warn(message: fmt::Arguments<'_>) {
    let _ignored = writeln!(io::stderr().lock(), "warning: {message}");
}

/// The messages of an error and its causes, outermost first, leaving out a cause whose
/// message its parent already ends with (`cannot open x: {source}` style errors).
pub(crate) fn messages(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut messages = vec![err.to_string()];
    let mut shown = messages[0].clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !shown.ends_with(&message) {
            messages.push(message.clone());
        }
        shown = message;
        source = cause.source();
    }
    messages
}

/// A byte count in binary units with one decimal: `512 B`, `305.1 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 KiB would print as "1024.0 KiB": move up a unit before rounding does.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Uncompressed size over compressed size, as `4.21x`.
pub(crate) fn ratio(uncompressed: u64, compressed: u64) -> String {
    if compressed == 0 {
        return "-".to_owned();
    }
    let r = uncompressed as f64 / compressed as f64;
    format!("{r:.2}x")
}

/// A duration for humans: `0.43 s`.
pub(crate) fn duration(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A duration for JSON: seconds, to the microsecond.
pub(crate) fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e6
}

/// `1 entry` / `2 entries`: a count with its noun.
pub(crate) fn count(n: u64, singular: &str, plural: &str) -> String {
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {plural}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(319_923_404), "305.1 MiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn ratios_and_times() {
        assert_eq!(ratio(400, 100), "4.00x");
        assert_eq!(ratio(1, 0), "-");
        assert_eq!(duration(Duration::from_millis(430)), "0.43 s");
        assert_eq!(count(1, "entry", "entries"), "1 entry");
        assert_eq!(count(3, "entry", "entries"), "3 entries");
    }
}
