//! Integration tests of strata-cas against real files, real tarballs and real processes.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests say why they skip, and child processes report ids on stdout"
)]

mod common;
mod corpus;
mod roundtrip;
mod store;
mod tarcraft;
