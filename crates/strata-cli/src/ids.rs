//! Turning what the user typed (a full id, `blake3:<hex>` or a short prefix) into a stored layer id.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use strata_cas::{LayerId, Store};

/// The shortest prefix accepted, in hex digits.
pub(crate) const MIN_PREFIX: usize = 4;

/// How many candidates an "ambiguous prefix" error lists before summarising the rest.
const MAX_LISTED: usize = 10;

/// What an id argument asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Query {
    /// A complete id.
    Full(LayerId),
    /// A prefix of lowercase hex digits, shorter than a full id.
    Prefix(String),
}

/// Parses an id argument: 64 hex digits or a prefix of at least [`MIN_PREFIX`], either
/// optionally preceded by `blake3:`. Hex digits may be of either case.
pub(crate) fn parse(arg: &str) -> Result<Query> {
    let hex = arg
        .strip_prefix("blake3:")
        .unwrap_or(arg)
        .to_ascii_lowercase();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || hex.len() > 64 {
        bail!(
            "`{arg}` is not a layer id: expected hex digits (64 for a full id, at least \
             {MIN_PREFIX} for a prefix), optionally preceded by `blake3:`"
        );
    }
    if hex.len() == 64 {
        let id = hex
            .parse::<LayerId>()
            .with_context(|| format!("`{arg}` is not a layer id"))?;
        return Ok(Query::Full(id));
    }
    if hex.len() < MIN_PREFIX {
        bail!("id prefix `{arg}` is too short: give at least {MIN_PREFIX} hex digits");
    }
    Ok(Query::Prefix(hex))
}

/// Resolves id arguments against one store, listing it at most once.
#[derive(Debug)]
pub(crate) struct Resolver<'a> {
    store: &'a Store,
    root: &'a Path,
    listing: Option<Vec<LayerId>>,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(store: &'a Store, root: &'a Path) -> Self {
        Resolver {
            store,
            root,
            listing: None,
        }
    }

    /// The stored layer `arg` names, or `None` if no stored layer matches it. Fails on a
    /// malformed argument, an ambiguous prefix, or when the store cannot be read.
    pub(crate) fn lookup(&mut self, arg: &str) -> Result<Option<LayerId>> {
        match parse(arg)? {
            // Only existence matters here: a blob too damaged to stat can still be named
            // (to verify or remove it).
            Query::Full(id) => Ok(self.store.contains(&id).then_some(id)),
            Query::Prefix(prefix) => {
                let ids = self.listing()?;
                let matches: Vec<LayerId> = ids
                    .iter()
                    .filter(|id| id.to_hex().starts_with(&prefix))
                    .copied()
                    .collect();
                match matches.as_slice() {
                    [] => Ok(None),
                    [id] => Ok(Some(*id)),
                    many => bail!("{}", ambiguous(arg, many)),
                }
            }
        }
    }

    /// Like [`lookup`](Self::lookup), but a layer that is not stored is an error naming it.
    pub(crate) fn resolve(&mut self, arg: &str) -> Result<LayerId> {
        match self.lookup(arg)? {
            Some(id) => Ok(id),
            None => bail!("{}", self.not_found(arg)),
        }
    }

    /// The message for an id argument that matches no stored layer.
    pub(crate) fn not_found(&self, arg: &str) -> String {
        let what = match parse(arg) {
            Ok(Query::Prefix(_)) => "no layer id starts with",
            _ => "no layer has the id",
        };
        format!("{what} `{arg}` in the store at {}", self.root.display())
    }

    fn listing(&mut self) -> Result<&[LayerId]> {
        if self.listing.is_none() {
            let ids = self
                .store
                .ids()
                .with_context(|| format!("cannot list the store at {}", self.root.display()))?;
            self.listing = Some(ids);
        }
        Ok(self.listing.as_deref().unwrap_or_default())
    }
}

fn ambiguous(arg: &str, matches: &[LayerId]) -> String {
    let mut message = format!(
        "id prefix `{arg}` is ambiguous: it matches {} layers; give more digits",
        matches.len()
    );
    for id in matches.iter().take(MAX_LISTED) {
        message.push_str("\n  ");
        message.push_str(&id.to_hex());
    }
    if matches.len() > MAX_LISTED {
        message.push_str(&format!("\n  … and {} more", matches.len() - MAX_LISTED));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_ids_and_prefixes() {
        let id = LayerId::of(b"x");
        let hex = id.to_hex();
        assert_eq!(parse(&hex).unwrap(), Query::Full(id));
        assert_eq!(parse(&format!("blake3:{hex}")).unwrap(), Query::Full(id));
        assert_eq!(parse(&hex.to_uppercase()).unwrap(), Query::Full(id));
        assert_eq!(parse("ABcd").unwrap(), Query::Prefix("abcd".into()));
        assert_eq!(
            parse("blake3:0123ab").unwrap(),
            Query::Prefix("0123ab".into())
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in ["", "abc", "blake3:", "xyz1", "sha256:abcd", &"a".repeat(65)] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
