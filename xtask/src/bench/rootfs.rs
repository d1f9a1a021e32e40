//! The Debian rootfs cases: `strata checkout --copy` of a snapshot imported from a
//! debootstrapped Debian 12 root filesystem, against GNU `tar -x` of the same rootfs
//! tarball, both into an empty directory on the scratch filesystem; once with the layer only
//! in the store (streamed from its blob) and once with it unpacked in the cache (copied).
//!
//! The rootfs is made once, as root, under `target/bench/rootfs/root` by
//! `debootstrap --variant=minbase --include=build-essential,python3,git bookworm` from
//! Debian's mirror, less the downloaded packages (a few minutes; `stamp.json` marks it
//! complete, delete it to rebuild).
//! Each run tars it (`tar -cf rootfs.tar -C root .`, untimed) and imports that tarball;
//! without root (debootstrap needs it) the cases are skipped with a note.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::cases::{Context, s, time_case};
use super::fixture::{self, TreeCounts};
use super::report::{Check, Report, Target};
use super::runner::{self, Contender};
use super::util::sh_path;

/// What debootstrap installs, besides the minimal base: a build machine's usual tools.
const INCLUDE: &str = "build-essential,python3,git";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Issue 11's target: `checkout --copy` at least as fast as `tar -x` of the same rootfs.
const COPY_RATIO: f64 = 1.0;

#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    suite: String,
    include: String,
    counts: TreeCounts,
}

/// The debootstrapped rootfs (made once) and its counts.
fn ensure_rootfs(bench: &Path) -> anyhow::Result<(PathBuf, TreeCounts)> {
    let dir = bench.join("rootfs");
    let root = dir.join("root");
    let stamp_path = dir.join("stamp.json");
    let cached = std::fs::read_to_string(&stamp_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Stamp>(&t).ok())
        .filter(|st| st.suite == SUITE && st.include == INCLUDE && root.is_dir());
    if let Some(stamp) = cached {
        return Ok((root, stamp.counts));
    }
    let tmp = dir.join("root.tmp");
    // debootstrap refuses a target it half filled before; start over.
    runner::remove(&tmp)?;
    runner::remove(&root)?;
    std::fs::create_dir_all(&dir)?;
    say!("rootfs: debootstrap --variant=minbase --include={INCLUDE} {SUITE} (once, a few minutes)");
    let started = Instant::now();
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&tmp)
        .arg(MIRROR)
        .status()
        .context("running debootstrap (apt-get install debootstrap)")?;
    if !status.success() {
        bail!("debootstrap failed ({status})");
    }
    // As in an image: without the downloaded packages (`apt-get clean`).
    let archives = tmp.join("var/cache/apt/archives");
    for entry in std::fs::read_dir(&archives)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::rename(&tmp, &root)?;
    let counts = fixture::count_tree(&root)?;
    let stamp = Stamp {
        suite: SUITE.to_owned(),
        include: INCLUDE.to_owned(),
        counts,
    };
    std::fs::write(&stamp_path, serde_json::to_vec_pretty(&stamp)?)?;
    say!(
        "rootfs: {} entries, {:.0} MB, made in {:.0} s",
        stamp.counts.entries,
        fixture::mb(stamp.counts.bytes),
        started.elapsed().as_secs_f64()
    );
    Ok((root, stamp.counts))
}

/// Runs the rootfs cases, appending to `report`; leaves nothing behind.
pub(crate) fn run(ctx: &Context<'_>, report: &mut Report) -> anyhow::Result<()> {
    if !super::machine::is_root() {
        report
            .notes
            .push("rootfs cases skipped: debootstrap needs root".to_owned());
        return Ok(());
    }
    let (rootfs, counts) = ensure_rootfs(&ctx.paths.bench)?;
    let dir = ctx.dir("rootfs")?;
    let tarball = dir.join("rootfs.tar");
    runner::timed(&[
        "tar".to_owned(),
        "-cf".to_owned(),
        s(&tarball),
        "-C".to_owned(),
        s(&rootfs),
        ".".to_owned(),
    ])?;
    let store = dir.join("store");
    let st = s(&store);
    runner::timed(&ctx.strata(&["--store", &st, "import", &s(&tarball), "--tag", "rootfs"]))?;

    let (ours_dst, tar_dst) = (dir.join("copy-strata"), dir.join("copy-tar"));
    let ours = ctx.strata(&[
        "--store",
        &st,
        "checkout",
        "--copy",
        "--json",
        "rootfs",
        &s(&ours_dst),
    ]);
    let tar = vec![
        "tar".to_owned(),
        "-xf".to_owned(),
        s(&tarball),
        "-C".to_owned(),
        s(&tar_dst),
    ];
    let p_ours = runner::clear_before(&ours_dst);
    let p_tar = runner::empty_before(&tar_dst);
    let contenders = [
        Contender {
            label: "strata",
            argv: ours,
            prepare: &p_ours,
        },
        Contender {
            label: "tar -x",
            argv: tar,
            prepare: &p_tar,
        },
    ];
    for unpacked in [false, true] {
        if unpacked {
            // As an overlay checkout (or a build) leaves the layer: unpacked in the cache.
            let engine = strata_snapshot::Engine::open(&store)?;
            let id = engine.resolve("rootfs")?;
            engine.unpack_snapshot(&id)?;
        }
        let which = if unpacked {
            "layer unpacked in the cache"
        } else {
            "layer only in the store"
        };
        let case = format!("checkout --copy of a Debian rootfs ({which})");
        let (samples, other_cpu) = runner::side_by_side(&case, &contenders, ctx.runs)?;
        report.cases.push(time_case(
            ctx,
            &case,
            (&contenders[0], &samples[0]),
            (&contenders[1], &samples[1]),
            if unpacked {
                Target::None
            } else {
                Target::AtLeast(COPY_RATIO)
            },
            other_cpu,
        ));
        report.checks.push(same_tree(&case, &counts, &ours_dst)?);
        report
            .checks
            .push(same_tree("tar -x of the rootfs", &counts, &tar_dst)?);
    }
    report.notes.push(format!(
        "rootfs cases: `debootstrap --variant=minbase --include={INCLUDE} {SUITE}`, {} entries, \
         {:.0} MB of file data, tarred ({}) and imported as one layer",
        counts.entries,
        fixture::mb(counts.bytes),
        sh_path(&tarball)
    ));
    runner::remove(&dir)
}

fn same_tree(what: &str, want: &TreeCounts, dir: &Path) -> anyhow::Result<Check> {
    let got = fixture::count_tree(dir)?;
    Ok(Check {
        name: format!("{what}: same entries and file bytes as the rootfs"),
        ok: want.entries == got.entries && want.bytes == got.bytes,
        detail: format!(
            "rootfs {} entries / {} B, copy {} / {} B",
            want.entries, want.bytes, got.entries, got.bytes
        ),
    })
}
