//! Strata, embedded: run OBuilder build specs with every step in a sandbox and every step's
//! result kept as a cached snapshot, from a Rust program.
//!
//! One dependency and a few lines build a spec on the embedded defaults (the store in the
//! user's cache directory, runc on Linux, a busybox base made from the host the first time):
//!
//! ```no_run
//! use strata::{BuildOptions, Strata, Transcript};
//!
//! let strata = Strata::open_default()?;
//! let builder = strata.builder("runc")?;
//! let spec = strata::parse_spec(&std::fs::read_to_string("ctx/build.spec")?)?;
//! let transcript = Transcript::new();
//! let id = builder.build(&spec, &BuildOptions::new("ctx").reporter(transcript.clone()))?;
//! println!("{}built {id}", transcript.text());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crates underneath are re-exported for what this page does not cover: [`cas`] (layers
//! and blobs), [`snapshot`] (checkout, commit, prune), [`spec`], [`isolate`] (drivers),
//! [`docker`] (the Docker driver) and [`build`] (the builder and its [`Event`]s).

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use strata_build::{
    self as build, BuildOptions, Builder, Event, HitSource, Reporter, Secret, Silent, StepInfo,
    Transcript,
};
pub use strata_cas as cas;
pub use strata_docker as docker;
pub use strata_isolate::{self as isolate, Cancel, Driver, Limits, SlotUsers};
pub use strata_snapshot::{self as snapshot, Engine, SnapshotId};
pub use strata_spec::{self as spec, Spec};

/// Every sandbox driver this build can make by name: [`isolate::DRIVERS`], then `docker`
/// (the Engine API driver, kept in its own crate with its async runtime).
pub fn drivers() -> Vec<&'static str> {
    let mut all = isolate::DRIVERS.to_vec();
    all.push(strata_docker::NAME);
    all
}

