//! Shared setup: a store with the busybox base, a runc builder, a reporter that records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_build::{BuildOptions, Builder, Secret, Transcript};
use strata_isolate::{Cancel, DriverOptions, Limits};
use strata_snapshot::{Engine, SnapshotId};
use strata_test_support::tree::{self, Fields, Tree};

/// The shell the busybox base has (OBuilder's default is bash).
pub(crate) const SH: &str = "(shell /bin/sh -c)";

/// The sandbox the builder's tests run on: `runc`, or the one `STRATA_TEST_SANDBOX` names
/// (`docker`: every test runs again on the Docker driver, against the local engine).
pub(crate) fn sandbox() -> String {
    std::env::var("STRATA_TEST_SANDBOX").unwrap_or_else(|_| "runc".to_owned())
}

/// A label value unique to this test process and store, on every container it makes.
fn test_label(store: &Path) -> String {
    store.display().to_string()
}

/// Whether the sandbox's tests can run here; in CI they must. Docker runs only when asked
/// for, and then the engine must answer.
pub(crate) fn runc_ready() -> bool {
    if sandbox() == "docker" {
        use strata_isolate::Driver;
        let driver = strata_docker::DockerDriver::new(strata_docker::DockerOptions::new(1));
        let problem = driver
            .check()
            .err()
            .map(|e| format!("no docker engine answers ({e})"));
        return strata_test_support::require("builds under docker", problem);
    }
    strata_test_support::require("builds under runc", strata_test_support::runc())
}

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) builder: Builder,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let builder = builder_at(&dir.path().join("store"));
        Fixture { dir, builder }
    }

    pub(crate) fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A context directory with these files.
    pub(crate) fn context(&self, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.dir.path().join("context");
        std::fs::create_dir_all(&ctx).unwrap();
        for (name, text) in files {
            let p = ctx.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        ctx
    }

    pub(crate) fn build(
        &self,
        spec: &str,
        context: &Path,
    ) -> (Result<SnapshotId, strata_build::Error>, String) {
        self.build_with(spec, context, &[], &Cancel::new())
    }

    pub(crate) fn build_with(
        &self,
        spec: &str,
        context: &Path,
        secrets: &[Secret],
        cancel: &Cancel,
    ) -> (Result<SnapshotId, strata_build::Error>, String) {
        build_on(&self.builder, spec, context, secrets, cancel)
    }

    /// Builds with these secrets, host-network consent and log limit.
    pub(crate) fn build_opts(
        &self,
        spec: &str,
        context: &Path,
        secrets: &[Secret],
        allow_network_host: bool,
        log_limit: u64,
    ) -> (Result<SnapshotId, strata_build::Error>, String) {
        let spec = strata_spec::parse(spec).unwrap();
        let log = Transcript::new();
        let mut opts = BuildOptions::new(context)
            .reporter(log.clone())
            .allow_network_host(allow_network_host)
            .log_limit(log_limit);
        opts.secrets = secrets.to_vec();
        let r = self.builder.build(&spec, &opts);
        (r, log.text())
    }
}

pub(crate) fn builder_at(store: &Path) -> Builder {
    let engine = Engine::open(store).unwrap();
    strata_build::base::ensure_busybox(&engine).unwrap();
    if sandbox() == "docker" {
        let mut options = strata_docker::DockerOptions::new(4);
        options.labels = vec![("strata.test".to_owned(), test_label(store))];
        let driver = Box::new(strata_docker::DockerDriver::new(options));
        return Builder::new(Arc::new(engine), driver).unwrap();
    }
    let driver = strata_isolate::driver(
        "runc",
        &DriverOptions {
            slots: Some(4),
            fast_sync: true,
            limits: Limits::default(),
            ..DriverOptions::new(store.join("isolate-v1/runc"))
        },
    )
    .unwrap();
    Builder::new(Arc::new(engine), driver).unwrap()
}

/// Builds and returns the events the build reported.
pub(crate) fn build_events(
    builder: &Builder,
    spec: &str,
    context: &Path,
) -> (
    Result<SnapshotId, strata_build::Error>,
    Vec<strata_build::Event>,
) {
    let spec = strata_spec::parse(spec).unwrap();
    let log = Transcript::new();
    let opts = BuildOptions::new(context).reporter(log.clone());
    let r = builder.build(&spec, &opts);
    (r, log.events())
}

pub(crate) fn build_on(
    builder: &Builder,
    spec: &str,
    context: &Path,
    secrets: &[Secret],
    cancel: &Cancel,
) -> (Result<SnapshotId, strata_build::Error>, String) {
    let spec = strata_spec::parse(spec).unwrap();
    let log = Transcript::new();
    let mut opts = BuildOptions::new(context)
        .reporter(log.clone())
        .cancel(cancel.clone())
        .allow_network_host(true);
    opts.secrets = secrets.to_vec();
    let r = builder.build(&spec, &opts);
    (r, log.text())
}

/// Reads a file from a snapshot by checking it out as a plain copy.
pub(crate) fn read_file(builder: &Builder, id: &SnapshotId, path: &str) -> Option<String> {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("tree");
    builder.engine().copy_out(id, &dir).unwrap();
    std::fs::read_to_string(dir.join(path.trim_start_matches('/'))).ok()
}

/// Every path of a snapshot (directories, files, symlinks), by checking it out as a plain
/// copy and reading it back: kinds, modes, contents and link targets, for searching.
pub(crate) fn snapshot_tree(builder: &Builder, id: &SnapshotId) -> Tree {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("tree");
    builder.engine().copy_out(id, &dir).unwrap();
    tree::snapshot_of(&dir, Fields::CONTENT)
}

/// Names of the containers still known for the store: under its runc root, or (docker)
/// labelled with it.
pub(crate) fn leftover_containers(store: &Path) -> Vec<String> {
    if sandbox() == "docker" {
        let driver = strata_docker::DockerDriver::new(strata_docker::DockerOptions::new(1));
        return driver
            .containers_labelled("strata.test", &test_label(store))
            .unwrap();
    }
    let root = store.join("isolate-v1/runc/runc");
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}
