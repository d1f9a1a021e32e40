//! Integration tests of the builder against real runc, real snapshots and real SQLite files.

mod build;
mod common;
mod concurrency;
mod copy_sources;
mod events;
mod hardening;
mod slots;
