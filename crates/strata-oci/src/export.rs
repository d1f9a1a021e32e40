//! Images made from snapshots, and the writers that put them in an OCI image layout (a
//! directory or a tar) or a docker-archive tar. The writers stream into any `Write` with no
//! temporary copies; the same snapshot, metadata and compression always give the same bytes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use strata_cas::tar::TarWriter;
use strata_cas::{Entry, EntryKind, Metadata};
use strata_snapshot::{Engine, SnapshotId};

use crate::error::{Result, invalid, io_err, unwrap_stream};
use crate::model::{
    Descriptor, DockerEntry, History, ImageConfig, Index, Manifest, RootFs, RunConfig, host_arch,
    host_os,
};
use crate::{Compression, Digest, LayerBlob, media};

/// What the image config says beyond the layers: what the build's last stage set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageMeta {
    /// The environment, in order.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub workdir: Option<String>,
    /// The user (`uid:gid` or a name).
    pub user: Option<String>,
    /// What made each layer, base first (an op as the spec prints it, say); layers past the
    /// end of the list are described by their layer id.
    pub history: Vec<String>,
    /// `NAME:TAG` (or `NAME`, meaning `NAME:latest`), written into the layout's index and the
    /// docker-archive's `RepoTags`.
    pub name: Option<String>,
}

impl ImageMeta {
    /// No environment, workdir, user, history or name.
    pub fn new() -> ImageMeta {
        ImageMeta::default()
    }

    /// Sets the environment.
    pub fn env(mut self, env: Vec<(String, String)>) -> ImageMeta {
        self.env = env;
        self
    }

    /// Sets the working directory.
    pub fn workdir(mut self, workdir: impl Into<String>) -> ImageMeta {
        self.workdir = Some(workdir.into());
        self
    }

    /// Sets the user.
    pub fn user(mut self, user: impl Into<String>) -> ImageMeta {
        self.user = Some(user.into());
        self
    }

    /// Sets what made each layer.
    pub fn history(mut self, history: Vec<String>) -> ImageMeta {
        self.history = history;
        self
    }

    /// Sets the image's name.
    pub fn name(mut self, name: impl Into<String>) -> ImageMeta {
        self.name = Some(name.into());
        self
    }
}

/// A snapshot as an OCI image: its layers as blobs, the config and the manifest, ready to be
/// written or pushed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Image {
    /// The snapshot the image shows.
    pub snapshot: SnapshotId,
    /// The layers, base first.
    pub layers: Vec<LayerBlob>,
    /// The config document.
    pub config: Vec<u8>,
    /// Its digest.
    pub config_digest: Digest,
    /// The manifest document.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub manifest_digest: Digest,
    /// `NAME:TAG`, complete with a tag, if the image has a name.
    pub name: Option<String>,
}

