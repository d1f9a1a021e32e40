//! A step cache shared by builders through one registry repository (`--cache-to`,
//! `--cache-from`).
//!
//! A step is an OCI manifest tagged `step-<key>` whose layers are the step snapshot's layer
//! chain (the stored zstd blobs, as an image of the snapshot has them, with its config's
//! diff_ids), then a step record (`application/vnd.strata.step.v1+json`: the key, the
//! snapshot ids of the chain and the root each layer was committed at, with its relocation
//! records) and the step's log (already masked: it never holds a secret's value). Blobs go
//! up before the manifest, so a tag never names a partial entry; builders pushing one key at
//! once write blobs with the same content and whole manifests, the last one winning.
//!
//! Fetching pulls only the layers the store lacks, checks every blob's digest (and the
//! diff_id of each layer that is not a Strata blob), and records the chain with the roots the entry gives, so checkouts here
//! relocate its files as on the builder that made it: the same snapshot ids result. Whoever
//! can push to the repository decides what a key builds to, as with any shared build cache:
//! give builders that only read it pull access alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_snapshot::{Engine, RootRecord, SnapshotId};

use super::{Client, Options, Reference, fetch_layers, fetch_small, temp_dir, upload};
use crate::error::{Error, Result, invalid};
use crate::import::{MAX_DOCUMENT, parse, store_layer};
use crate::model::{Descriptor, ImageConfig, Manifest};
use crate::{Compression, Digest, Image, ImageMeta, media};

const ARTIFACT: &str = "application/vnd.strata.step.v1";
const STEP_RECORD: &str = "application/vnd.strata.step.v1+json";
const STEP_LOG: &str = "application/vnd.strata.step.log.v1";
/// The largest log an entry may carry (the builder keeps at most 32 MiB by default).
const MAX_LOG: u64 = 256 << 20;

/// One registry repository used as a shared step cache.
#[derive(Debug)]
pub struct StepCache {
    repository: Reference,
    opts: Options,
}

#[derive(Debug, Serialize, Deserialize)]
struct StepRecord {
    key: String,
    snapshot: String,
    chain: Vec<ChainEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChainEntry {
    snapshot: String,
    /// The checkout root the layer was committed at, hex; none for an imported layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<String>,
    /// Its relocation records, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relocations: Option<String>,
}

impl StepCache {
    /// The cache in `repository` (`REGISTRY/REPO`; a tag given there is ignored).
    pub fn new(repository: &str, opts: Options) -> Result<StepCache> {
        let repository: Reference = repository.parse()?;
        Ok(StepCache { repository, opts })
    }

