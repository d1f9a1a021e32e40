//! `strata layer create|apply`, and the option mapping and reports shared with `strata cas`.

use std::fs;
use std::io::{self, BufWriter, IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use strata_cas::extract::Skipped;
use strata_cas::{
    CreateOptions, DevicePolicy, EntryName, ExtractOptions, ExtractReport, LayerId, LayerInfo,
    Ownership, SetuidPolicy,
};

use crate::cli::{
    ApplyOpts, CompressArgs, CreateArgs, DeviceArg, LayerApplyArgs, OwnershipArg, SetuidArg,
};
use crate::output;

/// `strata layer create DIR -o OUT`.
pub(crate) fn create(args: &CreateArgs, json: bool) -> Result<()> {
    let start = Instant::now();
    let dir = &args.dir;
    require_dir(dir)?;
    let out = &args.output;
    let parent = out_parent(out)?;
    refuse_out_inside(dir, parent, out)?;

    // Write next to OUT and rename into place: a failure never leaves a truncated OUT.
    let tmp = create_temp(out, parent)?;
    let tmp_path = tmp.path().to_path_buf();
    let info = {
        let mut writer = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let info = strata_cas::create::create_from_dir(
            dir,
            &mut writer,
            &compress_options(&args.compress),
        )
        .with_context(|| format!("cannot create a layer from {}", dir.display()))?;
        writer
            .flush()
            .with_context(|| format!("cannot write {}", tmp_path.display()))?;
        info
    };
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", tmp_path.display()))?;
    tmp.persist(out).map_err(|e| e.error).with_context(|| {
        format!(
            "cannot rename the new layer into place at {}",
            out.display()
        )
    })?;

    print_layer_info(
        &info,
        start.elapsed(),
        &format!("wrote {}", out.display()),
        json,
    )
}

/// `strata layer apply LAYER DIR`.
pub(crate) fn apply(args: &LayerApplyArgs, json: bool) -> Result<()> {
    let opts = extract_options(&args.opts);
    let from_stdin = args.layer.as_os_str() == "-";
    if from_stdin && io::stdin().is_terminal() {
        bail!("refusing to read a tar from a terminal: pipe an uncompressed tar into stdin");
    }
    prepare_target(&args.dir)?;
    let start = Instant::now();
    let report = if from_stdin {
        strata_cas::extract::apply_tar(io::stdin().lock(), &args.dir, &opts)
            .with_context(|| format!("cannot apply the tar on stdin to {}", args.dir.display()))?
    } else {
        strata_cas::extract::apply_file(&args.layer, &args.dir, &opts).with_context(|| {
            format!(
                "cannot apply {} to {}",
                args.layer.display(),
                args.dir.display()
            )
        })?
    };
    print_extract_report(&report, start.elapsed(), &args.dir, json)
}

/// The library's options for writing a new layer.
pub(crate) fn compress_options(args: &CompressArgs) -> CreateOptions {
    let defaults = CreateOptions::default();
    CreateOptions {
        level: args.level,
        threads: args.threads.unwrap_or(defaults.threads),
        ..defaults
    }
}

/// The library's options for applying a layer.
pub(crate) fn extract_options(args: &ApplyOpts) -> ExtractOptions {
    let defaults = ExtractOptions::default();
    ExtractOptions {
        devices: match args.devices {
            DeviceArg::Refuse => DevicePolicy::Refuse,
            DeviceArg::Skip => DevicePolicy::Skip,
            DeviceArg::Create => DevicePolicy::Create,
        },
        setuid: match args.setuid {
            SetuidArg::Refuse => SetuidPolicy::Refuse,
            SetuidArg::Strip => SetuidPolicy::Strip,
            SetuidArg::Keep => SetuidPolicy::Keep,
        },
        ownership: match args.ownership {
            OwnershipArg::Auto => Ownership::Auto,
            OwnershipArg::Restore => Ownership::Restore,
            OwnershipArg::Ignore => Ownership::Ignore,
        },
        threads: args.threads.unwrap_or(defaults.threads),
        sync: args.sync,
        ..defaults
    }
}

/// Makes sure `dir` is a directory to apply onto, creating it (and its parents) if missing.
pub(crate) fn prepare_target(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!(
            "cannot apply onto {}: it exists and is not a directory",
            dir.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("cannot access {}", dir.display())),
    }
}

