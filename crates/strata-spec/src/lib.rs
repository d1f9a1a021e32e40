//! OBuilder's S-expression build specs: reader, model, validation, printer, Dockerfile output.
//!
//! A spec is read exactly as OCurrent OBuilder reads it (sexplib syntax, ppx_sexp_conv
//! record rules, its validation of `copy (from (build NAME))`), so existing specs work
//! unchanged:
//!
//! ```text
//! ((build tools ((from base) (run (shell "make tools"))))
//!  (from base)
//!  (copy (from (build tools)) (src binary) (dst /usr/local/bin/)))
//! ```
//!
//! - [`parse`] (or `str::parse::<Spec>`) reads a spec into the [`model`]; errors carry a
//!   span and line/column, and [`ParseError::render`] shows them like rustc does. Stage
//!   names and cache and secret ids are at most [`MAX_NAME_LEN`] bytes; the time and
//!   memory to read a spec grow linearly with its size.
//! - `Display` for [`Spec`] writes it back in OBuilder's layout; reading that gives an
//!   equal spec.
//! - [`sexp`] is the underlying reader and printer, usable on its own.
//! - [`dockerfile::to_dockerfile`] converts a spec as `obuilder dockerfile` does.
//!
//! The model derives serde for embedders who prefer JSON. The crate does no I/O.

pub mod dockerfile;
mod error;
pub mod model;
mod parse;
mod print;
pub mod sexp;
mod span;

use std::str::FromStr;

pub use error::ParseError;
pub use model::*;
pub use parse::MAX_NAME_LEN;

/// Reads an OBuilder spec.
pub fn parse(source: &str) -> Result<Spec, ParseError> {
    parse::parse(source)
}

impl FromStr for Spec {
    type Err = ParseError;

    fn from_str(source: &str) -> Result<Spec, ParseError> {
        parse(source)
    }
}
