//! Tests of extraction and layer creation on Windows (run under Wine by `cargo xtask
//! wine-test`). Wine 8 reports symlinks created without creating them, so the symlink
//! tests check the clear error there and the links themselves on Windows.

use std::fs;
use std::io::Read;
use std::os::windows::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::create::{CreateOptions, create_from_changes, create_from_dir, write_tar};
use crate::extract::{
    DevicePolicy, ExtractOptions, ExtractReport, Ownership, SetuidPolicy, WhiteoutMode, apply_tar,
};
use crate::tar::{Limits, TarReader, TarWriter};
use crate::{Change, ChangeKind, Entry, EntryKind, EntryProblem, Error, Metadata};

const MTIME: i64 = 1_600_000_000;

/// One entry of a layer to write, with its data.
type Item = (Entry, Vec<u8>);

fn entry(path: &str, kind: EntryKind, mode: u32) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        meta: Metadata {
            mode,
            mtime: MTIME,
            ..Metadata::default()
        },
        size: 0,
    }
}

fn dir(path: &str) -> Item {
    (entry(path, EntryKind::Dir, 0o755), Vec::new())
}

fn file(path: &str, data: &[u8]) -> Item {
    let mut e = entry(path, EntryKind::File, 0o644);
    e.size = data.len() as u64;
    (e, data.to_vec())
}

fn symlink(path: &str, target: &str) -> Item {
    let kind = EntryKind::Symlink(target.as_bytes().to_vec());
    (entry(path, kind, 0o777), Vec::new())
}

fn hardlink(path: &str, target: &str) -> Item {
    let kind = EntryKind::Hardlink(target.as_bytes().to_vec());
    (entry(path, kind, 0o644), Vec::new())
}

fn tar_of(entries: &[Item]) -> Vec<u8> {
    let mut w = TarWriter::new(Vec::new());
    for (e, data) in entries {
        w.append(e).unwrap();
        w.write_data(data).unwrap();
    }
    w.finish().unwrap()
}

fn apply(entries: &[Item], target: &Path) -> crate::Result<ExtractReport> {
    apply_tar(&tar_of(entries)[..], target, &ExtractOptions::default())
}

/// The entry and problem of an extraction error.
fn refused(result: crate::Result<ExtractReport>) -> (String, EntryProblem) {
    match result {
        Err(Error::Entry { entry, problem }) => {
            (String::from_utf8_lossy(&entry.0).into_owned(), problem)
        }
        other => panic!("expected an entry error, got {other:?}"),
    }
}

/// Every entry of an uncompressed tar, with its data.
fn entries_of(tar: &[u8]) -> Vec<Item> {
    let mut r = TarReader::new(tar, &Limits::default());
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let mut data = Vec::new();
        r.read_data_to_vec(&mut data).unwrap();
        out.push((e, data));
    }
    out
}

