//! `strata build|healthcheck|delete|dockerfile`: running OBuilder specs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use strata_build::{BuildOptions, Builder, Secret};
use strata_isolate::Cancel;

use crate::cli::{BuildArgs, DeleteArgs, DockerfileArgs, GlobalArgs, HealthcheckArgs, SandboxArgs};
use crate::{output, progress};

/// The store and the sandbox driver the options name.
pub(crate) fn open_driver(
    global: &GlobalArgs,
    sandbox: &SandboxArgs,
) -> Result<(strata::Strata, Box<dyn strata::Driver>)> {
    let root = crate::cas::store_root(global.store.as_deref())?;
    let strata = strata::Strata::open(&root)?;
    crate::store::hand_off(strata.engine());
    let name = sandbox
        .sandbox
        .as_deref()
        .unwrap_or(strata_isolate::default_driver_name());
    let driver = strata.driver(name, &sandbox.options())?;
    Ok((strata, driver))
}

fn open_builder(global: &GlobalArgs, sandbox: &SandboxArgs) -> Result<Builder> {
    let (strata, driver) = open_driver(global, sandbox)?;
    Ok(strata.builder_with(driver)?)
}

/// `strata slots rm`: the slot sandbox's users and directories.
pub(crate) fn slots_rm(global: &GlobalArgs, args: &crate::cli::SlotsRmArgs) -> Result<()> {
    let (strata, driver) = open_driver(global, &args.sandbox)?;
    let removed = strata_build::remove_slots(strata.engine(), &*driver)
        .with_context(|| format!("cannot remove the slots of `{}`", driver.name()))?;
    if global.json {
        return output::print_json(&removed);
    }
    if removed.is_empty() {
        return output::print_text(&format!("`{}` had nothing to remove", driver.name()));
    }
    output::print_text(
        &removed
            .iter()
            .map(|r| format!("removed {r}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Reads a spec file, with errors pointing into it.
fn read_spec(path: &Path) -> Result<strata_spec::Spec> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the spec {}", path.display()))?;
    strata_spec::parse(&source)
        .map_err(|e| anyhow::anyhow!("{}", e.render(&source, &path.display().to_string())))
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
    let cancel = Cancel::new();
    install_ctrl_c(&cancel);
    let display = progress::Display::new(args.progress, global.json);
    let _ticker = display.tick();
    let mut opts = BuildOptions::new(context)
        .reporter(display.clone())
        .cancel(cancel)
        .allow_network_host(args.allow.contains(&crate::cli::Entitlement::NetworkHost))
        .log_limit(args.log_limit);
    opts.secrets = secrets;
    if let Some(t) = args.step_timeout {
        opts = opts.step_timeout(Duration::from_secs(t));
    }
    let registry = strata_oci::registry::Options::from_docker_config().insecure(args.insecure);
    if let Some(repo) = &args.cache_from {
        opts = opts.cache_from(crate::image::step_cache(repo, registry.clone())?);
    }
    if let Some(repo) = &args.cache_to {
        opts = opts.cache_to(crate::image::step_cache(repo, registry)?);
    }
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
    if args.progress == progress::Mode::Json {
        // The `finished` event said it; stdout stays JSON lines only.
        return Ok(());
    }
    output::print_text(&format!("Got: \"{id}\""))
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
    Ok(Secret::new(id, path))
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
    let engine = crate::store::open(&root)?;
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
