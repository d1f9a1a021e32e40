//! Push and pull against a real registry.
