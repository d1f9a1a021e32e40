//! Paths and trees: canonical paths in the form tools spell them, and tree removal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Result, io_err};

#[cfg(unix)]
pub(super) fn bytes_path(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
pub(super) fn bytes_path(bytes: &[u8]) -> &Path {
    Path::new(std::str::from_utf8(bytes).unwrap_or(""))
}

/// `fs::canonicalize`, without Windows's `\\?\` prefix where the path has a plain form: a
/// checkout's root is recorded, and looked for in files (relocation), as tools spell it.
pub(crate) fn canonical(path: &Path) -> io::Result<PathBuf> {
    let path = fs::canonicalize(path)?;
    #[cfg(windows)]
    if let Some(plain) = path.to_str().and_then(plain_windows_path) {
        return Ok(PathBuf::from(plain));
    }
    Ok(path)
}

/// The plain form of a verbatim Windows path: `\\?\C:\x` is `C:\x`, `\\?\UNC\host\share\x`
/// is `\\host\share\x`. `None` for other verbatim paths (devices, volume GUIDs) and where the
/// plain form would name something else: Win32 drops trailing dots and spaces of components.
#[cfg_attr(
    not(windows),
    allow(dead_code, reason = "used on Windows; unit-tested everywhere")
)]
fn plain_windows_path(path: &str) -> Option<String> {
    let plain = if let Some(rest) = path.strip_prefix(r"\\?\UNC\") {
        format!(r"\\{rest}")
    } else {
        let rest = path.strip_prefix(r"\\?\")?;
        let drive = rest.as_bytes();
        if !(drive.len() >= 3 && drive[0].is_ascii_alphabetic() && &drive[1..3] == b":\\") {
            return None;
        }
        rest.to_owned()
    };
    let odd = plain
        .split('\\')
        .any(|c| c.ends_with('.') || c.ends_with(' '));
    (!odd && !plain.contains('/')).then_some(plain)
}

/// Removes a tree, including read-only directories (root can, others may need chmod). A
/// missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        // Gone already, or removed by another process meanwhile (recovery races are benign).
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io_err("remove", path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbatim_windows_paths_get_their_plain_form_where_it_means_the_same() {
        let plain = |p: &str| plain_windows_path(p);
        assert_eq!(plain(r"\\?\C:\strata\s01"), Some(r"C:\strata\s01".into()));
        assert_eq!(
            plain(r"\\?\UNC\host\share\s01"),
            Some(r"\\host\share\s01".into())
        );
        // Already plain, a device or volume path, or a name Win32 would trim.
        assert_eq!(plain(r"C:\strata"), None);
        assert_eq!(plain(r"\\?\Volume{1234}\x"), None);
        assert_eq!(plain(r"\\?\C:\strata\dot."), None);
        assert_eq!(plain(r"\\?\C:\strata\space \x"), None);
    }
}
