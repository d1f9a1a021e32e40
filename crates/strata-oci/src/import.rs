//! Snapshots from images: an OCI image layout (a directory or a tar) or a docker-archive
//! tar becomes one snapshot per layer, each layer stored through the CAS's hardened tar
//! reader with its blob digest and diff_id verified as it streams, so a layer that does not
//! match its image is never stored.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use strata_cas::EntryKind;
use strata_cas::tar::TarReader;
use strata_snapshot::{Engine, Snapshot};

use crate::digest::{Hasher, VerifyReader};
use crate::error::{Error, Result, invalid, io_err, unwrap_stream};
use crate::model::{DockerEntry, ImageConfig, Index, Manifest};
use crate::{Digest, ImageMeta, media};

/// The most a JSON document of an image (index, manifest, config) may weigh.
pub(crate) const MAX_DOCUMENT: u64 = 4 << 20;
/// The most layers an image may have (overlayfs stacks at most 500).
const MAX_LAYERS: usize = 500;

/// What an import made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Imported {
    /// The snapshot of the top layer (the image's whole tree).
    pub snapshot: Snapshot,
    /// How many layers the image had.
    pub layers: usize,
    /// The environment, workdir, user and name the image carried.
    pub meta: ImageMeta,
}

/// Imports the image of an OCI image layout, a directory or a tar of one. `reference`
/// picks a manifest by its `org.opencontainers.image.ref.name` (or full image name) when
/// the layout holds several. The top snapshot is tagged `tag` if given.
pub fn import_oci(
    engine: &Engine,
    path: &Path,
    reference: Option<&str>,
    tag: Option<&str>,
) -> Result<Imported> {
    if path.is_dir() {
        return import_layout(engine, path, reference, tag);
    }
    let unpacked = unpack_archive(path)?;
    import_layout(engine, unpacked.path(), reference, tag)
}