/// What can go wrong in this crate's own calls; the crates underneath keep their errors as
/// sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No store location could be worked out from the environment.
    #[error(
        "no default store location: neither XDG_CACHE_HOME (absolute) nor HOME{} is set; \
         open a store at a path instead",
        if cfg!(windows) { " nor LOCALAPPDATA" } else { "" }
    )]
    NoDefaultLocation,
    /// The store could not be opened.
    #[error("cannot open the store at {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<strata_snapshot::Error>,
    },
    /// The sandbox driver could not be made.
    #[error("cannot make the `{name}` sandbox")]
    Sandbox {
        name: String,
        #[source]
        source: strata_isolate::Error,
    },
    /// The builder could not be set up on the store.
    #[error(transparent)]
    Build(#[from] Box<strata_build::Error>),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses an OBuilder spec (`((from busybox) (run (shell "make")))`); errors point into the
/// text (see [`spec::ParseError::render`]).
pub fn parse_spec(text: &str) -> Result<Spec, spec::ParseError> {
    strata_spec::parse(text)
}

/// Where a store lives unless told otherwise: `$XDG_CACHE_HOME/strata` (when absolute), else
/// `~/.cache/strata`; on Windows `%LOCALAPPDATA%\strata`.
pub fn default_location() -> Result<PathBuf> {
    location_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

fn location_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf> {
    // The XDG spec says to ignore a relative XDG_CACHE_HOME.
    if let Some(cache) = var("XDG_CACHE_HOME").map(PathBuf::from)
        && cache.is_absolute()
    {
        return Ok(cache.join("strata"));
    }
    if cfg!(windows)
        && let Some(local) = var("LOCALAPPDATA")
    {
        return Ok(PathBuf::from(local).join("strata"));
    }
    var("HOME")
        .map(|home| PathBuf::from(home).join(".cache").join("strata"))
        .ok_or(Error::NoDefaultLocation)
}

/// How a sandbox driver is set up, besides its name. `Default` is what `strata build` uses.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct SandboxOptions {
    /// How many steps may run at once; `None`: the host's parallelism.
    pub slots: Option<usize>,
    /// Make fsync and friends no-ops inside jobs (runc).
    pub fast_sync: bool,
    /// Memory, CPU and process limits of each job.
    pub limits: Limits,
    /// Where the slot drivers (`windows-user`, `windows-sandbox`, `macos-user`) keep their
    /// slot directories; `None`: theirs (`C:\strata`, `/Users/strata`).
    pub slot_dir: Option<PathBuf>,
    /// Who the user-isolation drivers run jobs as.
    pub slot_users: SlotUsers,
    /// `macos-user`: the Homebrew prefix jobs may own in turn.
    pub homebrew_prefix: Option<PathBuf>,
    /// `docker`: mounted-state mode when not empty: `(from IMAGE)` names an engine image
    /// and snapshots hold only the state, bind-mounted at these paths.
    pub state_targets: Vec<String>,
}

/// A store opened for building. Cheap to share: clone the engine out with [`Strata::engine`].
#[derive(Debug, Clone)]
pub struct Strata {
    engine: Arc<Engine>,
}

impl Strata {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Strata> {
        let path = path.as_ref();
        let engine = Engine::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        Ok(Strata {
            engine: Arc::new(engine),
        })
    }

    /// Opens the store at [`default_location`].
    pub fn open_default() -> Result<Strata> {
        Strata::open(default_location()?)
    }

    /// The snapshot engine: checkout, commit, import, listing, prune.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        self.engine.root()
    }

    /// Where the driver `name` keeps its state for this store: `<store>/isolate-v1/<name>`.
    pub fn driver_state_dir(&self, name: &str) -> PathBuf {
        self.root().join("isolate-v1").join(name)
    }

    /// Makes the sandbox driver `name` (see [`DRIVERS`]), its state kept under the store.
    pub fn driver(&self, name: &str, options: &SandboxOptions) -> Result<Box<dyn Driver>> {
        if name == strata_docker::NAME {
            options.limits.validate().map_err(|source| Error::Sandbox {
                name: name.to_owned(),
                source,
            })?;
            let mut docker = strata_docker::DockerOptions::new(
                options.slots.unwrap_or_else(isolate::default_slots),
            );
            docker.limits = options.limits;
            docker.state_targets = options.state_targets.clone();
            return Ok(Box::new(strata_docker::DockerDriver::new(docker)));
        }
        let mut driver_options = isolate::DriverOptions::new(self.driver_state_dir(name));
        driver_options.slots = options.slots;
        driver_options.fast_sync = options.fast_sync;
        driver_options.limits = options.limits;
        driver_options.slot_dir = options.slot_dir.clone();
        driver_options.slot_users = options.slot_users;
        driver_options.homebrew_prefix = options.homebrew_prefix.clone();
        if !options.state_targets.is_empty() {
            return Err(Error::Sandbox {
                name: name.to_owned(),
                source: isolate::Error::Unsupported {
                    driver: name.to_owned(),
                    reason: "only the docker sandbox mounts state (--state)".to_owned(),
                },
            });
        }
        strata_isolate::driver(name, &driver_options).map_err(|source| Error::Sandbox {
            name: name.to_owned(),
            source: match source {
                isolate::Error::UnknownDriver { name, .. } => isolate::Error::UnknownDriver {
                    name,
                    available: drivers().join(", "),
                },
                other => other,
            },
        })
    }

    /// A builder on this store with the driver `name` and default [`SandboxOptions`].
    pub fn builder(&self, name: &str) -> Result<Builder> {
        self.builder_with(self.driver(name, &SandboxOptions::default())?)
    }

    /// A builder on this store with a driver made elsewhere (any [`Driver`]).
    pub fn builder_with(&self, driver: Box<dyn Driver>) -> Result<Builder> {
        Builder::new(self.engine.clone(), driver).map_err(|e| Error::Build(Box::new(e)))
    }
}

/// The README's Rust examples, compiled (and their types checked) as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_location_follows_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| std::ffi::OsString::from(*v))
            }
        };
        let at = |pairs| location_from(env(pairs)).ok();
        assert_eq!(
            at(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")]),
            Some(PathBuf::from("/xdg/strata"))
        );
        // A relative XDG_CACHE_HOME is ignored, as the XDG spec says.
        assert_eq!(
            at(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")]),
            Some(PathBuf::from("/home/u/.cache/strata"))
        );
        assert!(matches!(
            location_from(env(&[])),
            Err(Error::NoDefaultLocation)
        ));
    }

    #[test]
    fn a_store_opens_and_names_its_driver_state() {
        let dir = tempfile::tempdir().unwrap();
        let strata = Strata::open(dir.path().join("store")).unwrap();
        assert!(strata.root().ends_with("store"));
        assert_eq!(
            strata.driver_state_dir("runc"),
            strata.root().join("isolate-v1/runc")
        );
        let e = strata
            .driver("nope", &SandboxOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("`nope`"), "{e}");
        // Made without reaching the engine: it connects on first use.
        let docker = strata.driver("docker", &SandboxOptions::default()).unwrap();
        assert_eq!(docker.name(), "docker");
        assert!(drivers().contains(&"docker"));
    }
}
