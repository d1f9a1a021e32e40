//! Integration tests of strata-cas against real files, real tarballs and real processes.

mod common;
mod corpus;
mod roundtrip;
mod store;
mod tarcraft;
