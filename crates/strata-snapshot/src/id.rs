//! Snapshot identifiers: a hash chain over the layer stack, like OCI's ChainID.

use std::fmt;
use std::str::FromStr;

use strata_cas::LayerId;

/// The identity of a snapshot: `blake3("strata-snapshot-v1" ‖ parent ‖ layer)`, so the same
/// stack of layers always has the same id, on every machine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId([u8; 32]);

impl SnapshotId {
    /// The id of the snapshot made of `layer` on top of `parent` (none for a base).
    pub fn derive(parent: Option<&SnapshotId>, layer: &LayerId) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"strata-snapshot-v1\0");
        match parent {
            Some(p) => h.update(&[1]).update(&p.0),
            None => h.update(&[0]),
        };
        h.update(layer.as_bytes());
        SnapshotId(*h.finalize().as_bytes())
    }

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        SnapshotId(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.to_hex())
    }
}

/// A string that is not a full snapshot id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a snapshot id: expected 64 lowercase hex digits")]
#[non_exhaustive]
pub struct ParseSnapshotIdError {
    /// What was given.
    pub input: String,
}

impl FromStr for SnapshotId {
    type Err = ParseSnapshotIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(s, &mut bytes) {
            Ok(()) if s.bytes().all(|b| !b.is_ascii_uppercase()) => Ok(SnapshotId(bytes)),
            _ => Err(ParseSnapshotIdError {
                input: s.to_owned(),
            }),
        }
    }
}

impl serde::Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_depend_on_parent_and_layer() {
        let (a, b) = (LayerId::of(b"a"), LayerId::of(b"b"));
        let base = SnapshotId::derive(None, &a);
        assert_eq!(base, SnapshotId::derive(None, &a));
        assert_ne!(base, SnapshotId::derive(None, &b));
        let child = SnapshotId::derive(Some(&base), &b);
        assert_ne!(child, SnapshotId::derive(None, &b));
        assert_eq!(child.to_hex().parse::<SnapshotId>().unwrap(), child);
    }
}
