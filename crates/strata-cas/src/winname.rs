//! Which names a Windows file system can hold and how it compares them: the pure part of
//! path safety for extraction on Windows, compiled everywhere so its tests run on every
//! platform.
//!
//! Extraction on Windows builds Win32 paths from layer paths, so a component that Win32
//! would read as something else than one plain name must be refused before it reaches a
//! path: `\` and `/` (separators), `:` (drive letters, alternate data streams), `<>"|?*`
//! (wildcards), control characters, a trailing dot or space (Win32 strips them, so `a.` and
//! `a` are one file) and device names (`CON`, `NUL.txt`, `COM1`, ...), which open devices
//! rather than files. Names that are not UTF-8 have no Windows form at all.

use std::collections::HashMap;

use crate::{EntryName, EntryProblem};

/// Device names Win32 reserves in every directory, with or without an extension.
const RESERVED: &[&str] = &["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];

/// Returns `component` as text when it can be a file name on Windows.
pub(crate) fn check_component(component: &[u8]) -> Result<&str, EntryProblem> {
    let bad = |reason| EntryProblem::InvalidWindowsName {
        component: String::from_utf8_lossy(component).into_owned(),
        reason,
    };
    let name = std::str::from_utf8(component).map_err(|_| bad("it is not valid UTF-8"))?;
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Some(c) = name.chars().find(|&c| matches!(c, '\\' | '/' | ':')) {
        return Err(bad(match c {
            ':' => "`:` names a drive or an alternate data stream",
            _ => "`\\` and `/` are path separators",
        }));
    }
    if name
        .chars()
        .any(|c| matches!(c, '<' | '>' | '"' | '|' | '?' | '*'))
    {
        return Err(bad("`<>\"|?*` are reserved characters"));
    }
    if name.chars().any(|c| c.is_ascii_control()) {
        return Err(bad("control characters are not allowed"));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(bad("Win32 drops a trailing dot or space"));
    }
    if is_device_name(name) {
        return Err(bad("it is a reserved device name"));
    }
    Ok(name)
}

/// Whether Win32 opens a device for `name` in any directory: `NUL`, `nul.txt`,
/// `COM1.tar.gz`, `Con .txt` (spaces before the extension are dropped).
fn is_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    if RESERVED.iter().any(|r| stem.eq_ignore_ascii_case(r)) {
        return true;
    }
    let mut chars = stem.chars();
    let prefix: String = chars.by_ref().take(3).collect();
    let digit = chars.next();
    (prefix.eq_ignore_ascii_case("COM") || prefix.eq_ignore_ascii_case("LPT"))
        && chars.next().is_none()
        && digit.is_some_and(|d| d.is_ascii_digit() || matches!(d, '¹' | '²' | '³'))
}

/// `name` with letter case folded the way NTFS compares names: each character mapped to
/// its upper case when that is one character (NTFS's upcase table maps characters one to
/// one, so `ß` stays `ß`).
pub(crate) fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// The paths one layer names (entries and their parents), by folded case, to refuse two
/// that Windows would take for one.
#[derive(Debug, Default)]
pub(crate) struct CaseIndex {
    seen: HashMap<String, Vec<u8>>,
}

impl CaseIndex {
    /// Records `path` (normalised, every component checked) and its parents; fails when one
    /// of them differs only by case from a path recorded before.
    pub(crate) fn insert(&mut self, path: &str) -> Result<(), EntryProblem> {
        let mut prefix = path;
        loop {
            match self.seen.get(&fold(prefix)) {
                // Its parents were recorded with it.
                Some(earlier) if earlier == prefix.as_bytes() => return Ok(()),
                Some(earlier) => {
                    return Err(EntryProblem::CaseConflict(EntryName(earlier.clone())));
                }
                None => {
                    self.seen.insert(fold(prefix), prefix.as_bytes().to_vec());
                }
            }
            match prefix.rfind('/') {
                Some(i) => prefix = &prefix[..i],
                None => return Ok(()),
            }
        }
    }
}

