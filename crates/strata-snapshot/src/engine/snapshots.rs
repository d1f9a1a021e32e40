//! Snapshots as the engine hands them out: reading, resolving, tagging, touching and removing
//! them, tracked checkouts, and leases that pin a snapshot while its holder runs.

use std::collections::HashMap;
use std::path::Path;

use strata_process::Owner;

use super::{Engine, Result, canonical};
use crate::index::{LeaseId, SnapshotRow};
use crate::{Checkout, Snapshot, SnapshotId};

impl Engine {
    /// The snapshot `id`, with its tags; none if the store has no such snapshot.
    pub fn snapshot(&self, id: &SnapshotId) -> Result<Option<Snapshot>> {
        self.with_index(|ix| {
            let Some(row) = ix.snapshot(id)? else {
                return Ok(None);
            };
            let tags = ix.tags_of(id)?;
            Ok(Some(Snapshot::from_row(row, tags)))
        })
    }

    /// Every snapshot with its tags, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.with_index(|ix| {
            let rows = ix.snapshots()?;
            Ok(with_their_tags(rows, ix.tags()?))
        })
    }

    /// The id of every snapshot, in id order: one cheap read, for telling which of many ids
    /// (a build cache's records, say) are still in the store.
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        self.with_index(|ix| Ok(ix.snapshot_ids()?))
    }

    /// The snapshots whose parent is `id`, in id order.
    pub fn children(&self, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
        self.with_index(|ix| Ok(ix.children(id)?))
    }

    /// The stack of snapshot `id`: its base first, `id` itself last, each with its tags.
    /// Errors with [`index::Error::MissingSnapshot`](crate::index::Error::MissingSnapshot)
    /// if there is no such snapshot.
    pub fn chain(&self, id: &SnapshotId) -> Result<Vec<Snapshot>> {
        self.with_index(|ix| {
            let rows = ix.chain(id)?;
            Ok(with_their_tags(rows, ix.tags()?))
        })
    }

    /// The snapshot `reference` names: a tag, a full id, or a unique id prefix of at least
    /// four hex digits. A tag wins over an id prefix spelled the same way. Errors with
    /// [`index::Error::UnknownReference`](crate::index::Error::UnknownReference) or
    /// [`index::Error::Ambiguous`](crate::index::Error::Ambiguous).
    pub fn resolve(&self, reference: &str) -> Result<SnapshotId> {
        self.with_index(|ix| Ok(ix.resolve(reference)?))
    }

    /// Points tag `name` at snapshot `id`, moving it if it names another. A tag is at most
    /// 255 bytes, without whitespace, control characters or `/`, and not a full snapshot id.
    /// A tagged snapshot is never pruned.
    pub fn tag(&self, name: &str, id: &SnapshotId) -> Result<()> {
        self.with_index(|ix| Ok(ix.set_tag(name, id)?))
    }

    /// Removes tag `name`; `false` if there was none. The snapshot stays.
    pub fn untag(&self, name: &str) -> Result<bool> {
        self.with_index(|ix| Ok(ix.remove_tag(name)?))
    }

    /// Every tag and the snapshot it names, by name.
    pub fn tags(&self) -> Result<Vec<(String, SnapshotId)>> {
        self.with_index(|ix| Ok(ix.tags()?))
    }

    /// Marks the snapshots `ids` used now, so that prune, which removes the least recently
    /// used first, keeps them longer. Ids not in the store are ignored: touching is advisory.
    pub fn touch(&self, ids: &[SnapshotId]) -> Result<()> {
        let now = crate::now_millis();
        self.with_index(|ix| Ok(ix.touch(ids, now)?))
    }

    /// Removes snapshot `id` and its tags. Its layer stays until [`Engine::gc`]. Refused
    /// ([`index::Error::InUse`](crate::index::Error::InUse), nothing changed) while it has
    /// children, tracked checkouts or leases of live processes, while it is a cache's current
    /// version, and while a cache view is based on it or on its parent.
    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.with_index(|ix| Ok(ix.remove_snapshot(id)?))
    }

    /// Every tracked checkout, by directory.
    pub fn checkouts(&self) -> Result<Vec<Checkout>> {
        let rows = self.with_index(|ix| Ok(ix.checkouts()?))?;
        Ok(rows.into_iter().map(Checkout::from).collect())
    }

    /// The tracked checkout at `dir`, if it is one (also when its directory is gone).
    pub fn tracked_checkout(&self, dir: &Path) -> Result<Option<Checkout>> {
        // Rows record canonical paths; a directory that no longer exists is looked up as given.
        let dir = canonical(dir).unwrap_or_else(|_| dir.to_path_buf());
        let row = self.with_index(|ix| Ok(ix.checkout(&dir)?))?;
        Ok(row.map(Checkout::from))
    }

    /// Pins snapshot `id` (so prune keeps it, and gc its layers) until the lease is released
    /// or dropped, or this process exits, even by a crash: a lease names its holder by pid
    /// and start time, and one whose holder is dead stops counting. `purpose` is for people
    /// ("export to registry").
    pub fn lease(&self, id: &SnapshotId, purpose: &str) -> Result<Lease<'_>> {
        let now = crate::now_millis();
        let lease = self.with_index(|ix| Ok(ix.lease(id, Owner::current(), purpose, now)?))?;
        Ok(Lease {
            engine: self,
            id: lease,
            snapshot: *id,
            released: false,
        })
    }

    /// `row` as a [`Snapshot`], with its tags.
    pub(crate) fn with_tags(&self, row: SnapshotRow) -> Result<Snapshot> {
        let tags = self.with_index(|ix| Ok(ix.tags_of(&row.id)?))?;
        Ok(Snapshot::from_row(row, tags))
    }
}

/// The names of the tags of each tagged snapshot, by name.
/// `rows` as snapshots, each with the names `tags` give it.
fn with_their_tags(rows: Vec<SnapshotRow>, tags: Vec<(String, SnapshotId)>) -> Vec<Snapshot> {
    let mut by_snapshot: HashMap<SnapshotId, Vec<String>> = HashMap::new();
    for (name, id) in tags {
        by_snapshot.entry(id).or_default().push(name);
    }
    rows.into_iter()
        .map(|row| {
            let mine = by_snapshot.remove(&row.id).unwrap_or_default();
            Snapshot::from_row(row, mine)
        })
        .collect()
}

/// A snapshot pinned by [`Engine::lease`]. Dropping it releases it; [`Lease::release`] does
/// too, and says whether that worked.
#[derive(Debug)]
#[must_use = "a lease pins its snapshot only while it is held"]
pub struct Lease<'e> {
    engine: &'e Engine,
    id: LeaseId,
    snapshot: SnapshotId,
    released: bool,
}

impl Lease<'_> {
    /// The snapshot pinned.
    pub fn snapshot(&self) -> &SnapshotId {
        &self.snapshot
    }

    /// Ends the lease.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        let id = self.id;
        self.engine.with_index(|ix| Ok(ix.release_lease(id)?))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.released {
            // Best effort: a lease left behind ends with this process anyway.
            let id = self.id;
            let _ = self.engine.with_index(|ix| Ok(ix.release_lease(id)?));
        }
    }
}
