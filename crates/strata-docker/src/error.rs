//! Errors of the Docker driver.

/// What went wrong talking to the engine or moving layers between it and Strata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No engine answered at the address.
    #[error("cannot reach the docker engine at {address}")]
    Connect {
        address: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// An API call failed; `what` says which, naming the container or image.
    #[error("docker engine: cannot {what}")]
    Api {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine went away (stopped, restarted, socket closed) while a job ran.
    #[error("the docker engine stopped while container {container} ran; nothing was recorded")]
    EngineStopped {
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine answered something this driver cannot use.
    #[error("docker engine: {what}")]
    Protocol { what: String },
    /// A JSON document the engine sent does not parse as expected.
    #[error("docker engine: {what} is malformed: {source}")]
    Json {
        /// The document, naming where it came from.
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A local read or write failed (a layer, a pipe, the job log).
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The container's filesystem, as exported, is not a tar Strata accepts.
    #[error("the changes of container {container} are not a valid layer")]
    Changes {
        container: String,
        #[source]
        source: strata_cas::Error,
    },
    /// A step made a hard link to a file it did not change: the export holds the file under
    /// its first name only, which is not part of the changes.
    #[error(
        "container {container}: hard link `{path}` to `{target}`, a file the step did not change, \
         cannot be part of its layer"
    )]
    HardLink {
        container: String,
        path: String,
        target: String,
    },
    /// Whoever took the step's changes failed.
    #[error("the changes of container {container} could not be recorded")]
    Sink {
        container: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An image archive the engine sent is not a tar Strata accepts.
    #[error("{what} is not a valid image archive")]
    Archive {
        what: String,
        #[source]
        source: strata_cas::Error,
    },
    /// The job cannot be expressed for this engine.
    #[error("cannot run job {job} in docker: {reason}")]
    Unsupported { job: String, reason: String },
}

/// What a sink of layers or changes may fail with: its own error, kept as a source.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Error {
        let what = what.into();
        move |source| Error::Api { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl From<Error> for strata_isolate::Error {
    fn from(e: Error) -> strata_isolate::Error {
        strata_isolate::Error::Driver {
            driver: crate::NAME.to_owned(),
            source: Box::new(e),
        }
    }
}