/// A symlink target, as read from a link on disk or written in a layer, as components to
/// resolve inside the root: whether it starts at the root, then its components (`..`
/// included). `None` when nothing inside the root can follow it: a drive (`C:\x`), a UNC,
/// device or NT path (`\\host\x`, `\\?\C:\x`, `\??\C:\x`) or a component Windows would read
/// differently.
pub(crate) fn split_target(target: &str) -> Option<(bool, Vec<&str>)> {
    let starts = |p: &str| target.starts_with(p);
    if starts("\\\\") || starts("//") || starts("\\??\\") || starts("/??/") {
        return None;
    }
    let absolute = starts("\\") || starts("/");
    let mut parts = Vec::new();
    for part in target.split(['\\', '/']) {
        match part {
            "" | "." => {}
            ".." => parts.push(part),
            _ => parts.push(check_component(part.as_bytes()).ok()?),
        }
    }
    Some((absolute, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dangerous_name_class_is_refused() {
        let refused: &[&[u8]] = &[
            b"a\\b",
            b"..\\x",
            b"c:",
            b"C:x",
            b"file.txt:stream",
            b"file::$DATA",
            b"a<b",
            b"a>b",
            b"a\"b",
            b"a|b",
            b"a?b",
            b"a*b",
            b"a\x01b",
            b"a\x1fb",
            b"tab\there",
            b"dot.",
            b"space ",
            b"...",
            b"CON",
            b"con",
            b"Con.txt",
            b"nul.tar.gz",
            b"NUL .txt",
            b"aux",
            b"PRN.log",
            b"COM1",
            b"com9.txt",
            b"LPT1",
            b"lpt0",
            "COM\u{b9}".as_bytes(),
            b"CONIN$",
            b"conout$.x",
            b"\xff\xfe",
            b"",
        ];
        for name in refused {
            assert!(
                matches!(
                    check_component(name),
                    Err(EntryProblem::InvalidWindowsName { .. })
                ),
                "{:?} should be refused",
                String::from_utf8_lossy(name)
            );
        }
        let accepted: &[&[u8]] = &[
            b"a",
            b".hidden",
            b".wh.x",
            b".wh..wh..opq",
            b"CONSOLE",
            b"COM10",
            b"LPT",
            b"xCON",
            b"con-file",
            b"nul_",
            b"a b",
            b"a.b.c",
            b"caf\xc3\xa9",
            b"~1",
        ];
        for name in accepted {
            assert!(
                check_component(name).is_ok(),
                "{:?} should be accepted",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn case_index_refuses_names_that_differ_by_case_only() {
        let mut ix = CaseIndex::default();
        ix.insert("Dir").unwrap();
        ix.insert("Dir/a").unwrap();
        ix.insert("Dir/b/c").unwrap();
        ix.insert("Dir/b").unwrap();
        for (path, earlier) in [
            ("dir/x", "Dir"),
            ("Dir/A", "Dir/a"),
            ("DIR/B/C", "Dir/b/c"),
            ("Dir/B/new", "Dir/b"),
        ] {
            match ix.insert(path) {
                Err(EntryProblem::CaseConflict(e)) => assert_eq!(e.0, earlier.as_bytes()),
                other => panic!("{path}: {other:?}"),
            }
        }
        // Non-ASCII letters fold too; ß has no one-character upper case and stays distinct.
        ix.insert("é").unwrap();
        assert!(ix.insert("É").is_err());
        ix.insert("straße").unwrap();
        ix.insert("STRASSE").unwrap();
    }

    #[test]
    fn symlink_targets_split_or_refuse() {
        assert_eq!(
            split_target("../lib/x"),
            Some((false, vec!["..", "lib", "x"]))
        );
        assert_eq!(
            split_target("..\\lib\\x"),
            Some((false, vec!["..", "lib", "x"]))
        );
        assert_eq!(split_target("/usr/lib"), Some((true, vec!["usr", "lib"])));
        assert_eq!(
            split_target("\\usr\\.\\lib\\"),
            Some((true, vec!["usr", "lib"]))
        );
        for outside in [
            "C:\\Windows",
            "c:x",
            "\\\\host\\share",
            "//host/share",
            "\\\\?\\C:\\x",
            "\\??\\C:\\x",
            "a/nul",
            "a/b:c",
            "x./y",
        ] {
            assert_eq!(split_target(outside), None, "{outside}");
        }
    }
}
