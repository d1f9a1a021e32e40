//! `strata cas …`: the commands that work on the content-addressed store.

use std::fs;
use std::io::{self, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use strata_cas::{CorruptBlob, Error, LayerId, OciDigests, Store, VerifyReport};
use strata_snapshot::maintenance::{LayerUser, RemoveLayersOptions};

use crate::cli::{CasApplyArgs, CasCommand, GlobalArgs, IdArg, PutArgs, RmArgs, VerifyArgs};
use crate::layer;
use crate::output;

/// An open store and where it is, for messages.
#[derive(Debug)]
struct Cas {
    store: Store,
    root: PathBuf,
    json: bool,
}

/// Runs one `strata cas` command.
pub(crate) fn run(global: &GlobalArgs, command: &CasCommand) -> Result<()> {
    let root = store_root(global.store.as_deref())?;
    let store = Store::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    let cas = Cas {
        store,
        root,
        json: global.json,
    };
    match command {
        CasCommand::Put(args) => cas.put(args),
        CasCommand::Ls => cas.ls(),
        CasCommand::Verify(args) => cas.verify(args),
        CasCommand::Rm(args) => cas.rm(args),
        CasCommand::Cat(args) => cas.cat(args),
        CasCommand::Digest(args) => cas.digest(args),
        CasCommand::Apply(args) => cas.apply(args),
    }
}

/// The store directory: `--store`/`STRATA_STORE`, else `$XDG_CACHE_HOME/strata`, else
/// `$HOME/.cache/strata`.
pub(crate) fn store_root(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        if dir.as_os_str().is_empty() {
            bail!("the store directory given by --store or STRATA_STORE is empty");
        }
        return Ok(dir.to_path_buf());
    }
    strata::default_location().map_err(|_| {
        anyhow::anyhow!(
            "no store directory: neither XDG_CACHE_HOME nor HOME is set; give --store DIR or \
             set STRATA_STORE"
        )
    })
}

impl Cas {
    fn put(&self, args: &PutArgs) -> Result<()> {
        let path = &args.path;
        let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let start = Instant::now();
        let mut opts = layer::compress_options(&args.compress);
        opts.progress = strata_cas::Progress::new();
        let _shown = crate::progress::watch("storing", &opts.progress);
        let info = if meta.is_dir() {
            self.store.put_dir(path, &opts)
        } else {
            self.store.put_file_with(path, &opts)
        }
        .with_context(|| {
            format!(
                "cannot put {} into the store at {}",
                path.display(),
                self.root.display()
            )
        })?;
        let action = format!("stored in {}", self.root.display());
        layer::print_layer_info(&info, start.elapsed(), &action, self.json)
    }

    fn ls(&self) -> Result<()> {
        let blobs = self
            .store
            .list()
            .with_context(|| format!("cannot list the store at {}", self.root.display()))?;
        if self.json {
            return output::print_json(&blobs);
        }
        if blobs.is_empty() {
            output::warn(format_args!(
                "the store at {} holds no layers",
                self.root.display()
            ));
            return Ok(());
        }
        let mut text = format!(
            "{:<64}  {:>10}  {:>12}  {:>6}",
            "ID", "COMPRESSED", "UNCOMPRESSED", "FRAMES"
        );
        for blob in &blobs {
            text.push_str(&format!(
                "\n{:<64}  {:>10}  {:>12}  {:>6}",
                blob.id,
                output::bytes(blob.compressed_size),
                output::bytes(blob.uncompressed_size),
                blob.frames
            ));
        }
        output::print_text(&text)
    }

    fn verify(&self, args: &VerifyArgs) -> Result<()> {
        let report = if args.ids.is_empty() {
            self.store
                .verify()
                .with_context(|| format!("cannot verify the store at {}", self.root.display()))?
        } else {
            self.verify_some(&args.ids)?
        };

        // A closed stdout must not turn "corrupt" into success: print, then judge, then
        // report a printing error only if everything was intact.
        let printed = self.print_verify_report(&report);
        if !report.corrupt.is_empty() {
            let ids: Vec<String> = report.corrupt.iter().map(|blob| blob.id.to_hex()).collect();
            bail!(
                "{} of {} failed verification: {}",
                report.corrupt.len(),
                output::count(report.checked, "layer", "layers"),
                ids.join(", ")
            );
        }
        printed
    }

    fn print_verify_report(&self, report: &VerifyReport) -> Result<()> {
        if self.json {
            return output::print_json(report);
        }
        for blob in &report.corrupt {
            let _ignored = writeln!(io::stderr().lock(), "corrupt: {}: {}", blob.id, blob.reason);
        }
        let summary = format!(
            "checked {}, {}",
            output::count(report.checked, "layer", "layers"),
            output::bytes(report.bytes)
        );
        if report.corrupt.is_empty() {
            output::print_text(&format!("{summary}: all intact"))
        } else {
            output::print_text(&format!("{summary}: {} corrupt", report.corrupt.len()))
        }
    }

