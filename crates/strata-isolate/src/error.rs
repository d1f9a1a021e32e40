//! Errors of the isolation drivers.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong planning or running a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("driver `{driver}` cannot run this job: {reason}")]
    Unsupported { driver: String, reason: String },
    #[error("unknown sandbox `{name}`; available: {available}")]
    UnknownDriver { name: String, available: String },
    /// An operation on a file or directory failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("create", "remove stale bundle").
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{program}` failed: {message}")]
    Command { program: String, message: String },
    #[error("invalid {limit} limit: {reason}")]
    InvalidLimit { limit: &'static str, reason: String },
    #[error("driver `{driver}` is not usable here: {reason}")]
    Unavailable { driver: String, reason: String },
    /// An OS operation that has no path to name: a pipe, a thread, writing the job log.
    #[error("cannot {op}: {source}")]
    Os {
        /// What was being done, as a verb phrase ("create a pipe").
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Running a host program, or a system call about a named object (a user), failed.
    #[error("cannot {op} `{name}`: {source}")]
    Call {
        /// What was being done, as a verb phrase ("run", "make the slot user").
        op: &'static str,
        /// The program (with its subcommand) or the object.
        name: String,
        #[source]
        source: io::Error,
    },
    /// The host has no static busybox to build a rootfs from.
    #[error(
        "no usable static busybox at {path}: {reason} (install it with `apt-get install busybox-static`)"
    )]
    Busybox {
        path: PathBuf,
        reason: String,
        /// The failure behind `reason`, when there is one (running it, reading it).
        #[source]
        source: Option<io::Error>,
    },
    /// A plan's driver-specific part could not be written or read back as that driver's.
    #[error("driver `{driver}`: {what}: {source}")]
    PlanDetail {
        driver: String,
        /// What went wrong, as a phrase ("cannot describe the plan").
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A driver built outside this crate (Docker's) failed; its own error is the source.
    #[error("sandbox `{driver}` failed")]
    Driver {
        driver: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    #[cfg_attr(
        not(any(unix, windows)),
        allow(dead_code, reason = "no driver runs on this platform")
    )]
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    #[cfg_attr(
        not(any(unix, windows)),
        allow(dead_code, reason = "no driver runs on this platform")
    )]
    pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Os { op, source }
    }

    #[cfg_attr(
        not(any(target_os = "macos", windows)),
        allow(dead_code, reason = "used by the macOS and Windows drivers")
    )]
    pub(crate) fn call(
        op: &'static str,
        name: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> Error {
        let name = name.into();
        move |source| Error::Call { op, name, source }
    }
}
