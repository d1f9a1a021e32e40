//! Integration tests of the `strata` binary: real processes, real files, real stores.

mod build;
mod cas;
mod cli;
mod docker;
mod image;
mod layer;
mod maintenance;
mod snapshot;
mod support;
