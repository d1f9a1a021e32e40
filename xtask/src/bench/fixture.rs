//! The benchmark trees, built once and cached under `target/bench/`.
//!
//! - The *fixture*: a real tree made of Debian 12 packages fetched with `apt-get download`
//!   and unpacked with `dpkg -x` into `target/bench/fixture/root`. A stamp file
//!   (`fixture/stamp.json`, which also holds the counts for the report) marks it complete; it is
//!   rebuilt only when the stamp is missing or lists other packages than [`PACKAGES`].
//! - The *big* tree (full mode only): one 2 GiB file of incompressible data plus a few
//!   thousand small files, under `target/bench/big/root`, to show that memory does not grow
//!   with the layer.

use std::io::Write as _;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::runner;
use super::util::Paths;

/// The Debian 12 (bookworm) packages unpacked into the fixture.
///
/// The mix looks like a real build layer: thousands of small source files (the Go standard
/// library sources, Python and Perl modules, Vim's runtime, C++ headers) next to a few large
/// binaries (`cc1` from cpp-12, ICU's data library). Measured on bookworm with 12.12-era
/// versions: 19,268 entries (17,446 files, 1,808 dirs, 14 symlinks), 291 MB of file data;
/// the aim is 15k–25k entries and 250–350 MB.
/// Versions are whatever the archive serves; the report records them.
const PACKAGES: &[&str] = &[
    "golang-1.19-src",         // ~13.0k entries, 119 MB: Go sources and testdata
    "libpython3.11-stdlib",    // ~0.4k entries, 8 MB: Python modules, extension .so files
    "libpython3.11-testsuite", // ~1.5k entries, 25 MB: Python's test suite
    "perl-modules-5.36",       // ~1.4k entries, 18 MB: Perl modules
    "vim-runtime",             // ~2.1k entries, 37 MB: Vim scripts, docs, syntax files
    "libstdc++-12-dev",        // ~0.9k entries, 20 MB: C++ headers and static libraries
    "cpp-12",                  // 16 entries, 35 MB: the C preprocessor (cc1, large binary)
    "libicu72",                // 24 entries, 37 MB: ICU libraries (30 MB data library)
];

/// One unpacked package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) version: String,
}

/// Counts of a tree, as the report shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TreeCounts {
    /// Every entry below the root (the root itself excluded).
    pub(crate) entries: u64,
    pub(crate) files: u64,
    pub(crate) dirs: u64,
    pub(crate) symlinks: u64,
    pub(crate) other: u64,
    /// Sum of the regular files' sizes.
    pub(crate) bytes: u64,
}

/// The fixture's description, stored in the stamp and copied into the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FixtureInfo {
    pub(crate) root: String,
    pub(crate) packages: Vec<Package>,
    #[serde(flatten)]
    pub(crate) counts: TreeCounts,
}

#[derive(Debug)]
pub(crate) struct Fixture {
    pub(crate) root: PathBuf,
    pub(crate) info: FixtureInfo,
}

/// Returns the fixture, building it first if its stamp is missing or stale.
pub(crate) fn ensure(paths: &Paths) -> anyhow::Result<Fixture> {
    let dir = paths.bench.join("fixture");
    let root = dir.join("root");
    let stamp = dir.join("stamp.json");
    if let Some(info) = read_stamp(&stamp)
        && root.is_dir()
    {
        let names: Vec<&str> = info.packages.iter().map(|p| p.name.as_str()).collect();
        if names == PACKAGES {
            say!(
                "fixture cached: {} ({} entries, {:.1} MB)",
                paths.show(&root),
                info.counts.entries,
                mb(info.counts.bytes)
            );
            return Ok(Fixture { root, info });
        }
        say!("fixture package list changed; rebuilding");
    }
    build(paths, &dir, &root, &stamp)
}

fn read_stamp(stamp: &Path) -> Option<FixtureInfo> {
    serde_json::from_str(&std::fs::read_to_string(stamp).ok()?).ok()
}

