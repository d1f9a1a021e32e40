//! Directory handles shared by the walker and the extractor: how they are opened.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{CWD, Mode, OFlags};

use crate::{Error, Result};

/// Flags for opening a directory below a handle: never through a symlink.
pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the directory a caller named (which may itself be reached through symlinks: the
/// caller chose it); everything below it is then resolved from this handle.
pub(crate) fn open_root(dir: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(
        CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open the directory", dir, e.into()))
}
