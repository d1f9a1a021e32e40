//! Integration tests of the `strata` binary: real processes, real files, real stores.

mod cas;
mod cli;
mod layer;
mod snapshot;
mod support;
