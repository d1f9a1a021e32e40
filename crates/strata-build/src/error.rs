//! Errors of the builder.

use std::io;
use std::path::PathBuf;

use strata_isolate::Outcome;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stopped a build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Snapshot(#[from] strata_snapshot::Error),
    #[error(transparent)]
    Cache(#[from] strata_snapshot::caches::Error),
    #[error(transparent)]
    Isolate(#[from] strata_isolate::Error),
    #[error(transparent)]
    Cas(#[from] strata_cas::Error),
    /// An operation on a file or directory failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("create", "write copy of").
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("step cache {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "base image `{image}` is not in the store; import a root filesystem with \
         `strata import ROOTFS.tar --tag {image}`"
    )]
    MissingBase { image: String },
    #[error("step {step}: {source}")]
    Sandbox {
        step: String,
        source: strata_isolate::Error,
    },
    #[error("step {step} failed: {outcome}")]
    StepFailed { step: String, outcome: Outcome },
    #[error("step {step} failed in another build: {message}")]
    SharedFailure { step: String, message: String },
    #[error("{reason}")]
    Driver { reason: String },
    #[error("build cancelled")]
    Cancelled,
    #[error("step {step}: secret `{id}` was not given (pass --secret {id}:PATH)")]
    MissingSecret { step: String, id: String },
    #[error("step {step}: network `{network}` is not supported; use `(network host)` or none")]
    Network { step: String, network: String },
    #[error(
        "step {step} asks for the host's network, which needs the operator's consent: \
         pass `--allow network-host` (`BuildOptions::allow_network_host`)"
    )]
    NetworkNotAllowed { step: String },
    #[error("step {step}: cannot read secret `{id}` from {path}: {source}")]
    SecretUnreadable {
        step: String,
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the filesystem holding the store at {path} is full: free some space (`strata \
         prune`, `strata gc`) and build again"
    )]
    StoreFull {
        path: PathBuf,
        /// How the step failed.
        #[source]
        source: Box<Error>,
    },
    #[error("step {step}: cannot commit its result: {source}")]
    Commit {
        step: String,
        source: Box<strata_snapshot::Error>,
    },
    #[error("copy {src}: {reason}")]
    Copy { src: String, reason: String },
    /// A system call on a copy's source failed.
    #[error("copy {src}: {}: {op}: {source}", path.display())]
    CopyIo {
        src: String,
        path: PathBuf,
        /// What was being done ("stat", "read the symlink").
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Reading a copy's source through the store's directory handles failed.
    #[error("copy {src}: {source}")]
    CopySource {
        src: String,
        #[source]
        source: strata_cas::Error,
    },
    #[error("stage `{name}` is not defined before its use")]
    UnknownStage { name: String },
    #[error("slot {}: {source}", slot.display())]
    Slot {
        slot: PathBuf,
        source: strata_isolate::Error,
    },
    #[error("slot {} is held by a running build; try again once it has finished", slot.display())]
    SlotBusy { slot: PathBuf },
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
