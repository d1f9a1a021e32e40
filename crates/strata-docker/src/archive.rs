//! The docker-archive format (`docker save`/`docker load`) written from Strata's layers: the
//! one place this driver writes it, so it can later be shared with other exporters.
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
    fn a_short_layer_is_an_error() {
        let layers = vec![ArchiveLayer {
            diff_id: "sha256:aa".to_owned(),
            data: Some((10, Box::new(&b"abc"[..]))),
        }];
        let e = write_archive(Vec::new(), layers, b"{}", "t").unwrap_err();
        assert!(e.to_string().contains("sha256:aa"), "{e}");
    }
}
