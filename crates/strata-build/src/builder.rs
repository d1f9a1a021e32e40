//! The builder: walks a spec, keys each step, reuses hits, runs misses through the driver.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use strata_cas::Progress;
use strata_isolate::{BindMount, Cancel, Driver, Job, Layout, NetworkMode, Outcome, SecretMount};
use strata_snapshot::{Engine, SnapshotId};
use strata_spec::{Copy, CopyFrom, Op, Run, Spec, User};

use crate::context::{self, Context};
use crate::copy::Manifest;
use crate::error::{Error, Result, io_err};
use crate::events::{Event, HitSource, StepInfo, Task};
use crate::key::{KeyBuilder, StepKey};
use crate::log::{Follower, LogSink, StepLog, replay};
use crate::options::{BuildOptions, Secret};
use crate::remote::RemoteCache;
use crate::steps::Steps;

/// Cache hits and misses since the builder was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// Runs specs against one store with one driver. Share it between threads: concurrent builds
/// are limited by the driver's slots, and identical steps run once.
#[derive(Debug)]
pub struct Builder {
    engine: Arc<Engine>,
    driver: Box<dyn Driver>,
    steps: Steps,
    inflight: Mutex<HashMap<StepKey, Arc<InFlight>>>,
    slots: Slots,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Set once the driver was checked and its leftovers cleaned: on the first step that
    /// runs, so that a build served from the cache never starts the sandbox tooling.
    ready: std::sync::OnceLock<Result<(), String>>,
}

/// Numbers job and checkout-directory names. Process-wide, not per builder: two builders in
/// one process (an embedder's, or a test's) must never hand out the same name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// How stale a last-used time may get before a hit refreshes it (prune's LRU needs no finer).
const TOUCH_AFTER_MS: i64 = 60_000;

/// One call of [`Builder::build`]: its options, and what it numbers and counts.
struct Session<'o> {
    opts: &'o BuildOptions,
    next_step: Cell<u32>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl Session<'_> {
    fn emit(&self, event: Event) {
        self.opts.reporter.event(&event);
    }

    fn cancelled(&self) -> bool {
        self.opts.cancel.is_cancelled()
    }
}

/// A step of the build as it runs: announced once, with its key when it has one.
struct Step<'s, 'o> {
    session: &'s Session<'o>,
    info: std::cell::RefCell<StepInfo>,
    announced: Cell<bool>,
    /// `<workdir>: <op>`, how errors name the step.
    label: String,
}

impl<'s, 'o> Step<'s, 'o> {
    fn new(session: &'s Session<'o>, stage: Option<&str>, ctx: &Context, op: &Op) -> Self {
        let n = session.next_step.get();
        session.next_step.set(n + 1);
        let op = op.to_sexp().to_string();
        Step {
            session,
            label: format!("{}: {op}", ctx.workdir),
            info: std::cell::RefCell::new(StepInfo {
                step: n,
                stage: stage.map(str::to_owned),
                workdir: ctx.workdir.clone(),
                op,
                key: None,
            }),
            announced: Cell::new(false),
        }
    }

    fn index(&self) -> u32 {
        self.info.borrow().step
    }

    /// Emits `StepStarted` (once): with the key, if it is known by now.
    fn announce(&self, key: Option<StepKey>) {
        if !self.announced.replace(true) {
            let mut info = self.info.borrow_mut();
            info.key = key;
            self.session.emit(Event::StepStarted(info.clone()));
        }
    }

    fn sink(&self) -> LogSink<'_> {
        LogSink {
            reporter: &*self.session.opts.reporter,
            step: self.index(),
        }
    }

    fn progress(&self, task: Task, progress: &Progress) {
        self.session.emit(Event::Progress {
            step: self.index(),
            task,
            done: progress.done(),
            total: progress.total(),
        });
    }

    fn note(&self, text: &str) {
        self.session.emit(Event::Note {
            step: self.index(),
            text: text.to_owned(),
        });
    }
}

/// What a run step asks of the driver, besides its parent.
#[derive(Clone, Copy)]
struct JobRequest<'a> {
    ctx: &'a Context,
    run: &'a Run,
    network: NetworkMode,
    secrets: &'a [SecretMount],
    step: &'a str,
    opts: &'a BuildOptions,
}

/// How a step shows the progress of its long work: how often, and to whom.
struct ShowProgress<'a> {
    every: Duration,
    report: &'a dyn Fn(&Progress),
}

/// A step's new snapshot, as the step made it.
#[derive(Debug, Clone, Copy)]
struct Made {
    id: SnapshotId,
    layer_bytes: u64,
}

