//! How `strata build` shows a build's events: OBuilder's plain transcript, the same with a
//! live status line on a terminal, or JSON lines for programs (`--progress json`).

use std::io::{IsTerminal as _, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_build::{Event, Reporter, Task, render_text};
use strata_cas::Progress;
use strata_isolate::Cancel;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// `tty` when stderr is a terminal, else `plain`.
    Auto,
    /// Headings, output and `--->` notes, as OBuilder prints them.
    Plain,
    /// `plain`, plus a status line with the running step and its time.
    Tty,
    /// One JSON object per event (see `strata_build::Event`).
    Json,
}

/// Shows events on stdout, or on stderr when stdout is kept for a `--json` result.
pub(crate) struct Display {
    mode: Mode,
    to_stderr: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The keyed step running now: its number, label and start.
    running: Option<(u32, String, Instant)>,
    /// The running step's long work, as it last reported it.
    work: Option<(Task, u64, Option<u64>)>,
    /// Whether the status line is on the screen.
    shown: bool,
}

impl Display {
    pub(crate) fn new(mode: Mode, to_stderr: bool) -> Arc<Display> {
        let mode = match mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            m => m,
        };
        Arc::new(Display {
            mode,
            to_stderr,
            state: Mutex::new(State::default()),
        })
    }

    fn write(&self, data: &[u8]) {
        // Progress is best effort: a closed stdout must not kill the build.
        let _ = if self.to_stderr {
            std::io::stderr().lock().write_all(data)
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(data).and_then(|()| out.flush())
        };
    }

    /// Draws (or with `clear`, removes) the status line on stderr.
    fn status(&self, state: &mut State, clear: bool) {
        let mut err = std::io::stderr().lock();
        if state.shown {
            let _ = err.write_all(b"\r\x1b[2K");
            state.shown = false;
        }
        if clear {
            return;
        }
        if let Some((step, label, started)) = &state.running {
            let secs = started.elapsed().as_secs_f64();
            let width = terminal_width().saturating_sub(24).max(20);
            let label: String = if label.chars().count() > width {
                label.chars().take(width - 1).chain(['…']).collect()
            } else {
                label.clone()
            };
            let work = state.work.map_or(String::new(), |(task, done, total)| {
                let task = match task {
                    Task::Commit => "committing",
                    _ => "working",
                };
                format!("{task} {}  ", meter(done, total))
            });
            let _ = write!(
                err,
                "\x1b[2m[+] step {step} {secs:6.1}s  {work}{label}\x1b[0m"
            );
            state.shown = true;
        }
        let _ = err.flush();
    }

    /// Keeps the status line's timer moving until the returned guard is dropped.
    pub(crate) fn tick(self: &Arc<Display>) -> Ticker {
        let stop = Cancel::new();
        let thread = (self.mode == Mode::Tty).then(|| {
            let stop = stop.clone();
            let display = self.clone();
            std::thread::spawn(move || {
                while stop.wait(Duration::from_millis(200)).is_none() {
                    let mut state = display.state.lock().unwrap_or_else(|e| e.into_inner());
                    if state.running.is_some() {
                        display.status(&mut state, false);
                    }
                }
                let mut state = display.state.lock().unwrap_or_else(|e| e.into_inner());
                display.status(&mut state, true);
            })
        });
        Ticker { stop, thread }
    }
}

impl Reporter for Display {
    fn event(&self, event: &Event) {
        match self.mode {
            Mode::Json => {
                if let Ok(mut line) = serde_json::to_vec(event) {
                    line.push(b'\n');
                    self.write(&line);
                }
            }
            Mode::Plain | Mode::Auto => self.write(&render_text(event)),
            Mode::Tty => {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let text = render_text(event);
                if text.is_empty() {
                    // Nothing to print above it: redraw the status line in place.
                } else {
                    self.status(&mut state, true);
                    self.write(&text);
                }
                match event {
                    Event::StepStarted(info) if info.key.is_some() => {
                        let label = format!("{}: {}", info.workdir, info.op);
                        state.running = Some((info.step, label, Instant::now()));
                        state.work = None;
                    }
                    Event::Progress {
                        task, done, total, ..
                    } => state.work = Some((*task, *done, *total)),
                    Event::CacheHit { .. }
                    | Event::Saved { .. }
                    | Event::Failed { .. }
                    | Event::Finished { .. } => {
                        state.running = None;
                        state.work = None;
                    }
                    _ => {}
                }
                self.status(&mut state, false);
            }
        }
    }
}

/// Stops the status line's timer when dropped, and clears the line.
pub(crate) struct Ticker {
    stop: Cancel,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80)
}

/// `12.0/40.0 MiB [###.......]`, or `12.0 MiB` where the total is unknown; a total that
/// `done` passed (an estimate) shows as full.
fn meter(done: u64, total: Option<u64>) -> String {
    const WIDTH: u64 = 20;
    let mib = |n: u64| n as f64 / f64::from(1u32 << 20);
    match total {
        Some(total) if total > 0 => {
            let filled = (done.min(total) * WIDTH / total) as usize;
            format!(
                "{:.1}/{:.1} MiB [{}{}]",
                mib(done),
                mib(total),
                "#".repeat(filled),
                ".".repeat(WIDTH as usize - filled)
            )
        }
        _ => format!("{:.1} MiB", mib(done)),
    }
}

/// Shows `what` and the progress of long work on stderr while the guard lives, when stderr
/// is a terminal: for commands outside a build (import, export, push, pull).
pub(crate) fn watch(what: &str, progress: &Progress) -> Ticker {
    let stop = Cancel::new();
    let thread = std::io::stderr().is_terminal().then(|| {
        let stop = stop.clone();
        let progress = progress.clone();
        let what = what.to_owned();
        let started = Instant::now();
        std::thread::spawn(move || {
            let mut err = std::io::stderr();
            while stop.wait(Duration::from_millis(200)).is_none() {
                let secs = started.elapsed().as_secs_f64();
                let rate = progress.done() as f64 / secs.max(1e-3) / f64::from(1u32 << 20);
                let meter = meter(progress.done(), progress.total());
                let _ = write!(
                    err,
                    "\r\x1b[2K\x1b[2m{what} {meter} {rate:.0} MiB/s {secs:.1}s\x1b[0m"
                );
                let _ = err.flush();
            }
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        })
    });
    Ticker { stop, thread }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_show_a_bar_only_with_a_total() {
        assert_eq!(meter(3 << 20, None), "3.0 MiB");
        assert_eq!(
            meter(5 << 20, Some(20 << 20)),
            "5.0/20.0 MiB [#####...............]"
        );
        // An estimate that was passed shows as full, not as more than full.
        assert_eq!(
            meter(30 << 20, Some(20 << 20)),
            "30.0/20.0 MiB [####################]"
        );
        assert_eq!(meter(0, Some(0)), "0.0 MiB");
    }
}