impl Image {
    /// The image of `snapshot`, layers compressed as `compression`.
    pub fn new(
        engine: &Engine,
        snapshot: &SnapshotId,
        meta: &ImageMeta,
        compression: Compression,
    ) -> Result<Image> {
        let chain = engine.chain(snapshot)?;
        let layers = chain
            .iter()
            .map(|s| LayerBlob::new(engine, &s.layer, compression))
            .collect::<Result<Vec<_>>>()?;
        let history = layers
            .iter()
            .enumerate()
            .map(|(i, l)| History {
                created_by: Some(
                    meta.history
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("strata layer {}", l.layer)),
                ),
                comment: Some(format!("strata snapshot {}", chain[i].id)),
                empty_layer: false,
            })
            .collect();
        let config = ImageConfig {
            architecture: host_arch().to_owned(),
            os: host_os().to_owned(),
            config: RunConfig {
                user: meta.user.clone(),
                env: (!meta.env.is_empty())
                    .then(|| meta.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                working_dir: meta.workdir.clone(),
                cmd: None,
            },
            rootfs: RootFs {
                kind: "layers".to_owned(),
                diff_ids: layers.iter().map(|l| l.diff_id).collect(),
            },
            history,
        };
        let config = serde_json::to_vec(&config).expect("the config serialises");
        let config_digest = Digest::of(&config);
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.to_owned()),
            artifact_type: None,
            config: Descriptor {
                media_type: media::CONFIG.to_owned(),
                digest: config_digest,
                size: config.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type().to_owned(),
                    digest: l.digest,
                    size: l.size,
                    // Lets a puller that holds the layer already skip the download.
                    annotations: BTreeMap::from([(
                        media::STRATA_LAYER.to_owned(),
                        l.layer.to_hex(),
                    )]),
                    platform: None,
                })
                .collect(),
            annotations: BTreeMap::new(),
        };
        let manifest = serde_json::to_vec(&manifest).expect("the manifest serialises");
        let manifest_digest = Digest::of(&manifest);
        Ok(Image {
            snapshot: *snapshot,
            layers,
            config,
            config_digest,
            manifest,
            manifest_digest,
            name: meta.name.as_deref().map(full_name),
        })
    }

    /// The layout index naming this image's manifest.
    fn index(&self) -> Vec<u8> {
        let mut annotations = BTreeMap::new();
        if let Some(name) = &self.name {
            annotations.insert(media::IMAGE_NAME.to_owned(), name.clone());
            annotations.insert(media::REF_NAME.to_owned(), tag_of(name).to_owned());
        }
        let index = Index {
            schema_version: 2,
            media_type: Some(media::INDEX.to_owned()),
            manifests: vec![Descriptor {
                media_type: media::MANIFEST.to_owned(),
                digest: self.manifest_digest,
                size: self.manifest.len() as u64,
                annotations,
                platform: None,
            }],
        };
        serde_json::to_vec(&index).expect("the index serialises")
    }
}

/// `NAME` with `:latest` added when it has no tag (a `:` after the last `/`).
fn full_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

