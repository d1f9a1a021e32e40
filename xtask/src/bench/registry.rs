//! The registry cases: push and pull of a 10-layer image against `skopeo copy` between the
//! same OCI layout and the same registry, and a cold build on an empty store with
//! `--cache-from` against building it from scratch.
//!
//! Setup (untimed): a throwaway docker-registry on a loopback port
//! (`strata_oci::testing`); a 10-layer snapshot of [`LAYER_MIB`] MiB per layer of files half
//! random and half text (about 2:1 for zstd), stored through the engine; its zstd OCI
//! layout (`strata export`), which skopeo pushes.
//!
//! - push: `strata push` against `skopeo copy oci:LAYOUT docker://…`, the registry's storage
//!   emptied before every run so both upload every blob; both send the zstd blobs as they
//!   are (target: at least as fast);
//! - pull: `strata pull` into an empty store against `skopeo copy docker://… oci:DIR` of the
//!   same image (target: at least as fast; ours also decompresses every layer to validate
//!   its tar and hash it with blake3, and stores the layers);
//! - cold build: a spec of [`STEPS`] steps that each write text, on an empty store, with
//!   `--cache-from` (another store built it with `--cache-to`) against running it; needs
//!   root, runc and busybox-static, else skipped with a note.
//!
//! They need docker-registry and skopeo (`apt-get install docker-registry skopeo`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::cases::{pair_case, s, time_case_at};
use super::report::{Report, Target};
use super::runner::{self, Contender};
use super::util::Paths;

/// Layers of the benchmark image, and MiB of files in each.
const LAYERS: usize = 10;
const LAYER_MIB: usize = 30;
/// Steps of the cold-build spec.
const STEPS: usize = 5;

/// What the registry cases need.
pub(crate) struct RegistryContext<'a> {
    pub(crate) paths: &'a Paths,
    pub(crate) strata: &'a Path,
    pub(crate) work: &'a Path,
    pub(crate) runs: usize,
}

pub(crate) fn run(ctx: &RegistryContext<'_>, report: &mut Report) -> anyhow::Result<()> {
    if super::machine::find_program("skopeo").is_none()
        || !Path::new(strata_oci::testing::REGISTRY_BIN).exists()
    {
        report.notes.push(
            "registry cases skipped: they need docker-registry and skopeo \
             (apt-get install docker-registry skopeo)"
                .into(),
        );
        return Ok(());
    }
    let dir = ctx.work.join("registry");
    runner::remove(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let registry = strata_oci::testing::Registry::start().context("starting docker-registry")?;
    let host = registry.host();
    let store = dir.join("store");
    let strata = |store: &Path, args: &[&str]| -> Vec<String> {
        let mut v = vec![s(ctx.strata), "--store".into(), s(store)];
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    };
    let blob_bytes = make_image(&dir, &store)?;
    say!(
        "registry: a {LAYERS}-layer image of {} MiB ({:.0} MB of zstd blobs)",
        LAYERS * LAYER_MIB,
        blob_bytes as f64 / 1e6
    );
    let layout = dir.join("layout");
    runner::timed(&strata(
        &store,
        &["export", "bench-image", "-o", &s(&layout)],
    ))?;

    // Push: every blob goes up, for both.
    let storage = registry.storage().to_path_buf();
    let empty_registry = || -> anyhow::Result<()> { runner::remove(&storage.join("docker")) };
    let ours = Contender {
        label: "strata push",
        argv: strata(
            &store,
            &["push", "bench-image", &format!("{host}/bench/strata:1")],
        ),
        prepare: &empty_registry,
    };
    let skopeo = Contender {
        label: "skopeo copy",
        argv: vec![
            "skopeo".into(),
            "copy".into(),
            "--quiet".into(),
            "--dest-tls-verify=false".into(),
            format!("oci:{}", s(&layout)),
            format!("docker://{host}/bench/skopeo:1"),
        ],
        prepare: &empty_registry,
    };
    let name = format!(
        "push: {LAYERS}-layer image ({} MiB) to a registry, zstd as stored",
        LAYERS * LAYER_MIB
    );
    pair_case(
        ctx.paths,
        report,
        &name,
        &[ours, skopeo],
        ctx.runs,
        Target::AtLeast(1.0),
    )?;

    // Pull: the image pushed once more, then fetched into empty places.
    let image = format!("{host}/bench/strata:1");
    runner::timed(&strata(&store, &["push", "bench-image", &image]))?;
    let pulled_store = dir.join("pulled-store");
    let pulled_layout = dir.join("pulled-layout");
    let clear_store = runner::clear_before(&pulled_store);
    let clear_layout = runner::clear_before(&pulled_layout);
    let ours = Contender {
        label: "strata pull",
        argv: strata(&pulled_store, &["pull", &image]),
        prepare: &clear_store,
    };
    let skopeo = Contender {
        label: "skopeo copy",
        argv: vec![
            "skopeo".into(),
            "copy".into(),
            "--quiet".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{image}"),
            format!("oci:{}:1", s(&pulled_layout)),
        ],
        prepare: &clear_layout,
    };
    let name = format!(
        "pull: {LAYERS}-layer image ({} MiB) from a registry into an empty store",
        LAYERS * LAYER_MIB
    );
    pair_case(
        ctx.paths,
        report,
        &name,
        &[ours, skopeo],
        ctx.runs,
        Target::AtLeast(1.0),
    )?;
    runner::remove(&pulled_store)?;
    runner::remove(&pulled_layout)?;

    cold_build(ctx, report, &dir, &host)?;
    drop(registry);
    runner::remove(&dir)
}

/// The benchmark image: [`LAYERS`] layers stored through the engine, tagged `bench-image`.
/// Returns the bytes of the stored blobs.
fn make_image(dir: &Path, store: &Path) -> anyhow::Result<u64> {
    let engine = strata_snapshot::Engine::open(store)?;
    let mut parent = None;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut bytes = 0;
    for layer in 0..LAYERS {
        let tree = dir.join(format!("layer-{layer}"));
        std::fs::create_dir_all(&tree)?;
        for file in 0..LAYER_MIB {
            let mut data = Vec::with_capacity(1 << 20);
            while data.len() < 1 << 20 {
                // Half random, half text: about what zstd makes of binaries and sources.
                for _ in 0..512 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    data.extend_from_slice(&rng.to_le_bytes());
                }
                let end = data.len() + 4096;
                while data.len() < end {
                    writeln!(data, "line {} of layer {layer} file {file}", data.len())?;
                }
                data.truncate(end);
            }
            data.truncate(1 << 20);
            std::fs::write(tree.join(format!("f{file:03}")), &data)?;
        }
        let info = engine
            .cas()
            .put_dir(&tree, &strata_cas::CreateOptions::default())?;
        bytes += info.compressed_size;
        let top = (layer + 1 == LAYERS).then_some("bench-image");
        parent = Some(engine.add_snapshot(parent.as_ref(), &info.id, top)?.id);
        runner::remove(&tree)?;
    }
    Ok(bytes)
}

