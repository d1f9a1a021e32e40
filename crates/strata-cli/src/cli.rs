//! The command line grammar: every command, option and help text of `strata`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the command failed (the message on stderr says why), `cas verify` found corrupt layers,
     or `fsck` found problems it did not repair
  2  the command line is wrong

Environment:
  STRATA_STORE    the store directory, as --store
  XDG_CACHE_HOME  the default store is $XDG_CACHE_HOME/strata, else $HOME/.cache/strata

Layer ids are 64 hex digits, optionally written `blake3:<hex>`. Commands that take an id
stored in the store also accept a unique prefix of at least 4 hex digits.";

/// Run OBuilder build specs in sandboxes, caching every step as a snapshot.
///
/// `strata build` runs a spec step by step (runc on Linux), reusing steps built before.
/// Snapshots are stacks of layers: tar streams identified by the blake3 hash of their
/// uncompressed bytes, kept in a content-addressed store. `strata import|checkout|commit`
/// work with snapshots, `strata layer` with layer files, `strata cas` with the store, and
/// `strata du|prune|gc|fsck` maintain it.
#[derive(Debug, Parser)]
#[command(name = "strata", version, after_help = AFTER_HELP, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The help heading of the options every command accepts.
const GLOBAL: &str = "Global options";

/// Options accepted before or after any subcommand.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// The store directory [default: $XDG_CACHE_HOME/strata, else $HOME/.cache/strata]
    ///
    /// Created with its layout if missing. Several processes may use one store at once.
    #[arg(long, global = true, env = "STRATA_STORE", value_name = "DIR", help_heading = GLOBAL)]
    pub(crate) store: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of human-readable text
    ///
    /// Every command prints exactly one JSON value (`cas cat` prints the tar itself).
    /// Warnings and errors still go to stderr as text.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run an OBuilder build spec step by step in a sandbox, reusing cached steps
    ///
    /// Reads SPEC (default: CONTEXT/build.spec), runs each step in the sandbox on a
    /// checkout of the previous step's snapshot and commits the result. A step whose cache
    /// key (parent snapshot, op, context) was built before is reused, its log replayed.
    /// Prints OBuilder's step headers, the steps' output, and `Got: "<id>"` at the end.
    /// A `(from busybox…)` base missing from the store is made from the host's
    /// busybox-static. Ctrl-C stops the running step and caches nothing.
    #[command(after_help = BUILD_AFTER_HELP)]
    Build(BuildArgs),

    /// Check that the sandbox works: run `echo healthcheck` in a base image
    Healthcheck(HealthcheckArgs),

    /// Delete a snapshot, everything built on it and the cached steps that made them
    Delete(DeleteArgs),

    /// Print a build spec as a Dockerfile
    Dockerfile(DockerfileArgs),

    /// Create and apply layer files, without a store
    #[command(subcommand)]
    Layer(LayerCommand),

    /// Put, list, verify, read and remove layers in the content-addressed store
    #[command(subcommand)]
    Cas(CasCommand),

    /// Make snapshots from a root filesystem tarball (.tar, .tar.gz, .tar.zst) or an image
    ///
    /// Prints the snapshot id. With --tag, the snapshot can be named by that tag later. An
    /// image (--oci, --docker-archive) becomes one snapshot per layer, each layer checked
    /// against the image's digests before it is stored.
    #[command(
        after_help = "Examples:\n  strata import busybox-rootfs.tar --tag busybox\n  \
        strata import --oci ./layout --tag app\n  \
        strata import --docker-archive saved.tar --tag app\n  \
        strata import --docker debian:12 --tag debian"
    )]
    Import(ImportArgs),

    /// Write a snapshot as an OCI image layout or a docker-archive tar
    ///
    /// The image has one layer per snapshot of REF's stack and a config with the
    /// environment, working directory and user the build of REF ended in. zstd layers are
    /// the stored blobs as they are; Docker Engine before 23 reads only gzip or plain ones.
    #[command(after_help = "Examples:\n  strata export app -o app-layout\n  \
        strata export app -o app.tar --format docker-archive --tag app:1.0 && docker load -i app.tar")]
    Export(ExportArgs),

    /// Push a snapshot as an image to a registry (OCI distribution API)
    ///
    /// Blobs the registry has already are not sent again; several go up at once.
    /// Credentials come from the Docker config file ($DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json). Plain HTTP is used only for loopback registries or with
    /// --insecure.
    #[command(after_help = "Example:\n  strata push app localhost:5000/team/app:1.0")]
    Push(PushArgs),

    /// Pull an image from a registry into snapshots, one per layer
    ///
    /// Every blob is checked against its digest (and each layer against the config's
    /// diff_ids) before it is stored.
    #[command(after_help = "Example:\n  strata pull localhost:5000/team/app:1.0 --tag app")]
    Pull(PullArgs),

    /// Check a snapshot out as a directory, tracked until commit or release
    ///
    /// REF is a snapshot id, a unique prefix of one (at least 4 hex digits) or a tag. DIR is
    /// created if missing and must otherwise be empty. On Linux as root this is an overlayfs
    /// mount (instant); elsewhere, or with --portable, a plain directory built with reflinks
    /// where the filesystem has them and copies otherwise. Files recorded with the root they
    /// were committed at are relocated to DIR. With --copy, DIR is a plain untracked copy.
    Checkout(CheckoutArgs),

    /// Commit a tracked checkout's changes as a child snapshot, and release it
    ///
    /// Prints the new snapshot's id. DIR is gone afterwards.
    Commit(CommitArgs),

    /// Discard a tracked checkout
    Release(ReleaseArgs),

    /// List and remove snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),

    /// Show what the store holds: snapshots, layers, bytes, unpacked layers, checkouts
    ///
    /// Counts come from the index and the blob directory; sizes are the stored (compressed)
    /// blobs and the layers' uncompressed tar streams. Unpacked layers are the read-only
    /// directories checkouts are built from: a layer is unpacked on its first checkout and
    /// kept until gc removes the layer.
    #[command(after_help = "Example:\n  strata du --json | jq .blob_bytes")]
    Du,

    /// Delete unused snapshots, least recently used leaves first, then collect garbage
    ///
    /// A snapshot is in use while another snapshot is built on it, a tracked checkout holds
    /// it, a tag names it or a running process leases it; snapshots in use are never
    /// deleted. Leaves go first and a parent only once its children are gone, so a build
    /// cache shrinks from the tips of old branches inwards. With --keep and --keep-bytes,
    /// deletion stops as soon as every given limit holds; with --older-than alone, or
    /// --all, every unused snapshot that qualifies goes. The layers nothing refers to any
    /// more are then removed as by `strata gc`.
    ///
    /// One of --older-than, --keep, --keep-bytes or --all is required: pruning everything
    /// unused has to be asked for explicitly.
    #[command(after_help = PRUNE_AFTER_HELP)]
    Prune(PruneArgs),

    /// Remove layers no snapshot refers to, and leftovers of crashed commits
    ///
    /// Deletes each unreferenced layer's index row, blob and unpacked directories, and
    /// forgets recorded build steps (with their logs) whose snapshot is gone. Blobs
    /// and unpacked directories that no index row mentions are only removed once they are
    /// an hour old: a commit running in another process may not have recorded them yet.
    /// Safe to run while other strata processes use the store.
    Gc(GcArgs),

    /// Remove what the slot sandboxes made on this host: slot users and directories
    #[command(subcommand)]
    Slots(SlotsCommand),

    /// Check the store for problems, and repair what can be repaired
    ///
    /// Checks that every snapshot's layer is stored, that every stored layer hashes to its
    /// id (this reads every blob), and that every tracked checkout still has its directory.
    /// With --repair, forgets checkouts whose directory is gone and expires leases of
    /// processes that no longer run; missing or corrupt layers cannot be repaired (remove
    /// the snapshots that need them). Exits with status 1 if a problem remains.
    Fsck(FsckArgs),

    /// Delete the trees in the store's trash (started in the background by other commands)
    #[command(hide = true)]
    EmptyTrash,
}

