//! What a build needs besides its spec, with defaults for everything but the context.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_isolate::Cancel;

use crate::events::{Reporter, Silent};
use crate::log::DEFAULT_LOG_LIMIT;
use crate::remote::RemoteCache;

/// A secret given to a build: `--secret ID:PATH`. Its value never enters a key, a layer or a
/// log (the build's secrets are masked in every step's output).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Secret {
    /// The id a spec's `(secrets (ID (target …)))` names.
    pub id: String,
    /// The file holding the value; relative to the current directory if relative.
    pub path: PathBuf,
}

impl Secret {
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>) -> Secret {
        Secret {
            id: id.into(),
            path: path.into(),
        }
    }
}

/// One build's inputs besides the spec. Start from [`BuildOptions::new`] (or `default()`, whose
/// context is the current directory) and change what you need:
///
/// ```
/// # use strata_build::{BuildOptions, Transcript};
/// let transcript = Transcript::new();
/// let opts = BuildOptions::new("ctx")
///     .secret("token", "token.txt")
///     .reporter(transcript.clone())
///     .step_timeout(std::time::Duration::from_secs(3600));
/// # let _ = opts;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct BuildOptions {
    /// The directory `copy` reads from.
    pub context: PathBuf,
    pub secrets: Vec<Secret>,
    /// Where the build's [`Event`](crate::Event)s go; [`Silent`] by default.
    pub reporter: Arc<dyn Reporter>,
    /// Stops the build when cancelled: the running step's sandbox is killed, nothing is
    /// cached. Clones share the flag.
    pub cancel: Cancel,
    /// Kills a `run` step that takes longer.
    pub step_timeout: Option<Duration>,
    /// Lets `(network host)` steps run: a spec alone must not turn on the host's network
    /// (BuildKit's `--allow network.host`). Without it such a step is refused.
    pub allow_network_host: bool,
    /// The most of a step's output its log keeps; the rest is counted and a note says so.
    pub log_limit: u64,
    /// How often long work of a step (a large commit) sends an
    /// [`Event::Progress`](crate::Event::Progress); a quarter second by default.
    pub progress_every: Duration,
    /// A shared cache asked for each step the local store lacks (`--cache-from`).
    pub cache_from: Option<Arc<dyn RemoteCache>>,
    /// A shared cache offered each step this build ran or found locally (`--cache-to`).
    pub cache_to: Option<Arc<dyn RemoteCache>>,
}

impl Default for BuildOptions {
    fn default() -> BuildOptions {
        BuildOptions::new(".")
    }
}

impl BuildOptions {
    /// Options for a build whose `copy` steps read from `context`.
    pub fn new(context: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            context: context.into(),
            secrets: Vec::new(),
            reporter: Arc::new(Silent),
            cancel: Cancel::new(),
            step_timeout: None,
            allow_network_host: false,
            log_limit: DEFAULT_LOG_LIMIT,
            progress_every: Duration::from_millis(250),
            cache_from: None,
            cache_to: None,
        }
    }

    /// Asks `cache` for steps the store lacks.
    pub fn cache_from(mut self, cache: Arc<dyn RemoteCache>) -> BuildOptions {
        self.cache_from = Some(cache);
        self
    }

    /// Offers `cache` the steps of this build.
    pub fn cache_to(mut self, cache: Arc<dyn RemoteCache>) -> BuildOptions {
        self.cache_to = Some(cache);
        self
    }

    /// Adds a secret.
    pub fn secret(mut self, id: impl Into<String>, path: impl Into<PathBuf>) -> BuildOptions {
        self.secrets.push(Secret::new(id, path));
        self
    }

    /// Sends the build's events to `reporter`.
    pub fn reporter(mut self, reporter: impl Reporter + 'static) -> BuildOptions {
        self.reporter = Arc::new(reporter);
        self
    }

    /// Makes the build stop when `cancel` is cancelled.
    pub fn cancel(mut self, cancel: Cancel) -> BuildOptions {
        self.cancel = cancel;
        self
    }

    pub fn step_timeout(mut self, timeout: Duration) -> BuildOptions {
        self.step_timeout = Some(timeout);
        self
    }

    pub fn allow_network_host(mut self, allow: bool) -> BuildOptions {
        self.allow_network_host = allow;
        self
    }

    pub fn log_limit(mut self, bytes: u64) -> BuildOptions {
        self.log_limit = bytes;
        self
    }

    pub fn progress_every(mut self, every: Duration) -> BuildOptions {
        self.progress_every = every;
        self
    }
}

impl std::fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("context", &self.context)
            .field("secrets", &self.secrets)
            .field("step_timeout", &self.step_timeout)
            .field("allow_network_host", &self.allow_network_host)
            .field("log_limit", &self.log_limit)
            .field("progress_every", &self.progress_every)
            .field("cache_from", &self.cache_from)
            .field("cache_to", &self.cache_to)
            .finish_non_exhaustive()
    }
}
