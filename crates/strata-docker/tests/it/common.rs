//! Shared setup: the engine check, builders on a fresh store with the busybox base.

use std::path::Path;
use std::sync::Arc;

use strata_build::{BuildOptions, Builder, Transcript};
use strata_docker::{DockerDriver, DockerOptions};
use strata_isolate::Driver;
use strata_snapshot::{Engine, SnapshotId};

/// Whether the engine answers: under `CI=true` it must (the engine is expected there);
/// elsewhere a test without one says so and passes.
pub(crate) fn engine_ready() -> bool {
    let driver = DockerDriver::new(DockerOptions::new(1));
    let problem = driver
        .check()
        .err()
        .map(|e| format!("no docker engine answers ({e})"));
    strata_test_support::require("the docker driver's tests", problem)
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
