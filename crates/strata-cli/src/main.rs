//! `strata`: the command line interface to Strata.
//!
//! `strata build|healthcheck|delete|dockerfile` run OBuilder specs (see `build.rs`);
//! `strata layer` creates and applies layer files; `strata cas` puts layers into the store,
//! lists, verifies, reads and removes them; `strata import|checkout|commit|release|snapshot`
//! work with snapshots; `strata import --oci|--docker-archive`, `export`, `push` and `pull`
//! move them to and from the container world (`import.rs`, `image.rs`); `strata du|prune|gc|fsck` maintain the store; `strata slots rm`
//! removes what the slot sandboxes made on the host. See `strata --help`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI prints its results"
)]

mod build;
mod cas;
mod cli;
mod image;
mod import;
mod import_docker;
mod layer;
mod maintenance;
mod output;
mod progress;
mod snapshot;
mod store;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

use crate::cli::{Cli, Command, LayerCommand};
use crate::output::BrokenPipe;

fn main() -> ExitCode {
    // Usage errors exit with status 2, --help and --version with 0 (clap's conventions).
    let cli = Cli::parse();
    if let Command::Prune(args) = &cli.command
        && !args.has_limit()
    {
        refuse_unlimited_prune();
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout stopped reading (`strata cas ls | head -1`): not a failure.
        Err(err) if err.chain().any(|cause| cause.is::<BrokenPipe>()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let json = cli.global.json;
    match &cli.command {
        Command::Layer(LayerCommand::Create(args)) => layer::create(args, json),
        Command::Layer(LayerCommand::Apply(args)) => layer::apply(args, json),
        Command::Build(args) => build::build(&cli.global, args),
        Command::Healthcheck(args) => build::healthcheck(&cli.global, args),
        Command::Delete(args) => build::delete(&cli.global, args),
        Command::Dockerfile(args) => build::dockerfile(&cli.global, args),
        Command::Cas(command) => cas::run(&cli.global, command),
        Command::Import(args) => import::import(&cli.global, args),
        Command::Export(args) => image::export(&cli.global, args),
        Command::Push(args) => image::push(&cli.global, args),
        Command::Pull(args) => image::pull(&cli.global, args),
        Command::Checkout(args) => snapshot::checkout(&cli.global, args),
        Command::Commit(args) => snapshot::commit(&cli.global, args),
        Command::Release(args) => snapshot::release(&cli.global, args),
        Command::Snapshot(command) => snapshot::snapshot(&cli.global, command),
        Command::Du => maintenance::du(&cli.global),
        Command::Prune(args) => maintenance::prune(&cli.global, args),
        Command::Gc(args) => maintenance::gc(&cli.global, args),
        Command::Fsck(args) => maintenance::fsck(&cli.global, args),
        Command::Slots(cli::SlotsCommand::Rm(args)) => build::slots_rm(&cli.global, args),
        Command::EmptyTrash => store::empty_trash(&cas::store_root(cli.global.store.as_deref())?),
    }
}

/// `strata prune` without a limit is a usage error (status 2): deleting every unused
/// snapshot must be asked for with `--all`.
fn refuse_unlimited_prune() -> ! {
    let mut command = Cli::command();
    command.build();
    let prune = command
        .find_subcommand_mut("prune")
        .expect("the grammar has a prune subcommand");
    prune
        .error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "say what to prune: --older-than DURATION, --keep N or --keep-bytes SIZE, \
             or --all to delete every unused snapshot",
        )
        .exit()
}

/// Prints `error: <message>` and a `caused by:` line per underlying cause on stderr.
fn report(err: &anyhow::Error) {
    let messages = output::messages(err.as_ref());
    let mut stderr = io::stderr().lock();
    let mut lines = messages.iter();
    if let Some(first) = lines.next() {
        let _ignored = writeln!(stderr, "error: {first}");
    }
    for cause in lines {
        let _ignored = writeln!(stderr, "caused by: {cause}");
    }
}
