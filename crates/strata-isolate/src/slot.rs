//! What the slot drivers share: slot names and paths, and where a job's working directory
//! lies inside a slot. Pure functions, so plans come out the same on every platform.
//!
//! A slot driver numbers its slots from 1 and names them with a letter and two digits
//! (`s01` … `s99`), so every slot's path has the same length whatever the count, and a
//! snapshot committed in one relocates into any other without changing a file's length.
//! Windows paths are built as strings with `\` (not `PathBuf` joins, which would use `/`
//! when a plan is computed on Linux).

use crate::{Error, Result};

/// The most slots a driver may have: names keep two digits.
pub const MAX_SLOTS: usize = 99;

/// Refuses a slot count outside `1..=MAX_SLOTS`.
pub fn check_count(driver: &str, slots: usize) -> Result<()> {
    if (1..=MAX_SLOTS).contains(&slots) {
        Ok(())
    } else {
        Err(Error::Unsupported {
            driver: driver.to_owned(),
            reason: format!("{slots} slots: a slot driver has from 1 to {MAX_SLOTS}"),
        })
    }
}

/// The name of slot `n` (1-based) with this prefix letter: `s01`, `w01`.
pub fn slot_name(prefix: char, n: usize) -> String {
    format!("{prefix}{n:02}")
}

/// The components of a job's working directory, read as a path inside the slot: `/` is the
/// slot's root, `/src` (or `\src`) its `src`. Paths naming a drive (`C:\x`) or a server
/// are refused, since they would name one place for every slot, as are `..` and names
/// Windows reads as streams or devices.
pub fn cwd_components<'a>(driver: &str, cwd: &'a str) -> Result<Vec<&'a str>> {
    let refuse = |why: &str| Error::Unsupported {
        driver: driver.to_owned(),
        reason: format!(
            "working directory `{cwd}` {why}; in a slot, `/` is the slot's root (e.g. `/src`)"
        ),
    };
    if !(cwd.starts_with('/') || cwd.starts_with('\\')) {
        return Err(refuse("is not absolute"));
    }
    if cwd.starts_with("//") || cwd.starts_with("\\\\") {
        return Err(refuse("names a server"));
    }
    let mut out = Vec::new();
    for part in cwd.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(refuse("contains `..`")),
            p if p.contains([':', '\0']) => return Err(refuse("names a drive or a stream")),
            p => out.push(p),
        }
    }
    Ok(out)
}

/// `root` followed by `parts`, joined with `\`.
pub fn windows_join(root: &str, parts: &[&str]) -> String {
    let mut out = root.trim_end_matches('\\').to_owned();
    for part in parts {
        out.push('\\');
        out.push_str(part);
    }
    out
}

/// `root` followed by `parts`, joined with `/`.
pub fn unix_join(root: &str, parts: &[&str]) -> String {
    let mut out = root.trim_end_matches('/').to_owned();
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    out
}

/// A Windows directory as given, with a trailing `\` dropped and the drive letter in upper
/// case, as the system spells it (the checkout records the canonical spelling).
pub fn normalise_windows_dir(dir: &str) -> String {
    let mut out = dir.replace('/', "\\");
    while out.len() > 3 && out.ends_with('\\') {
        out.pop();
    }
    if let [d, b':', ..] = out.as_bytes()
        && d.is_ascii_lowercase()
    {
        out[..1].make_ascii_uppercase();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_named_with_two_digits() {
        assert_eq!(slot_name('s', 1), "s01");
        assert_eq!(slot_name('w', 99), "w99");
        assert!(check_count("d", 0).is_err());
        assert!(check_count("d", 99).is_ok());
        assert!(check_count("d", 100).is_err());
    }

    #[test]
    fn working_directories_are_paths_inside_the_slot() {
        assert_eq!(cwd_components("d", "/").unwrap(), Vec::<&str>::new());
        assert_eq!(cwd_components("d", "/src/./lib").unwrap(), ["src", "lib"]);
        assert_eq!(cwd_components("d", r"\src\lib\").unwrap(), ["src", "lib"]);
        for bad in [
            "src",
            r"C:\src",
            "C:/src",
            "/a/../b",
            r"\\host\share",
            "/a:b",
        ] {
            let err = cwd_components("d", bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        assert_eq!(
            windows_join(r"C:\strata\s01", &["src", "lib"]),
            r"C:\strata\s01\src\lib"
        );
        assert_eq!(
            unix_join("/Users/strata/s01/home", &["src"]),
            "/Users/strata/s01/home/src"
        );
    }

    #[test]
    fn windows_dirs_are_spelled_as_the_system_does() {
        assert_eq!(normalise_windows_dir(r"c:\strata\"), r"C:\strata");
        assert_eq!(normalise_windows_dir("d:/builds"), r"D:\builds");
        assert_eq!(normalise_windows_dir(r"C:\"), r"C:\");
    }
}
