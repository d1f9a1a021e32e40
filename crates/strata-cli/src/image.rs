//! `strata export|push|pull`: snapshots as OCI images, in files and in registries.

use std::io::{self, BufWriter, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;
use strata_oci::registry::{self, Reference};
use strata_oci::{Compression, Image, ImageMeta};
use strata_snapshot::{Engine, SnapshotId};
use strata_spec::User;

use crate::cli::{CompressionArg, ExportArgs, ExportFormat, GlobalArgs, PullArgs, PushArgs};
use crate::output;
use crate::snapshot::{open, print_snapshot};

fn compression(arg: CompressionArg) -> Compression {
    match arg {
        CompressionArg::Zstd => Compression::Zstd,
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::None => Compression::None,
    }
}

/// The image of `id`: the environment, workdir and user its build ended in, if a build made it.
fn image(engine: &Engine, id: &SnapshotId, name: Option<&str>, c: Compression) -> Result<Image> {
    let mut meta = ImageMeta::new();
    if let Some(ctx) = strata_build::image_context(engine, id)? {
        meta = meta.env(ctx.env).workdir(ctx.workdir).user(match ctx.user {
            User::Unix { uid, gid } => format!("{uid}:{gid}"),
            User::Name(name) => name,
        });
    }
    if let Some(name) = name {
        meta = meta.name(name);
    }
    Ok(Image::new(engine, id, &meta, c)?)
}

#[derive(Serialize)]
struct ExportOut {
    snapshot: String,
    output: String,
    manifest: String,
    layers: usize,
    seconds: f64,
}

/// `strata export REF -o OUT [--format oci|docker-archive] [--tag NAME:TAG] [--compression …]`.
pub(crate) fn export(global: &GlobalArgs, args: &ExportArgs) -> Result<()> {
    let started = Instant::now();
    let engine = open(global)?;
    let id = engine.resolve(&args.reference)?;
    let default = match args.format {
        ExportFormat::Oci => CompressionArg::Zstd,
        ExportFormat::DockerArchive => CompressionArg::None,
    };
    let image = image(
        &engine,
        &id,
        args.tag.as_deref(),
        compression(args.compression.unwrap_or(default)),
    )?;
    let out = &args.output;
    let as_tar = args.format == ExportFormat::DockerArchive
        || out.as_os_str() == "-"
        || out.extension().is_some_and(|e| e == "tar");
    let write = |w: &mut dyn io::Write| -> strata_oci::Result<()> {
        match args.format {
            ExportFormat::Oci => strata_oci::write_oci_tar(&engine, &image, w).map(drop),
            ExportFormat::DockerArchive => {
                strata_oci::write_docker_archive(&engine, &image, w).map(drop)
            }
        }
    };
    let context = || format!("cannot export {} to {}", args.reference, out.display());
    if !as_tar {
        strata_oci::write_oci_dir(&engine, &image, out).with_context(context)?;
    } else if out.as_os_str() == "-" {
        let stdout = io::stdout();
        let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
        write(&mut w).with_context(context)?;
        w.flush().map_err(output::stdout_error)?;
        return Ok(());
    } else {
        write_file(out, write).with_context(context)?;
    }
    let result = ExportOut {
        snapshot: id.to_hex(),
        output: out.display().to_string(),
        manifest: image.manifest_digest.to_string(),
        layers: image.layers.len(),
        seconds: output::seconds(started.elapsed()),
    };
    if global.json {
        return output::print_json(&result);
    }
    output::print_text(&format!(
        "{}\nexported {} layers to {} in {}\n",
        result.manifest,
        result.layers,
        result.output,
        output::duration(started.elapsed())
    ))
}

/// Writes `path` through a temporary file beside it, renamed into place once complete, so a
/// failed export leaves no half-written archive.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut dyn io::Write) -> strata_oci::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
    write(&mut w)?;
    w.flush()
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    drop(w);
    tmp.persist(path)
        .with_context(|| format!("cannot rename into place {}", path.display()))?;
    Ok(())
}