/// A cold build with `--cache-from` against one from scratch, each on an empty store.
fn cold_build(
    ctx: &RegistryContext<'_>,
    report: &mut Report,
    dir: &Path,
    host: &str,
) -> anyhow::Result<()> {
    let runc_ok = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runc_ok || !super::machine::is_root() || !Path::new("/bin/busybox").exists() {
        report.notes.push(
            "cold build with --cache-from skipped: it needs root, runc and busybox-static".into(),
        );
        return Ok(());
    }
    let spec_dir = dir.join("spec");
    std::fs::create_dir_all(&spec_dir)?;
    let steps: String = (0..STEPS)
        .map(|i| {
            format!(
                " (run (shell \"seq {} {} > /data-{i}.txt && sort -r /data-{i}.txt | md5sum\"))\n",
                i * 1_000_000,
                (i + 1) * 1_000_000
            )
        })
        .collect();
    std::fs::write(
        spec_dir.join("build.spec"),
        format!("((from busybox) (shell /bin/sh -c)\n{steps})\n"),
    )?;
    let cache = format!("{host}/bench/cache");
    let builder = |store: &PathBuf, extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            s(ctx.strata),
            "--store".into(),
            s(store),
            "build".into(),
            s(&spec_dir),
        ];
        v.extend(extra.iter().map(|a| (*a).to_owned()));
        v
    };
    // Builder A fills the cache (untimed).
    let (_, out) = runner::timed(&builder(&dir.join("store-a"), &["--cache-to", &cache]))?;
    if !out.contains("Got:") {
        bail!("the cache-filling build printed no result:\n{out}");
    }
    let store_b = dir.join("store-b");
    let store_c = dir.join("store-c");
    let clear_b = runner::clear_before(&store_b);
    let clear_c = runner::clear_before(&store_c);
    let ours = Contender {
        label: "build --cache-from",
        argv: builder(&store_b, &["--cache-from", &cache]),
        prepare: &clear_b,
    };
    let scratch = Contender {
        label: "build from scratch",
        argv: builder(&store_c, &[]),
        prepare: &clear_c,
    };
    let name =
        format!("cold build of {STEPS} steps on an empty store: --cache-from vs running them");
    let contenders = [ours, scratch];
    let (samples, share) = runner::side_by_side(&name, &contenders, ctx.runs)?;
    for out in &samples[0].outputs {
        if out.matches("from the registry cache").count() != STEPS {
            bail!("a --cache-from build ran steps:\n{out}");
        }
    }
    report.cases.push(time_case_at(
        ctx.paths,
        &name,
        (&contenders[0], &samples[0]),
        (&contenders[1], &samples[1]),
        Target::None,
        share,
    ));
    Ok(())
}