fn build(paths: &Paths, dir: &Path, root: &Path, stamp: &Path) -> anyhow::Result<Fixture> {
    let _ = std::fs::remove_file(stamp);
    runner::remove(root)?;
    let debs = dir.join("debs");
    runner::remove(&debs)?;
    std::fs::create_dir_all(&debs)?;

    say!(
        "downloading {} Debian packages: {}",
        PACKAGES.len(),
        PACKAGES.join(" ")
    );
    if let Err(first) = apt_download(&debs) {
        say!("apt-get download failed ({first:#}); running apt-get update and retrying");
        let status = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .context("running apt-get update")?;
        if !status.success() {
            bail!(
                "apt-get update failed ({status}); the fixture needs Debian's package lists \
                 (run `apt-get update` as root)"
            );
        }
        apt_download(&debs).context("apt-get download failed even after apt-get update")?;
    }

    let tmp = dir.join("root.tmp");
    runner::remove(&tmp)?;
    std::fs::create_dir_all(&tmp)?;
    let mut packages = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for name in PACKAGES {
        let deb = files
            .iter()
            .find(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no .deb for {name}"))?;
        let version = capture(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(deb)
                .arg("Version"),
        )?;
        say!("unpacking {name} {version}");
        capture(Command::new("dpkg").arg("-x").arg(deb).arg(&tmp))?;
        packages.push(Package {
            name: (*name).to_owned(),
            version,
        });
    }
    std::fs::rename(&tmp, root)?;
    runner::remove(&debs)?;

    let counts = count_tree(root)?;
    let info = FixtureInfo {
        root: paths.show(root),
        packages,
        counts,
    };
    if !(15_000..=25_000).contains(&info.counts.entries)
        || !(250e6..=350e6).contains(&(info.counts.bytes as f64))
    {
        say!(
            "warning: the fixture has {} entries and {:.1} MB, outside the intended 15k–25k \
             entries and 250–350 MB; revise PACKAGES",
            info.counts.entries,
            mb(info.counts.bytes)
        );
    }
    std::fs::write(stamp, serde_json::to_string_pretty(&info)? + "\n")?;
    say!(
        "fixture built: {} entries, {:.1} MB in {}",
        info.counts.entries,
        mb(info.counts.bytes),
        paths.show(root)
    );
    Ok(Fixture {
        root: root.to_path_buf(),
        info,
    })
}

fn apt_download(debs: &Path) -> anyhow::Result<()> {
    capture(
        Command::new("apt-get")
            .args(["download", "-qq"])
            .args(PACKAGES)
            .current_dir(debs),
    )
    .map(drop)
}

/// Runs `cmd`, fails with its stderr if it fails, returns its trimmed stdout.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Counts the entries of the tree below `root` (not following symlinks).
pub(crate) fn count_tree(root: &Path) -> anyhow::Result<TreeCounts> {
    let mut counts = TreeCounts::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let ft = entry.file_type()?;
            counts.entries += 1;
            if ft.is_dir() {
                counts.dirs += 1;
                stack.push(entry.path());
            } else if ft.is_file() {
                counts.files += 1;
                counts.bytes += entry.metadata()?.len();
            } else if ft.is_symlink() {
                counts.symlinks += 1;
            } else if ft.is_fifo() || ft.is_block_device() || ft.is_char_device() || ft.is_socket()
            {
                counts.other += 1;
            }
        }
    }
    Ok(counts)
}

pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Size of the big file of the big tree.
const BIG_FILE_BYTES: u64 = 2 << 30;
/// Number of small files next to it.
const BIG_SMALL_FILES: u32 = 3000;

/// Returns the big tree's root, generating it first if its stamp is missing.
pub(crate) fn ensure_big(paths: &Paths) -> anyhow::Result<(PathBuf, TreeCounts)> {
    let dir = paths.bench.join("big");
    let root = dir.join("root");
    let stamp = dir.join("stamp.json");
    if root.is_dir()
        && let Some(counts) = std::fs::read_to_string(&stamp)
            .ok()
            .and_then(|s| serde_json::from_str::<TreeCounts>(&s).ok())
    {
        return Ok((root, counts));
    }
    say!("generating the big tree (2 GiB file + {BIG_SMALL_FILES} small files)");
    let _ = std::fs::remove_file(&stamp);
    runner::remove(&root)?;
    let tmp = dir.join("root.tmp");
    runner::remove(&tmp)?;
    std::fs::create_dir_all(&tmp)?;

    // 64 MiB of xorshift output written 32 times: zstd's window at level 3 is far smaller than
    // the period, so the file is incompressible for it.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let block: Vec<u8> = (0..(64 << 20) / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    let mut big = std::io::BufWriter::new(std::fs::File::create(tmp.join("blob.bin"))?);
    for _ in 0..BIG_FILE_BYTES / block.len() as u64 {
        big.write_all(&block)?;
    }
    big.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;

    for i in 0..BIG_SMALL_FILES {
        let sub = tmp.join(format!("d{:02}", i % 30));
        std::fs::create_dir_all(&sub)?;
        let len = 200 + (rng.next() % 8000) as usize;
        let text: String = (0..len)
            .map(|j| char::from(b'a' + ((i as usize + j) % 26) as u8))
            .collect();
        std::fs::write(sub.join(format!("f{i:05}.txt")), text)?;
    }
    std::fs::rename(&tmp, &root)?;
    let counts = count_tree(&root)?;
    std::fs::write(&stamp, serde_json::to_string_pretty(&counts)? + "\n")?;
    Ok((root, counts))
}

/// A tiny deterministic generator, good enough for incompressible bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