/// A step being run by this process; later requesters of the same key wait on it.
#[derive(Debug)]
struct InFlight {
    log: PathBuf,
    result: Mutex<Option<Shared>>,
    cv: Condvar,
}

#[derive(Debug, Clone)]
enum Shared {
    Done(SnapshotId),
    Failed(String),
    Cancelled,
}

impl InFlight {
    fn finished(&self) -> bool {
        self.result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn wait(&self) -> Shared {
        let guard = self.result.lock().unwrap_or_else(|e| e.into_inner());
        let guard = self
            .cv
            .wait_while(guard, |r| r.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.clone().unwrap_or(Shared::Cancelled)
    }
}

impl Builder {
    /// A builder over `engine` running steps with `driver`. Cleans up what crashed runs of
    /// the driver left behind.
    pub fn new(engine: Arc<Engine>, driver: Box<dyn Driver>) -> Result<Builder> {
        let steps = Steps::open(engine.root())?;
        let slots = Slots::new(driver.capabilities().slots.max(1));
        let b = Builder {
            engine,
            driver,
            steps,
            inflight: Mutex::new(HashMap::new()),
            slots,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            ready: std::sync::OnceLock::new(),
        };
        Ok(b)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn driver(&self) -> &dyn Driver {
        &*self.driver
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Builds `spec` and returns the final snapshot. Events go to `opts.reporter`.
    pub fn build(&self, spec: &Spec, opts: &BuildOptions) -> Result<SnapshotId> {
        let started = Instant::now();
        let session = Session {
            opts,
            next_step: Cell::new(0),
            hits: Cell::new(0),
            misses: Cell::new(0),
        };
        let (id, ctx) = self.build_stage(spec, None, &session, &HashMap::new())?;
        self.steps.put_image(&id, &ctx)?;
        session.emit(Event::Finished {
            snapshot: id,
            hits: session.hits.get(),
            misses: session.misses.get(),
            duration: started.elapsed(),
        });
        Ok(id)
    }

    fn build_stage(
        &self,
        spec: &Spec,
        stage: Option<&str>,
        s: &Session<'_>,
        outer: &HashMap<String, SnapshotId>,
    ) -> Result<(SnapshotId, Context)> {
        let mut stages = outer.clone();
        for inner in &spec.stages {
            let (id, _) = self.build_stage(&inner.spec, Some(&inner.name), s, &stages)?;
            stages.insert(inner.name.clone(), id);
        }
        let mut ctx = Context::for_driver(self.driver.capabilities());
        let base = if let Layout::MountedState { .. } = self.driver.capabilities().layout {
            // The image supplies the OS; the chain holds only the state, empty at first.
            self.driver_ready()?;
            let image = self.driver.resolve_image(&spec.from)?;
            ctx.image = Some(image);
            self.empty_state()?
        } else {
            self.base(&spec.from)?
        };
        s.emit(Event::StageStarted {
            stage: stage.map(str::to_owned),
            from: spec.from.clone(),
            base,
        });
        let mut current = base;
        for op in &spec.ops {
            if s.cancelled() {
                return Err(Error::Cancelled);
            }
            let step = Step::new(s, stage, &ctx, op);
            let result = match op {
                Op::Run(run) => self.run_step(&current, &ctx, run, &step),
                Op::Copy(copy) => self.copy_step(&current, &ctx, copy, &step, &stages),
                _ => {
                    step.announce(None);
                    match op {
                        Op::Workdir(p) => ctx.set_workdir(p),
                        Op::Shell(argv) => ctx.shell = argv.clone(),
                        Op::Env { name, value } => ctx.set_env(name, value),
                        Op::User(u) => ctx.user = u.clone(),
                        _ => {}
                    }
                    Ok(current)
                }
            };
            step.announce(None);
            match result {
                Ok(id) => current = id,
                Err(e) => {
                    s.emit(Event::Failed {
                        step: step.index(),
                        error: e.to_string(),
                    });
                    return Err(e);
                }
            }
        }
        Ok((current, ctx))
    }

    /// The context (workdir, user, environment, shell) the last build of `snapshot` ended
    /// in, which an image of it runs with; none for a snapshot no build produced.
    pub fn image_context(&self, snapshot: &SnapshotId) -> Result<Option<Context>> {
        self.steps.get_image(snapshot)
    }

    /// The base a stage starts from. The busybox base of the embedded defaults is made from
    /// the host's busybox-static the first time a spec needs it.
    fn base(&self, image: &str) -> Result<SnapshotId> {
        match self.resolve_base(image) {
            Err(Error::MissingBase { .. }) if crate::base::is_busybox(image) => {
                crate::base::ensure_busybox(&self.engine)
            }
            found => found,
        }
    }

    /// The base of a state chain: an empty layer, the same snapshot for every image (the
    /// image is in the steps' keys instead).
    fn empty_state(&self) -> Result<SnapshotId> {
        let empty = [0u8; 1024];
        Ok(self.engine.import_layer(None, &empty[..], None)?.id)
    }

    /// The snapshot a `(from IMAGE)` names: a tag or id equal to IMAGE, else IMAGE without its
    /// `@digest`, else without its `:tag` (images are imported under their names).
    pub fn resolve_base(&self, image: &str) -> Result<SnapshotId> {
        let no_digest = image.split('@').next().unwrap_or(image);
        let no_tag = match no_digest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => no_digest,
        };
        for candidate in [image, no_digest, no_tag] {
            match self.engine.resolve(candidate) {
                Ok(id) => return Ok(id),
                Err(strata_snapshot::Error::Index(
                    strata_snapshot::index::Error::UnknownReference { .. },
                )) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::MissingBase {
            image: image.to_owned(),
        })
    }

    fn run_step(
        &self,
        parent: &SnapshotId,
        ctx: &Context,
        run: &Run,
        step: &Step<'_, '_>,
    ) -> Result<SnapshotId> {
        let opts = step.session.opts;
        let label = step.label.clone();
        let network = match run.network.as_slice() {
            [] => NetworkMode::None,
            [n] if n == "host" && opts.allow_network_host => NetworkMode::Host,
            [n] if n == "host" => return Err(Error::NetworkNotAllowed { step: label }),
            other => {
                return Err(Error::Network {
                    step: label,
                    network: other.join(" "),
                });
            }
        };
        let mut secrets = Vec::new();
        for m in &run.secrets {
            let Some(s) = opts.secrets.iter().find(|s| s.id == m.id) else {
                return Err(Error::MissingSecret {
                    step: label,
                    id: m.id.clone(),
                });
            };
            // Relative to where the build was started; the driver needs an absolute path.
            let source = std::path::absolute(&s.path).map_err(io_err("resolve", &s.path))?;
            secrets.push(SecretMount {
                source,
                target: m.target.clone(),
            });
        }
        let mut k = KeyBuilder::new(parent, "run");
        ctx.hash_into(&mut k);
        k.str("cmd", &run.shell);
        k.list("network", &run.network, |k, n| {
            k.str("name", n);
        });
        k.list("cache", &run.cache, |k, m| {
            k.str("id", &m.id).str("target", &m.target);
        });
        // By id and target only: the value stays out of the key (see `key`).
        k.list("secrets", &run.secrets, |k, m| {
            k.str("id", &m.id).str("target", &m.target);
        });
        let key = k.finish();
        self.step(key, step, &|log| {
            let progress = ShowProgress {
                every: opts.progress_every,
                report: &|p| step.progress(Task::Commit, p),
            };
            self.execute_run(
                parent, ctx, run, network, &secrets, &label, log, opts, &progress,
            )
        })
    }

    #[allow(clippy::too_many_arguments, reason = "one step's full description")]
    fn execute_run(
        &self,
        parent: &SnapshotId,
        ctx: &Context,
        run: &Run,
        network: NetworkMode,
        secrets: &[SecretMount],
        step: &str,
        log: &mut dyn Write,
        opts: &BuildOptions,
        progress: &ShowProgress<'_>,
    ) -> Result<Made> {
        let job = JobRequest {
            ctx,
            run,
            network,
            secrets,
            step,
            opts,
        };
        if self.driver.capabilities().layout == Layout::Layers {
            return self.execute_on_layers(parent, &job, log);
        }
        self.in_checkout(parent, step, &opts.cancel, progress, |dir| {
            self.run_job(&job, dir, |plan, cancel| {
                Ok(self.driver.run(plan, log, cancel)?)
            })
        })
    }

    /// Runs a step with a driver that works on layers: no checkout; the driver hands back
    /// the step's changes, recorded here as a snapshot on `parent`.
    fn execute_on_layers(
        &self,
        parent: &SnapshotId,
        job: &JobRequest<'_>,
        log: &mut dyn Write,
    ) -> Result<Made> {
        let chain = crate::layers::EngineChain::new(&self.engine, parent)?;
        let mut made = None;
        self.run_job(job, Path::new(""), |plan, cancel| {
            let mut sink = |changes: &mut dyn io::Read| {
                let snapshot = self.engine.import_layer(Some(parent), changes, None)?;
                made = Some(snapshot);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            Ok(self
                .driver
                .run_on_layers(plan, &chain, log, cancel, &mut sink)?)
        })?;
        let Some(snapshot) = made else {
            return Err(Error::Driver {
                reason: format!(
                    "sandbox `{}` ran step {} but gave back no changes",
                    self.driver.name(),
                    job.step
                ),
            });
        };
        Ok(self.made(snapshot.id, &snapshot.layer))
    }

    /// What a step made, for its event: a blob that cannot be looked at counts as empty.
    fn made(&self, id: SnapshotId, layer: &strata_cas::LayerId) -> Made {
        let layer_bytes = self
            .engine
            .cas()
            .stat(layer)
            .map_or(0, |b| b.compressed_size);
        Made { id, layer_bytes }
    }

    /// Takes the step's caches, plans its job on `root` and runs it with `go`; fails
    /// unless it exited with status 0.
    fn run_job(
        &self,
        req: &JobRequest<'_>,
        root: &Path,
        go: impl FnOnce(&strata_isolate::Plan, &Cancel) -> Result<Outcome>,
    ) -> Result<()> {
        let JobRequest {
            ctx,
            run,
            network,
            secrets,
            step,
            opts,
        } = *req;
        let mut views = Vec::new();
        let mut mounts = Vec::new();
        let mut acquired = Ok(());
        for c in &run.cache {
            match self.engine.cache_acquire(&c.id, ctx.owner()) {
                Ok(v) => {
                    mounts.push(BindMount {
                        source: v.dir.clone(),
                        target: c.target.clone(),
                        readonly: false,
                    });
                    views.push(v);
                }
                Err(e) => {
                    acquired = Err(Error::from(e));
                    break;
                }
            }
        }
        let outcome = acquired.and_then(|()| {
            let job = Job {
                network,
                mounts,
                secrets: secrets.to_vec(),
                ..self.job(ctx, root, &run.shell)
            };
            self.driver_ready()?;
            let plan = match &ctx.image {
                Some(image) => self.driver.plan_on_image(&job, image),
                None => self.driver.plan(&job),
            }
            .map_err(|source| Error::Sandbox {
                step: step.to_owned(),
                source,
            })?;
            let _slot = self.slots.acquire(&opts.cancel)?;
            let cancel = match opts.step_timeout {
                Some(t) => opts.cancel.with_timeout(t),
                None => opts.cancel.clone(),
            };
            go(&plan, &cancel)
        });
        // Caches are handed back whether the step worked or not (first release wins).
        let mut released = Ok(());
        for v in views {
            if let Err(e) = self.engine.cache_release(v) {
                released = released.and(Err(Error::from(e)));
            }
        }
        let outcome = outcome?;
        released?;
        match outcome {
            Outcome::Exited(0) => Ok(()),
            Outcome::Cancelled => Err(Error::Cancelled),
            o => Err(Error::StepFailed {
                step: step.to_owned(),
                outcome: o,
            }),
        }
    }

    /// Commits `dir` on another thread while this one, the build's, reports the commit's
    /// progress as often as it asks (a large commit takes seconds; most take less than
    /// one tick and report nothing).
    fn commit_reporting(
        &self,
        dir: &Path,
        show: &ShowProgress<'_>,
    ) -> strata_snapshot::Result<strata_snapshot::Snapshot> {
        let progress = &Progress::new();
        std::thread::scope(|s| {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let committing = s.spawn(move || {
                let result = self.engine.commit_with_progress(dir, None, progress);
                let _ = done_tx.send(());
                result
            });
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                done_rx.recv_timeout(show.every)
            {
                (show.report)(progress);
            }
            committing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Checks `parent` out, lets `work` change the checkout, and commits it as a child
    /// snapshot. On any error, the commit's included, the checkout is discarded instead:
    /// nothing of a failed step stays in the store.
    fn in_checkout(
        &self,
        parent: &SnapshotId,
        step: &str,
        cancel: &Cancel,
        progress: &ShowProgress<'_>,
        work: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Made> {
        let root = self.checkout_root(cancel)?;
        let dir = root.path();
        self.engine.checkout(parent, dir, root.mode())?;
        let result = work(dir).and_then(|()| {
            let row = self
                .commit_reporting(dir, progress)
                .map_err(|source| Error::Commit {
                    step: step.to_owned(),
                    source: Box::new(source),
                })?;
            Ok(self.made(row.id, &row.layer))
        });
        result.map_err(|e| {
            // Judged before the release frees what the step wrote.
            let e = explain_full_disk(e, self.engine.root());
            // Still tracked unless the commit got past its point of no return.
            let _ = self.engine.release(dir);
            e
        })
    }

    fn copy_step(
        &self,
        parent: &SnapshotId,
        ctx: &Context,
        copy: &Copy,
        step: &Step<'_, '_>,
        stages: &HashMap<String, SnapshotId>,
    ) -> Result<SnapshotId> {
        let opts = step.session.opts;
        let label = step.label.clone();
        let dst = context::join(&ctx.workdir, &copy.dst);
        let (root, stage_dir) = match &copy.from {
            CopyFrom::Context => (opts.context.clone(), None),
            CopyFrom::Build(name) => {
                let id = stages
                    .get(name)
                    .ok_or_else(|| Error::UnknownStage { name: name.clone() })?;
                // Only read from: a root of the pool, even for a driver with slots.
                let root = crate::roots::acquire(&self.steps.roots_dir(), &self.engine)?;
                self.engine.checkout(id, root.path(), None)?;
                (root.path().to_path_buf(), Some(root))
            }
        };
        let result = (|| {
            let manifest = Manifest::build(&root, copy, &dst)?;
            let mut k = KeyBuilder::new(parent, "copy");
            match &ctx.user {
                User::Unix { uid, gid } => {
                    k.u64("uid", u64::from(*uid)).u64("gid", u64::from(*gid))
                }
                User::Name(n) => k.str("user", n),
            };
            k.str("dst", &dst);
            match &copy.from {
                CopyFrom::Context => k.str("from", "context"),
                CopyFrom::Build(name) => k.str("from", "build").str("stage", name),
            };
            manifest.hash_into(&mut k);
            let key = k.finish();
            let owner = ctx.owner();
            self.step(key, step, &|_log| {
                let progress = ShowProgress {
                    every: opts.progress_every,
                    report: &|p| step.progress(Task::Commit, p),
                };
                self.execute_copy(parent, &manifest, owner, &label, &opts.cancel, &progress)
            })
        })();
        if let Some(root) = stage_dir {
            let _ = self.engine.release(root.path());
        }
        result
    }

    fn execute_copy(
        &self,
        parent: &SnapshotId,
        manifest: &Manifest,
        (uid, gid): (u32, u32),
        step: &str,
        cancel: &Cancel,
        progress: &ShowProgress<'_>,
    ) -> Result<Made> {
        self.in_checkout(parent, step, cancel, progress, |dir| {
            std::thread::scope(|s| {
                let (reader, writer) = io::pipe().map_err(io_err("create a pipe for", dir))?;
                let writing = s.spawn(move || manifest.write_tar(writer, uid, gid));
                let applied = strata_cas::extract::apply_tar(
                    reader,
                    dir,
                    &strata_cas::ExtractOptions::default(),
                );
                let written = writing.join().unwrap_or_else(|_| Err(Error::Cancelled));
                // The writer's own error explains a broken pipe better than the reader's.
                written?;
                applied?;
                Ok(())
            })
        })
    }

    /// Runs a keyed step once: a recorded result is replayed; a step this process is already
    /// running is followed; one another process is running is waited for.
    fn step(
        &self,
        key: StepKey,
        step: &Step<'_, '_>,
        run: &dyn Fn(&mut dyn Write) -> Result<Made>,
    ) -> Result<SnapshotId> {
        step.announce(Some(key));
        let s = step.session;
        loop {
            if let Some(id) = self.lookup(&key)? {
                return self.hit(&key, id, true, step);
            }
            let (flight, primary) = {
                let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                match map.get(&key) {
                    Some(f) => (f.clone(), false),
                    None => {
                        let f = Arc::new(InFlight {
                            log: self.steps.running_log_path(&key),
                            result: Mutex::new(None),
                            cv: Condvar::new(),
                        });
                        map.insert(key, f.clone());
                        (f, true)
                    }
                }
            };
            if primary {
                let result = self.run_locked(&key, step, run);
                let shared = match &result {
                    Ok(id) => Shared::Done(*id),
                    Err(Error::Cancelled) => Shared::Cancelled,
                    Err(e) => Shared::Failed(e.to_string()),
                };
                self.inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                *flight.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared);
                flight.cv.notify_all();
                return result;
            }
            let mut follower = Follower::new();
            follower
                .follow(&flight.log, step.sink(), || {
                    flight.finished() || s.cancelled()
                })
                .map_err(io_err("follow", &flight.log))?;
            if s.cancelled() {
                return Err(Error::Cancelled);
            }
            match flight.wait() {
                Shared::Done(id) => {
                    if !follower.attached() {
                        replay(&self.steps.log_path(&key), step.sink())
                            .map_err(io_err("read", self.steps.log_path(&key)))?;
                    }
                    self.count_hit(s);
                    s.emit(Event::CacheHit {
                        step: step.index(),
                        snapshot: id,
                        source: HitSource::Concurrent,
                    });
                    return Ok(id);
                }
                Shared::Failed(message) => {
                    return Err(Error::SharedFailure {
                        step: step.label.clone(),
                        message,
                    });
                }
                // The requester that ran it was cancelled, not us: try again.
                Shared::Cancelled => continue,
            }
        }
    }

    /// Runs a step under its cross-process lock, unless another process recorded it meanwhile.
    fn run_locked(
        &self,
        key: &StepKey,
        step: &Step<'_, '_>,
        run: &dyn Fn(&mut dyn Write) -> Result<Made>,
    ) -> Result<SnapshotId> {
        let s = step.session;
        let lock = self.steps.lock_file(key)?;
        let running = self.steps.running_log_path(key);
        let mut follower = Follower::new();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if s.cancelled() {
                        return Err(Error::Cancelled);
                    }
                    if follower
                        .poll(&running, step.sink())
                        .map_err(io_err("follow", &running))?
                        == 0
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &running)(e)),
            }
        }
        if follower.attached() {
            follower
                .poll(&running, step.sink())
                .map_err(io_err("follow", &running))?;
        }
        if let Some(id) = self.lookup(key)? {
            // What we followed of the other process's run was the log: don't repeat it.
            return self.hit(key, id, !follower.attached(), step);
        }
        if let Some(remote) = &s.opts.cache_from
            && let Some(id) = self.fetch_remote(remote.as_ref(), key, step)?
        {
            return Ok(id);
        }
        if follower.attached() {
            step.note("another build's attempt at this step failed; running it here");
        }
        let masked = secret_values(&step.label, &s.opts.secrets)?;
        let _ = fs::remove_file(&running);
        let file = crate::steps::create_private(&running)?;
        let started = Instant::now();
        let mut log = StepLog::new(file, step.sink(), &masked, s.opts.log_limit);
        let result = run(&mut log);
        let result = match log.finish() {
            Ok(()) => result,
            Err(e) => result.and(Err(io_err("write", &running)(e))),
        };
        match result {
            Ok(made) => {
                let log = self.steps.log_path(key);
                fs::rename(&running, &log).map_err(io_err("keep", &log))?;
                self.steps.put(key, &made.id)?;
                self.publish(key, &made.id, step);
                self.misses.fetch_add(1, Ordering::Relaxed);
                s.misses.set(s.misses.get() + 1);
                s.emit(Event::Saved {
                    step: step.index(),
                    snapshot: made.id,
                    layer_bytes: made.layer_bytes,
                    duration: started.elapsed(),
                });
                Ok(made.id)
            }
            Err(e) => {
                // Failures are not cached: the log goes with them.
                let _ = fs::remove_file(&running);
                Err(e)
            }
        }
        // `lock` is released when dropped here, after the key is recorded.
    }

    /// Reports a cache hit, replaying the step's log unless the requester already saw it
    /// (then it was another build's run of the step, followed as it went).
    fn hit(
        &self,
        key: &StepKey,
        id: SnapshotId,
        replay_log: bool,
        step: &Step<'_, '_>,
    ) -> Result<SnapshotId> {
        if replay_log {
            let log = self.steps.log_path(key);
            replay(&log, step.sink()).map_err(io_err("read", &log))?;
            // A step built before the shared cache was in use goes there too.
            if let Some(remote) = &step.session.opts.cache_to {
                match remote.contains(key) {
                    Ok(true) => {}
                    Ok(false) => self.publish(key, &id, step),
                    Err(e) => step.note(&format!(
                        "cannot reach the shared cache {}: {e}",
                        remote.describe()
                    )),
                }
            }
        }
        self.count_hit(step.session);
        step.session.emit(Event::CacheHit {
            step: step.index(),
            snapshot: id,
            source: if replay_log {
                HitSource::Local
            } else {
                HitSource::Concurrent
            },
        });
        Ok(id)
    }

    /// Takes a step from the shared cache: its snapshot is in the store once `fetch`
    /// returns; its log is recorded like a local run's, then the key. A cache that cannot be
    /// reached or holds a bad entry is noted, and the step runs here.
    fn fetch_remote(
        &self,
        remote: &dyn RemoteCache,
        key: &StepKey,
        step: &Step<'_, '_>,
    ) -> Result<Option<SnapshotId>> {
        let found = match remote.fetch(&self.engine, key) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(e) => {
                step.note(&format!(
                    "cannot use the shared cache {}: {e}; running the step here",
                    remote.describe()
                ));
                return Ok(None);
            }
        };
        let running = self.steps.running_log_path(key);
        let _ = fs::remove_file(&running);
        let mut file = crate::steps::create_private(&running)?;
        file.write_all(&found.log)
            .map_err(io_err("write", &running))?;
        drop(file);
        let log = self.steps.log_path(key);
        fs::rename(&running, &log).map_err(io_err("keep", &log))?;
        self.steps.put(key, &found.snapshot)?;
        replay(&log, step.sink()).map_err(io_err("read", &log))?;
        self.count_hit(step.session);
        step.session.emit(Event::CacheHit {
            step: step.index(),
            snapshot: found.snapshot,
            source: HitSource::Registry,
        });
        Ok(Some(found.snapshot))
    }

    /// Offers a step to the shared cache of `--cache-to`; a failure is noted, not fatal (the
    /// step's result is safe in the store).
    fn publish(&self, key: &StepKey, id: &SnapshotId, step: &Step<'_, '_>) {
        let Some(remote) = &step.session.opts.cache_to else {
            return;
        };
        let log = fs::read(self.steps.log_path(key)).unwrap_or_default();
        if let Err(e) = remote.publish(&self.engine, key, id, &log) {
            step.note(&format!(
                "cannot publish the step to the shared cache {}: {e}",
                remote.describe()
            ));
        }
    }

    fn count_hit(&self, s: &Session<'_>) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        s.hits.set(s.hits.get() + 1);
    }

    /// A recorded step whose snapshot still exists; forgets it if the snapshot was pruned.
    fn lookup(&self, key: &StepKey) -> Result<Option<SnapshotId>> {
        let Some((id, step_used)) = self.steps.get(key)? else {
            return Ok(None);
        };
        let now = strata_snapshot::now_millis();
        // Hits must stay cheap: last-used times (the step's and the snapshot's) move only
        // when a minute stale, so a build served from the cache usually writes nothing.
        let Some(snapshot) = self.engine.snapshot(&id)? else {
            self.steps.forget(key)?;
            return Ok(None);
        };
        if now - snapshot.last_used > TOUCH_AFTER_MS {
            self.engine.touch(&[id])?;
        }
        if now - step_used > TOUCH_AFTER_MS {
            self.steps.touch(key, now)?;
        }
        Ok(Some(id))
    }

    /// Runs `echo healthcheck` in `base` without caching anything; fails unless it prints that.
    pub fn healthcheck(&self, base: &SnapshotId, cancel: &Cancel) -> Result<()> {
        let ctx = Context::for_driver(self.driver.capabilities());
        let mut out = Vec::new();
        let outcome = if self.driver.capabilities().layout == Layout::Layers {
            let chain = crate::layers::EngineChain::new(&self.engine, base)?;
            let job = self.job(&ctx, Path::new(""), "echo healthcheck");
            self.driver_ready()?;
            // Nothing is recorded: the changes are read and dropped.
            let mut discard = |changes: &mut dyn io::Read| {
                io::copy(changes, &mut io::sink())?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            self.driver.plan(&job).and_then(|plan| {
                self.driver
                    .run_on_layers(&plan, &chain, &mut out, cancel, &mut discard)
            })?
        } else {
            let root = self.checkout_root(cancel)?;
            let dir = root.path();
            self.engine.checkout(base, dir, root.mode())?;
            let job = self.job(&ctx, dir, "echo healthcheck");
            self.driver_ready()?;
            let ran = self
                .driver
                .plan(&job)
                .and_then(|plan| self.driver.run(&plan, &mut out, cancel));
            let _ = self.engine.release(dir);
            ran?
        };
        if outcome == Outcome::Exited(0) && out.windows(11).any(|w| w == b"healthcheck") {
            Ok(())
        } else {
            Err(Error::StepFailed {
                step: format!("healthcheck (output: {:?})", String::from_utf8_lossy(&out)),
                outcome,
            })
        }
    }

    /// A job running `command` through the context's shell in the checkout `root`: no
    /// network, mounts or secrets unless the caller adds them.
    fn job(&self, ctx: &Context, root: &Path, command: &str) -> Job {
        let mut argv = ctx.shell.clone();
        argv.push(command.to_owned());
        Job {
            name: strata_isolate::job_name(NEXT.fetch_add(1, Ordering::Relaxed)),
            root: root.to_path_buf(),
            argv,
            cwd: ctx.workdir.clone(),
            env: ctx.env.clone(),
            user: match &ctx.user {
                User::Unix { uid, gid } => strata_isolate::User::Unix {
                    uid: *uid,
                    gid: *gid,
                },
                User::Name(n) => strata_isolate::User::Name(n.clone()),
            },
            network: NetworkMode::None,
            mounts: Vec::new(),
            secrets: Vec::new(),
            hostname: "builder".to_owned(),
        }
    }

    /// Checks the driver and cleans up after crashed runs, once per builder.
    fn driver_ready(&self) -> Result<()> {
        let ready = self.ready.get_or_init(|| {
            let name = self.driver.name().to_owned();
            self.driver
                .check()
                .and_then(|()| self.driver.cleanup().map(drop))
                .map_err(|e| format!("sandbox `{name}`: {e}"))
        });
        ready.clone().map_err(|reason| Error::Driver { reason })
    }

    /// Where a step's checkout goes: a slot of the driver's, waiting for one unless
    /// cancelled, or a free root of the pool (see `slot_roots.rs` and `roots.rs`).
    fn checkout_root(&self, cancel: &Cancel) -> Result<crate::slot_roots::CheckoutRoot> {
        crate::slot_roots::acquire(&*self.driver, &self.steps.roots_dir(), &self.engine, cancel)
    }
}

/// A step that failed while the store's filesystem is full (in the job, writing its log, or
/// committing) failed because of it, most likely: say so, rather than leave the user to dig
/// it out of the step's output or an errno.
fn explain_full_disk(e: Error, store: &Path) -> Error {
    if matches!(e, Error::Cancelled) {
        return e;
    }
    // A write that met ENOSPC says so; a job's failure only shows as its exit status, so
    // the filesystem is asked how much room is left.
    let full = out_of_space(&e) || free_bytes(store).is_some_and(|free| free < FULL_BELOW);
    if full {
        Error::StoreFull {
            path: store.to_path_buf(),
            source: Box::new(e),
        }
    } else {
        e
    }
}

/// Whether an I/O error in `e`'s chain of sources is a full disk or an exhausted quota.
fn out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Below this many free bytes, the store's filesystem counts as full.
const FULL_BELOW: u64 = 1 << 20;

/// The bytes an unprivileged writer may still use on the filesystem holding `path`.
#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_: &Path) -> Option<u64> {
    None
}

/// Deletes `id` and every snapshot built on it, children first, and forgets the steps that
/// produced them. Returns what was removed. Refused (with nothing removed past the refusal)
/// while one of them is checked out or in use.
pub fn delete(engine: &Engine, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
    let steps = Steps::open(engine.root())?;
    let mut order = Vec::new();
    let mut stack = vec![*id];
    while let Some(s) = stack.pop() {
        order.push(s);
        stack.extend(engine.children(&s)?);
    }
    let mut removed = Vec::new();
    let result = order.iter().rev().try_for_each(|s| {
        engine.remove_snapshot(s)?;
        removed.push(*s);
        Ok::<_, Error>(())
    });
    steps.forget_snapshots(&removed)?;
    result.map(|()| removed)
}

/// The context (workdir, user, environment, shell) the last build of `snapshot` in the
/// store of `engine` ended in, as [`Builder::image_context`], without a driver.
pub fn image_context(engine: &Engine, snapshot: &SnapshotId) -> Result<Option<Context>> {
    Steps::open(engine.root())?.get_image(snapshot)
}

/// Forgets the recorded steps whose snapshot is gone (pruned or removed), with their logs,
/// and removes the live logs crashed runs left. Returns how many steps were forgotten.
/// `strata prune` and `strata gc` call it; lookups also forget such steps lazily.
pub fn forget_missing(engine: &Engine) -> Result<u64> {
    let steps = Steps::open(engine.root())?;
    let live: std::collections::HashSet<SnapshotId> = engine.snapshot_ids()?.into_iter().collect();
    let mut forgotten = 0;
    for (key, snapshot) in steps.all()? {
        if !live.contains(&snapshot) {
            steps.forget_hex(&key)?;
            forgotten += 1;
        }
    }
    steps.forget_images(|s| !live.contains(s))?;
    let logs = steps.dir.join("logs");
    for entry in fs::read_dir(&logs)
        .map_err(io_err("list", &logs))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".running") else {
            continue;
        };
        // Whoever writes a live log holds its key's lock: a lock we can take means no one.
        let lock = steps.dir.join("locks").join(format!("{key}.lock"));
        let free = File::open(&lock).map_or(true, |f| f.try_lock().is_ok());
        if free {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(forgotten)
}

/// The values of the build's secrets, to mask in the step's output. Read when a step runs,
/// so a secret file that changed since the build started is masked as it is now.
fn secret_values(step: &str, secrets: &[Secret]) -> Result<Vec<Vec<u8>>> {
    secrets
        .iter()
        .map(|s| {
            fs::read(&s.path).map_err(|source| Error::SecretUnreadable {
                step: step.to_owned(),
                id: s.id.clone(),
                path: s.path.clone(),
                source,
            })
        })
        .collect()
}

/// Bounds how many sandboxes run at once in this process.
#[derive(Debug)]
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }

    fn acquire(&self, cancel: &Cancel) -> Result<SlotGuard<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if *free > 0 {
                *free -= 1;
                return Ok(SlotGuard(self));
            }
            free = self
                .cv
                .wait_timeout(free, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}
