//! `strata build|healthcheck|delete|dockerfile`: running OBuilder specs.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use strata_build::{BuildOptions, Builder, Reporter, Secret};
use strata_isolate::{Cancel, DriverOptions};
use strata_snapshot::Engine;

use crate::cli::{BuildArgs, DeleteArgs, DockerfileArgs, GlobalArgs, HealthcheckArgs, SandboxArgs};
use crate::output;

fn open_builder(global: &GlobalArgs, sandbox: &SandboxArgs) -> Result<Builder> {
    let root = crate::cas::store_root(global.store.as_deref())?;
    let engine = Engine::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    let name = sandbox
        .sandbox
        .as_deref()
        .unwrap_or(strata_isolate::default_driver_name());
    let options = DriverOptions {
        state_dir: root.join("isolate-v1").join(name),
        slots: sandbox.slots,
        fast_sync: sandbox.fast_sync,
        limits: sandbox.limits(),
    };
    let driver = strata_isolate::driver(name, &options)?;
    Ok(Builder::new(Arc::new(engine), driver)?)
}

/// Reads a spec file, with errors pointing into it.
fn read_spec(path: &Path) -> Result<strata_spec::Spec> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the spec {}", path.display()))?;
    strata_spec::parse(&source)
        .map_err(|e| anyhow::anyhow!("{}", e.render(&source, &path.display().to_string())))
}

/// Prints progress as OBuilder does: headings, notes and the steps' output on stdout (or, with
/// --json, on stderr, keeping stdout for the result).
struct Terminal {
    to_stderr: bool,
    /// When the current step last printed, for the "still running" line on a terminal.
    last: Mutex<Instant>,
}

impl Terminal {
    fn write(&self, data: &[u8]) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        // Progress output is best effort: a closed stdout must not kill the build.
        let _ = if self.to_stderr {
            std::io::stderr().lock().write_all(data)
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(data).and_then(|()| out.flush())
        };
    }
}

impl Reporter for Terminal {
    fn heading(&self, text: &str) {
        self.write(format!("{text}\n").as_bytes());
    }

    fn note(&self, text: &str) {
        self.write(format!("{text}\n").as_bytes());
    }

    fn output(&self, data: &[u8]) {
        self.write(data);
    }
}

#[derive(Serialize)]
struct BuildOut {
    snapshot: String,
    hits: u64,
    misses: u64,
    seconds: f64,
}

/// `strata build [-f SPEC] [CONTEXT]`.
pub(crate) fn build(global: &GlobalArgs, args: &BuildArgs) -> Result<()> {
    let started = Instant::now();
    let secrets = args
        .secrets
        .iter()
        .map(|s| parse_secret(s))
        .collect::<Result<Vec<_>>>()?;
    let context = &args.context;
    if !context.is_dir() {
        bail!("the build context {} is not a directory", context.display());
    }
    let spec_path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("build.spec"));
    let spec = read_spec(&spec_path)?;
    let builder = open_builder(global, &args.sandbox)?;
    ensure_bases(&builder, &spec)?;
    let cancel = Cancel::new();
    install_ctrl_c(&cancel);
    let terminal = Arc::new(Terminal {
        to_stderr: global.json,
        last: Mutex::new(Instant::now()),
    });
    let _ticker = Ticker::start(terminal.clone());
    let opts = BuildOptions {
        context,
        secrets: &secrets,
        reporter: &*terminal,
        cancel: &cancel,
        step_timeout: args.step_timeout.map(Duration::from_secs),
        allow_network_host: args.allow.contains(&crate::cli::Entitlement::NetworkHost),
        log_limit: args.log_limit,
    };
    let id = builder.build(&spec, &opts)?;
    let stats = builder.stats();
    if global.json {
        return output::print_json(&BuildOut {
            snapshot: id.to_hex(),
            hits: stats.hits,
            misses: stats.misses,
            seconds: output::seconds(started.elapsed()),
        });
    }
    output::print_text(&format!("Got: \"{id}\""))
}