#[derive(Serialize)]
struct PushOut {
    snapshot: String,
    destination: String,
    manifest: String,
    blobs_sent: usize,
    blobs_skipped: usize,
    bytes_sent: u64,
    seconds: f64,
}

fn registry_options(opts: &crate::cli::RegistryOpts) -> registry::Options {
    registry::Options::from_docker_config()
        .insecure(opts.insecure)
        .jobs(opts.jobs)
}

/// `strata push REF REGISTRY/REPO:TAG`.
pub(crate) fn push(global: &GlobalArgs, args: &PushArgs) -> Result<()> {
    let started = Instant::now();
    let engine = open(global)?;
    let id = engine.resolve(&args.reference)?;
    let dest: Reference = args.destination.parse()?;
    let image = image(&engine, &id, None, compression(args.compression))?;
    let report = registry::push(&engine, &image, &dest, &registry_options(&args.registry))
        .with_context(|| format!("cannot push {} to {}", args.reference, dest))?;
    let out = PushOut {
        snapshot: id.to_hex(),
        destination: dest.to_string(),
        manifest: image.manifest_digest.to_string(),
        blobs_sent: report.blobs_sent,
        blobs_skipped: report.blobs_skipped,
        bytes_sent: report.bytes_sent,
        seconds: output::seconds(started.elapsed()),
    };
    if global.json {
        return output::print_json(&out);
    }
    output::print_text(&format!(
        "{}\npushed to {} in {} ({} blobs sent, {} already there)\n",
        out.manifest,
        out.destination,
        output::duration(started.elapsed()),
        out.blobs_sent,
        out.blobs_skipped
    ))
}

/// `strata pull REGISTRY/REPO:TAG [--tag NAME]`.
pub(crate) fn pull(global: &GlobalArgs, args: &PullArgs) -> Result<()> {
    let started = Instant::now();
    let engine = open(global)?;
    let source: Reference = args.source.parse()?;
    let imported = registry::pull(
        &engine,
        &source,
        args.tag.as_deref(),
        &registry_options(&args.registry),
    )
    .with_context(|| format!("cannot pull {source}"))?;
    print_snapshot(
        global.json,
        &imported.snapshot,
        args.tag.as_deref(),
        started,
        "pulled",
    )
}

/// The registry step cache of `--cache-to`/`--cache-from`, as the builder sees it.
#[derive(Debug)]
struct RegistryCache(registry::StepCache);

pub(crate) fn step_cache(
    repository: &str,
    opts: registry::Options,
) -> Result<Arc<dyn strata_build::RemoteCache>> {
    let cache = registry::StepCache::new(repository, opts)
        .with_context(|| format!("cannot use {repository} as a step cache"))?;
    Ok(Arc::new(RegistryCache(cache)))
}

impl strata_build::RemoteCache for RegistryCache {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn fetch(
        &self,
        engine: &Engine,
        key: &strata_build::StepKey,
    ) -> Result<Option<strata_build::RemoteStep>, strata_build::RemoteError> {
        Ok(self
            .0
            .fetch(engine, &key.to_hex())?
            .map(|(snapshot, log)| strata_build::RemoteStep::new(snapshot, log)))
    }

    fn publish(
        &self,
        engine: &Engine,
        key: &strata_build::StepKey,
        snapshot: &SnapshotId,
        log: &[u8],
    ) -> Result<(), strata_build::RemoteError> {
        Ok(self.0.publish(engine, &key.to_hex(), snapshot, log)?)
    }

    fn contains(&self, key: &strata_build::StepKey) -> Result<bool, strata_build::RemoteError> {
        Ok(self.0.contains(&key.to_hex())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nothing_when_the_writer_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.tar");
        let failed = write_file(&path, |w| {
            w.write_all(b"partial").unwrap();
            Err(strata_oci::Error::BadDigest { digest: "x".into() })
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