fn tag_of(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').map_or("latest", |(_, tag)| tag)
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `image` as an OCI image layout in `dir` (made if missing; an existing layout gets
/// the blobs it lacks and a new index naming this image alone). Blobs go in under temporary
/// names and are renamed into place when complete, the index last.
pub fn write_oci_dir(engine: &Engine, image: &Image, dir: &Path) -> Result<()> {
    if dir.is_dir() && !dir.join("oci-layout").is_file() {
        let mut entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
        if entries.next().is_some() {
            return Err(invalid(
                dir.display().to_string(),
                "exists, is not empty and is not an OCI image layout",
            ));
        }
    }
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
    let put = |digest: &Digest, write: &mut dyn FnMut(&mut fs::File) -> Result<()>| {
        let path = blobs.join(digest.hex());
        if path.is_file() {
            return Ok(());
        }
        let mut tmp =
            tempfile::NamedTempFile::new_in(&blobs).map_err(io_err("create in", &blobs))?;
        write(tmp.as_file_mut())?;
        tmp.persist(&path)
            .map_err(|e| crate::Error::Io {
                action: "rename into place",
                path: path.clone(),
                source: e.error,
            })
            .map(drop)
    };
    for layer in &image.layers {
        put(&layer.digest, &mut |file| {
            let mut reader = layer.open(engine)?;
            io::copy(&mut reader, file)
                .map_err(|e| unwrap_stream("write", &format!("layer {}", layer.layer), e))
                .map(drop)
        })?;
    }
    for (digest, bytes) in [
        (image.config_digest, &image.config),
        (image.manifest_digest, &image.manifest),
    ] {
        put(&digest, &mut |file| {
            file.write_all(bytes)
                .map_err(|e| unwrap_stream("write", &digest.to_string(), e))
        })?;
    }
    let layout = dir.join("oci-layout");
    fs::write(&layout, OCI_LAYOUT).map_err(io_err("write", &layout))?;
    let index = dir.join("index.json");
    let tmp = dir.join(".index.json.tmp");
    fs::write(&tmp, image.index()).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &index).map_err(io_err("rename into place", &index))
}

/// Writes `image` as an OCI image layout in a tar stream (`skopeo`'s `oci-archive:`).
pub fn write_oci_tar<W: Write>(engine: &Engine, image: &Image, out: W) -> Result<W> {
    let mut tar = Archive::new(out);
    tar.file("oci-layout", OCI_LAYOUT)?;
    tar.dir("blobs")?;
    tar.dir("blobs/sha256")?;
    for layer in &image.layers {
        tar.layer(
            engine,
            &format!("blobs/sha256/{}", layer.digest.hex()),
            layer,
        )?;
    }
    tar.file(
        &format!("blobs/sha256/{}", image.config_digest.hex()),
        &image.config,
    )?;
    tar.file(
        &format!("blobs/sha256/{}", image.manifest_digest.hex()),
        &image.manifest,
    )?;
    tar.file("index.json", &image.index())?;
    tar.finish()
}

/// Writes `image` as a docker-archive tar (what `docker save` writes and `docker load`
/// reads): `manifest.json`, the config as `<digest>.json`, each layer as
/// `<digest>/layer.tar`. Docker Engine before 23 reads gzip and plain layers only.
pub fn write_docker_archive<W: Write>(engine: &Engine, image: &Image, out: W) -> Result<W> {
    let mut tar = Archive::new(out);
    let mut names = Vec::new();
    for layer in &image.layers {
        let dir = layer.digest.hex();
        let name = format!("{dir}/layer.tar");
        if !names.contains(&name) {
            tar.dir(&dir)?;
            tar.layer(engine, &name, layer)?;
        }
        names.push(name);
    }
    let config = format!("{}.json", image.config_digest.hex());
    tar.file(&config, &image.config)?;
    let manifest = vec![DockerEntry {
        config,
        repo_tags: image.name.clone().map(|n| vec![n]),
        layers: names,
    }];
    tar.file(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("the manifest serialises"),
    )?;
    tar.finish()
}

/// The outer tar of an archive: plain files and directories, owned by root, time zero.
struct Archive<W: Write> {
    tar: TarWriter<W>,
}

impl<W: Write> Archive<W> {
    fn new(out: W) -> Self {
        Archive {
            tar: TarWriter::new(out),
        }
    }

    fn entry(&mut self, path: &str, kind: EntryKind, size: u64) -> Result<()> {
        let entry = Entry {
            path: path.as_bytes().to_vec(),
            meta: Metadata {
                mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
                ..Metadata::default()
            },
            kind,
            size,
        };
        self.tar
            .append(&entry)
            .map_err(|e| unwrap_stream("write", path, e))
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        self.entry(path, EntryKind::Dir, 0)
    }

    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.entry(path, EntryKind::File, bytes.len() as u64)?;
        self.tar
            .write_data(bytes)
            .map_err(|e| unwrap_stream("write", path, e))
    }

    fn layer(&mut self, engine: &Engine, path: &str, layer: &LayerBlob) -> Result<()> {
        self.entry(path, EntryKind::File, layer.size)?;
        let mut reader = layer.open(engine)?;
        let n = io::copy(&mut reader, self.tar.inner_mut())
            .map_err(|e| unwrap_stream("write", &format!("layer {}", layer.layer), e))?;
        self.tar.data_written(n);
        Ok(())
    }

    fn finish(self) -> Result<W> {
        self.tar
            .finish()
            .map_err(|e| unwrap_stream("finish", "the archive", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_a_tag() {
        assert_eq!(full_name("img"), "img:latest");
        assert_eq!(full_name("localhost:5000/img"), "localhost:5000/img:latest");
        assert_eq!(full_name("img:1.0"), "img:1.0");
        assert_eq!(tag_of("localhost:5000/img:1.0"), "1.0");
        assert_eq!(tag_of("localhost:5000/img"), "latest");
    }
}