/// Creates the busybox base offline when a spec needs it and the store lacks it.
fn ensure_bases(builder: &Builder, spec: &strata_spec::Spec) -> Result<()> {
    let mut images = vec![spec.from.clone()];
    let mut stack: Vec<&strata_spec::Spec> = spec.stages.iter().map(|s| &s.spec).collect();
    while let Some(s) = stack.pop() {
        images.push(s.from.clone());
        stack.extend(s.stages.iter().map(|s| &s.spec));
    }
    for image in images {
        if builder.resolve_base(&image).is_err() && strata_build::base::is_busybox(&image) {
            strata_build::base::ensure_busybox(builder.engine())
                .context("cannot create the busybox base image from the host's busybox-static")?;
        }
    }
    Ok(())
}

fn parse_secret(s: &str) -> Result<Secret> {
    let Some((id, path)) = s.split_once(':') else {
        bail!("--secret {s}: expected ID:PATH");
    };
    if id.is_empty() || path.is_empty() {
        bail!("--secret {s}: expected ID:PATH with neither empty");
    }
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!("--secret {s}: {} is not a readable file", path.display());
    }
    Ok(Secret {
        id: id.to_owned(),
        path,
    })
}

/// Ctrl-C cancels the build cleanly (the sandbox is killed, nothing is cached); a second
/// Ctrl-C exits at once.
fn install_ctrl_c(cancel: &Cancel) {
    let cancel = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if cancel.is_cancelled() {
            std::process::exit(130);
        }
        eprintln!("\ncancelling the build (Ctrl-C again to exit at once)");
        cancel.cancel();
    });
}

/// On a terminal, says how long a silent step has been running, on stderr.
struct Ticker {
    stop: Cancel,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(terminal: Arc<Terminal>) -> Ticker {
        let stop = Cancel::new();
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut shown = false;
                while stop.wait(Duration::from_millis(500)).is_none() {
                    let silent = terminal
                        .last
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .elapsed();
                    if silent >= Duration::from_secs(3) {
                        eprint!("\r\x1b[2K  … {}s without output", silent.as_secs());
                        shown = true;
                    } else if shown {
                        eprint!("\r\x1b[2K");
                        shown = false;
                    }
                }
                if shown {
                    eprint!("\r\x1b[2K");
                }
            })
        });
        Ticker { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `strata healthcheck`: runs `echo healthcheck` in the base through the sandbox.
pub(crate) fn healthcheck(global: &GlobalArgs, args: &HealthcheckArgs) -> Result<()> {
    let started = Instant::now();
    let builder = open_builder(global, &args.sandbox)?;
    let base = match builder.resolve_base(&args.base) {
        Ok(id) => id,
        Err(_) if strata_build::base::is_busybox(&args.base) => {
            strata_build::base::ensure_busybox(builder.engine())?
        }
        Err(e) => return Err(e.into()),
    };
    let cancel = Cancel::new();
    install_ctrl_c(&cancel);
    builder.healthcheck(
        &base,
        &cancel.with_timeout(Duration::from_secs(args.timeout)),
    )?;
    if global.json {
        return output::print_json(
            &serde_json::json!({"ok": true, "seconds": output::seconds(started.elapsed())}),
        );
    }
    output::print_text(&format!(
        "healthy ({})",
        output::duration(started.elapsed())
    ))
}

/// `strata delete ID`: a snapshot and everything built on it.
pub(crate) fn delete(global: &GlobalArgs, args: &DeleteArgs) -> Result<()> {
    let root = crate::cas::store_root(global.store.as_deref())?;
    let engine = Engine::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    let id = engine.resolve(&args.id)?;
    let removed =
        strata_build::delete(&engine, &id).with_context(|| format!("cannot delete {}", args.id))?;
    if global.json {
        return output::print_json(&removed.iter().map(|s| s.to_hex()).collect::<Vec<_>>());
    }
    output::print_text(
        &removed
            .iter()
            .map(|s| format!("deleted {s}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// `strata dockerfile -f SPEC`.
pub(crate) fn dockerfile(global: &GlobalArgs, args: &DockerfileArgs) -> Result<()> {
    let spec = read_spec(&args.file)?;
    let os = match args.os {
        crate::cli::DockerOs::Unix => strata_spec::dockerfile::DockerOs::Unix,
        crate::cli::DockerOs::Windows => strata_spec::dockerfile::DockerOs::Windows,
    };
    let text = strata_spec::dockerfile::to_dockerfile(&spec, args.buildkit, os)?;
    if global.json {
        return output::print_json(&serde_json::json!({ "dockerfile": text }));
    }
    output::print_text(text.trim_end_matches('\n'))
}