fn mtime_of(path: &Path) -> i64 {
    let m = fs::symlink_metadata(path).unwrap().modified().unwrap();
    i64::try_from(m.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn set_mtime(path: &Path, secs: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// Whether this system really creates symlinks (Windows with the privilege; not Wine 8).
fn symlinks_work() -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("probe");
    std::os::windows::fs::symlink_file("x", &link).is_ok()
        && fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn a_tree_round_trips_through_create_and_extract() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::create_dir(src.join("empty")).unwrap();
    fs::write(src.join("a/b/f.txt"), b"hello").unwrap();
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("big.bin"), &big).unwrap();
    fs::write(src.join("ro.txt"), b"read only").unwrap();
    fs::write(src.join("Zed"), b"").unwrap();
    set_mtime(&src.join("a/b/f.txt"), 1_500_000_000);
    set_mtime(&src.join("ro.txt"), 1_400_000_000);
    let mut perms = fs::metadata(src.join("ro.txt")).unwrap().permissions();
    perms.set_readonly(true);
    fs::set_permissions(src.join("ro.txt"), perms).unwrap();

    let mut tar = Vec::new();
    let info = write_tar(&src, &mut tar, &CreateOptions::default()).unwrap();
    let entries = entries_of(&tar);
    let listed: Vec<(String, u32)> = entries
        .iter()
        .map(|(e, _)| (String::from_utf8_lossy(&e.path).into_owned(), e.meta.mode))
        .collect();
    assert_eq!(
        listed,
        [
            ("Zed", 0o644),
            ("a", 0o755),
            ("a/b", 0o755),
            ("a/b/f.txt", 0o644),
            ("big.bin", 0o644),
            ("empty", 0o755),
            ("ro.txt", 0o444),
        ]
        .map(|(p, m)| (p.to_owned(), m))
    );
    assert_eq!(info.entries, 7);
    assert!(
        entries
            .iter()
            .all(|(e, _)| e.meta.uid == 0 && e.meta.gid == 0)
    );

    let out = tmp.path().join("out");
    let opts = ExtractOptions {
        sync: true,
        ..ExtractOptions::default()
    };
    let report = apply_tar(&tar[..], &out, &opts).unwrap();
    assert_eq!((report.files, report.dirs), (4, 3));
    assert_eq!(report.bytes, 5 + big.len() as u64 + 9);
    assert_eq!(fs::read(out.join("a/b/f.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(out.join("big.bin")).unwrap(), big);
    assert_eq!(mtime_of(&out.join("a/b/f.txt")), 1_500_000_000);
    assert_eq!(mtime_of(&out.join("ro.txt")), 1_400_000_000);
    assert!(
        fs::metadata(out.join("ro.txt"))
            .unwrap()
            .permissions()
            .readonly()
    );
    assert!(
        !fs::metadata(out.join("a/b/f.txt"))
            .unwrap()
            .permissions()
            .readonly()
    );
    // Directory mtimes are set after their contents, so they survive.
    for d in ["a", "a/b", "empty"] {
        assert_eq!(mtime_of(&out.join(d)), mtime_of(&src.join(d)), "{d}");
    }
    // The same tree gives the same bytes, hence the same layer id.
    let mut again = Vec::new();
    let info2 = write_tar(&out, &mut again, &CreateOptions::default()).unwrap();
    assert_eq!(info2.id, info.id);
    assert!(again == tar);

    // Framed zstd from the same walk decodes to the same tar.
    let mut framed = Vec::new();
    let info3 = create_from_dir(&out, &mut framed, &CreateOptions::default()).unwrap();
    assert_eq!(info3.id, info.id);
    let mut decoded = Vec::new();
    zstd::stream::read::Decoder::new(&framed[..])
        .unwrap()
        .read_to_end(&mut decoded)
        .unwrap();
    assert!(decoded == tar);
}

#[test]
fn extraction_sets_times_modes_and_hard_links() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (mut ro, ro_data) = file("d/ro", b"locked");
    ro.meta.mode = 0o444;
    let (mut old, old_data) = file("old", b"1969");
    old.meta.mtime = -100;
    let (mut ancient, ancient_data) = file("ancient", b"before 1601");
    ancient.meta.mtime = -20_000_000_000;
    let report = apply(
        &[
            dir("d"),
            file("d/f", b"data"),
            (ro, ro_data),
            hardlink("d/link", "d/f"),
            hardlink("ro-link", "d/ro"),
            (old, old_data),
            (ancient, ancient_data),
        ],
        &out,
    )
    .unwrap();
    assert_eq!((report.files, report.hardlinks, report.dirs), (4, 2, 1));
    assert_eq!(fs::read(out.join("d/link")).unwrap(), b"data");
    assert_eq!(fs::read(out.join("ro-link")).unwrap(), b"locked");
    assert_eq!(mtime_of(&out.join("d")), MTIME);
    assert_eq!(mtime_of(&out.join("d/f")), MTIME);
    // One file under two names: a write through one shows through the other.
    fs::write(out.join("d/link"), b"changed").unwrap();
    assert_eq!(fs::read(out.join("d/f")).unwrap(), b"changed");
    assert!(
        fs::metadata(out.join("d/ro"))
            .unwrap()
            .permissions()
            .readonly()
    );
    let old = fs::metadata(out.join("old")).unwrap().modified().unwrap();
    assert_eq!(UNIX_EPOCH.duration_since(old).unwrap().as_secs(), 100);
    assert!(out.join("ancient").is_file());

    // Hard links to a directory, a missing path or outside are refused.
    for (target, why) in [("d", "a directory"), ("nope", "missing")] {
        let fresh = tmp.path().join(format!("bad-{why}"));
        let (name, problem) = refused(apply(&[dir("d"), hardlink("l", target)], &fresh));
        assert_eq!(name, "l");
        assert!(
            matches!(problem, EntryProblem::BadHardlink(_)),
            "{why}: {problem}"
        );
    }
}

#[test]
fn every_name_windows_cannot_hold_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, bad) in [
        "a\\b",
        "c:",
        "f.txt:stream",
        "a<b",
        "a>b",
        "a\"b",
        "a|b",
        "a?b",
        "a*b",
        "a\u{1}b",
        "dot.",
        "space ",
        "CON",
        "nul.txt",
        "Aux.tar.gz",
        "PRN",
        "com1",
        "LPT9.log",
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("t{i}"));
        for path in [bad.to_owned(), format!("ok/{bad}"), format!("{bad}/child")] {
            let (name, problem) = refused(apply(&[file(&path, b"x")], &out));
            assert_eq!(name, path);
            assert!(
                matches!(problem, EntryProblem::InvalidWindowsName { .. }),
                "{path}: {problem}"
            );
        }
        // As a directory, a symlink, a hard link target and a whiteout too.
        let cases: [(Vec<Item>, &str); 3] = [
            (vec![dir(bad)], bad),
            (vec![symlink(bad, "x")], bad),
            (
                vec![file("x", b""), hardlink("y", &format!("{bad}/x"))],
                "y",
            ),
        ];
        for (entries, expected) in cases {
            let (name, _) = refused(apply(&entries, &out));
            assert_eq!(name.trim_end_matches('/'), expected);
        }
        let wh = format!("d/.wh.{bad}");
        assert!(apply(&[file(&wh, b"")], &out).is_err(), "{wh}");
        // Nothing was written under a refused name.
        let names: Vec<_> = fs::read_dir(&out)
            .map(|r| r.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            names.iter().all(|n| n == "ok" || n == "x" || n == "d"),
            "{bad}: {names:?}"
        );
    }
    // A non-UTF-8 name has no Windows form.
    let (_, problem) = refused(apply_tar(
        &tar_of(&[(
            Entry {
                path: b"bad\xff".to_vec(),
                ..file("x", b"").0
            },
            Vec::new(),
        )])[..],
        &tmp.path().join("utf8"),
        &ExtractOptions::default(),
    ));
    assert!(matches!(problem, EntryProblem::InvalidWindowsName { .. }));
}