/// Imports the image of a docker-archive tar (`docker save`). `reference` picks one of its
/// images by a `RepoTags` entry when it holds several.
pub fn import_docker_archive(
    engine: &Engine,
    path: &Path,
    reference: Option<&str>,
    tag: Option<&str>,
) -> Result<Imported> {
    let unpacked = unpack_archive(path)?;
    let dir = unpacked.path();
    let manifest_path = dir.join("manifest.json");
    let entries: Vec<DockerEntry> = parse(
        &read_limited(&manifest_path, MAX_DOCUMENT)?,
        "the archive's manifest.json",
    )?;
    let entry = match (reference, entries.as_slice()) {
        (None, [one]) => one,
        (None, _) => {
            return Err(invalid(
                path.display().to_string(),
                format!("holds {} images: name one", entries.len()),
            ));
        }
        (Some(r), _) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == r))
            .ok_or_else(|| invalid(path.display().to_string(), format!("has no image {r:?}")))?,
    };
    let config_bytes = read_limited(&inside(dir, &entry.config)?, MAX_DOCUMENT)?;
    let config: ImageConfig = parse(&config_bytes, &entry.config)?;
    let layers = entry
        .layers
        .iter()
        .map(|name| {
            Ok(Source::File {
                path: inside(dir, name)?,
                blob: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let name = entry.repo_tags.iter().flatten().next().cloned();
    import_layers(engine, &config, &layers, name, tag)
}

fn import_layout(
    engine: &Engine,
    dir: &Path,
    reference: Option<&str>,
    tag: Option<&str>,
) -> Result<Imported> {
    let index: Index = parse(
        &read_limited(&dir.join("index.json"), MAX_DOCUMENT)?,
        "the layout's index.json",
    )?;
    let chosen = pick(&index, reference, &dir.display().to_string())?;
    let name = chosen
        .annotations
        .get(media::IMAGE_NAME)
        .or_else(|| chosen.annotations.get(media::REF_NAME))
        .cloned();
    let mut descriptor = chosen.clone();
    // A multi-platform index: the host's platform.
    if matches!(
        descriptor.media_type.as_str(),
        media::INDEX | media::DOCKER_LIST
    ) {
        let nested: Index = parse(&read_blob(dir, &descriptor)?, "a nested index")?;
        descriptor = nested.for_host(&dir.display().to_string())?;
    }
    let manifest: Manifest = parse(&read_blob(dir, &descriptor)?, "the image manifest")?;
    let config: ImageConfig = parse(&read_blob(dir, &manifest.config)?, "the image config")?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| {
            if !is_layer_type(&l.media_type) {
                return Err(invalid(
                    format!("layer {}", l.digest),
                    format!("has media type {:?}, not a tar layer", l.media_type),
                ));
            }
            Ok(Source::File {
                path: blob_path(dir, &l.digest),
                blob: Some((l.digest, l.size)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    import_layers(engine, &config, &layers, name, tag)
}

fn is_layer_type(media_type: &str) -> bool {
    matches!(
        media_type,
        media::LAYER_TAR | media::LAYER_GZIP | media::LAYER_ZSTD | media::DOCKER_LAYER_GZIP
    ) || media_type == "application/vnd.docker.image.rootfs.diff.tar"
}

/// The manifest of `index` that `reference` names, or its only one.
fn pick<'i>(
    index: &'i Index,
    reference: Option<&str>,
    what: &str,
) -> Result<&'i crate::model::Descriptor> {
    match reference {
        Some(r) => index
            .manifests
            .iter()
            .find(|m| {
                m.annotations.get(media::REF_NAME).is_some_and(|n| n == r)
                    || m.annotations.get(media::IMAGE_NAME).is_some_and(|n| n == r)
            })
            .ok_or_else(|| invalid(what, format!("has no image named {r:?}"))),
        None => match index.manifests.as_slice() {
            [one] => Ok(one),
            many => Err(invalid(
                what,
                format!("holds {} images: name one", many.len()),
            )),
        },
    }
}

/// Where a layer of an image being imported is.
#[derive(Debug)]
pub(crate) enum Source {
    /// A file, with the blob digest and size an OCI manifest gives (none in a docker archive).
    File {
        path: PathBuf,
        blob: Option<(Digest, u64)>,
    },
    /// In the store already, with the diff_id the image says (checked by the caller).
    Stored(strata_cas::LayerId),
}

/// Stores `layers` as a chain of snapshots, checking each against the config's diff_ids.
pub(crate) fn import_layers(
    engine: &Engine,
    config: &ImageConfig,
    layers: &[Source],
    name: Option<String>,
    tag: Option<&str>,
) -> Result<Imported> {
    // Each layer is stored (or found stored) and then recorded: `gc` must wait in between.
    let _hold = engine.hold_layers()?;
    let diff_ids = &config.rootfs.diff_ids;
    if layers.is_empty() || layers.len() > MAX_LAYERS {
        return Err(invalid(
            "the image",
            format!(
                "has {} layers (1 to {MAX_LAYERS} are accepted)",
                layers.len()
            ),
        ));
    }
    if diff_ids.len() != layers.len() {
        return Err(invalid(
            "the image config",
            format!(
                "lists {} diff_ids for {} layers",
                diff_ids.len(),
                layers.len()
            ),
        ));
    }
    let mut parent: Option<Snapshot> = None;
    for (i, (source, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let top = tag.filter(|_| i + 1 == layers.len());
        let below = parent.as_ref().map(|p| p.id);
        parent = Some(store_layer(
            engine,
            below.as_ref(),
            source,
            diff_id,
            None,
            top,
            i,
        )?);
    }
    let run = &config.config;
    let env = run
        .env
        .iter()
        .flatten()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    Ok(Imported {
        snapshot: parent.expect("at least one layer"),
        layers: layers.len(),
        meta: ImageMeta {
            env,
            workdir: run.working_dir.clone(),
            user: run.user.clone(),
            history: Vec::new(),
            name,
        },
    })
}

/// Stores layer `i` of an image on top of `below` (a snapshot recording `root`, if given,
/// the root it was committed at in another store), checked against `diff_id`.
pub(crate) fn store_layer(
    engine: &Engine,
    below: Option<&strata_snapshot::SnapshotId>,
    source: &Source,
    diff_id: &Digest,
    root: Option<&strata_snapshot::RootRecord>,
    top: Option<&str>,
    i: usize,
) -> Result<Snapshot> {
    let layer = match source {
        Source::Stored(layer) => *layer,
        Source::File { path, blob } => {
            if let Some((digest, size)) = blob {
                verify_file(path, *digest, *size)?;
            }
            let what = format!("layer {} ({})", i + 1, diff_id);
            // A blob another store wrote (zstd frames with a seek table) is kept as it is:
            // checked, not recompressed.
            let framed = engine
                .cas()
                .put_framed(path, &strata_cas::Limits::default(), |r| {
                    Box::new(VerifyReader::new(r, *diff_id, None, what.clone()))
                })
                .map_err(|e| own_error(&e).unwrap_or(Error::Cas(e)))?;
            if let Some(info) = framed {
                return Ok(match root {
                    Some(root) => engine.add_snapshot_at(below, &info.id, top, root)?,
                    None => engine.add_snapshot(below, &info.id, top)?,
                });
            }
            let raw = strata_cas::extract::open_layer_file(path)?;
            let verified = VerifyReader::new(raw, *diff_id, None, what);
            if root.is_none() {
                return engine
                    .import_layer(below, verified, top)
                    .map_err(|e| own_error(&e).unwrap_or(Error::Snapshot(e)));
            }
            engine
                .cas()
                .put_tar(
                    verified,
                    &strata_cas::CreateOptions::default(),
                    &strata_cas::Limits::default(),
                )
                .map_err(|e| own_error(&e).unwrap_or(Error::Cas(e)))?
                .id
        }
    };
    Ok(match root {
        Some(root) => engine.add_snapshot_at(below, &layer, top, root)?,
        None => engine.add_snapshot(below, &layer, top)?,
    })
}

/// A digest mismatch found while the store read a layer comes back as the store's stream
/// error; it is ours, and says more.
pub(crate) fn own_error(e: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>()
            && let Some(ours) = io.get_ref().and_then(|i| i.downcast_ref::<Error>())
            && let Error::DigestMismatch {
                what,
                expected,
                actual,
            } = ours
        {
            return Some(Error::DigestMismatch {
                what: what.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
        source = s.source();
    }
    None
}

/// Checks that the file at `path` is `size` bytes hashing to `digest`.
pub(crate) fn verify_file(path: &Path, digest: Digest, size: u64) -> Result<()> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut reader = VerifyReader::new(file, digest, Some(size), format!("blob {digest}"));
    io::copy(&mut reader, &mut io::sink())
        .map_err(|e| unwrap_stream("read", &path.display().to_string(), e))?;
    Ok(())
}

pub(crate) fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

/// A small blob of a layout (a manifest, a config), verified.
fn read_blob(dir: &Path, d: &crate::model::Descriptor) -> Result<Vec<u8>> {
    if d.size > MAX_DOCUMENT {
        return Err(Error::TooLarge {
            what: format!("document {}", d.digest),
            limit: MAX_DOCUMENT,
        });
    }
    let bytes = read_limited(&blob_path(dir, &d.digest), MAX_DOCUMENT)?;
    let mut h = Hasher::default();
    h.update(&bytes);
    let (actual, len) = h.finish();
    if actual != d.digest || len != d.size {
        return Err(Error::DigestMismatch {
            what: format!("blob {}", d.digest),
            expected: format!("{} ({} bytes)", d.digest, d.size),
            actual: format!("{actual} ({len} bytes)"),
        });
    }
    Ok(bytes)
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// Reads a file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: path.display().to_string(),
            limit,
        });
    }
    Ok(bytes)
}

/// `name` (from an archive's manifest) under `dir`, refused unless it is a plain relative
/// path of ordinary components.
fn inside(dir: &Path, name: &str) -> Result<PathBuf> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        });
    if !ok {
        return Err(invalid(
            format!("path {name:?}"),
            "is not a plain relative path",
        ));
    }
    Ok(dir.join(name))
}

/// Unpacks the regular files and directories of an image archive into a temporary
/// directory, through the CAS's strict tar reader; anything else (links, devices) is
/// skipped, so nothing in it can point outside.
fn unpack_archive(path: &Path) -> Result<tempfile::TempDir> {
    let tmp = tempfile::Builder::new()
        .prefix("strata-import-")
        .tempdir()
        .map_err(io_err("create a temporary directory for", path))?;
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut reader = TarReader::new(
        io::BufReader::with_capacity(1 << 20, file),
        &strata_cas::Limits::default(),
    );
    let what = path.display().to_string();
    while let Some(entry) = reader.next_entry()? {
        let name = String::from_utf8(entry.path.clone()).ok();
        let Some(target) = name.as_deref().and_then(|n| inside(tmp.path(), n).ok()) else {
            continue;
        };
        match entry.kind {
            EntryKind::Dir => fs::create_dir_all(&target).map_err(io_err("create", &target))?,
            EntryKind::File => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                }
                let mut out = File::create(&target).map_err(io_err("create", &target))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = reader.read_data(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    io::Write::write_all(&mut out, &buf[..n])
                        .map_err(|e| unwrap_stream("write", &target.display().to_string(), e))?;
                }
            }
            _ => {}
        }
    }
    reader
        .finish()
        .map_err(|source| Error::Tar { what, source })?;
    Ok(tmp)
}
