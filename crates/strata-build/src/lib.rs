//! Strata's builder: runs an OBuilder spec step by step, each step in a sandbox, and keeps
//! every step's result as a snapshot so the next build reuses it.
//!
//! [`Builder`] ties three things together without knowing their insides: the snapshot
//! [`Engine`](strata_snapshot::Engine) (checkout, commit, shared caches), one
//! [`Driver`](strata_isolate::Driver) (chosen by name by the caller) and the spec model
//! ([`strata_spec::Spec`]). Each step gets a [`StepKey`]: a blake3 hash over a canonical
//! encoding of the parent snapshot, the op and the context (see [`key`] for exactly what
//! enters it). A key that maps to a live snapshot is a hit; otherwise the step runs, and on
//! success its snapshot and log are recorded under the key.
//!
//! Identical steps requested at once run once: inside a process the later requester follows
//! the first one's live log; across processes sharing a store, a per-key file lock makes the
//! later one wait (tailing the same log) and then take the recorded result.

pub mod base;
mod builder;
mod context;
mod copy;
mod error;
mod events;
pub mod key;
mod layers;
mod log;
mod options;
mod remote;
mod roots;
mod slot_roots;
mod steps;

pub use builder::{Builder, CacheStats, delete, forget_missing, image_context};
pub use context::Context;
pub use error::{Error, Result};
pub use events::{Event, HitSource, Reporter, Silent, StepInfo, Task, Transcript, render_text};
pub use key::StepKey;
pub use log::DEFAULT_LOG_LIMIT;
pub use options::{BuildOptions, Secret};
pub use remote::{RemoteCache, RemoteError, RemoteStep};
pub use slot_roots::remove_slots;
