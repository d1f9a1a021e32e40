//! Shared setup: the engine check, builders on a fresh store with the busybox base.

use std::path::Path;
use std::sync::Arc;

use strata_build::{BuildOptions, Builder, Transcript};
use strata_docker::{DockerDriver, DockerOptions};
use strata_isolate::Driver;
use strata_snapshot::{Engine, SnapshotId};

/// Whether the engine answers. Under `CI=true` it must; elsewhere a test without one says
/// so and passes.
#[allow(clippy::print_stderr, reason = "a skipped test says why")]
pub(crate) fn engine_ready() -> bool {
    let driver = DockerDriver::new(DockerOptions::new(1));
    match driver.check() {
        Ok(()) => true,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have a docker engine: {e:?}"
            );
            eprintln!("skipped: these tests need a docker engine ({e})");
            false
        }
    }
}

/// Options whose containers carry a label naming `store`, so a test finds its own.
pub(crate) fn options(store: &Path) -> DockerOptions {
    let mut options = DockerOptions::new(2);
    options.labels = vec![("strata.test".to_owned(), store.display().to_string())];
    options
}

/// A builder on a new store at `store` with the busybox base, on `driver`.
pub(crate) fn builder(store: &Path, driver: Box<dyn Driver>) -> Builder {
    let engine = Engine::open(store).unwrap();
    strata_build::base::ensure_busybox(&engine).unwrap();
    Builder::new(Arc::new(engine), driver).unwrap()
}

/// A Docker builder on a new store at `store`.
pub(crate) fn docker_builder(store: &Path) -> Builder {
    builder(store, Box::new(DockerDriver::new(options(store))))
}

/// Builds `spec` (context: an empty dir) and returns the result and the log.
pub(crate) fn build(
    builder: &Builder,
    spec: &str,
) -> (Result<SnapshotId, strata_build::Error>, String) {
    let ctx = tempfile::tempdir().unwrap();
    let spec = strata_spec::parse(spec).unwrap();
    let log = Transcript::new();
    let opts = BuildOptions::new(ctx.path()).reporter(log.clone());
    let r = builder.build(&spec, &opts);
    (r, log.text())
}
