//! `strata`: the command line interface to Strata.
//!
//! `strata layer` creates and applies layer files; `strata cas` puts layers into the store,
//! lists, verifies, reads and removes them; `strata import|checkout|commit|release|snapshot`
//! work with snapshots. See `strata --help`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI prints its results"
)]

mod cas;
mod cli;
mod ids;
mod layer;
mod output;
mod snapshot;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command, LayerCommand};
use crate::output::BrokenPipe;

fn main() -> ExitCode {
    // Usage errors exit with status 2, --help and --version with 0 (clap's conventions).
    let cli = Cli::parse();
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
        Command::Cas(command) => cas::run(&cli.global, command),
        Command::Import(args) => snapshot::import(&cli.global, args),
        Command::Checkout(args) => snapshot::checkout(&cli.global, args),
        Command::Commit(args) => snapshot::commit(&cli.global, args),
        Command::Release(args) => snapshot::release(&cli.global, args),
        Command::Snapshot(command) => snapshot::snapshot(&cli.global, command),
    }
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
