//! The crate's errors: each names the file, blob, reference or URL involved.

use std::path::PathBuf;

/// What went wrong exporting, importing, pushing or pulling an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Snapshot(#[from] strata_snapshot::Error),
    #[error(transparent)]
    Cas(#[from] strata_cas::Error),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} {what}: {source}")]
    Stream {
        action: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a sha256 digest: {digest:?}")]
    BadDigest { digest: String },
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} is not valid JSON of its kind: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
    #[error("{what} is not a valid tar: {source}")]
    Tar {
        what: String,
        #[source]
        source: strata_cas::Error,
    },
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("not an image reference: {reference:?}: {problem}")]
    BadReference { reference: String, problem: String },
    #[error("{method} {url}: the registry answered {status}: {message}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: {source}")]
    Http {
        method: &'static str,
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

pub(crate) fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

/// An I/O error that carries one of ours (a digest mismatch from a verifying reader, say)
/// becomes that error again; others are reported against `what`.
pub(crate) fn unwrap_stream(action: &'static str, what: &str, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<Error>().expect("checked above");
    }
    Error::Stream {
        action,
        what: what.to_owned(),
        source: e,
    }
}
