//! Layer identifiers: the blake3 hash of a layer's uncompressed tar stream.

use std::fmt;
use std::str::FromStr;

/// The shortest id prefix a layer reference may give, in hex digits.
pub const MIN_PREFIX: usize = 4;

/// The identity of a layer: blake3 of its uncompressed tar bytes.
///
/// Displayed and parsed as 64 lowercase hex digits. The OCI form is `blake3:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerId([u8; 32]);

impl LayerId {
    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        LayerId(bytes)
    }

    /// The raw hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The OCI descriptor form, `blake3:<hex>`.
    pub fn to_oci_digest(&self) -> String {
        format!("blake3:{}", self.to_hex())
    }

    /// Hashes `data` (a whole uncompressed tar stream) into its id.
    pub fn of(data: &[u8]) -> Self {
        LayerId(*blake3::hash(data).as_bytes())
    }
}

impl From<blake3::Hash> for LayerId {
    fn from(hash: blake3::Hash) -> Self {
        LayerId(*hash.as_bytes())
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerId({})", self.to_hex())
    }
}

/// A string that is not a layer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a layer id: expected 64 hex digits, optionally prefixed with `blake3:`")]
pub struct ParseLayerIdError {
    /// What was given.
    pub input: String,
}

impl FromStr for LayerId {
    type Err = ParseLayerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("blake3:").unwrap_or(s);
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(hex_part, &mut bytes) {
            Ok(()) if hex_part.bytes().all(|b| !b.is_ascii_uppercase()) => Ok(LayerId(bytes)),
            _ => Err(ParseLayerIdError {
                input: s.to_owned(),
            }),
        }
    }
}

impl serde::Serialize for LayerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for LayerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let id = LayerId::of(b"hello");
        assert_eq!(id.to_hex().parse::<LayerId>().unwrap(), id);
        assert_eq!(id.to_oci_digest().parse::<LayerId>().unwrap(), id);
        assert!("abc".parse::<LayerId>().is_err());
        assert!(id.to_hex().to_uppercase().parse::<LayerId>().is_err());
        assert!(
            format!("sha256:{}", id.to_hex())
                .parse::<LayerId>()
                .is_err()
        );
    }
}
