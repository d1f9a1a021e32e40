//! The scratch filesystem that receives every layer and extracted tree.
//!
//! The machines this project runs on have an ext4 root without a journal, on which repeated
//! extract / `rm -rf` cycles slow down badly and make timings drift run after run. As root we
//! therefore create (once) a 4 GiB ext4 image *with* a journal at `target/bench/fs.img`,
//! loop-mount it at `target/bench/mnt` and work in `mnt/work`; the image is unmounted when the
//! benchmark ends. Without root (or when the mount fails) we fall back to `target/bench/work`
//! on whatever filesystem holds the target directory, and the report says so.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::machine::is_root;
use super::util::Paths;

const IMAGE_BYTES: u64 = 4 << 30;

/// What the report says about the scratch filesystem.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FilesystemInfo {
    /// `loop-ext4-journal` or `fallback-dir`.
    pub(crate) kind: String,
    /// Where outputs go (relative to the workspace root).
    pub(crate) work_dir: String,
    /// Human description, including why we fell back if we did.
    pub(crate) description: String,
    /// The mount line from `/proc/self/mounts` for the work directory's filesystem, if found.
    pub(crate) mount: Option<String>,
    /// Whether the loop device does direct I/O on its backing file (loop image only).
    pub(crate) loop_direct_io: Option<bool>,
}

/// The scratch space; unmounts the loop image (if we use one) on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    work: PathBuf,
    mountpoint: Option<PathBuf>,
    info: FilesystemInfo,
}

impl Scratch {
    pub(crate) fn setup(paths: &Paths) -> anyhow::Result<Self> {
        let fallback_reason = if is_root() {
            match mount_image(paths) {
                Ok(mnt) => {
                    let work = mnt.join("work");
                    reset_dir(&work)?;
                    let direct_io = loop_direct_io(&mnt);
                    let dio = match direct_io {
                        Some(true) => "on",
                        Some(false) => "off",
                        None => "unknown",
                    };
                    let info = FilesystemInfo {
                        kind: "loop-ext4-journal".to_owned(),
                        work_dir: paths.show(&work),
                        description: format!(
                            "ext4 with journal on a 4 GiB loop image ({}) mounted at {}, \
                             loop direct I/O {dio}",
                            paths.show(&paths.bench.join("fs.img")),
                            paths.show(&mnt)
                        ),
                        mount: mount_line(&mnt),
                        loop_direct_io: direct_io,
                    };
                    say!("scratch filesystem: {}", info.description);
                    return Ok(Scratch {
                        work,
                        mountpoint: Some(mnt),
                        info,
                    });
                }
                Err(e) => format!("loop mount failed: {e:#}"),
            }
        } else {
            "not running as root, so no loop-mounted image".to_owned()
        };
        let work = paths.bench.join("work");
        reset_dir(&work)?;
        let info = FilesystemInfo {
            kind: "fallback-dir".to_owned(),
            work_dir: paths.show(&work),
            description: format!(
                "plain directory {} ({fallback_reason}); timings of extract cycles may drift \
                 on a journal-less ext4",
                paths.show(&work)
            ),
            mount: mount_line(&work),
            loop_direct_io: None,
        };
        say!("scratch filesystem: {}", info.description);
        Ok(Scratch {
            work,
            mountpoint: None,
            info,
        })
    }

    pub(crate) fn work(&self) -> &Path {
        &self.work
    }

    pub(crate) fn describe(&self) -> FilesystemInfo {
        self.info.clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: leave no benchmark output behind, then unmount.
        let _ = std::fs::remove_dir_all(&self.work);
        if let Some(mnt) = &self.mountpoint {
            let ok = Command::new("umount")
                .arg(mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                say!(
                    "warning: could not unmount {}; run `umount` by hand",
                    mnt.display()
                );
            }
        }
    }
}

/// Empties `dir` (creating it if needed).
fn reset_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Creates the image if missing and mounts it unless already mounted; returns the mountpoint.
fn mount_image(paths: &Paths) -> anyhow::Result<PathBuf> {
    let image = paths.bench.join("fs.img");
    let mnt = paths.bench.join("mnt");
    std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let mnt = mnt.canonicalize()?;
    if mount_line(&mnt).is_some_and(|line| line.split_whitespace().nth(1) == Some(&*mnt_str(&mnt)))
    {
        say!("{} is already mounted; reusing it", paths.show(&mnt));
        return Ok(mnt);
    }
    if !image.exists() {
        say!("creating the 4 GiB ext4 image {}", paths.show(&image));
        let tmp = paths.bench.join("fs.img.tmp");
        write_zeros(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        // -j: a journal whatever mke2fs.conf says; no lazy init, so no background zeroing
        // of inode tables runs during the timed cases.
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-j",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ])
            .arg(&tmp))?;
        std::fs::rename(&tmp, &image)?;
    }
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mnt))?;
    Ok(mnt)
}

/// Writes the image out in full rather than sparse: a sparse (or `fallocate`d) image makes
/// the host filesystem allocate (or convert) blocks while the timed commands run.
fn write_zeros(path: &Path) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut file = File::create(path)?;
    for _ in 0..IMAGE_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()
}

/// Switches the loop device under `mnt` to direct I/O (best effort) and reports whether it
/// is on: without it every block is cached twice, once per filesystem, and `sync` on the
/// image only moves dirty data into the backing file's page cache.
fn loop_direct_io(mnt: &Path) -> Option<bool> {
    let line = mount_line(mnt)?;
    let device = line.split_whitespace().next()?;
    let name = device.strip_prefix("/dev/")?;
    if !name.starts_with("loop") {
        return None;
    }
    let flag = Path::new("/sys/block").join(name).join("loop/dio");
    let on = || std::fs::read_to_string(&flag).is_ok_and(|v| v.trim() == "1");
    if !on() {
        let _ = Command::new("losetup")
            .args(["--direct-io=on", device])
            .output();
    }
    Some(on())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `/proc/self/mounts` escapes blanks and backslashes in octal.
fn mnt_str(path: &Path) -> String {
    path.to_string_lossy()
        .replace('\\', r"\134")
        .replace(' ', r"\040")
        .replace('\t', r"\011")
        .replace('\n', r"\012")
}

/// The line of `/proc/self/mounts` for the filesystem holding `path` (longest mountpoint that
/// is a prefix of it).
fn mount_line(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let wanted = mnt_str(&path);
    mounts
        .lines()
        .filter(|line| {
            line.split_whitespace().nth(1).is_some_and(|m| {
                m == "/"
                    || wanted == m
                    || wanted
                        .strip_prefix(m)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .max_by_key(|line| line.split_whitespace().nth(1).map_or(0, str::len))
        .map(str::to_owned)
}
