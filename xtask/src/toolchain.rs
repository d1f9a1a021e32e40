//! The cross toolchain that the cross-platform check and the Wine tests share: Debian's
//! compiler (which can build std for any target), the Windows target, where its builds go,
//! and Wine. A leaf: it uses no other xtask module, so `ci.rs`, `wine.rs` and `wine_cli.rs`
//! depend on it and not on each other in a cycle.

use std::path::Path;
use std::process::Command;

/// Debian's compiler, whose std sources (`rust-web-src`) let `-Zbuild-std` build any target.
pub(crate) const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Whether Debian's compiler and its std sources are installed.
pub(crate) fn have_debian_rust() -> bool {
    Path::new(DEBIAN_RUSTC).exists() && Path::new("/usr/lib/rustlib/src/rust/library").is_dir()
}

/// The Windows target the Wine tests build for.
pub(crate) const TARGET: &str = "x86_64-pc-windows-gnu";
/// Where cross builds go: std for Windows, the Wine shim and prefix.
pub(crate) const TARGET_DIR: &str = "target/cross";
pub(crate) const WINE: &str = "/usr/lib/wine/wine64";

/// The environment every Wine process here gets: this project's prefix, and no debug
/// chatter (Wine's `fixme:` lines would bury the test output).
pub(crate) fn wine_env<'c>(cmd: &'c mut Command, prefix: &Path) -> &'c mut Command {
    cmd.env("WINEPREFIX", prefix).env("WINEDEBUG", "-all")
}

/// `/a/b` as Wine sees it: `Z:\a\b` (Wine maps `Z:` to `/`).
pub(crate) fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}