const PRUNE_AFTER_HELP: &str = "\
Examples:
  strata prune --older-than 7d              unused snapshots not used for a week
  strata prune --keep-bytes 20G             until the layers take at most 20 GiB
  strata prune --older-than 1d --keep 500   down to 500 snapshots, deleting only ones
                                            unused for a day
  strata prune --all                        every unused snapshot

DURATION is a number with a unit: s, m, h, d or w (30m, 12h, 7d, 2w).
SIZE is bytes, or a number with a binary unit: K, M, G or T, optionally followed by B or iB
(500M = 500 MiB, 1.5G, 10GiB). --keep-bytes counts the layers' uncompressed sizes.";

#[derive(Debug, Subcommand)]
pub(crate) enum SlotsCommand {
    /// Remove the slots of a sandbox: the users it made (with their profiles) and the slot
    /// directories, after releasing the checkouts this store has there
    ///
    /// Refused while a build holds one of the slots. Takes the options `strata build` does:
    /// the same --sandbox, --slots and --slot-dir select the same slots (--slots 99 takes
    /// every slot a driver can have).
    #[command(visible_alias = "remove")]
    Rm(SlotsRmArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SlotsRmArgs {
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// List snapshots: id, depth, parent and tags
    #[command(visible_alias = "list")]
    Ls,
    /// Remove snapshots that no other snapshot, checkout or running build uses
    #[command(visible_alias = "remove")]
    Rm(SnapshotRmArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotRmArgs {
    /// Snapshot ids, prefixes or tags
    #[arg(required = true, value_name = "REF")]
    pub(crate) references: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Only delete snapshots not used (created, checked out or built on) for DURATION
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) older_than: Option<std::time::Duration>,
    /// Stop once at most N snapshots remain
    #[arg(long, value_name = "N")]
    pub(crate) keep: Option<u64>,
    /// Stop once the remaining snapshots' layers take at most SIZE (uncompressed)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) keep_bytes: Option<u64>,
    /// Delete every unused snapshot
    #[arg(long, conflicts_with_all = ["older_than", "keep", "keep_bytes"])]
    pub(crate) all: bool,
}

impl PruneArgs {
    /// Whether any option says what to delete.
    pub(crate) fn has_limit(&self) -> bool {
        self.all || self.older_than.is_some() || self.keep.is_some() || self.keep_bytes.is_some()
    }
}

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// Also remove the Docker engine's images of snapshots this store no longer holds
    /// (only images the docker sandbox made, labelled strata.snapshot; an image of a
    /// snapshot another store still uses is loaded again when that store needs it)
    #[arg(long)]
    pub(crate) docker_images: bool,
}

#[derive(Debug, Args)]
pub(crate) struct FsckArgs {
    /// Fix what can be fixed without losing a valid snapshot
    #[arg(long)]
    pub(crate) repair: bool,
}

/// Parses `30s`, `30m`, `12h`, `7d` or `2w` (a whole number and a unit).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. 30m, 12h, 7d or 2w"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number (e.g. 7d)"))?;
    let seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use s, m, h, d or w (e.g. 7d)"
            ));
        }
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

