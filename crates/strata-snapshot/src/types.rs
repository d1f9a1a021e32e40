//! The values the engine hands out: snapshots, tracked checkouts and how they are made. Times
//! are milliseconds since the Unix epoch ([`now_millis`]), as the index keeps them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use strata_cas::LayerId;

use crate::SnapshotId;
use crate::index::{CheckoutRow, SnapshotRow, bytes_to_path};

/// The current time in milliseconds since the Unix epoch (0 if the clock is before it), the
/// unit of every time the engine records.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A snapshot: a layer on top of its parent's stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// `SnapshotId::derive(parent, layer)`: the same stack of layers has the same id
    /// everywhere.
    pub id: SnapshotId,
    /// The snapshot below, or none for a base snapshot.
    pub parent: Option<SnapshotId>,
    /// The layer on top.
    pub layer: LayerId,
    /// How many snapshots are below this one (0 for a base).
    pub depth: u32,
    /// The root the top layer's tree was checked out at when it was committed, which its
    /// files may mention (they are relocated when checked out elsewhere); none for an
    /// imported layer.
    #[serde(serialize_with = "serialize_opt_path_lossy")]
    pub root_path: Option<PathBuf>,
    /// When it was first recorded.
    pub created: i64,
    /// When it was last recorded again, checked out or touched ([`Engine::touch`]); prune
    /// removes the least recently used first.
    ///
    /// [`Engine::touch`]: crate::Engine::touch
    pub last_used: i64,
    /// The tags naming it, by name.
    pub tags: Vec<String>,
}

impl Snapshot {
    pub(crate) fn from_row(row: SnapshotRow, tags: Vec<String>) -> Snapshot {
        Snapshot {
            id: row.id,
            parent: row.parent,
            layer: row.layer,
            depth: row.depth,
            root_path: row.root_path.map(bytes_to_path),
            created: row.created,
            last_used: row.last_used,
            tags,
        }
    }
}

/// How a tracked checkout is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CheckoutMode {
    /// An overlayfs mount over the unpacked layers (Linux, root): instant.
    Overlay,
    /// A plain directory built from the unpacked layers with reflinks or copies.
    Portable,
}

impl CheckoutMode {
    /// The mode's name: `overlay` or `portable` (as the index records it).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutMode::Overlay => "overlay",
            CheckoutMode::Portable => "portable",
        }
    }
}

impl fmt::Display for CheckoutMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that names no checkout mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown checkout mode `{text}` (expected `overlay` or `portable`)")]
#[non_exhaustive]
pub struct ParseCheckoutModeError {
    /// The text given.
    pub text: String,
}

impl FromStr for CheckoutMode {
    type Err = ParseCheckoutModeError;

    fn from_str(text: &str) -> Result<CheckoutMode, ParseCheckoutModeError> {
        match text {
            "overlay" => Ok(CheckoutMode::Overlay),
            "portable" => Ok(CheckoutMode::Portable),
            _ => Err(ParseCheckoutModeError {
                text: text.to_owned(),
            }),
        }
    }
}

/// A tracked checkout: a directory holding a snapshot's tree, which pins the snapshot until
/// it is committed or released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Checkout {
    /// The checkout directory, canonical.
    #[serde(serialize_with = "serialize_path_lossy")]
    pub dir: PathBuf,
    /// The snapshot checked out.
    pub snapshot: SnapshotId,
    /// How it was made.
    pub mode: CheckoutMode,
    /// The root the sandbox sees, recorded as the `root_path` of a snapshot committed from
    /// it.
    #[serde(serialize_with = "serialize_path_lossy")]
    pub root_path: PathBuf,
    /// When it was made.
    pub created: i64,
}

impl From<CheckoutRow> for Checkout {
    fn from(row: CheckoutRow) -> Checkout {
        Checkout {
            dir: row.dir,
            snapshot: row.snapshot,
            mode: row.mode,
            root_path: bytes_to_path(row.root_path),
            created: row.created,
        }
    }
}

fn serialize_path_lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn serialize_opt_path_lossy<S: serde::Serializer>(
    path: &Option<PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_modes_read_back_as_the_index_spells_them() {
        for mode in [CheckoutMode::Overlay, CheckoutMode::Portable] {
            assert_eq!(mode.as_str().parse::<CheckoutMode>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{mode}\""));
        }
        let err = "Overlay".parse::<CheckoutMode>().unwrap_err();
        assert_eq!(err.text, "Overlay");
    }
}
