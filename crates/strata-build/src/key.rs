//! Step cache keys: blake3 over a canonical, length-prefixed encoding of what a step depends on.
//!
//! What enters a key, by op (every key also starts with a format version and the parent
//! snapshot id, so keys form a hash chain like snapshot ids do):
//!
//! - `run`: the context (workdir, user, env in order, shell), the command, the network names,
//!   each cache's id and target, and each secret's **id and target, never its value**:
//!   rotating a secret does not rebuild (OBuilder hashed the value, leaking it into a
//!   public hash and busting caches).
//! - `copy`: the user, the destination, the source kind (context or stage *name*) and the
//!   copy manifest: for every copied entry its path, kind, **mode** (OBuilder left modes out,
//!   so a chmod-only change was a false hit), symlink target and content hash (blake3).
//!   Excludes only act through the manifest; the workdir enters through the resolved
//!   destination.
//! - `comment`, `workdir`, `user`, `env` and `shell` make no step of their own; they change
//!   the context that later keys include.
//!
//! Not in any key: the sandbox driver and its options, the hostname, cache *contents*
//! (caches are mutable by design), mtimes and owners of copied files (owners come from the
//! context user, which is in the key).

use std::fmt;

use strata_snapshot::SnapshotId;

/// The cache key of one step.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepKey([u8; 32]);

impl StepKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for StepKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl fmt::Debug for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StepKey({})", self.to_hex())
    }
}

/// Bumped whenever the encoding or the meaning of a step changes, so old keys stop matching.
const FORMAT: &str = "strata-step-v1";

/// Builds a key. Every value is written as `tag length bytes`, so no two different sequences
/// of fields encode to the same bytes.
#[derive(Debug)]
pub struct KeyBuilder {
    hasher: blake3::Hasher,
}

impl KeyBuilder {
    pub fn new(parent: &SnapshotId, op: &str) -> KeyBuilder {
        let mut k = KeyBuilder {
            hasher: blake3::Hasher::new(),
        };
        k.str("format", FORMAT);
        k.bytes("parent", parent.to_hex().as_bytes());
        k.str("op", op);
        k
    }

    pub fn bytes(&mut self, tag: &str, value: &[u8]) -> &mut Self {
        self.raw(tag.as_bytes());
        self.raw(value);
        self
    }

    pub fn str(&mut self, tag: &str, value: &str) -> &mut Self {
        self.bytes(tag, value.as_bytes())
    }

    pub fn u64(&mut self, tag: &str, value: u64) -> &mut Self {
        self.bytes(tag, &value.to_le_bytes())
    }

    /// A list: its length, then each item through `f`.
    pub fn list<T>(
        &mut self,
        tag: &str,
        items: &[T],
        mut f: impl FnMut(&mut Self, &T),
    ) -> &mut Self {
        self.u64(tag, items.len() as u64);
        for item in items {
            f(self, item);
        }
        self
    }

    pub fn finish(&self) -> StepKey {
        StepKey(*self.hasher.finalize().as_bytes())
    }

    fn raw(&mut self, b: &[u8]) {
        self.hasher.update(&(b.len() as u64).to_le_bytes());
        self.hasher.update(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> SnapshotId {
        SnapshotId::derive(None, &strata_cas::LayerId::of(b"x"))
    }

    #[test]
    fn field_boundaries_matter() {
        let a = KeyBuilder::new(&parent(), "run").str("a", "bc").finish();
        let b = KeyBuilder::new(&parent(), "run").str("ab", "c").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn same_input_same_key() {
        let a = KeyBuilder::new(&parent(), "run")
            .str("cmd", "echo")
            .finish();
        let b = KeyBuilder::new(&parent(), "run")
            .str("cmd", "echo")
            .finish();
        assert_eq!(a, b);
        assert_eq!(a.to_hex().len(), 64);
    }

    #[test]
    fn parent_and_op_matter() {
        let other = SnapshotId::derive(None, &strata_cas::LayerId::of(b"y"));
        let a = KeyBuilder::new(&parent(), "run").finish();
        assert_ne!(a, KeyBuilder::new(&other, "run").finish());
        assert_ne!(a, KeyBuilder::new(&parent(), "copy").finish());
    }
}