/// Parses a byte count: `1048576`, `500M`, `1.5G`, `10GiB`, `2TB` (binary units).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use K, M, G or T (e.g. 500M, 10G)"
            ));
        }
    };
    let bad_number = || format!("`{text}` does not start with a number (e.g. 10G)");
    if number.is_empty() {
        return Err(bad_number());
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(1 << shift)
            .ok_or_else(|| format!("`{text}` is too large"));
    }
    let value: f64 = number.parse().map_err(|_| bad_number())?;
    let bytes = (value * (1u64 << shift) as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    if shift == 0 && bytes != value {
        return Err(format!("`{text}`: a byte count must be a whole number"));
    }
    Ok(bytes as u64)
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["rootfs", "oci", "docker_archive", "docker"])))]
pub(crate) struct ImportArgs {
    /// The root filesystem tarball
    #[arg(value_name = "ROOTFS")]
    pub(crate) rootfs: Option<PathBuf>,
    /// An OCI image layout: a directory, or a tar of one
    #[arg(long, value_name = "PATH")]
    pub(crate) oci: Option<PathBuf>,
    /// A docker-archive tar, as `docker save` writes
    #[arg(long, value_name = "TAR")]
    pub(crate) docker_archive: Option<PathBuf>,
    /// An image of the local docker engine, read through its API layer by layer
    #[arg(long, value_name = "IMAGE")]
    pub(crate) docker: Option<String>,
    /// The image to import when the layout or archive holds several (its tag or name)
    #[arg(long = "ref", value_name = "NAME", conflicts_with = "rootfs")]
    pub(crate) reference: Option<String>,
    /// Name the (top) snapshot
    #[arg(long, value_name = "NAME")]
    pub(crate) tag: Option<String>,
}

