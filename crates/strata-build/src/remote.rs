//! A step cache shared through something outside the store (an OCI registry, say): the
//! builder asks it for a step before running the step, and offers it what it ran. The
//! builder knows only this trait; what implements it is wired in by the caller.

use strata_snapshot::{Engine, SnapshotId};

use crate::StepKey;

/// What a shared cache failed at; the builder reports it as a note and carries on (the step
/// runs here, or its result stays local).
pub type RemoteError = Box<dyn std::error::Error + Send + Sync>;

/// A step found in a shared cache, its snapshot now in the local store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStep {
    /// The step's snapshot, present in the engine's store.
    pub snapshot: SnapshotId,
    /// The step's log, to replay (masked when it was recorded: entries carry no secrets).
    pub log: Vec<u8>,
}

impl RemoteStep {
    pub fn new(snapshot: SnapshotId, log: Vec<u8>) -> RemoteStep {
        RemoteStep { snapshot, log }
    }
}

/// A step cache shared by builders. Implementations must make concurrent publications of
/// one key safe (two builders may run the same step at once).
pub trait RemoteCache: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages (`registry.example/cache`).
    fn describe(&self) -> String;

    /// The step recorded under `key`, if any, with its snapshot made present in `engine`'s
    /// store (pulling only the layers the store lacks).
    fn fetch(&self, engine: &Engine, key: &StepKey) -> Result<Option<RemoteStep>, RemoteError>;

    /// Records that `key` made `snapshot` (in `engine`'s store), with its log.
    fn publish(
        &self,
        engine: &Engine,
        key: &StepKey,
        snapshot: &SnapshotId,
        log: &[u8],
    ) -> Result<(), RemoteError>;

    /// Whether `key` is recorded already (so a local hit need not be published again).
    fn contains(&self, key: &StepKey) -> Result<bool, RemoteError>;
}