/// Fails unless `dir` is an existing directory.
fn require_dir(dir: &Path) -> Result<()> {
    let meta =
        fs::metadata(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    Ok(())
}

/// The directory OUT goes into (`.` for a bare file name).
fn out_parent(out: &Path) -> Result<&Path> {
    if out.file_name().is_none() {
        bail!("output {} does not name a file", out.display());
    }
    Ok(match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    })
}

/// Refuses an OUT inside DIR: the half-written layer would end up inside itself.
fn refuse_out_inside(dir: &Path, parent: &Path, out: &Path) -> Result<()> {
    let dir = fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let parent = fs::canonicalize(parent)
        .with_context(|| format!("cannot use {}: its directory is missing", out.display()))?;
    if parent.starts_with(&dir) {
        bail!(
            "output {} is inside the directory being archived ({}): write it elsewhere",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}

/// A new temporary file next to OUT, named after it, with the permissions a plain `create`
/// would give (0666 less the umask, not tempfile's private 0600).
fn create_temp(out: &Path, parent: &Path) -> Result<tempfile::NamedTempFile> {
    let prefix = format!(
        ".{}.",
        out.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    builder
        .tempfile_in(parent)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))
}

/// The JSON result of `layer create` and `cas put`.
#[derive(Debug, Serialize)]
struct LayerSummary {
    id: LayerId,
    uncompressed_size: u64,
    compressed_size: u64,
    frames: u32,
    entries: u64,
    seconds: f64,
}

/// Prints a new layer's id, size and time; `action` says where it went ("wrote out.tar.zst").
pub(crate) fn print_layer_info(
    info: &LayerInfo,
    elapsed: Duration,
    action: &str,
    json: bool,
) -> Result<()> {
    if json {
        return output::print_json(&LayerSummary {
            id: info.id,
            uncompressed_size: info.uncompressed_size,
            compressed_size: info.compressed_size,
            frames: info.frames,
            entries: info.entries,
            seconds: output::seconds(elapsed),
        });
    }
    output::print_text(&format!(
        "{id}\n{action}: {entries}, {unc} uncompressed, {comp} compressed ({ratio}), {frames}, \
         in {time}",
        id = info.id,
        entries = output::count(info.entries, "entry", "entries"),
        unc = output::bytes(info.uncompressed_size),
        comp = output::bytes(info.compressed_size),
        ratio = output::ratio(info.uncompressed_size, info.compressed_size),
        frames = output::count(u64::from(info.frames), "frame", "frames"),
        time = output::duration(elapsed),
    ))
}

/// The JSON result of `layer apply` and `cas apply`.
#[derive(Debug, Serialize)]
struct ApplySummary<'a> {
    entries: u64,
    bytes: u64,
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    whiteouts: u64,
    /// `{"path", "reason"}` objects; non-UTF-8 paths are converted lossily.
    skipped: &'a [Skipped],
    seconds: f64,
}

/// Warns about each skipped entry on stderr, then prints what was applied.
pub(crate) fn print_extract_report(
    report: &ExtractReport,
    elapsed: Duration,
    dir: &Path,
    json: bool,
) -> Result<()> {
    for skipped in &report.skipped {
        output::warn(format_args!(
            "skipped {}: {}",
            EntryName(skipped.path.clone()),
            skipped.reason
        ));
    }
    if json {
        return output::print_json(&ApplySummary {
            entries: report.entries,
            bytes: report.bytes,
            files: report.files,
            dirs: report.dirs,
            symlinks: report.symlinks,
            hardlinks: report.hardlinks,
            whiteouts: report.whiteouts,
            skipped: &report.skipped,
            seconds: output::seconds(elapsed),
        });
    }
    let mut text = format!(
        "applied {entries}, {bytes}, to {dir} in {time}\n  {files}, {dirs}, {symlinks}, \
         {hardlinks}, {whiteouts}",
        entries = output::count(report.entries, "entry", "entries"),
        bytes = output::bytes(report.bytes),
        dir = dir.display(),
        time = output::duration(elapsed),
        files = output::count(report.files, "file", "files"),
        dirs = output::count(report.dirs, "directory", "directories"),
        symlinks = output::count(report.symlinks, "symlink", "symlinks"),
        hardlinks = output::count(report.hardlinks, "hard link", "hard links"),
        whiteouts = output::count(report.whiteouts, "whiteout", "whiteouts"),
    );
    if !report.skipped.is_empty() {
        let skipped = u64::try_from(report.skipped.len()).unwrap_or(u64::MAX);
        text.push_str(&format!(", {skipped} skipped"));
    }
    output::print_text(&text)
}