/// How image layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompressionArg {
    /// The stored blobs as they are (no work)
    Zstd,
    /// For Docker Engine before 23
    Gzip,
    /// Plain tar
    None,
}

/// What `strata export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// An OCI image layout: a directory, or a tar when OUT ends in .tar
    Oci,
    /// A tar that `docker load` reads
    DockerArchive,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Snapshot id, unique id prefix or tag
    #[arg(value_name = "REF")]
    pub(crate) reference: String,
    /// Where to write the image (`-` for stdout, as a tar)
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub(crate) output: PathBuf,
    /// The kind of image
    #[arg(long, value_enum, default_value = "oci")]
    pub(crate) format: ExportFormat,
    /// The image's name, NAME:TAG (`docker load` tags it so)
    #[arg(long, value_name = "NAME:TAG")]
    pub(crate) tag: Option<String>,
    /// How layers are compressed [default: zstd for oci, none for docker-archive]
    #[arg(long, value_enum)]
    pub(crate) compression: Option<CompressionArg>,
}

/// Options shared by the registry commands.
#[derive(Debug, Args)]
pub(crate) struct RegistryOpts {
    /// Allow plain HTTP to a registry that is not on a loopback address
    #[arg(long)]
    pub(crate) insecure: bool,
    /// How many blobs go up or down at once
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) jobs: usize,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// Snapshot id, unique id prefix or tag
    #[arg(value_name = "REF")]
    pub(crate) reference: String,
    /// REGISTRY/REPO:TAG
    #[arg(value_name = "DEST")]
    pub(crate) destination: String,
    /// How layers are compressed
    #[arg(long, value_enum, default_value = "zstd")]
    pub(crate) compression: CompressionArg,
    #[command(flatten)]
    pub(crate) registry: RegistryOpts,
}

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:DIGEST
    #[arg(value_name = "SOURCE")]
    pub(crate) source: String,
    /// Name the top snapshot
    #[arg(long, value_name = "NAME")]
    pub(crate) tag: Option<String>,
    #[command(flatten)]
    pub(crate) registry: RegistryOpts,
}

