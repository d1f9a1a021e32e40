//! The unpacked-layer cache: layers extracted once under `unpacked-v1/` and shared
//! read-only, their relocated variants and hard-linked twins, and the markers of layers an
//! overlay commit moved in without a flush.

use std::fs;
#[cfg(target_os = "linux")]
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use strata_cas::{DevicePolicy, ExtractOptions, LayerId, SetuidPolicy, WhiteoutMode};

use super::{Engine, Result, failpoint, io_err, remove_tree, unique_name};
#[cfg(target_os = "linux")]
use crate::relocate;

impl Engine {
    /// How the store extracts one of its layers: devices made only where the store may
    /// (root), setuid bits kept, whiteouts as `whiteouts` says.
    pub(crate) fn layer_extract_options(&self, whiteouts: WhiteoutMode) -> ExtractOptions {
        ExtractOptions {
            devices: if self.privileged {
                DevicePolicy::Create
            } else {
                DevicePolicy::Skip
            },
            setuid: SetuidPolicy::Keep,
            whiteouts,
            ..ExtractOptions::default()
        }
    }

    /// The directories holding `layers` unpacked, unpacking the missing ones first. Each is
    /// extracted into `tmp-<owner>-*` and renamed into place once flushed: on Linux with one
    /// `syncfs` for all of them (a cold checkout of ten layers paid ten), elsewhere by the
    /// extraction itself.
    pub(crate) fn ensure_unpacked(&self, layers: &[LayerId]) -> Result<Vec<PathBuf>> {
        let overlay_format = self.privileged;
        let targets: Vec<PathBuf> = layers.iter().map(|l| self.unpacked_path(l)).collect();
        let opts = ExtractOptions {
            sync: !cfg!(target_os = "linux"),
            ..self.layer_extract_options(if overlay_format {
                WhiteoutMode::Overlay
            } else {
                WhiteoutMode::Keep
            })
        };
        // (layer, its temporary directory, its place), for each one not unpacked yet.
        let mut made: Vec<(LayerId, PathBuf, &PathBuf)> = Vec::new();
        let extracted = (|| {
            for (layer, target) in layers.iter().zip(&targets) {
                if target.is_dir() && unsynced_in_earlier_boot(target) {
                    // Made from a volatile upper dir before a reboot: it may have lost
                    // writes. Move it aside (others may still have it mounted) and unpack
                    // the layer again from its blob.
                    let aside = self.unpacked.join(unique_name("tmp-"));
                    if fs::rename(target, &aside).is_ok() {
                        let _ = fs::remove_file(unsynced_marker(target));
                        let _ = remove_tree(&aside);
                        self.remove_derived(target);
                    }
                }
                if target.is_dir() || made.iter().any(|(_, _, t)| *t == target) {
                    continue;
                }
                let tmp = self.unpacked.join(unique_name("tmp-"));
                made.push((*layer, tmp.clone(), target));
                self.cas.apply(layer, &tmp, &opts)?;
                failpoint("unpack.extracted");
            }
            #[cfg(target_os = "linux")]
            if !made.is_empty() {
                sync_filesystems(&[self.unpacked.as_path()])?;
            }
            Ok(())
        })();
        if let Err(e) = extracted {
            for (_, tmp, _) in &made {
                let _ = remove_tree(tmp);
            }
            return Err(e);
        }
        for (layer, tmp, target) in made {
            match fs::rename(&tmp, target) {
                Ok(()) => {}
                // Another process unpacked the same layer first: same content, keep theirs.
                Err(_) if target.is_dir() => remove_tree(&tmp)?,
                Err(e) => return Err(io_err("rename into place", target)(e)),
            }
            failpoint("unpack.renamed");
            self.with_index(|ix| Ok(ix.set_layer_unpacked(&layer, true)?))?;
        }
        Ok(targets)
    }

    /// Where `layer` is unpacked: in overlayfs's format as root, with `.wh.` files
    /// (`<layer>.plain`) otherwise.
    fn unpacked_path(&self, layer: &LayerId) -> PathBuf {
        self.unpacked.join(if self.privileged {
            layer.to_hex()
        } else {
            format!("{}.plain", layer.to_hex())
        })
    }

    /// Whether `layer` is unpacked and trusted (see [`Engine::ensure_unpacked`]).
    pub(super) fn is_unpacked(&self, layer: &LayerId) -> bool {
        let path = self.unpacked_path(layer);
        path.is_dir() && !unsynced_in_earlier_boot(&path)
    }

