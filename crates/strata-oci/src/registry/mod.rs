//! Images in registries, over the OCI distribution API: push a snapshot's image (skipping
//! blobs the registry has, several blobs at once) and pull one into snapshots (skipping
//! layers the store has, verifying every blob before it lands).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use strata_snapshot::Engine;

use crate::digest::VerifyReader;
use crate::error::{Error, Result, invalid, io_err, unwrap_stream};
use crate::import::{Imported, MAX_DOCUMENT, Source, import_layers, own_error, parse};
use crate::model::{Descriptor, ImageConfig, Index, Manifest};
use crate::{Digest, Image, media};

mod cache;
mod client;
mod reference;

pub use cache::StepCache;

pub(crate) use client::{Client, Upload};
pub use reference::Reference;

/// How to reach registries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Plain HTTP to registries not on a loopback address.
    pub insecure: bool,
    /// How many blobs go up or down at once.
    pub jobs: usize,
    /// The largest blob a pull accepts.
    pub max_blob: u64,
    /// `user`, `password` by registry host.
    credentials: BTreeMap<String, (String, String)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            insecure: false,
            jobs: 4,
            max_blob: 64 << 30,
            credentials: BTreeMap::new(),
        }
    }
}

impl Options {
    /// No credentials, HTTPS only (but for loopback), four blobs at once.
    pub fn new() -> Options {
        Options::default()
    }

    /// With the credentials of the Docker config file (`$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`): its `auths` entries. A missing or unreadable file gives
    /// none; credential helpers are not run.
    pub fn from_docker_config() -> Options {
        let path = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
            .map(|d| d.join("config.json"));
        let mut opts = Options::default();
        if let Some(text) = path.and_then(|p| std::fs::read(p).ok()) {
            opts.credentials = docker_auths(&text);
        }
        opts
    }

    /// Sets [`insecure`](Self::insecure).
    pub fn insecure(mut self, insecure: bool) -> Options {
        self.insecure = insecure;
        self
    }

    /// Sets [`jobs`](Self::jobs) (at least 1).
    pub fn jobs(mut self, jobs: usize) -> Options {
        self.jobs = jobs.max(1);
        self
    }

    /// Adds credentials for `registry` (`host[:port]`).
    pub fn credentials(mut self, registry: &str, user: &str, password: &str) -> Options {
        self.credentials.insert(
            normalize_host(registry),
            (user.to_owned(), password.to_owned()),
        );
        self
    }

    pub(crate) fn credentials_for(&self, registry: &str) -> Option<(String, String)> {
        self.credentials.get(&normalize_host(registry)).cloned()
    }
}

/// `https://index.docker.io/v1/` → `registry-1.docker.io`; `ghcr.io` stays.
fn normalize_host(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    match host {
        "index.docker.io" | "docker.io" => "registry-1.docker.io".to_owned(),
        other => other.to_owned(),
    }
}

fn docker_auths(text: &[u8]) -> BTreeMap<String, (String, String)> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Auth>,
    }
    #[derive(serde::Deserialize)]
    struct Auth {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let Ok(config) = serde_json::from_slice::<Config>(text) else {
        return BTreeMap::new();
    };
    config
        .auths
        .into_iter()
        .filter_map(|(host, a)| {
            let pair = match (a.auth, a.username, a.password) {
                (Some(encoded), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(encoded.trim())
                        .ok()?;
                    let text = String::from_utf8(raw).ok()?;
                    let (u, p) = text.split_once(':')?;
                    (u.to_owned(), p.to_owned())
                }
                (None, Some(u), Some(p)) => (u, p),
                _ => return None,
            };
            Some((normalize_host(&host), pair))
        })
        .collect()
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// Blobs uploaded (layers and config).
    pub blobs_sent: usize,
    /// Blobs the registry had already.
    pub blobs_skipped: usize,
    /// Bytes uploaded.
    pub bytes_sent: u64,
}

/// Pushes `image` to `dest` (its tag, or its digest when it names one): the blobs the
/// repository lacks, `opts.jobs` at once, then the manifest, last, so the tag never names an
/// image whose blobs are not all there.
pub fn push(
    engine: &Engine,
    image: &Image,
    dest: &Reference,
    opts: &Options,
) -> Result<PushReport> {
    let client = Client::new(dest, opts, true)?;
    client.ping()?;
    let report = upload(&client, engine, image, &[], opts.jobs)?;
    client.put_manifest(&dest.object(), media::MANIFEST, &image.manifest)?;
    Ok(report)
}