#[derive(Debug, Args)]
pub(crate) struct CheckoutArgs {
    /// Snapshot id, unique id prefix or tag
    #[arg(value_name = "REF")]
    pub(crate) reference: String,
    /// Where to check it out
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// A plain directory (reflinks or copies) instead of an overlay mount
    #[arg(long, conflicts_with = "copy")]
    pub(crate) portable: bool,
    /// A plain, untracked copy
    #[arg(long)]
    pub(crate) copy: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CommitArgs {
    /// The tracked checkout
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Name the new snapshot
    #[arg(long, value_name = "NAME")]
    pub(crate) tag: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    /// The tracked checkout
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LayerCommand {
    /// Create a layer file from a directory
    ///
    /// The output is a deterministic tar compressed as independent zstd frames: the same tree
    /// always gives the same bytes and the same id, whatever the machine or the thread count.
    /// Any zstd decoder reads it. OUT is written to a temporary file next to it and renamed
    /// into place on success, so a failed run never leaves a truncated OUT behind.
    ///
    /// Prints the layer id, entry count, sizes and time taken.
    #[command(after_help = "Example:\n  strata layer create ./rootfs -o rootfs.tar.zst")]
    Create(CreateArgs),

    /// Apply a layer file onto a directory
    ///
    /// LAYER is a .tar, .tar.zst or .tar.gz file (the format is detected from its content), or
    /// `-` to read an uncompressed tar from stdin. DIR is created if missing. Whiteouts
    /// (`.wh.` entries) remove paths from DIR. Nothing is ever written outside DIR, whatever
    /// the layer contains.
    #[command(after_help = "Examples:\n  \
        strata layer apply rootfs.tar.zst ./rootfs\n  \
        tar -C src -cf - . | strata layer apply - ./dest")]
    Apply(LayerApplyArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CasCommand {
    /// Put a directory or a layer file into the store
    ///
    /// PATH is a directory (made into a layer the same way as `layer create`) or a
    /// .tar/.tar.zst/.tar.gz file (validated, then stored re-framed; the tar bytes, hence the
    /// id, are kept as they are). Putting a layer that is already stored is harmless: the
    /// stored blob is kept. Prints the id, sizes and time taken.
    Put(PutArgs),

    /// List the layers in the store
    ///
    /// One row per layer: the full id, compressed and uncompressed size, and zstd frame count.
    #[command(visible_alias = "list")]
    Ls,

    /// Check that stored layers hash to their ids
    ///
    /// Decompresses and hashes every layer (or only the named ones). Exits with status 1 if
    /// any layer is corrupt, naming each one and what is wrong with it.
    Verify(VerifyArgs),

    /// Remove layers from the store
    ///
    /// All ids are resolved before anything is removed: an unknown or ambiguous id removes
    /// nothing and fails. A layer that snapshots need (their own layer or an ancestor's) is
    /// refused, naming those snapshots and their tags, and nothing is removed. --force
    /// ignores unknown ids and removes the snapshots that need the layers with them (each
    /// one listed), unless one of them is checked out or in use: then nothing is removed.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),

    /// Write a layer's uncompressed tar to stdout
    ///
    /// The stream is verified against the id while it is written; a corrupt layer makes the
    /// command fail (exit status 1) after its bad bytes are detected. Refuses to write to a
    /// terminal.
    #[command(after_help = "Example:\n  strata cas cat 3fa9 | tar -tvf -")]
    Cat(IdArg),

    /// Print a layer's OCI digests (sha256 diff_id and compressed digest)
    ///
    /// diff_id is the sha256 of the uncompressed tar; digest is the sha256 of the stored
    /// zstd blob, as an OCI image manifest references it.
    Digest(IdArg),

    /// Apply a stored layer onto a directory
    ///
    /// Same as `layer apply`, reading the layer from the store. DIR is created if missing.
    Apply(CasApplyArgs),
}

/// How to compress a new layer.
#[derive(Debug, Args)]
pub(crate) struct CompressArgs {
    /// zstd compression level (1 fastest, 19 smallest)
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    pub(crate) level: i32,

    /// Compression threads [default: all cores]
    ///
    /// Does not change the output bytes, only the speed.
    #[arg(long, value_name = "N", value_parser = threads_parser())]
    pub(crate) threads: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The directory to make a layer of
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,

    /// The layer file to write (conventionally *.tar.zst); replaced if it exists
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: PathBuf,

    #[command(flatten)]
    pub(crate) compress: CompressArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// A directory, or a .tar/.tar.zst/.tar.gz layer file
    #[arg(value_name = "PATH")]
    pub(crate) path: PathBuf,

    #[command(flatten)]
    pub(crate) compress: CompressArgs,
}

/// How to apply a layer: the safety policies and performance knobs.
#[derive(Debug, Args)]
pub(crate) struct ApplyOpts {
    /// What to do with device nodes in the layer
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = DeviceArg::Refuse)]
    pub(crate) devices: DeviceArg,

    /// What to do with setuid/setgid files and file capabilities in the layer
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = SetuidArg::Refuse)]
    pub(crate) setuid: SetuidArg,

    /// Whether to restore the layer's file owners (uid/gid)
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = OwnershipArg::Auto)]
    pub(crate) ownership: OwnershipArg,

    /// Threads writing file contents [default: one per core]
    #[arg(long, value_name = "N", value_parser = threads_parser())]
    pub(crate) threads: Option<usize>,

    /// Flush the target's filesystem to disk (syncfs) before reporting success
    ///
    /// Makes the result durable across a power loss, at the cost of waiting for the disk.
    #[arg(long)]
    pub(crate) sync: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LayerApplyArgs {
    /// A .tar, .tar.zst or .tar.gz file, or `-` for an uncompressed tar on stdin
    #[arg(value_name = "LAYER")]
    pub(crate) layer: PathBuf,

    /// The directory to apply onto; created if missing
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,

    #[command(flatten)]
    pub(crate) opts: ApplyOpts,
}

