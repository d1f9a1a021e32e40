//! The command line grammar: every command, option and help text of `strata`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the command failed (the message on stderr says why), or `cas verify` found corrupt layers
  2  the command line is wrong

Environment:
  STRATA_STORE    the store directory, as --store
  XDG_CACHE_HOME  the default store is $XDG_CACHE_HOME/strata, else $HOME/.cache/strata

Layer ids are 64 hex digits, optionally written `blake3:<hex>`. Commands that take an id
stored in the store also accept a unique prefix of at least 4 hex digits.";

/// Build, apply and store content-addressed filesystem layers.
///
/// A layer is a tar stream (files, directories, symlinks, hard links, whiteouts) identified by
/// the blake3 hash of its uncompressed bytes. `strata layer` works on layer files; `strata cas`
/// works on the content-addressed store.
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
    /// Create and apply layer files, without a store
    #[command(subcommand)]
    Layer(LayerCommand),

    /// Put, list, verify, read and remove layers in the content-addressed store
    #[command(subcommand)]
    Cas(CasCommand),

    /// Make a base snapshot from a root filesystem tarball (.tar, .tar.gz, .tar.zst)
    ///
    /// Prints the snapshot id. With --tag, the snapshot can be named by that tag later.
    #[command(after_help = "Example:\n  strata import busybox-rootfs.tar --tag busybox")]
    Import(ImportArgs),

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
pub(crate) struct ImportArgs {
    /// The root filesystem tarball
    #[arg(value_name = "ROOTFS")]
    pub(crate) rootfs: PathBuf,
    /// Name the snapshot
    #[arg(long, value_name = "NAME")]
    pub(crate) tag: Option<String>,
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
    /// nothing and fails, unless --force is given (unknown ids are then ignored).
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

    /// Ignore ids that are not in the store
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
}