    /// Removes the twins and relocated variants (`<name>@…`) derived from the unpacked layer
    /// at `source`: they share its files, so they go when it is distrusted.
    fn remove_derived(&self, source: &Path) {
        let Some(name) = source
            .file_name()
            .map(|n| format!("{}@", n.to_string_lossy()))
        else {
            return;
        };
        let Ok(entries) = fs::read_dir(&self.unpacked) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&name) {
                let aside = self.unpacked.join(unique_name("tmp-"));
                if fs::rename(entry.path(), &aside).is_ok() {
                    let _ = remove_tree(&aside);
                }
            }
        }
    }

    /// The `n`th hard-linked twin of the unpacked layer at `source` (made once, then reused):
    /// the same files under another directory name, so one stack can name the layer twice.
    #[cfg(target_os = "linux")]
    pub(super) fn twin(&self, source: &Path, n: usize) -> Result<PathBuf> {
        self.derived_layer(source, &format!("dup-{n}"), |tmp| {
            clone_tree(
                source,
                tmp,
                &mut Vec::new(),
                &std::collections::HashSet::new(),
            )
        })
    }

    /// A copy of the unpacked layer at `source`, relocated to `root`: files with recorded
    /// occurrences are real copies rewritten in place, everything else is a hard link to the
    /// shared original (unpacked layers are read-only, so sharing inodes is safe).
    #[cfg(target_os = "linux")]
    pub(super) fn relocated_variant(
        &self,
        source: &Path,
        records: &relocate::Records,
        root: &[u8],
    ) -> Result<PathBuf> {
        let copied: std::collections::HashSet<&[u8]> =
            records.files.iter().map(|f| f.path.as_slice()).collect();
        self.derived_layer(source, &variant_suffix(root), |tmp| {
            clone_tree(source, tmp, &mut Vec::new(), &copied)?;
            relocate::relocate(tmp, records, root)?;
            failpoint("checkout.overlay.relocated");
            Ok(())
        })
    }

    /// `unpacked-v1/<source name>@<suffix>`, built once by `build` in a temporary directory
    /// and renamed into place; concurrent builders race harmlessly (the loser's copy goes).
    #[cfg(target_os = "linux")]
    fn derived_layer(
        &self,
        source: &Path,
        suffix: &str,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = self.unpacked.join(format!("{name}@{suffix}"));
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.unpacked.join(unique_name("tmp-"));
        if let Err(e) = build(&tmp) {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &target) {
            Ok(()) => Ok(target),
            Err(_) if target.is_dir() => {
                remove_tree(&tmp)?;
                Ok(target)
            }
            Err(e) => Err(io_err("rename into place", &target)(e)),
        }
    }
}

/// Flushes the filesystems holding `paths` (each once): `syncfs`, one journal commit for
/// everything written there, rather than an fsync per file and directory.
#[cfg(target_os = "linux")]
pub(crate) fn sync_filesystems(paths: &[&Path]) -> Result<()> {
    let mut synced = Vec::new();
    for path in paths {
        let fd = rustix::fs::open(
            *path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_err("open", path)(e.into()))?;
        let dev = rustix::fs::fstat(&fd)
            .map_err(|e| io_err("stat", path)(e.into()))?
            .st_dev;
        if !synced.contains(&dev) {
            rustix::fs::syncfs(&fd)
                .map_err(|e| io_err("flush the filesystem of", path)(e.into()))?;
            synced.push(dev);
        }
    }
    Ok(())
}

/// The marker saying an unpacked layer was made from a volatile upper dir in some boot and
/// has not been flushed since: `unpacked-v1/<layer>.unsynced`, holding that boot's id.
pub(crate) fn unsynced_marker(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".unsynced");
    PathBuf::from(name)
}

/// Writes [`unsynced_marker`] for `target` before `target` gets its name. The marker is
/// written aside and renamed into place, so a reader never sees it half-written (two
/// commits of one layer may race here). No flush: journaled filesystems persist the
/// marker no later than the rename of `target` that follows, and a marker whose contents a
/// crash lost reads as another boot's, which is what a crash means.
pub(super) fn mark_unsynced(target: &Path) -> Result<()> {
    let path = unsynced_marker(target);
    let Some(boot) = boot_id() else {
        return Ok(()); // without boot ids there is nothing to compare later
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}", unique_name("tmp-")));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, boot).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("rename into place", &path)(e)
    })
}

