//! Strata's content-addressed layer store.
//!
//! A *layer* is a tar stream with OCI semantics (files, directories, symlinks, hard links,
//! devices, fifos, PAX long names and xattrs, `.wh.` whiteouts). Its id is the blake3 hash of
//! the uncompressed tar ([`LayerId`]). This crate:
//!
//! - writes layers deterministically from a directory or from a list of changes
//!   ([`create`]): the same tree always gives the same bytes, hence the same id;
//! - stores them as zstd blobs made of independent frames plus a seek table ([`frames`]), so
//!   compression uses every core while any stock zstd decoder still reads the blob;
//! - applies them onto directories ([`extract`]) with every path resolved from directory
//!   handles, never writing outside the target whatever the tar says;
//! - keeps them in a [`Store`] on disk, safe for concurrent writers across processes.
//!
//! The crate knows nothing about snapshots, sandboxes or build specs.
//!
//! # On-disk layout
//!
//! ```text
//! <store>/
//! ├── layout               "strata-cas-v1": the layout version, checked on open
//! ├── blobs-v1/
//! │   └── blake3/
//! │       └── 3f/
//! │           └── 3fa9…e1  one layer: framed zstd of the tar, named by the tar's blake3
//! └── tmp/                 blobs being written; renamed into blobs-v1 once complete
//! ```
//!
//! The store root is private to its owner (mode 0700, narrowed on open if it was wider):
//! layers hold root filesystems, setuid binaries and device nodes included.
//!
//! A blob becomes visible only by `rename` from `tmp/` after it was fully written and
//! fsynced, so readers never see a partial blob and concurrent writers of the same layer
//! (threads or processes) simply race to rename identical bytes.

pub mod create;
#[cfg(unix)]
mod dirfd;
mod entry;
mod error;
pub mod extract;
pub mod frames;
mod id;
mod progress;
pub mod refs;
#[cfg(unix)]
pub mod root;
mod store;
pub mod tar;
#[cfg(any(windows, test))]
mod winname;

pub use create::{Change, ChangeKind, CreateOptions, LayerInfo};
pub use entry::{Entry, EntryKind, Metadata};
pub use error::{EntryName, EntryProblem, Error};
pub use extract::{
    DevicePolicy, ExtractOptions, ExtractReport, Ownership, SetuidPolicy, Skipped, WhiteoutMode,
};
pub use id::{LayerId, ParseLayerIdError};
pub use progress::Progress;
pub use refs::LayerRef;
pub use store::{BlobInfo, CorruptBlob, LayerReader, OciDigests, Store, VerifyReport, private_dir};
pub use tar::Limits;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
