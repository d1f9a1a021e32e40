//! The engine's errors.

use std::io;
use std::path::{Path, PathBuf};

use crate::index;
use crate::{portable, relocate};

/// Errors of the engine. Each names the snapshot, checkout directory or path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The layer store failed.
    #[error(transparent)]
    Cas(#[from] strata_cas::Error),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] index::Error),
    /// Mounting or diffing an overlay failed.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Overlay(#[from] crate::overlay::Error),
    /// Materialising or diffing a portable checkout failed.
    #[error(transparent)]
    Portable(#[from] portable::Error),
    /// Relocating a checkout failed.
    #[error(transparent)]
    Relocate(#[from] relocate::Error),
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The directory is not a tracked checkout.
    #[error("{} is not a tracked checkout (see `strata checkout`)", dir.display())]
    NotTracked {
        /// The directory.
        dir: PathBuf,
    },
    /// A checkout target that already has contents.
    #[error("{} is not empty: check out into a new or empty directory", dir.display())]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// An overlay checkout whose mount did not survive a reboot: its upper dir may have lost
    /// writes (mounts are volatile), so it cannot be committed.
    #[error(
        "{} was mounted before the host last restarted, and its changes may be incomplete: \
         release it and run the step again",
        dir.display()
    )]
    EarlierBoot {
        /// The checkout directory.
        dir: PathBuf,
    },
    /// Overlay checkouts need Linux, root and overlayfs.
    #[error("overlay checkouts need Linux, root and overlayfs here; use a portable checkout")]
    OverlayUnavailable,
    /// Layers that snapshots still need, refused by [`Engine::remove_layers`](crate::Engine::remove_layers): nothing was
    /// removed.
    #[error("{}; nothing was removed", needed_by(users))]
    LayersNeeded {
        /// Every snapshot whose stack holds one of the layers, with its tags.
        users: Vec<crate::maintenance::LayerUser>,
    },
}

/// "layer L is needed by snapshot S (tags `a`, `b`), snapshot T; layer M is needed by ...".
fn needed_by(users: &[crate::maintenance::LayerUser]) -> String {
    let mut text = String::new();
    let mut last = None;
    for user in users {
        if last == Some(user.layer) {
            text.push_str(", ");
        } else {
            if last.is_some() {
                text.push_str("; ");
            }
            text.push_str(&format!("layer {} is needed by ", user.layer));
            last = Some(user.layer);
        }
        text.push_str(&format!("snapshot {}", user.snapshot));
        if !user.tags.is_empty() {
            let tags: Vec<String> = user.tags.iter().map(|t| format!("`{t}`")).collect();
            let word = if tags.len() == 1 { "tag" } else { "tags" };
            text.push_str(&format!(" ({word} {})", tags.join(", ")));
        }
    }
    text
}

/// The result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    io_err(op, path)
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}
