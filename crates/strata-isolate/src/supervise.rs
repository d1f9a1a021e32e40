//! Watching a job's process: copy its output pipe into the log, honour [`Cancel`], stop it.
//!
//! Shared by the drivers that run a host process (Unix and Windows). The pipe is read on
//! its own thread so that a quiet job can
//! still be cancelled promptly; the log (`&mut dyn Write`, not `Send`) is written here.

use std::io::{self, PipeReader, Read, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Cancel, Error, Outcome, Result};

/// How often the cancel flag and the child are polled while the pipe is quiet.
const POLL: Duration = Duration::from_millis(20);
/// How often [`Watched::stop`] is repeated until the job is gone.
const STOP_RETRY: Duration = Duration::from_millis(100);
/// How long output is still collected after the child exited. Only a process that escaped
/// the driver's clean-up (`setsid` on the host driver) keeps the pipe open that long.
const DRAIN: Duration = Duration::from_secs(2);

/// The process a driver watches for a job, and how it stops it.
pub(crate) trait Watched {
    /// Without blocking: how the job ended, once it has.
    fn try_wait(&mut self) -> io::Result<Option<Outcome>>;

    /// Asks the job to die. Called every [`STOP_RETRY`] until [`Watched::try_wait`] reports
    /// the end, because the first attempts may come too early (a container not created yet).
    fn stop(&mut self);

    /// Called once the job has ended, before the rest of its output is collected: the place
    /// to kill what it left running.
    fn reap(&mut self) {}

    /// Kills the job and waits for it, when supervising it failed: it must not outlive
    /// the run.
    fn abandon(&mut self);
}

#[cfg(unix)]
pub(crate) fn exit_outcome(status: std::process::ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(sig)) => Outcome::Signalled(sig),
        // Stopped or continued: not reported by `wait` without WUNTRACED, but be total.
        (None, None) => Outcome::Exited(-1),
    }
}

/// Waits for the job, copying `pipe` (its merged stdout and stderr) into `log`.
///
/// On cancel or deadline the job is stopped, and the outcome says why. A failing `log`
/// stops the job too, and is reported once the job is gone.
pub(crate) fn supervise(
    job: &mut dyn Watched,
    pipe: PipeReader,
    log: &mut dyn Write,
    cancel: &Cancel,
) -> Result<Outcome> {
    // Bounded, so a job printing faster than the log takes it is slowed down, not buffered.
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(64);
    let reader = thread::Builder::new()
        .name("strata-job-log".to_owned())
        .spawn(move || copy_pipe(pipe, &tx))
        .map_err(Error::os("start the log reader thread"));
    let reader = match reader {
        Ok(reader) => reader,
        Err(err) => {
            job.abandon();
            return Err(err);
        }
    };

    let mut stopped = None;
    let mut log_error = None;
    let mut next_stop = Instant::now();
    let mut ended = None;
    let mut eof = false;
    let mut drain_until = None;
    let mut nap = Duration::from_millis(1);
    loop {
        if ended.is_none() {
            // Once the job is over a late cancel changes nothing: it finished on its own.
            if stopped.is_none() && log_error.is_none() {
                stopped = cancel.wait(Duration::ZERO);
            }
            if (stopped.is_some() || log_error.is_some()) && Instant::now() >= next_stop {
                job.stop();
                next_stop = Instant::now() + STOP_RETRY;
            }
            match job.try_wait() {
                Ok(Some(outcome)) => {
                    ended = Some(outcome);
                    job.reap();
                    drain_until = Some(Instant::now() + DRAIN);
                }
                Ok(None) => {}
                Err(err) => {
                    job.abandon();
                    return Err(Error::Os {
                        op: "wait for the job",
                        source: err,
                    });
                }
            }
        }
        if let Some(outcome) = ended
            && (eof || drain_until.is_some_and(|t| Instant::now() >= t))
        {
            // A reader still blocked on an escaped process's pipe is left behind; it ends
            // when that process closes the pipe.
            if eof {
                let _ = reader.join();
            }
            let _ = log.flush();
            if let Some(source) = log_error {
                return Err(Error::Os {
                    op: "write the job log",
                    source,
                });
            }
            return Ok(stopped.unwrap_or(outcome));
        }
        if eof {
            // The job closed its output but still runs: back off up to POLL.
            thread::sleep(nap);
            nap = (nap * 2).min(POLL);
            continue;
        }
        match rx.recv_timeout(POLL) {
            Ok(chunk) => {
                if log_error.is_none()
                    && let Err(err) = log.write_all(&chunk)
                {
                    log_error = Some(err);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => eof = true,
        }
    }
}

fn copy_pipe(mut pipe: PipeReader, tx: &mpsc::SyncSender<Vec<u8>>) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