/// Uploads the blobs of `image` and `extra` ones the repository lacks, `jobs` at once.
pub(crate) fn upload(
    client: &Client,
    engine: &Engine,
    image: &Image,
    extra: &[(Digest, &[u8])],
    jobs: usize,
) -> Result<PushReport> {
    let mut seen = std::collections::HashSet::new();
    let layers: Vec<_> = image
        .layers
        .iter()
        .filter(|l| seen.insert(l.digest))
        .collect();
    let mut small = vec![(image.config_digest, &image.config[..])];
    small.extend(extra.iter().copied());
    let report = Mutex::new(PushReport::default());
    run_parallel(layers.len() + small.len(), jobs, |i| {
        let (digest, size) = match layers.get(i) {
            Some(l) => (l.digest, l.size),
            None => {
                let (d, bytes) = small[i - layers.len()];
                (d, bytes.len() as u64)
            }
        };
        if client.has_blob(&digest)? {
            report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .blobs_skipped += 1;
            return Ok(());
        }
        let mut reader: Box<dyn io::Read + Send> = match layers.get(i) {
            Some(l) => l.open(engine)?,
            None => Box::new(io::Cursor::new(small[i - layers.len()].1.to_vec())),
        };
        client.put_blob(
            &digest,
            Upload {
                reader: &mut reader,
                len: size,
                content_type: "application/octet-stream",
            },
        )?;
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        r.blobs_sent += 1;
        r.bytes_sent += size;
        Ok(())
    })?;
    Ok(report.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Runs `task(0..n)` on up to `jobs` threads; the first error wins and stops handing out
/// further tasks.
pub(crate) fn run_parallel(
    n: usize,
    jobs: usize,
    task: impl Fn(usize) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, n.max(1)) {
            scope.spawn(|| {
                loop {
                    if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if let Err(e) = task(i) {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Pulls `source` into snapshots, one per layer, the top one tagged `tag`. Layers the store
/// holds already (named by Strata's annotation, with the diff_id the config gives) are not
/// downloaded; the others are downloaded `opts.jobs` at once, each checked against its
/// digest and size as it arrives, and stored as [`fetch_layers`] says.
pub fn pull(
    engine: &Engine,
    source: &Reference,
    tag: Option<&str>,
    opts: &Options,
) -> Result<Imported> {
    let client = Client::new(source, opts, false)?;
    let manifest = fetch_manifest(&client, source)?;
    let config_bytes = fetch_small(&client, &manifest.config)?;
    let config: ImageConfig = parse(&config_bytes, "the image config")?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(invalid(
            "the image config",
            format!(
                "lists {} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    // Until the chain is recorded, `gc` must not take the layers found or stored here.
    let _hold = engine.hold_layers()?;
    let tmp = temp_dir("strata-pull-")?;
    let sources = fetch_layers(
        engine,
        &client,
        &manifest.layers,
        &config.rootfs.diff_ids,
        opts,
        tmp.path(),
    )?;
    import_layers(engine, &config, &sources, Some(source.to_string()), tag)
}

pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| Error::Io {
            action: "create a temporary directory",
            path: std::env::temp_dir(),
            source: e,
        })
}

/// Where each of `layers` comes from, for [`store_layer`](crate::import::store_layer): a
/// layer the store holds already is reused; a blob Strata pushed (zstd frames with a seek
/// table, named by its annotation) streams into the store as it downloads, checked against
/// its digest and size on the way (the config's `diff_id` is neither hashed again nor
/// recorded: the digest pins the bytes, and an export computes the diff_id from them); any
/// other is downloaded into `tmp`, checked against its digest and size, and checked against
/// its `diff_id` when it is stored. Up to `opts.jobs` blobs move at once; a blob listed twice
/// moves once.
pub(crate) fn fetch_layers(
    engine: &Engine,
    client: &Client,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    opts: &Options,
    tmp: &Path,
) -> Result<Vec<Source>> {
    let mut sources: Vec<Option<Source>> = Vec::with_capacity(layers.len());
    let mut wanted: Vec<&Descriptor> = Vec::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        if layer.size > opts.max_blob {
            return Err(Error::TooLarge {
                what: format!("layer {}", layer.digest),
                limit: opts.max_blob,
            });
        }
        let stored = stored_layer(engine, layer, diff_id)?;
        if stored.is_none() && !wanted.iter().any(|d| d.digest == layer.digest) {
            wanted.push(layer);
        }
        sources.push(stored.map(Source::Stored));
    }
    let fetched: Mutex<BTreeMap<Digest, Source>> = Mutex::new(BTreeMap::new());
    run_parallel(wanted.len(), opts.jobs, |n| {
        let layer = wanted[n];
        let source = if layer.media_type == media::LAYER_ZSTD
            && layer.annotations.contains_key(media::STRATA_LAYER)
        {
            let body = client.get_blob(&layer.digest)?;
            let blob = format!("blob {}", layer.digest);
            let mut verified =
                VerifyReader::new(body, layer.digest, Some(layer.size), blob.clone());
            // The digest pins every byte stored and the store names the layer by the blake3
            // of its tar; the config's diff_id is not hashed again here (a second sha256
            // over the uncompressed layer, the largest cost of a pull) nor recorded: an
            // export or push computes it from the stored layer when it needs it.
            let stored = engine.cas().put_framed_stream(
                &mut verified,
                &blob,
                &strata_cas::Limits::default(),
            );
            match stored {
                Ok(info) => Source::Stored(info.id),
                Err(e) => {
                    // A corrupted blob usually fails decompression first; the digest, once
                    // the rest has arrived, says what really went wrong.
                    if let Err(drained) = io::copy(&mut verified, &mut io::sink())
                        && let Some(mismatch) = own_error(&drained)
                    {
                        return Err(mismatch);
                    }
                    return Err(own_error(&e).unwrap_or(Error::Cas(e)));
                }
            }
        } else {
            let path = tmp.join(layer.digest.hex());
            download(client, layer, &path)?;
            Source::File { path, blob: None }
        };
        fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(layer.digest, source);
        Ok(())
    })?;
    let fetched = fetched.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(sources
        .into_iter()
        .zip(layers)
        .map(|(source, layer)| match source {
            Some(source) => source,
            None => match &fetched[&layer.digest] {
                Source::Stored(id) => Source::Stored(*id),
                Source::File { path, blob } => Source::File {
                    path: path.clone(),
                    blob: *blob,
                },
            },
        })
        .collect())
}

/// The layer the store holds already for `layer`, if Strata's annotation names one whose
/// diff_id is what the config says.
pub(crate) fn stored_layer(
    engine: &Engine,
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<Option<strata_cas::LayerId>> {
    let Some(id) = layer
        .annotations
        .get(media::STRATA_LAYER)
        .and_then(|hex| hex.parse::<strata_cas::LayerId>().ok())
    else {
        return Ok(None);
    };
    if !engine.cas().contains(&id) {
        return Ok(None);
    }
    let known = engine.oci_digests(&id)?;
    Ok((known.diff_id == diff_id.to_string()).then_some(id))
}

/// Downloads a blob into `path`, checked against its digest and size as it streams; a blob
/// that does not match leaves no file.
pub(crate) fn download(client: &Client, blob: &Descriptor, path: &Path) -> Result<()> {
    let what = format!("blob {}", blob.digest);
    let body = client.get_blob(&blob.digest)?;
    let mut reader = VerifyReader::new(body, blob.digest, Some(blob.size), what.clone());
    let file = File::create(path).map_err(io_err("create", path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let copied = io::copy(&mut reader, &mut out)
        .map_err(|e| unwrap_stream("download", &what, e))
        .and_then(|_| out.flush().map_err(|e| unwrap_stream("write", &what, e)));
    if copied.is_err() {
        drop(out);
        let _ = std::fs::remove_file(path);
    }
    copied
}

/// A small blob (a config), verified.
pub(crate) fn fetch_small(client: &Client, blob: &Descriptor) -> Result<Vec<u8>> {
    if blob.size > MAX_DOCUMENT {
        return Err(Error::TooLarge {
            what: format!("blob {}", blob.digest),
            limit: MAX_DOCUMENT,
        });
    }
    let body = client.get_blob(&blob.digest)?;
    let what = format!("blob {}", blob.digest);
    let mut reader = VerifyReader::new(body, blob.digest, Some(blob.size), what.clone());
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut reader, &mut bytes)
        .map_err(|e| unwrap_stream("download", &what, e))?;
    Ok(bytes)
}

/// The image manifest `source` names, through an index for the host's platform if it
/// names one; verified against the digest whenever one is known.
fn fetch_manifest(client: &Client, source: &Reference) -> Result<Manifest> {
    let object = source.object();
    let (bytes, media_type) = client
        .get_manifest(&object, MAX_DOCUMENT)?
        .ok_or_else(|| invalid(source.to_string(), "the registry has no such image"))?;
    if let Some(d) = &source.digest {
        check_digest(&bytes, d)?;
    }
    let kind: serde_json::Value = parse(&bytes, "the manifest")?;
    let declared = kind
        .get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or(&media_type)
        .to_owned();
    if !matches!(declared.as_str(), media::INDEX | media::DOCKER_LIST) {
        return parse(&bytes, "the image manifest");
    }
    let index: Index = parse(&bytes, "the image index")?;
    let chosen = index.for_host(&source.to_string())?;
    let (bytes, _) = client
        .get_manifest(&chosen.digest.to_string(), MAX_DOCUMENT)?
        .ok_or_else(|| invalid(source.to_string(), "the index names a missing manifest"))?;
    check_digest(&bytes, &chosen.digest)?;
    parse(&bytes, "the image manifest")
}

fn check_digest(bytes: &[u8], expected: &Digest) -> Result<()> {
    let actual = Digest::of(bytes);
    if actual != *expected {
        return Err(Error::DigestMismatch {
            what: "the manifest".to_owned(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_auths() {
        let cfg = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "localhost:5000":{"username":"a","password":"b"},"bad":{"auth":"!!"}}}"#;
        let auths = docker_auths(cfg);
        assert_eq!(
            auths.get("registry-1.docker.io"),
            Some(&("user".to_owned(), "pass".to_owned()))
        );
        assert_eq!(
            auths.get("localhost:5000"),
            Some(&("a".to_owned(), "b".to_owned()))
        );
        assert!(!auths.contains_key("bad"));
    }

    #[test]
    fn parallel_runs_every_task_and_reports_errors() {
        let done = AtomicUsize::new(0);
        run_parallel(10, 3, |_| {
            done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(done.load(Ordering::Relaxed), 10);
        let err = run_parallel(10, 3, |i| {
            if i == 4 {
                Err(invalid("task", "failed"))
            } else {
                Ok(())
            }
        });
        assert!(err.is_err());
    }
}
