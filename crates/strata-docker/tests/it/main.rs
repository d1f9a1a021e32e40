//! Integration tests of the Docker driver against the real engine: they need one, and fail
//! under `CI=true` without it (the engine is expected there); elsewhere they say so and pass.

mod common;
mod driver;
mod mounted_state;
#[cfg(unix)]
mod same_tree;
