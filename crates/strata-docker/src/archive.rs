//! The docker-archive format (`docker save`/`docker load`) written from Strata's layers: the
//! one place this driver writes it, so it can later be shared with other exporters.
//!
//! Reading one ([`read_archive`]) hands each `layer.tar` over as it streams past, and
//! returns their order from `manifest.json`, which `docker save` writes last.
//!
//! Layout: `l<NNN>/layer.tar` per layer (uncompressed: engine 20.10 cannot read zstd), the
//! image config as `config.json` and `manifest.json` last. A layer the engine already holds
//! (its chain is loaded) is written as an empty file: the engine looks a layer up by chain
//! id before it opens the file, so it never reads it.

use std::io::{self, Read, Write};

use strata_cas::{Entry, EntryKind, Metadata, tar::TarWriter};

/// One layer of the image to write.
pub struct ArchiveLayer<'a> {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// The tar and its size, or `None` when the engine already holds the layer.
    pub data: Option<(u64, Box<dyn Read + Send + 'a>)>,
}

impl std::fmt::Debug for ArchiveLayer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveLayer")
            .field("diff_id", &self.diff_id)
            .field("size", &self.data.as_ref().map(|d| d.0))
            .finish()
    }
}

/// The image config of a rootfs made of layers with these diff ids.
pub fn image_config(diff_ids: &[String], labels: &[(&str, &str)]) -> Vec<u8> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("a JSON value serializes")
}

/// Writes a docker-archive of one image tagged `tag` to `out`.
pub fn write_archive(
    out: impl Write,
    layers: Vec<ArchiveLayer<'_>>,
    config: &[u8],
    tag: &str,
) -> io::Result<()> {
    let mut tar = TarWriter::new(out);
    let mut paths = Vec::new();
    for (i, layer) in layers.into_iter().enumerate() {
        let dir = format!("l{i:03}");
        tar.append(&entry(&dir, EntryKind::Dir, 0))?;
        let path = format!("{dir}/layer.tar");
        match layer.data {
            Some((size, mut reader)) => {
                tar.append(&entry(&path, EntryKind::File, size))?;
                let copied = io::copy(&mut (&mut reader).take(size), tar.inner_mut())?;
                if copied != size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "layer {} ended after {copied} of {size} bytes",
                            layer.diff_id
                        ),
                    ));
                }
                tar.data_written(size);
            }
            None => tar.append(&entry(&path, EntryKind::File, 0))?,
        }
        paths.push(path);
    }
    file(&mut tar, "config.json", config)?;
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": paths,
    }]))
    .expect("a JSON value serializes");
    file(&mut tar, "manifest.json", &manifest)?;
    tar.finish()?;
    Ok(())
}

/// Reads a docker-archive of one image: gives each layer file (by its path in the archive)
/// to `on_layer` as it streams past, and returns the layer paths in the image's order, its
/// base's first. `what` names the archive in errors.
pub fn read_archive(
    archive: impl Read,
    what: &str,
    on_layer: &mut dyn FnMut(&str, &mut dyn Read) -> Result<(), crate::error::SinkError>,
) -> crate::Result<Vec<String>> {
    use strata_cas::Limits;
    use strata_cas::tar::TarReader;

    let bad = |source| crate::Error::Archive {
        what: what.to_owned(),
        source,
    };
    let mut reader = TarReader::new(archive, &Limits::default());
    let mut manifest = None;
    let mut layers = std::collections::HashSet::new();
    // `docker save` writes a layer that repeats as a symlink to its first copy.
    let mut aliases = std::collections::HashMap::new();
    while let Some(entry) = reader.next_entry().map_err(bad)? {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        if let EntryKind::Symlink(target) = &entry.kind {
            let target = String::from_utf8_lossy(target);
            let (dir, _) = path.rsplit_once('/').unwrap_or(("", ""));
            let resolved = match target.strip_prefix("../") {
                Some(rest) if !dir.contains('/') => rest.to_owned(),
                _ if !target.contains('/') => format!("{dir}/{target}"),
                _ => target.into_owned(),
            };
            aliases.insert(path, resolved);
            continue;
        }
        if entry.kind != EntryKind::File {
            continue;
        }
        if path == "manifest.json" {
            let mut data = Vec::new();
            reader.read_data_to_vec(&mut data).map_err(bad)?;
            manifest = Some(data);
        } else if path.ends_with("/layer.tar") || path.ends_with(".tar") {
            let mut data = EntryData(&mut reader);
            on_layer(&path, &mut data).map_err(|source| crate::Error::Sink {
                container: what.to_owned(),
                source,
            })?;
            // What the sink left unread.
            io::copy(&mut data, &mut io::sink())
                .map_err(crate::Error::io(format!("read {what}")))?;
            layers.insert(path);
        }
    }
    let manifest = manifest.ok_or_else(|| crate::Error::Protocol {
        what: format!("{what} has no manifest.json"),
    })?;
    #[derive(serde::Deserialize)]
    struct Image {
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let images: Vec<Image> =
        serde_json::from_slice(&manifest).map_err(|source| crate::Error::Json {
            what: format!("the manifest.json of {what}"),
            source,
        })?;
    let [image] = images.as_slice() else {
        return Err(crate::Error::Protocol {
            what: format!("{what} holds {} images, not one", images.len()),
        });
    };
    let order: Vec<String> = image
        .layers
        .iter()
        .map(|l| aliases.get(l).unwrap_or(l).clone())
        .collect();
    if let Some(missing) = order.iter().find(|l| !layers.contains(*l)) {
        return Err(crate::Error::Protocol {
            what: format!("{what} names layer {missing}, which it does not hold"),
        });
    }
    Ok(order)
}

/// The data of the current entry of a tar reader.
struct EntryData<'a, R>(&'a mut strata_cas::tar::TarReader<R>);

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf).map_err(io::Error::other)
    }
}

