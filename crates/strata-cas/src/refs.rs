//! Turning what a user typed (a full id, `blake3:<hex>`, or a unique prefix of at least four
//! hex digits) into a stored layer's id.

pub use crate::id::MIN_PREFIX;
use crate::{Error, LayerId, Result, Store};

/// What a layer reference asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerRef {
    /// A complete id.
    Full(LayerId),
    /// Lowercase hex digits, shorter than a full id.
    Prefix(String),
}

impl LayerRef {
    /// Parses 64 hex digits or a prefix of at least [`MIN_PREFIX`], either optionally
    /// preceded by `blake3:`; hex digits may be of either case.
    pub fn parse(given: &str) -> Result<LayerRef> {
        let hex = given
            .strip_prefix("blake3:")
            .unwrap_or(given)
            .to_ascii_lowercase();
        let bad = || Error::BadLayerRef {
            given: given.to_owned(),
        };
        if hex.len() < MIN_PREFIX || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        if hex.len() == 64 {
            return hex.parse().map(LayerRef::Full).map_err(|_| bad());
        }
        Ok(LayerRef::Prefix(hex))
    }
}

impl Store {
    /// The stored layer `given` names, or `None` if no stored layer matches it. A malformed
    /// reference or an ambiguous prefix is an error. A full id is only checked for existence,
    /// so a damaged blob can still be named (to verify or remove it).
    pub fn find(&self, given: &str) -> Result<Option<LayerId>> {
        match LayerRef::parse(given)? {
            LayerRef::Full(id) => Ok(self.contains(&id).then_some(id)),
            LayerRef::Prefix(prefix) => {
                let mut matches: Vec<LayerId> = self
                    .ids()?
                    .into_iter()
                    .filter(|id| id.to_hex().starts_with(&prefix))
                    .collect();
                matches.sort();
                match matches.len() {
                    0 => Ok(None),
                    1 => Ok(matches.pop()),
                    _ => Err(Error::AmbiguousLayerRef {
                        given: given.to_owned(),
                        matches,
                    }),
                }
            }
        }
    }

    /// Like [`find`](Self::find), but a layer that is not stored is an error naming it.
    pub fn resolve(&self, given: &str) -> Result<LayerId> {
        self.find(given)?.ok_or_else(|| Error::NoSuchLayer {
            given: given.to_owned(),
            prefix: matches!(LayerRef::parse(given), Ok(LayerRef::Prefix(_))),
            store: self.root().to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_ids_and_prefixes() {
        let id = LayerId::of(b"x");
        let hex = id.to_hex();
        assert_eq!(LayerRef::parse(&hex).unwrap(), LayerRef::Full(id));
        assert_eq!(
            LayerRef::parse(&format!("blake3:{hex}")).unwrap(),
            LayerRef::Full(id)
        );
        assert_eq!(
            LayerRef::parse(&hex.to_uppercase()).unwrap(),
            LayerRef::Full(id)
        );
        assert_eq!(
            LayerRef::parse("ABcd").unwrap(),
            LayerRef::Prefix("abcd".into())
        );
    }

    #[test]
    fn rejects_bad_references_naming_them() {
        for bad in ["", "abc", "blake3:", "xyz1", "sha256:abcd", &"a".repeat(65)] {
            let err = LayerRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn prefixes_resolve_when_unique_and_list_candidates_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        // Resolution only lists names: stand-in blobs with chosen ids will do.
        let ids: Vec<LayerId> = ["abcd0", "abcd1", "ef010"]
            .iter()
            .map(|p| format!("{p}{}", "0".repeat(59)).parse().unwrap())
            .collect();
        for id in &ids {
            let path = store.blob_path(id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        match store.resolve("abcd").unwrap_err() {
            Error::AmbiguousLayerRef { matches, .. } => assert_eq!(matches, ids[..2]),
            e => panic!("{e}"),
        }
        let e = store.resolve("ABCD").unwrap_err().to_string();
        assert!(
            e.contains("ambiguous") && e.contains(&ids[1].to_hex()),
            "{e}"
        );
        assert_eq!(store.resolve("abcd1").unwrap(), ids[1]);
        assert_eq!(store.resolve("blake3:ef01").unwrap(), ids[2]);
        assert_eq!(store.find("0000").unwrap(), None);
        let e = store.resolve("00000000").unwrap_err().to_string();
        assert!(e.contains("no layer id starts with `00000000`"), "{e}");
        let missing = LayerId::of(b"missing").to_hex();
        let e = store.resolve(&missing).unwrap_err().to_string();
        assert!(e.contains("no layer has the id"), "{e}");
    }
}