    /// `REGISTRY/REPO`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.repository.registry, self.repository.repository
        )
    }

    fn tag(key: &str) -> Result<String> {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!("step key {key:?}"), "is not 64 hex digits"));
        }
        Ok(format!("step-{key}"))
    }

    /// Whether the cache holds the step `key` (hex).
    pub fn contains(&self, key: &str) -> Result<bool> {
        let client = Client::new(&self.repository, &self.opts, false)?;
        client.has_manifest(&Self::tag(key)?)
    }

    /// Publishes that step `key` (hex) made `snapshot`, which `engine` holds, with `log`.
    pub fn publish(
        &self,
        engine: &Engine,
        key: &str,
        snapshot: &SnapshotId,
        log: &[u8],
    ) -> Result<()> {
        let tag = Self::tag(key)?;
        let image = Image::new(engine, snapshot, &ImageMeta::new(), Compression::Zstd)?;
        let chain = engine
            .chain(snapshot)?
            .into_iter()
            .map(|s| {
                let record = engine.root_record(&s.id)?;
                Ok(ChainEntry {
                    snapshot: s.id.to_hex(),
                    root: record.as_ref().map(|r| hex::encode(&r.root)),
                    relocations: record
                        .filter(|r| !r.relocations.is_empty())
                        .map(|r| hex::encode(&r.relocations)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let record = serde_json::to_vec(&StepRecord {
            key: key.to_owned(),
            snapshot: snapshot.to_hex(),
            chain,
        })
        .expect("a step record serialises");
        let (record_digest, log_digest) = (Digest::of(&record), Digest::of(log));
        let mut manifest: Manifest = parse(&image.manifest, "the image manifest")?;
        manifest.artifact_type = Some(ARTIFACT.to_owned());
        for (media_type, digest, size) in [
            (STEP_RECORD, record_digest, record.len()),
            (STEP_LOG, log_digest, log.len()),
        ] {
            manifest.layers.push(Descriptor {
                media_type: media_type.to_owned(),
                digest,
                size: size as u64,
                annotations: BTreeMap::new(),
                platform: None,
            });
        }
        let manifest = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let client = Client::new(&self.repository, &self.opts, true)?;
        client.ping()?;
        upload(
            &client,
            engine,
            &image,
            &[(record_digest, &record), (log_digest, log)],
            self.opts.jobs,
        )?;
        client.put_manifest(&tag, media::MANIFEST, &manifest)
    }

    /// The snapshot and log of step `key` (hex), if the cache holds it; the snapshot is in
    /// `engine`'s store when this returns.
    pub fn fetch(&self, engine: &Engine, key: &str) -> Result<Option<(SnapshotId, Vec<u8>)>> {
        let tag = Self::tag(key)?;
        let client = Client::new(&self.repository, &self.opts, false)?;
        let Some((bytes, _)) = client.get_manifest(&tag, MAX_DOCUMENT)? else {
            return Ok(None);
        };
        let what = format!("the cache entry {}:{tag}", self.describe());
        let manifest: Manifest = parse(&bytes, &what)?;
        let bad = |problem: &str| invalid(what.clone(), problem);
        let [layers @ .., record_d, log_d] = manifest.layers.as_slice() else {
            return Err(bad("has too few layers"));
        };
        if manifest.artifact_type.as_deref() != Some(ARTIFACT)
            || record_d.media_type != STEP_RECORD
            || log_d.media_type != STEP_LOG
        {
            return Err(bad("is not a Strata step"));
        }
        if log_d.size > MAX_LOG {
            return Err(Error::TooLarge {
                what: format!("the log of {what}"),
                limit: MAX_LOG,
            });
        }
        let record: StepRecord = parse(&fetch_small(&client, record_d)?, &what)?;
        let config: ImageConfig = parse(&fetch_small(&client, &manifest.config)?, &what)?;
        let diff_ids = &config.rootfs.diff_ids;
        let ids = record
            .chain
            .iter()
            .map(|c| c.snapshot.parse::<SnapshotId>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("names a snapshot id that is not one"))?;
        if record.key != key
            || ids.len() != layers.len()
            || diff_ids.len() != layers.len()
            || ids.last().map(SnapshotId::to_hex) != Some(record.snapshot.clone())
        {
            return Err(bad("does not describe its own layers"));
        }
        let log = fetch_log(&client, log_d)?;
        // The deepest snapshot of the chain the store has: everything below it is here too.
        let mut have = 0;
        for (i, id) in ids.iter().enumerate().rev() {
            if engine.snapshot(id)?.is_some() {
                have = i + 1;
                break;
            }
        }
        // Until the chain is recorded, `gc` must not take the layers found or stored here.
        let _hold = engine.hold_layers()?;
        let tmp = temp_dir("strata-cache-")?;
        let sources = fetch_layers(
            engine,
            &client,
            &layers[have..],
            &diff_ids[have..],
            &self.opts,
            tmp.path(),
        )?;
        let mut below = have.checked_sub(1).map(|i| ids[i]);
        for (offset, source) in sources.iter().enumerate() {
            let i = have + offset;
            let entry = &record.chain[i];
            let root = match &entry.root {
                Some(root) => Some(RootRecord::new(
                    hex::decode(root).map_err(|_| bad("has a root that is not hex"))?,
                    match &entry.relocations {
                        Some(r) => {
                            hex::decode(r).map_err(|_| bad("has records that are not hex"))?
                        }
                        None => Vec::new(),
                    },
                )),
                None => None,
            };
            let made = store_layer(
                engine,
                below.as_ref(),
                source,
                &diff_ids[i],
                root.as_ref(),
                None,
                i,
            )?;
            if made.id != ids[i] {
                return Err(bad(&format!(
                    "names snapshot {} for layer {}, which makes {} here",
                    ids[i],
                    i + 1,
                    made.id
                )));
            }
            below = Some(made.id);
        }
        Ok(Some((*ids.last().expect("checked above"), log)))
    }
}

fn fetch_log(client: &Client, blob: &Descriptor) -> Result<Vec<u8>> {
    let what = format!("blob {}", blob.digest);
    let body = client.get_blob(&blob.digest)?;
    let mut reader =
        crate::digest::VerifyReader::new(body, blob.digest, Some(blob.size), what.clone());
    let mut log = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut log)
        .map_err(|e| crate::error::unwrap_stream("download", &what, e))?;
    Ok(log)
}