#[derive(Debug, Args)]
pub(crate) struct CasApplyArgs {
    /// The layer id (full, `blake3:<hex>`, or a unique prefix of 4+ hex digits)
    #[arg(value_name = "ID")]
    pub(crate) id: String,

    /// The directory to apply onto; created if missing
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,

    #[command(flatten)]
    pub(crate) opts: ApplyOpts,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Layers to check (full ids or unique prefixes) [default: every layer in the store]
    #[arg(value_name = "ID")]
    pub(crate) ids: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// Layers to remove (full ids or unique prefixes)
    #[arg(value_name = "ID", required = true)]
    pub(crate) ids: Vec<String>,

    /// Ignore ids that are not in the store, and remove the snapshots that need the layers
    /// (and everything built on them) with them
    #[arg(short, long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IdArg {
    /// The layer id (full, `blake3:<hex>`, or a unique prefix of 4+ hex digits)
    #[arg(value_name = "ID")]
    pub(crate) id: String,
}

/// Parses a thread count: a positive integer.
fn threads_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=4096)
}

/// `--devices`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeviceArg {
    /// Fail on the first device node
    Refuse,
    /// Leave device nodes out, with a warning each
    Skip,
    /// Create them (needs privileges)
    Create,
}

/// `--setuid`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SetuidArg {
    /// Fail on the first setuid/setgid file or file capability
    Refuse,
    /// Apply such files without the setuid/setgid bits and capabilities
    Strip,
    /// Apply them as they are
    Keep,
}