#[test]
fn paths_that_differ_only_by_case_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[Item], &str, &str); 4] = [
        (&[file("File", b"a"), file("FILE", b"b")], "FILE", "File"),
        (&[dir("Dir"), file("dir/x", b"")], "dir/x", "Dir"),
        (&[file("d/a", b""), file("D/b", b"")], "D/b", "d"),
        (&[file("é/x", b""), file("É/y", b"")], "É/y", "é"),
    ];
    for (i, (entries, at, earlier)) in cases.into_iter().enumerate() {
        let (name, problem) = refused(apply(entries, &tmp.path().join(format!("t{i}"))));
        assert_eq!(name, at);
        match problem {
            EntryProblem::CaseConflict(e) => assert_eq!(e.0, earlier.as_bytes()),
            other => panic!("{at}: {other}"),
        }
    }
    // A whiteout of this layer's own entry in another case is still its own entry.
    let (name, problem) = refused(apply(
        &[file("a/Name", b""), file("a/.wh.NAME", b"")],
        &tmp.path().join("wh"),
    ));
    assert_eq!(name, "a/.wh.NAME");
    assert!(matches!(problem, EntryProblem::WhiteoutOfOwnEntry));
}

#[test]
fn whiteouts_remove_lower_entries_even_read_only_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (mut ro, ro_data) = file("a/ro", b"locked");
    ro.meta.mode = 0o444;
    let (mut ro2, ro2_data) = file("b/ro", b"locked");
    ro2.meta.mode = 0o400;
    apply(
        &[
            file("a/x", b"x"),
            file("a/y", b"y"),
            (ro, ro_data),
            (ro2, ro2_data),
            file("b/z", b"z"),
            file("b/sub/deep", b"deep"),
            file("c", b"file below"),
            file("replaced", b"old"),
        ],
        &out,
    )
    .unwrap();
    let mut readonly = fs::metadata(out.join("replaced")).unwrap().permissions();
    readonly.set_readonly(true);
    fs::set_permissions(out.join("replaced"), readonly).unwrap();
    let report = apply(
        &[
            file("a/.wh.x", b""),
            file("a/.wh.ro", b""),
            file("a/.wh.missing", b""),
            file("b/.wh..wh..opq", b""),
            file("b/new", b"new"),
            file("gone/.wh.x", b""),
            dir("c"),
            file("c/inside", b"now a directory"),
            file("replaced", b"new"),
        ],
        &out,
    )
    .unwrap();
    assert_eq!(report.whiteouts, 5);
    assert!(!out.join("a/x").exists());
    assert!(!out.join("a/ro").exists());
    assert_eq!(fs::read(out.join("a/y")).unwrap(), b"y");
    let mut b: Vec<_> = fs::read_dir(out.join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    b.sort();
    assert_eq!(b, ["new"]);
    assert!(!out.join("gone").exists());
    assert_eq!(fs::read(out.join("c/inside")).unwrap(), b"now a directory");
    assert_eq!(fs::read(out.join("replaced")).unwrap(), b"new");

    // Kept as the empty files they are, for a layer unpacked on its own.
    let keep = tmp.path().join("keep");
    let opts = ExtractOptions {
        whiteouts: WhiteoutMode::Keep,
        ..ExtractOptions::default()
    };
    let (mut marker, data) = file("a/.wh.x", b"");
    marker.meta.mode = 0;
    let tar = tar_of(&[(marker, data), file("b/.wh..wh..opq", b"")]);
    apply_tar(&tar[..], &keep, &opts).unwrap();
    assert_eq!(fs::read(keep.join("a/.wh.x")).unwrap(), b"");
    let marker = fs::metadata(keep.join("a/.wh.x")).unwrap();
    assert!(!marker.permissions().readonly());
    assert!(keep.join("b/.wh..wh..opq").is_file());

    let (name, problem) = refused(apply(
        &[file("a/z", b""), file("a/.wh.z", b"")],
        &tmp.path().join("own"),
    ));
    assert_eq!(name, "a/.wh.z");
    assert!(matches!(problem, EntryProblem::WhiteoutOfOwnEntry));
}