fn file<W: Write>(tar: &mut TarWriter<W>, path: &str, data: &[u8]) -> io::Result<()> {
    tar.append(&entry(path, EntryKind::File, data.len() as u64))?;
    tar.write_data(data)
}

fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
    let mode = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        meta: Metadata {
            mode,
            ..Metadata::default()
        },
        size,
    }
}

#[cfg(test)]
mod tests {
    use strata_cas::{Limits, tar::TarReader};

    use super::*;

    #[test]
    fn an_archive_lists_its_layers_config_and_tag() {
        let layers = vec![
            ArchiveLayer {
                diff_id: "sha256:aa".to_owned(),
                data: None,
            },
            ArchiveLayer {
                diff_id: "sha256:bb".to_owned(),
                data: Some((3, Box::new(&b"abc"[..]))),
            },
        ];
        let config = image_config(&["sha256:aa".into(), "sha256:bb".into()], &[("k", "v")]);
        let mut out = Vec::new();
        write_archive(&mut out, layers, &config, "strata-snapshot:x").unwrap();
        let mut r = TarReader::new(&out[..], &Limits::default());
        let mut seen = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut data = Vec::new();
            r.read_data_to_vec(&mut data).unwrap();
            seen.push((String::from_utf8(e.path).unwrap(), data));
        }
        let names: Vec<_> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "l000",
                "l000/layer.tar",
                "l001",
                "l001/layer.tar",
                "config.json",
                "manifest.json"
            ]
        );
        assert_eq!(seen[3].1, b"abc");
        let manifest: serde_json::Value = serde_json::from_slice(&seen[5].1).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "strata-snapshot:x");
        assert_eq!(manifest[0]["Layers"][1], "l001/layer.tar");
        let config: serde_json::Value = serde_json::from_slice(&seen[4].1).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][1], "sha256:bb");
        assert_eq!(config["config"]["Labels"]["k"], "v");
    }

    #[test]
    fn an_archive_reads_back_in_manifest_order() {
        let layers = vec![
            ArchiveLayer {
                diff_id: "sha256:aa".to_owned(),
                data: Some((2, Box::new(&b"l0"[..]))),
            },
            ArchiveLayer {
                diff_id: "sha256:bb".to_owned(),
                data: Some((2, Box::new(&b"l1"[..]))),
            },
        ];
        let mut out = Vec::new();
        write_archive(&mut out, layers, b"{}", "t").unwrap();
        let mut seen = Vec::new();
        let order = read_archive(&out[..], "the test archive", &mut |path, r| {
            let mut data = Vec::new();
            r.read_to_end(&mut data)?;
            seen.push((path.to_owned(), data));
            Ok(())
        })
        .unwrap();
        assert_eq!(order, ["l000/layer.tar", "l001/layer.tar"]);
        assert_eq!(seen[1], ("l001/layer.tar".to_owned(), b"l1".to_vec()));
        // No manifest: an error naming the archive.
        let e = read_archive(&out[..1536], "the cut archive", &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("the cut archive"), "{e}");
    }

    #[test]
    fn a_short_layer_is_an_error() {
        let layers = vec![ArchiveLayer {
            diff_id: "sha256:aa".to_owned(),
            data: Some((10, Box::new(&b"abc"[..]))),
        }];
        let e = write_archive(Vec::new(), layers, b"{}", "t").unwrap_err();
        assert!(e.to_string().contains("sha256:aa"), "{e}");
    }
}