/// `--ownership`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OwnershipArg {
    /// Restore owners when running as root, ignore them otherwise
    Auto,
    /// Always restore owners; fails without the privilege to do so
    Restore,
    /// Leave files owned by the current user
    Ignore,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_duration("0d"), Ok(Duration::ZERO));
        for bad in [
            "",
            "7",
            "d",
            "7 days",
            "1.5h",
            "-1d",
            "7y",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        // `--log-limit`'s default, written out for the help text.
        assert_eq!(parse_size("32M"), Ok(strata_build::DEFAULT_LOG_LIMIT));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("1234B"), Ok(1234));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10gb"), Ok(10 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "G", "10X", "1.5", "-1G", "1..5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn sandbox(args: &[&str]) -> Result<SandboxArgs, clap::Error> {
        let cli = Cli::try_parse_from(["strata", "build"].iter().chain(args))?;
        match cli.command {
            Command::Build(build) => Ok(build.sandbox),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_default_to_the_pids_limit_only() {
        let limits = sandbox(&[]).unwrap().limits();
        assert_eq!(limits, strata_isolate::Limits::default());
        assert_eq!(limits.pids, Some(strata_isolate::DEFAULT_PIDS_LIMIT));
    }

    #[test]
    fn limit_flags_take_dockers_syntax() {
        let limits = sandbox(&["--memory", "512m", "--cpus", "0.5", "--pids-limit", "100"])
            .unwrap()
            .limits();
        assert_eq!(
            limits,
            strata_isolate::Limits {
                memory: Some(512 << 20),
                cpus: Some(0.5),
                pids: Some(100),
            }
        );
        assert_eq!(
            sandbox(&["--memory", "2g"]).unwrap().limits().memory,
            Some(2 << 30)
        );
        assert_eq!(
            sandbox(&["--memory", "104857600"]).unwrap().limits().memory,
            Some(100 << 20)
        );
        for unlimited in ["0", "-1"] {
            let limits = sandbox(&["--pids-limit", unlimited]).unwrap().limits();
            assert_eq!(limits.pids, None, "{unlimited}");
        }
    }

    #[test]
    fn bad_limits_are_refused_naming_the_flag() {
        let too_many = (strata_isolate::default_slots() + 1).to_string();
        for (args, flag, why) in [
            (["--memory", "12x"], "--memory", "unknown unit"),
            (["--memory", "1k"], "--memory", "below the minimum of 6 MiB"),
            (["--memory", "-1"], "--memory", "unknown unit"),
            (["--cpus", "-1"], "--cpus", "below the minimum"),
            (["--cpus", "lots"], "--cpus", "not a number of CPUs"),
            (["--cpus", "0"], "--cpus", "below the minimum"),
            (
                ["--cpus", too_many.as_str()],
                "--cpus",
                "CPUs this host has",
            ),
            (["--cpus", "NaN"], "--cpus", "below the minimum"),
            (["--pids-limit", "-2"], "--pids-limit", ""),
            (["--pids-limit", "many"], "--pids-limit", ""),
        ] {
            let err = sandbox(&args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
            assert!(err.contains(why), "{args:?}: {err}");
        }
    }
}

const BUILD_AFTER_HELP: &str = "\
Examples:
  strata build examples/hello                    runs examples/hello/build.spec
  strata build -f ci.spec . --secret token:./tok a secret at the spec's (secrets …) target
  strata build . --sandbox host                  no isolation (development only)

Sandboxes: runc (default on Linux; needs root and `runc` on PATH), host (Unix, no
isolation), docker (the Docker Engine API: steps run as containers on images loaded from
Strata's layers), windows-user and windows-sandbox (Windows), macos-user (macOS). The last three
run steps in equal-length slot directories (--slot-dir) as each slot's own user, and
relocate snapshots between slots; `strata slots rm` removes their users and directories.";

/// Which sandbox runs the steps.
#[derive(Debug, Args)]
pub(crate) struct SandboxArgs {
    /// The sandbox driver [default: runc on Linux]
    #[arg(long, value_name = "NAME")]
    pub(crate) sandbox: Option<String>,

    /// How many steps may run at once [default: the driver's capacity]
    #[arg(long, value_name = "N")]
    pub(crate) slots: Option<usize>,

    /// Make fsync and friends no-ops inside the sandbox (runc), trading durability of the
    /// step's own writes for speed; commits are still durable
    #[arg(long)]
    pub(crate) fast_sync: bool,

    /// Memory a step may use, swap included, or the kernel kills it (runc): bytes or a
    /// number with a binary unit, as Docker's --memory (512m, 2g); at least 6m [default:
    /// unlimited]
    #[arg(long, value_name = "SIZE", value_parser = parse_memory, allow_negative_numbers = true)]
    pub(crate) memory: Option<u64>,

    /// CPU time a step may use, in CPUs (runc): 1.5 is one and a half CPUs' worth, spread
    /// over any of them; from 0.01 to the host's CPU count [default: unlimited]
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub(crate) cpus: Option<f64>,

    /// Processes and threads a step may have at once (runc); 0 or -1: no limit
    #[arg(
        long,
        value_name = "N",
        default_value_t = i64::try_from(strata_isolate::DEFAULT_PIDS_LIMIT).unwrap_or(i64::MAX),
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i64).range(-1..)
    )]
    pub(crate) pids_limit: i64,

    /// Where the slot sandboxes (windows-user, windows-sandbox, macos-user) keep their
    /// slot directories, shared by every store on the host [default: C:\strata on
    /// Windows, /Users/strata on macOS]
    #[arg(long, value_name = "DIR")]
    pub(crate) slot_dir: Option<PathBuf>,

    /// Who windows-user and macos-user run steps as: each slot's own local user
    /// (dedicated), or the builder's own user in every slot (current: no isolation, for
    /// development and Wine)
    #[arg(long, value_enum, default_value = "dedicated", value_name = "WHO")]
    pub(crate) slot_users: SlotUsersArg,

    /// macos-user: the Homebrew prefix steps may own in turn (/opt/homebrew, /usr/local)
    #[arg(long, value_name = "DIR")]
    pub(crate) brew_path: Option<PathBuf>,

    /// docker: mounted-state mode, repeatable. (from IMAGE) names an engine image that
    /// supplies the OS; snapshots hold only the state, bind-mounted at TARGET
    #[arg(long = "state", value_name = "TARGET")]
    pub(crate) state: Vec<String>,
}

/// `--slot-users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SlotUsersArg {
    Dedicated,
    Current,
}