#[test]
fn a_whiteout_or_opaque_marker_twice_is_a_duplicate() {
    for marker in ["d/.wh..wh..opq", "d/.wh.gone"] {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let entries = [
            dir("d"),
            file("d/f", b"f"),
            file(marker, b""),
            file(marker, b""),
        ];
        let (entry, problem) = refused(apply(&entries, &target));
        assert_eq!(entry, marker);
        assert!(matches!(problem, EntryProblem::Duplicate), "{problem}");
        assert!(target.join("d/f").exists());
    }
}

#[test]
fn policies_for_what_windows_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = (
        entry(
            "dev/null",
            EntryKind::CharDevice { major: 1, minor: 3 },
            0o666,
        ),
        Vec::new(),
    );
    let fifo = (entry("pipe", EntryKind::Fifo, 0o644), Vec::new());
    let with = |devices| ExtractOptions {
        devices,
        ..ExtractOptions::default()
    };
    for (i, node) in [dev, fifo].into_iter().enumerate() {
        let tar = tar_of(std::slice::from_ref(&node));
        let path = String::from_utf8(node.0.path.clone()).unwrap();
        let out = tmp.path().join(format!("n{i}"));
        let (_, p) = refused(apply_tar(&tar[..], &out, &with(DevicePolicy::Refuse)));
        assert!(matches!(p, EntryProblem::DeviceRefused), "{p}");
        let (_, p) = refused(apply_tar(&tar[..], &out, &with(DevicePolicy::Create)));
        assert!(matches!(p, EntryProblem::NotSupportedHere(_)), "{p}");
        let report = apply_tar(&tar[..], &out, &with(DevicePolicy::Skip)).unwrap();
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].path, path.as_bytes());
        assert!(!out.join(&path).exists());
    }

    let (mut suid, data) = file("suid", b"x");
    suid.meta.mode = 0o4755;
    let tar = tar_of(&[(suid, data)]);
    let (_, p) = refused(apply_tar(
        &tar[..],
        &tmp.path().join("s1"),
        &ExtractOptions::default(),
    ));
    assert!(matches!(p, EntryProblem::SetuidRefused));
    let strip = ExtractOptions {
        setuid: SetuidPolicy::Strip,
        ..ExtractOptions::default()
    };
    let report = apply_tar(&tar[..], &tmp.path().join("s2"), &strip).unwrap();
    assert_eq!(report.skipped.len(), 1);

    let (mut attr, data) = file("attr", b"x");
    attr.meta.xattrs = vec![(b"user.note".to_vec(), b"v".to_vec())];
    let report = apply(&[(attr, data)], &tmp.path().join("x")).unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].path, b"attr");

    let (mut overlay, data) = file("o", b"x");
    overlay.meta.xattrs = vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())];
    let (_, p) = refused(apply(&[(overlay, data)], &tmp.path().join("o")));
    assert!(matches!(p, EntryProblem::ForbiddenXattr(_)));

    let tar = tar_of(&[file("f", b"x")]);
    for opts in [
        ExtractOptions {
            ownership: Ownership::Restore,
            ..ExtractOptions::default()
        },
        ExtractOptions {
            whiteouts: WhiteoutMode::Overlay,
            ..ExtractOptions::default()
        },
    ] {
        let result = apply_tar(&tar[..], &tmp.path().join("u"), &opts);
        assert!(
            matches!(result, Err(Error::Unsupported { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn symlinks_are_made_as_file_or_directory_links() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let entries = [
        // Before its target directory exists: fixed up at the end.
        symlink("early", "later"),
        dir("d"),
        file("d/f", b"data"),
        symlink("ld", "d"),
        symlink("lf", "d/f"),
        symlink("abs", "/d"),
        symlink("dangling", "nowhere"),
        symlink("slash", "elsewhere/"),
        dir("later"),
    ];
    let result = apply(&entries, &out);
    if !symlinks_work() {
        let (name, problem) = refused(result);
        assert_eq!(name, "early");
        assert!(
            matches!(problem, EntryProblem::NotSupportedHere(_)),
            "{problem}"
        );
        return;
    }
    let report = result.unwrap();
    assert_eq!(report.symlinks, 7);
    for (link, is_dir, target) in [
        ("early", true, "later"),
        ("ld", true, "d"),
        ("lf", false, "d\\f"),
        ("abs", true, "\\d"),
        ("dangling", false, "nowhere"),
        ("slash", true, "elsewhere\\"),
    ] {
        let ft = fs::symlink_metadata(out.join(link)).unwrap().file_type();
        assert_eq!(ft.is_symlink_dir(), is_dir, "{link}");
        assert_eq!(ft.is_symlink_file(), !is_dir, "{link}");
        // Windows stores a rooted target (`\d`) with the current drive (`C:\d`).
        let read = fs::read_link(out.join(link)).unwrap();
        assert!(read.to_str().unwrap().ends_with(target), "{link}: {read:?}");
    }
    assert_eq!(fs::read(out.join("lf")).unwrap(), b"data");
    assert_eq!(fs::read(out.join("ld/f")).unwrap(), b"data");
    // Read back with `/`, as the layer had them.
    let mut tar = Vec::new();
    write_tar(&out, &mut tar, &CreateOptions::default()).unwrap();
    let targets: Vec<(String, String)> = entries_of(&tar)
        .into_iter()
        .filter_map(|(e, _)| match e.kind {
            EntryKind::Symlink(t) => Some((
                String::from_utf8(e.path).unwrap(),
                String::from_utf8(t).unwrap(),
            )),
            _ => None,
        })
        .collect();
    assert!(targets.contains(&("lf".to_owned(), "d/f".to_owned())));
    assert!(
        targets
            .iter()
            .any(|(l, t)| l == "abs" && t.ends_with(":/d"))
    );
}

#[test]
fn a_symlink_in_a_parent_never_leads_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let out = tmp.path().join("out");
    let entries = [
        dir("outside"),
        symlink("esc", "../../outside"),
        file("esc/pwned", b"x"),
    ];
    let result = apply(&entries, &out);
    if symlinks_work() {
        // Followed inside the target: `..` stops at its root.
        result.unwrap();
        assert!(out.join("outside/pwned").is_file());
        // Windows makes a rooted target absolute on the current drive: not followed.
        let rooted = [symlink("abs", "/outside"), file("abs/pwned", b"x")];
        let (name, problem) = refused(apply(&rooted, &tmp.path().join("rooted")));
        assert_eq!(name, "abs/pwned");
        assert!(
            matches!(problem, EntryProblem::SymlinkOutsideRoot(_)),
            "{problem}"
        );
    } else {
        let (name, _) = refused(result);
        assert_eq!(name, "esc");
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    if symlinks_work() {
        // A link of a lower layer to another drive cannot be followed inside the target.
        let lower = tmp.path().join("lower");
        fs::create_dir(&lower).unwrap();
        std::os::windows::fs::symlink_dir(&outside, lower.join("drive")).unwrap();
        let (name, problem) = refused(apply(&[file("drive/pwned", b"x")], &lower));
        assert_eq!(name, "drive/pwned");
        assert!(
            matches!(problem, EntryProblem::SymlinkOutsideRoot(_)),
            "{problem}"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        // Replacing the link removes the link, not what it points to.
        apply(&[file("drive", b"now a file")], &lower).unwrap();
        assert!(outside.is_dir());
        assert_eq!(fs::read(lower.join("drive")).unwrap(), b"now a file");
    }
}

#[test]
fn a_change_list_becomes_a_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::create_dir(src.join("opq")).unwrap();
    fs::write(src.join("a/b/new"), b"new").unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    fs::write(src.join("opq/kept"), b"k").unwrap();
    let changes = [
        Change::new("a/b/new", ChangeKind::Added),
        Change::new("top", ChangeKind::Modified),
        Change::new("a/gone", ChangeKind::Deleted),
        Change::new("opq", ChangeKind::Opaque),
        Change::new("opq/kept", ChangeKind::Added),
    ];
    let mut framed = Vec::new();
    let info = create_from_changes(&src, &changes, &mut framed, &CreateOptions::default()).unwrap();
    let mut tar = Vec::new();
    zstd::stream::read::Decoder::new(&framed[..])
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let listed: Vec<String> = entries_of(&tar)
        .iter()
        .map(|(e, _)| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    assert_eq!(
        listed,
        [
            "a",
            "a/.wh.gone",
            "a/b",
            "a/b/new",
            "opq",
            "opq/.wh..wh..opq",
            "opq/kept",
            "top"
        ]
    );
    assert_eq!(info.entries, 8);

    // Applied onto a lower tree, the layer gives the changed tree.
    let lower = tmp.path().join("lower");
    apply(
        &[
            file("a/gone", b"old"),
            file("opq/old", b"old"),
            file("top", b"old"),
        ],
        &lower,
    )
    .unwrap();
    apply_tar(&tar[..], &lower, &ExtractOptions::default()).unwrap();
    assert!(!lower.join("a/gone").exists());
    assert!(!lower.join("opq/old").exists());
    assert_eq!(fs::read(lower.join("opq/kept")).unwrap(), b"k");
    assert_eq!(fs::read(lower.join("top")).unwrap(), b"top");
    assert_eq!(fs::read(lower.join("a/b/new")).unwrap(), b"new");
}

#[test]
fn a_name_that_is_not_unicode_cannot_be_committed() {
    use std::ffi::OsString;
    use std::os::windows::ffi::OsStringExt;

    let tmp = tempfile::tempdir().unwrap();
    // An unpaired surrogate: a valid NTFS name with no UTF-8 form.
    let name = OsString::from_wide(&[u16::from(b'x'), 0xD800]);
    if fs::write(tmp.path().join(&name), b"").is_err() {
        return; // the file system refuses such names itself
    }
    let result = write_tar(tmp.path(), Vec::new(), &CreateOptions::default());
    match result {
        Err(Error::Io { op, source, .. }) => {
            assert_eq!(op, "read the name of");
            assert!(source.to_string().contains("not valid Unicode"), "{source}");
        }
        other => panic!("{other:?}"),
    }
}
