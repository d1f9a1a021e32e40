//! Integration tests of the Docker driver against the real engine.