impl SandboxArgs {
    /// The sandbox's options, as the facade takes them.
    pub(crate) fn options(&self) -> strata::SandboxOptions {
        let mut options = strata::SandboxOptions::default();
        options.slots = self.slots;
        options.fast_sync = self.fast_sync;
        options.limits = self.limits();
        options.slot_dir = self.slot_dir.clone();
        options.slot_users = match self.slot_users {
            SlotUsersArg::Dedicated => strata::SlotUsers::Dedicated,
            SlotUsersArg::Current => strata::SlotUsers::Current,
        };
        options.homebrew_prefix = self.brew_path.clone();
        options.state_targets = self.state.clone();
        options
    }

    /// The limits each step runs under.
    pub(crate) fn limits(&self) -> strata_isolate::Limits {
        strata_isolate::Limits {
            memory: self.memory,
            cpus: self.cpus,
            pids: u64::try_from(self.pids_limit).ok().filter(|n| *n > 0),
        }
    }
}

/// Parses `--memory`: a [`parse_size`] of at least [`strata_isolate::MIN_MEMORY_LIMIT`].
pub(crate) fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    strata_isolate::Limits {
        memory: Some(bytes),
        ..strata_isolate::Limits::unlimited()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Parses `--cpus`: a number of CPUs such as `1.5`, within what the host has.
pub(crate) fn parse_cpus(text: &str) -> Result<f64, String> {
    let cpus: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of CPUs (e.g. 1.5)"))?;
    strata_isolate::Limits {
        cpus: Some(cpus),
        ..strata_isolate::Limits::unlimited()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    Ok(cpus)
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The spec file [default: CONTEXT/build.spec]
    #[arg(short = 'f', long = "file", value_name = "SPEC")]
    pub(crate) file: Option<PathBuf>,

    /// The build context: the directory `copy` reads from
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub(crate) context: PathBuf,

    /// Provide a secret: the file at PATH is mounted read-only where the spec's
    /// `(secrets (ID (target …)))` says; it never enters a snapshot, a log or a cache key
    #[arg(long = "secret", value_name = "ID:PATH")]
    pub(crate) secrets: Vec<String>,

    /// Kill a `run` step that takes longer than this many seconds
    #[arg(long, value_name = "SECONDS")]
    pub(crate) step_timeout: Option<u64>,

    /// How to show the build: OBuilder's transcript (plain), the same with a live status
    /// line (tty), or one JSON object per event (json)
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub(crate) progress: crate::progress::Mode,

    /// Grant what a spec may not turn on by itself: `network-host` lets `(network host)`
    /// steps use the host's network (repeatable)
    #[arg(long, value_name = "ENTITLEMENT")]
    pub(crate) allow: Vec<Entitlement>,

    /// Keep at most this many bytes of each step's output in its log (the rest is counted
    /// and a note says so)
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size)]
    pub(crate) log_limit: u64,
    /// Publish each step (key, snapshot layers, log) to this registry repository, as a
    /// cache other builders read with --cache-from
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub(crate) cache_to: Option<String>,
    /// Look each step the store lacks up in this registry repository, and take it from
    /// there instead of running it
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub(crate) cache_from: Option<String>,
    /// Allow plain HTTP to a cache registry that is not on a loopback address
    #[arg(long)]
    pub(crate) insecure: bool,

    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

#[derive(Debug, Args)]
pub(crate) struct HealthcheckArgs {
    /// The base image (a tag or snapshot id) to run in
    #[arg(long, default_value = "busybox", value_name = "IMAGE")]
    pub(crate) base: String,

    /// Give up after this many seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub(crate) timeout: u64,

    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The snapshot: an id, a unique prefix of one, or a tag
    #[arg(value_name = "ID")]
    pub(crate) id: String,
}

#[derive(Debug, Args)]
pub(crate) struct DockerfileArgs {
    /// The spec file
    #[arg(short = 'f', long = "file", value_name = "SPEC")]
    pub(crate) file: PathBuf,

    /// Use BuildKit syntax: caches and secrets become `RUN --mount=…`
    #[arg(long)]
    pub(crate) buildkit: bool,

    /// Path and escape conventions of the output
    #[arg(long, value_enum, default_value = "unix")]
    pub(crate) os: DockerOs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DockerOs {
    Unix,
    Windows,
}

/// What `strata build --allow` grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Entitlement {
    /// `(network host)` steps may use the host's network.
    NetworkHost,
}