/// Whether `target` was made unflushed in an earlier boot. Only a marker that names another
/// boot (or whose contents a crash lost) says so: a layer in use by this boot's checkouts
/// must never be taken for stale.
fn unsynced_in_earlier_boot(target: &Path) -> bool {
    let Some(now) = boot_id() else {
        return false;
    };
    match fs::read_to_string(unsynced_marker(target)) {
        Ok(made_in) => made_in.trim() != now,
        Err(_) => false,
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel tells. Read once per
/// process; a failed read is retried next time rather than remembered.
fn boot_id() -> Option<String> {
    static BOOT: OnceLock<String> = OnceLock::new();
    if let Some(id) = BOOT.get() {
        return Some(id.clone());
    }
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(BOOT.get_or_init(|| id.trim().to_owned()).clone())
}

/// Notes in an overlay checkout's state dir which boot mounted it (see [`same_boot`]).
#[cfg(target_os = "linux")]
pub(super) fn record_boot(state: &Path) -> Result<()> {
    let path = state.join("boot-id");
    match boot_id() {
        Some(id) => fs::write(&path, id).map_err(io_err("write", &path)),
        None => Ok(()),
    }
}

/// Whether the overlay checkout with this state dir was mounted during this boot. Mounts are
/// volatile, so the upper dir of an earlier boot may have lost writes when the host went
/// down; one without a record (or without a boot id to compare) is given the benefit.
#[cfg(target_os = "linux")]
pub(super) fn same_boot(state: &Path) -> bool {
    match (fs::read_to_string(state.join("boot-id")), boot_id()) {
        (Ok(recorded), Some(now)) => recorded.trim() == now,
        _ => true,
    }
}

/// Clones the tree at `source` into `target`: directories are recreated with their mode,
/// owner, extended attributes and mtime; files in `copied` are copied; everything else
/// (files, symlinks, whiteout devices) is hard-linked.
#[cfg(target_os = "linux")]
fn clone_tree(
    source: &Path,
    target: &Path,
    rel: &mut Vec<u8>,
    copied: &std::collections::HashSet<&[u8]>,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(source).map_err(io_err("stat", source))?;
    fs::create_dir(target).map_err(io_err("create", target))?;
    let mut names: Vec<_> = fs::read_dir(source)
        .map_err(io_err("list", source))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(io_err("list", source))?;
    names.sort();
    for name in names {
        let (from, to) = (source.join(&name), target.join(&name));
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let kind = fs::symlink_metadata(&from).map_err(io_err("stat", &from))?;
        if kind.is_dir() {
            clone_tree(&from, &to, rel, copied)?;
        } else if copied.contains(rel.as_slice()) {
            fs::copy(&from, &to).map_err(io_err("copy", &from))?;
            std::os::unix::fs::lchown(&to, Some(kind.uid()), Some(kind.gid()))
                .map_err(io_err("set the owner of", &to))?;
            set_mtime(&to, &kind)?;
        } else {
            fs::hard_link(&from, &to).map_err(io_err("link", &to))?;
        }
        rel.truncate(len);
    }
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("set the owner of", target))?;
    fs::set_permissions(target, meta.permissions()).map_err(io_err("set the mode of", target))?;
    copy_xattrs(source, target)?;
    set_mtime(target, &meta)
}

#[cfg(target_os = "linux")]
fn copy_xattrs(source: &Path, target: &Path) -> Result<()> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(source, &mut names[..])
        .map_err(|e| io_err("list xattrs of", source)(e.into()))?;
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 4096];
        let len = rustix::fs::lgetxattr(source, name, &mut value[..])
            .map_err(|e| io_err("read xattrs of", source)(e.into()))?;
        rustix::fs::lsetxattr(target, name, &value[..len], rustix::fs::XattrFlags::empty())
            .map_err(|e| io_err("set xattrs of", target)(e.into()))?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn set_mtime(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let t = rustix::fs::Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec(),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set the mtime of", path)(e.into()))
}

/// The suffix of the relocated variants made for checkouts at `root`: `<layer>@<suffix>`.
pub(crate) fn variant_suffix(root: &[u8]) -> String {
    blake3::hash(root).to_hex()[..16].to_owned()
}