    /// Verifies the named layers one by one, collecting a report like [`Store::verify`]'s.
    fn verify_some(&self, args: &[String]) -> Result<VerifyReport> {
        let mut ids = Vec::with_capacity(args.len());
        for arg in args {
            let id = self.store.resolve(arg)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut report = VerifyReport::default();
        for id in ids {
            report.checked += 1;
            match self.store.verify_blob(&id) {
                Ok(bytes) => report.bytes += bytes,
                // Removed since it was resolved: not a corrupt blob, but still a failure.
                Err(e @ Error::NotFound { .. }) => return Err(e.into()),
                Err(e) => report.corrupt.push(CorruptBlob {
                    id,
                    reason: output::messages(&e).join(": "),
                }),
            }
        }
        Ok(report)
    }

    fn rm(&self, args: &RmArgs) -> Result<()> {
        // Resolve everything first: one bad argument removes nothing.
        let mut ids: Vec<LayerId> = Vec::new();
        let mut missing: Vec<&str> = Vec::new();
        for arg in &args.ids {
            match self.store.find(arg)? {
                Some(id) if !ids.contains(&id) => ids.push(id),
                Some(_) => {}
                None => missing.push(arg),
            }
        }
        if !args.force {
            match missing.as_slice() {
                [] => {}
                [one] => bail!(
                    "{}; nothing was removed (--force ignores unknown ids)",
                    self.store
                        .resolve(one)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                ),
                many => bail!(
                    "no stored layer matches {} in the store at {}; nothing was removed \
                     (--force ignores unknown ids)",
                    many.iter()
                        .map(|arg| format!("`{arg}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.root.display()
                ),
            }
        }

        // The engine removes them: it knows which snapshots need them, and takes the store's
        // gc lock so that no commit starts needing one meanwhile.
        let engine = crate::store::open(&self.root)?;
        let opts = RemoveLayersOptions {
            with_snapshots: args.force,
        };
        let removal = engine.remove_layers(&ids, &opts).with_context(|| {
            if args.force {
                "cannot remove the layers".to_owned()
            } else {
                "cannot remove the layers (--force removes the snapshots that need them too)"
                    .to_owned()
            }
        })?;
        if !args.force
            && let Some(id) = removal.missing.first()
        {
            bail!("layer {id} was removed by someone else meanwhile");
        }
        if !removal.snapshots.is_empty() {
            // Their step records and logs name nothing any more.
            strata_build::forget_missing(&engine).with_context(|| {
                format!("cannot clean the step cache of {}", self.root.display())
            })?;
        }

        if self.json {
            #[derive(Serialize)]
            struct Removed<'a> {
                removed: &'a [LayerId],
                snapshots: &'a [LayerUser],
            }
            return output::print_json(&Removed {
                removed: &removal.layers,
                snapshots: &removal.snapshots,
            });
        }
        let mut lines: Vec<String> = removal
            .snapshots
            .iter()
            .map(|user| {
                let tags = match user.tags.as_slice() {
                    [] => String::new(),
                    tags => format!(" (tags: {})", tags.join(", ")),
                };
                format!(
                    "removed snapshot {}{tags}, which needed layer {}",
                    user.snapshot, user.layer
                )
            })
            .collect();
        lines.extend(removal.layers.iter().map(|id| format!("removed {id}")));
        if lines.is_empty() {
            return Ok(());
        }
        output::print_text(&lines.join("\n"))
    }

    fn cat(&self, args: &IdArg) -> Result<()> {
        if io::stdout().is_terminal() {
            bail!("refusing to write a tar to a terminal: redirect stdout to a file or a pipe");
        }
        let id = self.store.resolve(&args.id)?;
        let mut reader = self
            .store
            .open_layer(&id)
            .with_context(|| format!("cannot read layer {id}"))?;
        let mut out = io::stdout().lock();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read layer {id}")),
            };
            out.write_all(&buf[..n]).map_err(output::stdout_error)?;
        }
        out.flush().map_err(output::stdout_error)
    }

    fn digest(&self, args: &IdArg) -> Result<()> {
        let id = self.store.resolve(&args.id)?;
        let digests = self
            .store
            .oci_digests(&id)
            .with_context(|| format!("cannot compute the digests of layer {id}"))?;
        if self.json {
            #[derive(Serialize)]
            struct Digests<'a> {
                id: LayerId,
                #[serde(flatten)]
                oci: &'a OciDigests,
            }
            return output::print_json(&Digests { id, oci: &digests });
        }
        output::print_text(&format!(
            "diff_id {}\ndigest  {}\nsize    {}",
            digests.diff_id, digests.digest, digests.size
        ))
    }

    fn apply(&self, args: &CasApplyArgs) -> Result<()> {
        let opts = layer::extract_options(&args.opts);
        let id = self.store.resolve(&args.id)?;
        layer::prepare_target(&args.dir)?;
        let start = Instant::now();
        let report = self
            .store
            .apply(&id, &args.dir, &opts)
            .with_context(|| format!("cannot apply layer {id} to {}", args.dir.display()))?;
        layer::print_extract_report(&report, start.elapsed(), &args.dir, self.json)
    }
}
