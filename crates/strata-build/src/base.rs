//! Base images made offline: the busybox root filesystem the embedded defaults build on.

use std::fs::File;
use std::path::Path;

use strata_snapshot::{Engine, SnapshotId};

use crate::error::{Result, io_err};

/// The tag the default base is stored under; `(from busybox)` and `(from busybox@sha256:…)`
/// resolve to it.
pub const BUSYBOX: &str = "busybox";

/// Whether `image` names the busybox base (any tag or digest).
pub fn is_busybox(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    let name = name.split(':').next().unwrap_or(name);
    name == BUSYBOX || name == "docker.io/library/busybox" || name == "library/busybox"
}

/// Makes the busybox base from the host's static busybox (Debian's `busybox-static`) and
/// imports it tagged [`BUSYBOX`], unless it is already there.
pub fn ensure_busybox(engine: &Engine) -> Result<SnapshotId> {
    if let Ok(id) = engine.resolve(BUSYBOX) {
        return Ok(id);
    }
    let tmp = engine
        .root()
        .join("build-v1")
        .join(format!("busybox-{}", std::process::id()));
    let result = make(engine, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn make(engine: &Engine, tmp: &Path) -> Result<SnapshotId> {
    let rootfs = tmp.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io_err("create", &rootfs))?;
    busybox_rootfs(&rootfs)?;
    let tarball = tmp.join("rootfs.tar.zst");
    let out = File::create(&tarball).map_err(io_err("create", &tarball))?;
    // Times clamped to the epoch: every store on every builder with the same busybox makes
    // the same base, so step keys (which start from it) agree across a build farm.
    let opts = strata_cas::CreateOptions {
        mtime_clamp: Some(0),
        ..strata_cas::CreateOptions::default()
    };
    strata_cas::create::create_from_dir(&rootfs, out, &opts)?;
    Ok(engine.import(&tarball, Some(BUSYBOX))?.id)
}

#[cfg(target_os = "linux")]
fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    Ok(strata_isolate::busybox::busybox_rootfs(rootfs)?)
}

/// A Linux busybox base only makes sense where Linux containers run.
#[cfg(not(target_os = "linux"))]
fn busybox_rootfs(_rootfs: &Path) -> Result<()> {
    Err(crate::Error::MissingBase {
        image: BUSYBOX.to_owned(),
    })
}
