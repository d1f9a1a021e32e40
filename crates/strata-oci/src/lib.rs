//! Strata snapshots as OCI images: export to an OCI image layout or a docker-archive tar,
//! import from them, and push to or pull from a registry speaking the OCI distribution API.
//!
//! A snapshot's layers are already OCI layers (tar streams with `.wh.` whiteouts) and its
//! blobs valid zstd streams, so a zstd export or push sends the stored blobs as they are; gzip
//! and uncompressed layers are made on the fly for engines that cannot read zstd. Every writer
//! streams into any [`std::io::Write`] without temporary copies, so an engine driver can load
//! a snapshot as a docker-archive stream.
//!
//! Everything read from an image or a registry is hostile: names are checked before they
//! become paths, JSON documents and blobs have size limits, and every blob's digest (and each
//! layer's diff_id) is verified before anything lands in the store.

mod digest;
mod error;
mod export;
mod import;
mod layers;
mod model;
pub mod registry;
#[cfg(feature = "testing")]
pub mod testing;

pub use digest::Digest;
pub use error::{Error, Result};
pub use export::{Image, ImageMeta, write_docker_archive, write_oci_dir, write_oci_tar};
pub use import::{Imported, import_docker_archive, import_oci};
pub use layers::{Compression, LayerBlob};
pub use model::media;
