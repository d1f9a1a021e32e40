//! A minimal Linux root filesystem made offline from the host's static busybox.
//!
//! The builder uses it as the default base image when none is available, and the tests run
//! jobs in it. It holds `bin/busybox`, a symlink per applet, a `bash` that hands over to
//! busybox `sh` (so OBuilder's default shell `/usr/bin/env bash -c` works), `root` and
//! `nobody` users, and the usual empty mount points.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Where Debian's `busybox-static` puts it (`/usr/bin` on merged-usr systems).
const CANDIDATES: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// busybox has no `bash` applet; a link named `bash` fails with "applet not found".
const BASH: &str =
    "#!/bin/sh\n# strata: busybox has no bash; its sh stands in.\nexec /bin/sh \"$@\"\n";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n";

/// Builds the rootfs in `dir` (created if missing; existing files are overwritten, existing
/// links kept). Fails naming `apt-get install busybox-static` when there is no static busybox.
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    let busybox = static_busybox()?;
    for (sub, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
    ] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(Error::io("create", &path))?;
        // Explicitly: the umask would strip the sticky and world bits.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(Error::io("chmod", &path))?;
    }
    let target = dir.join("bin/busybox");
    // Not fs::copy over a possibly running binary: write a new file and rename it in place.
    let tmp = dir.join("bin/.busybox.tmp");
    fs::copy(&busybox, &tmp).map_err(Error::io("copy busybox to", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .map_err(Error::io("chmod", &tmp))?;
    fs::rename(&tmp, &target).map_err(Error::io("create", &target))?;

    for applet in applets(&busybox)? {
        link(dir, &applet)?;
    }
    // Not every busybox build lists env under usr/bin; OBuilder's default shell needs it there.
    link(dir, Path::new("usr/bin/env"))?;
    for (path, contents, mode) in [
        ("bin/bash", BASH, 0o755),
        ("etc/passwd", PASSWD, 0o644),
        ("etc/group", GROUP, 0o644),
        // Mount points for the sandbox's own files, so runc need not create them.
        ("etc/hosts", "127.0.0.1 localhost\n", 0o644),
        ("etc/resolv.conf", "", 0o644),
    ] {
        let path = dir.join(path);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        }
        fs::write(&path, contents).map_err(Error::io("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(Error::io("chmod", &path))?;
    }
    Ok(())
}

/// The host's static busybox binary.
pub fn static_busybox() -> Result<PathBuf> {
    let Some(path) = CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()) else {
        return Err(Error::Busybox {
            path: CANDIDATES[0].into(),
            reason: "not found".to_owned(),
            source: None,
        });
    };
    let bytes = fs::read(&path).map_err(Error::io("read", &path))?;
    match elf_has_interpreter(&bytes) {
        Ok(false) => Ok(path),
        Ok(true) => Err(Error::Busybox {
            path,
            reason: "it is dynamically linked and would not run inside a bare rootfs".to_owned(),
            source: None,
        }),
        Err(reason) => Err(Error::Busybox {
            path,
            reason: reason.to_owned(),
            source: None,
        }),
    }
}

/// The applets' paths relative to the root, from `busybox --list-full`.
fn applets(busybox: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Busybox {
            path: busybox.to_owned(),
            reason: "cannot run it".to_owned(),
            source: Some(e),
        })?;
    if !out.status.success() {
        return Err(Error::Busybox {
            path: busybox.to_owned(),
            reason: format!("`--list-full` failed: {}", out.status),
            source: None,
        });
    }
    let list = String::from_utf8_lossy(&out.stdout);
    Ok(list
        .lines()
        .map(|line| PathBuf::from(line.trim()))
        // Only plain relative paths: the list must not write outside `dir`.
        .filter(|p| {
            !p.as_os_str().is_empty()
                && p.components().all(|c| matches!(c, Component::Normal(_)))
                && p != Path::new("bin/busybox")
        })
        .collect())
}

/// Links `dir/rel` to `/bin/busybox`, keeping whatever is already there.
fn link(dir: &Path, rel: &Path) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    }
    match symlink("/bin/busybox", &path) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
            Err(Error::io("link", &path)(err))
        }
        _ => Ok(()),
    }
}

/// Whether an ELF executable names a program interpreter (`PT_INTERP`): dynamically linked.
fn elf_has_interpreter(bytes: &[u8]) -> std::result::Result<bool, &'static str> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF executable");
    }
    let wide = match bytes.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err("unknown ELF class"),
    };
    let big = match bytes.get(5) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err("unknown ELF byte order"),
    };
    let int = |at: usize, len: usize| -> Option<u64> {
        let raw = bytes.get(at..at + len)?;
        let fold = |acc: u64, b: &u8| (acc << 8) | u64::from(*b);
        Some(if big {
            raw.iter().fold(0, fold)
        } else {
            raw.iter().rev().fold(0, fold)
        })
    };
    let (phoff, phentsize, phnum) = if wide {
        (int(0x20, 8), int(0x36, 2), int(0x38, 2))
    } else {
        (int(0x1c, 4), int(0x2a, 2), int(0x2c, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("truncated ELF header");
    };
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|_| "bad ELF program header")?;
        match int(at, 4) {
            Some(t) if t == u64::from(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None => return Err("truncated ELF program headers"),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        // The test binary itself is dynamically linked (gnu target).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            elf_has_interpreter(&me),
            Ok(!cfg!(target_feature = "crt-static"))
        );
        assert!(elf_has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(elf_has_interpreter(b"\x7fELF\x02\x01").is_err());
        if let Ok(busybox) = static_busybox() {
            assert_eq!(elf_has_interpreter(&fs::read(busybox).unwrap()), Ok(false));
        }
    }
}
