//! The crate's one integration test binary: OBuilder's example specs and generated round trips.

mod fixtures;
mod roundtrip;
