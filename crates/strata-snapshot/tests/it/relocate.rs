//! Path relocation on real files: the forms and the sibling rule in scan, text detection,
//! the record format, in-place and length-changing rewrites, refusals, and a Python venv that
//! must keep working after being moved to another slot.

use std::fs::{self, File, FileTimes};
use std::path::Path;
use std::time::{Duration, SystemTime};

use strata_snapshot::relocate::{
    self, Drive, Encoding, Error, FileRecord, Form, Records, RelocateReport, Style, is_text,
    relocate, scan,
};

const ROOT: &[u8] = b"/strata/slots/s01";
const SAME_LEN: &[u8] = b"/strata/slots/s02";
const LONGER: &[u8] = b"/opt/strata/slots/slot-2";

/// The spelling of `root` in `form`, for building files and expectations.
fn spell(form: Form, root: &[u8]) -> Vec<u8> {
    form.encode(root).expect("test roots are utf-8")
}

/// A fixed, odd mtime, so "unchanged" cannot happen by accident.
fn old_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_000_000_007, 123_456_789)
}

fn set_mtime(path: &Path, t: SystemTime) {
    let f = File::options().write(true).open(path).unwrap();
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
fn mode_and_inode(path: &Path) -> (u32, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap();
    (m.mode() & 0o7777, m.ino())
}

/// A binary file with each form of `root` once, each followed by a byte that would continue
/// a name in text; returns the content and the expected hits.
fn binary_with_all_forms(root: &[u8]) -> (Vec<u8>, Vec<(u64, Form)>) {
    let mut data = b"\x7fELF\0\0\0\x02header".to_vec();
    let mut hits = Vec::new();
    for (i, (form, spelling)) in Form::spellings(root).into_iter().enumerate() {
        data.extend_from_slice(&[0xAB; 31][..=i]);
        hits.push((data.len() as u64, form));
        data.extend_from_slice(&spelling);
        // In a binary file the next byte is arbitrary (a marshal tag, the next packed string).
        data.extend_from_slice(b"z\0\x01");
    }
    (data, hits)
}

#[test]
fn scan_finds_every_form_at_its_offset_in_a_binary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, expected) = binary_with_all_forms(ROOT);
    fs::create_dir_all(tmp.path().join("lib/deep")).unwrap();
    fs::write(tmp.path().join("lib/deep/blob.so"), &data).unwrap();
    fs::write(tmp.path().join("clean.txt"), b"nothing to see").unwrap();

    let records = scan(
        tmp.path(),
        ROOT,
        &[b"lib/deep/blob.so".to_vec(), b"clean.txt".to_vec()],
    )
    .unwrap();

    assert_eq!(records.root, ROOT);
    assert_eq!(
        records.files,
        vec![FileRecord {
            path: b"lib/deep/blob.so".to_vec(),
            text: false,
            hits: expected,
        }],
        "files without hits are left out"
    );
}

#[test]
fn scan_applies_the_sibling_rule_in_text_files_only() {
    let tmp = tempfile::tempdir().unwrap();
    // Each line: the text, and whether the root at its start counts.
    let lines: &[(&str, bool)] = &[
        ("/strata/slots/s01/bin/python", true),
        ("/strata/slots/s010/x", false),
        ("/strata/slots/s01-cache/x", false),
        ("/strata/slots/s01.bak", false),
        ("/strata/slots/s01é", false),
        ("/strata/slots/s01\\lib", true),
        ("/strata/slots/s01\"", true),
        ("/strata/slots/s01'", true),
        ("/strata/slots/s01:/usr/bin", true),
        ("/strata/slots/s01 trailing", true),
        ("/strata/slots/s01", true),
    ];
    let mut text = String::new();
    let mut expected = Vec::new();
    for (line, counts) in lines {
        if *counts {
            expected.push((text.len() as u64, Form::SLASH));
        }
        text.push_str(line);
        text.push('\n');
    }
    // Glued to a flag, and at the very end of the file.
    text.push_str("-I");
    expected.push((text.len() as u64, Form::SLASH));
    text.push_str("/strata/slots/s01/include -L");
    expected.push((text.len() as u64, Form::SLASH));
    text.push_str("/strata/slots/s01");
    fs::write(tmp.path().join("paths.txt"), &text).unwrap();

    // The same bytes in a binary file: every occurrence counts, siblings included.
    let mut binary = text.clone().into_bytes();
    binary.push(0);
    fs::write(tmp.path().join("paths.bin"), &binary).unwrap();
    let binary_expected: Vec<(u64, Form)> = text
        .match_indices("/strata/slots/s01")
        .map(|(i, _)| (i as u64, Form::SLASH))
        .collect();

    let records = scan(
        tmp.path(),
        ROOT,
        &[b"paths.txt".to_vec(), b"paths.bin".to_vec()],
    )
    .unwrap();
    let bin = &records.files[0];
    let txt = &records.files[1];
    assert_eq!((bin.path.as_slice(), bin.text), (&b"paths.bin"[..], false));
    assert_eq!(bin.hits, binary_expected);
    assert_eq!((txt.path.as_slice(), txt.text), (&b"paths.txt"[..], true));
    assert_eq!(txt.hits, expected);
}

#[test]
fn a_rejected_sibling_does_not_hide_an_overlapping_root() {
    let tmp = tempfile::tempdir().unwrap();
    // At 0 the root is followed by `X` (a sibling name); the real one starts inside it, at 3.
    fs::write(tmp.path().join("f"), b"/aX/aX/a").unwrap();
    let records = scan(tmp.path(), b"/aX/a", &[b"f".to_vec()]).unwrap();
    assert_eq!(records.files[0].hits, vec![(3, Form::SLASH)]);
}

#[test]
fn scan_agrees_with_a_naive_search_across_chunk_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let patterns = Form::spellings(ROOT);
    // 3 MiB with a root every 997 bytes, cycling through the forms, so some straddle the
    // points where the scanner moves from one buffer to the next.
    let mut data = vec![0x5Au8; 3 << 20];
    let mut at = 5;
    let mut i = 0;
    while at + 64 < data.len() {
        let p = &patterns[i % patterns.len()].1;
        data[at..at + p.len()].copy_from_slice(p);
        at += 997;
        i += 1;
    }
    data[1] = 0;
    let mut expected = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let hit = patterns.iter().find(|(_, p)| data[pos..].starts_with(p));
        match hit {
            Some((form, p)) => {
                expected.push((pos as u64, *form));
                pos += p.len();
            }
            None => pos += 1,
        }
    }
    assert!(expected.len() > 3000);
    fs::write(tmp.path().join("big"), &data).unwrap();
    let records = scan(tmp.path(), ROOT, &[b"big".to_vec()]).unwrap();
    assert_eq!(records.files[0].hits.len(), expected.len());
    assert_eq!(records.files[0].hits, expected);
}

#[cfg(unix)]
#[test]
fn scan_skips_symlinks_and_what_lies_below_them() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::create_dir(t.join("real")).unwrap();
    fs::write(t.join("real/f"), ROOT).unwrap();
    std::os::unix::fs::symlink("real/f", t.join("link")).unwrap();
    std::os::unix::fs::symlink("real", t.join("dirlink")).unwrap();
    let records = scan(
        t,
        ROOT,
        &[
            b"link".to_vec(),
            b"dirlink/f".to_vec(),
            b"real".to_vec(),
            b"real/f".to_vec(),
        ],
    )
    .unwrap();
    let paths: Vec<&[u8]> = records.files.iter().map(|f| f.path.as_slice()).collect();
    assert_eq!(paths, vec![&b"real/f"[..]]);
}

#[test]
fn scan_rejects_paths_that_leave_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        &b"../etc/passwd"[..],
        b"/etc/passwd",
        b"a//b",
        b"a/./b",
        b"",
    ] {
        let err = scan(tmp.path(), ROOT, &[bad.to_vec()]).unwrap_err();
        assert!(
            matches!(err, Error::InvalidPath { .. }),
            "{bad:?} gave {err}"
        );
    }
    let err = scan(tmp.path(), b"/strata/slots/s01/", &[]).unwrap_err();
    assert!(matches!(err, Error::InvalidRoot { .. }), "{err}");
}

#[test]
fn text_detection_looks_at_the_first_8_kib() {
    assert!(is_text(b""));
    assert!(is_text(b"#!/strata/slots/s01/bin/python\n"));
    assert!(is_text("héllo wörld".as_bytes()));
    assert!(!is_text(b"abc\0def"), "a nul byte makes it binary");
    assert!(!is_text(b"caf\xe9"), "latin-1 is not utf-8");
    assert!(
        !is_text("é".as_bytes().split_at(1).0),
        "a cut character at the end of the file"
    );

    let mut late_nul = vec![b'a'; relocate::TEXT_WINDOW];
    late_nul.push(0);
    assert!(is_text(&late_nul), "only the first 8 KiB count");

    // A two-byte character straddling the end of the window is not held against the file.
    let mut straddling = vec![b'a'; relocate::TEXT_WINDOW - 1];
    straddling.extend_from_slice("é tail".as_bytes());
    assert!(is_text(&straddling));

    // UTF-16LE with its byte-order mark, as Windows writes text, is text too.
    let utf16 = |s: &str| -> Vec<u8> {
        let mut out = vec![0xFF, 0xFE];
        out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
        out
    };
    assert!(is_text(&utf16("Windows Registry Editor\r\nC:\\strata\r\n")));
    assert!(is_text(&utf16("emoji 😀 pairs")));
    assert!(!is_text(&utf16("a\0b")), "a NUL character makes it binary");
    assert!(
        !is_text(&utf16("x")[..3]),
        "half a unit at the end of the file"
    );
    let mut unpaired = utf16("x");
    unpaired.extend_from_slice(&0xDC00u16.to_le_bytes());
    assert!(!is_text(&unpaired), "an unpaired surrogate");
    assert!(
        !is_text(
            &"x".encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<_>>()
        ),
        "without its mark UTF-16 is not recognised"
    );
    // A pair cut by the end of the window is not held against the file.
    let mut long = utf16(&"a".repeat(relocate::TEXT_WINDOW / 2 - 2));
    long.extend(utf16("😀 tail").split_off(2));
    assert!(is_text(&long));
}

/// UTF-16LE text follows the sibling rule: `C:\strata\s010` is another slot's name.
#[test]
fn utf16_text_files_keep_their_siblings() {
    let tmp = tempfile::tempdir().unwrap();
    let text = |slot: &str| -> Vec<u8> {
        let mut out = vec![0xFF, 0xFE];
        let s = format!("a=C:\\strata\\{slot}\\bin\r\nb=C:\\strata\\s010\r\nc=c:/strata/{slot}");
        out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
        out
    };
    fs::write(tmp.path().join("export.reg"), text("s01")).unwrap();
    let records = scan(tmp.path(), br"C:\strata\s01", &[b"export.reg".to_vec()]).unwrap();
    assert!(records.files[0].text);
    assert_eq!(records.files[0].hits.len(), 2);
    relocate(tmp.path(), &records, br"C:\strata\s02").unwrap();
    assert_eq!(
        fs::read(tmp.path().join("export.reg")).unwrap(),
        text("s02")
    );
}

#[test]
fn records_round_trip_through_bytes() {
    let records = Records {
        root: b"C:/strata/s01".to_vec(),
        files: vec![
            FileRecord {
                path: b"not-utf8-\xff\xfe/x".to_vec(),
                text: false,
                hits: vec![
                    (0, Form::SLASH),
                    (20, Form::BACKSLASH),
                    (40, Form::UTF16LE_SLASH),
                    (
                        60,
                        Form::new(Style::Cygdrive, Drive::Lower, Encoding::Narrow),
                    ),
                    (
                        80,
                        Form::new(Style::DoubledBackslash, Drive::Upper, Encoding::Utf16Le),
                    ),
                    (u64::MAX - 100, Form::UTF16LE_BACKSLASH),
                ],
            },
            FileRecord {
                path: b"etc/opam/config".to_vec(),
                text: true,
                hits: vec![(7, Form::BACKSLASH)],
            },
        ],
    };
    let bytes = records.to_bytes();
    assert_eq!(Records::from_bytes(&bytes).unwrap(), records);

    let err = Records::from_bytes(b"{\"root\":").unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err}");
    let other = String::from_utf8(bytes)
        .unwrap()
        .replace("strata-relocate-v1", "strata-relocate-v9");
    let err = Records::from_bytes(other.as_bytes()).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
}

#[test]
fn relocating_to_the_recorded_root_does_nothing() {
    let records = Records {
        root: ROOT.to_vec(),
        files: vec![FileRecord {
            path: b"missing".to_vec(),
            text: false,
            hits: vec![(0, Form::SLASH)],
        }],
    };
    let report = relocate(Path::new("/nonexistent/tree"), &records, ROOT).unwrap();
    assert_eq!(report, RelocateReport::default());
}

/// `data` with every hit rewritten to `new`, built independently of the module.
fn rewritten(data: &[u8], hits: &[(u64, Form)], old: &[u8], new: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(offset, form) in hits {
        let offset = offset as usize;
        let (o, n) = (spell(form, old), spell(form, new));
        assert_eq!(&data[offset..offset + o.len()], o);
        out.extend_from_slice(&data[pos..offset]);
        out.extend_from_slice(&n);
        pos = offset + o.len();
    }
    out.extend_from_slice(&data[pos..]);
    out
}

#[test]
fn same_length_relocation_patches_a_binary_file_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("blob.so");
    let (data, hits) = binary_with_all_forms(ROOT);
    fs::write(&file, &data).unwrap();
    #[cfg(unix)]
    set_mode(&file, 0o751);
    set_mtime(&file, old_time());
    #[cfg(unix)]
    let before = mode_and_inode(&file);

    let records = scan(tmp.path(), ROOT, &[b"blob.so".to_vec()]).unwrap();
    let report = relocate(tmp.path(), &records, SAME_LEN).unwrap();

    assert_eq!(
        report,
        RelocateReport {
            files: 1,
            hits: 4,
            replaced: 0
        }
    );
    assert_eq!(
        fs::read(&file).unwrap(),
        rewritten(&data, &hits, ROOT, SAME_LEN)
    );
    assert_eq!(mtime(&file), old_time());
    #[cfg(unix)]
    assert_eq!(mode_and_inode(&file), before, "mode and inode are kept");

    // Relocating back restores the original bytes exactly.
    let again = scan(tmp.path(), SAME_LEN, &[b"blob.so".to_vec()]).unwrap();
    relocate(tmp.path(), &again, ROOT).unwrap();
    assert_eq!(fs::read(&file).unwrap(), data);
}

#[test]
fn different_length_relocation_rewrites_text_files() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::create_dir(t.join("bin")).unwrap();
    let script = "#!/strata/slots/s01/bin/python3\n\
                  # sibling /strata/slots/s010 stays\n\
                  import sys; sys.path.insert(0, '/strata/slots/s01/lib')\n";
    let cfg = "root: \"C:\\strata\\slots\\s01\"\nother: /strata/slots/s01";
    fs::write(t.join("bin/tool"), script).unwrap();
    fs::write(t.join("config"), cfg).unwrap();
    #[cfg(unix)]
    set_mode(&t.join("bin/tool"), 0o755);
    set_mtime(&t.join("bin/tool"), old_time());
    set_mtime(&t.join("config"), old_time());
    #[cfg(unix)]
    let dir_mtime = mtime(&t.join("bin"));

    let records = scan(t, b"C:/strata/slots/s01", &[b"config".to_vec()]).unwrap();
    assert_eq!(
        records.files[0].hits,
        vec![(
            7,
            Form::new(Style::Backslash, Drive::Upper, Encoding::Narrow)
        )]
    );
    let report = relocate(t, &records, b"D:/builds/slot-2").unwrap();
    assert_eq!(report.replaced, 1);
    assert_eq!(
        fs::read_to_string(t.join("config")).unwrap(),
        "root: \"D:\\builds\\slot-2\"\nother: /strata/slots/s01",
        "the slash form was not recorded for this root, so it stays"
    );

    let records = scan(t, ROOT, &[b"bin/tool".to_vec(), b"config".to_vec()]).unwrap();
    let report = relocate(t, &records, LONGER).unwrap();
    assert_eq!(
        report,
        RelocateReport {
            files: 2,
            hits: 3,
            replaced: 2
        }
    );
    assert_eq!(
        fs::read_to_string(t.join("bin/tool")).unwrap(),
        "#!/opt/strata/slots/slot-2/bin/python3\n\
         # sibling /strata/slots/s010 stays\n\
         import sys; sys.path.insert(0, '/opt/strata/slots/slot-2/lib')\n"
    );
    assert_eq!(
        fs::read_to_string(t.join("config")).unwrap(),
        "root: \"D:\\builds\\slot-2\"\nother: /opt/strata/slots/slot-2"
    );
    assert_eq!(mtime(&t.join("bin/tool")), old_time());
    assert_eq!(mtime(&t.join("config")), old_time());
    #[cfg(unix)]
    {
        assert_eq!(mode_and_inode(&t.join("bin/tool")).0, 0o755);
        assert_eq!(
            mtime(&t.join("bin")),
            dir_mtime,
            "the directory looks untouched"
        );
    }
    let leftovers: Vec<_> = fs::read_dir(t.join("bin")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
}

/// A Windows slot's files, in every form Windows toolchains write its root in; `@@` is the
/// slot's name. What spells another path (a sibling slot, another drive) uses `s01` literally.
const WINDOWS_TEXT: &str = concat!(
    "PATH=C:\\strata\\@@\\bin;c:\\strata\\@@\\lib;D:\\strata\\s01\\bin\r\n",
    "url=C:/strata/@@/share c:/strata/@@\r\n",
    "{\"root\": \"C:\\\\strata\\\\@@\\\\opam\", \"lower\": \"c:\\\\strata\\\\@@\"}\r\n",
    "cygwin=/cygdrive/c/strata/@@/usr/bin:/cygdrive/C/strata/@@\n",
    "msys=/c/strata/@@/mingw64/bin:/C/strata/@@\n",
    "siblings: C:\\strata\\s010 c:/strata/s01-old /cygdrive/c/strata/s01x /c/strata/s01.bak ",
    "C:\\\\strata\\\\s01_x E:/strata/s01 /d/strata/s01\n",
    "end: C:\\strata\\@@",
);

/// The binary counterpart: each spelling of the root in UTF-16LE and narrow, packed with
/// bytes that would continue a name in text.
fn windows_binary(slot: &str) -> Vec<u8> {
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let mut data = b"MZ\x90\0\x03\0".to_vec();
    for form in [
        "C:\\strata\\@@",
        "c:\\strata\\@@",
        "C:/strata/@@",
        "c:/strata/@@",
        "C:\\\\strata\\\\@@",
        "c:\\\\strata\\\\@@",
        "/cygdrive/c/strata/@@",
        "/cygdrive/C/strata/@@",
        "/c/strata/@@",
        "/C/strata/@@",
    ] {
        let s = form.replace("@@", slot);
        data.extend_from_slice(&utf16(&s));
        data.extend_from_slice(&utf16("x\0"));
        data.extend_from_slice(s.as_bytes());
        data.extend_from_slice(b"z\x01");
    }
    data.extend_from_slice(&utf16("D:\\strata\\s01 stays"));
    data
}

#[test]
fn a_windows_slot_root_is_rewritten_in_every_form_it_appears_in() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let text = |slot: &str| WINDOWS_TEXT.replace("@@", slot);
    fs::write(t.join("config.txt"), text("s01")).unwrap();
    fs::write(t.join("tool.exe"), windows_binary("s01")).unwrap();
    set_mtime(&t.join("tool.exe"), old_time());

    let files = [b"config.txt".to_vec(), b"tool.exe".to_vec()];
    let records = scan(t, br"C:\strata\s01", &files).unwrap();
    let counts: Vec<usize> = records.files.iter().map(|f| f.hits.len()).collect();
    // The text names the root 11 times; the binary 20 times, 10 in UTF-16LE.
    assert_eq!(counts, [11, 20]);
    let report = relocate(t, &records, br"C:\strata\s02").unwrap();
    assert_eq!(report.replaced, 0, "equal lengths are patched in place");

    assert_eq!(
        fs::read_to_string(t.join("config.txt")).unwrap(),
        text("s02")
    );
    assert_eq!(fs::read(t.join("tool.exe")).unwrap(), windows_binary("s02"));
    assert_eq!(mtime(&t.join("tool.exe")), old_time());

    // The records survive storage and take the files back, byte for byte.
    let stored = Records::from_bytes(&scan(t, br"C:\strata\s02", &files).unwrap().to_bytes());
    relocate(t, &stored.unwrap(), br"C:\strata\s01").unwrap();
    assert_eq!(
        fs::read_to_string(t.join("config.txt")).unwrap(),
        text("s01")
    );
    assert_eq!(fs::read(t.join("tool.exe")).unwrap(), windows_binary("s01"));
}

#[test]
fn a_form_the_new_root_cannot_spell_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), b"/cygdrive/c/strata/s01/bin").unwrap();
    let records = scan(tmp.path(), br"C:\strata\s01", &[b"f".to_vec()]).unwrap();
    let err = relocate(tmp.path(), &records, b"/strata/slots/s01").unwrap_err();
    assert!(
        matches!(&err, Error::NoSpelling { form, .. } if form.style == Style::Cygdrive),
        "{err}"
    );
    assert!(err.to_string().contains("cygdrive"), "{err}");
    assert_eq!(
        fs::read(tmp.path().join("f")).unwrap(),
        b"/cygdrive/c/strata/s01/bin"
    );
}

#[test]
fn different_length_relocation_refuses_binary_files_before_changing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (blob, _) = binary_with_all_forms(ROOT);
    let text = b"prefix=/strata/slots/s01\n";
    fs::write(t.join("a-text"), text).unwrap();
    fs::write(t.join("b-blob.so"), &blob).unwrap();
    fs::write(t.join("c-blob.pyc"), &blob).unwrap();
    for f in ["a-text", "b-blob.so", "c-blob.pyc"] {
        set_mtime(&t.join(f), old_time());
    }
    let all = [
        b"a-text".to_vec(),
        b"b-blob.so".to_vec(),
        b"c-blob.pyc".to_vec(),
    ];
    let records = scan(t, ROOT, &all).unwrap();

    let err = relocate(t, &records, LONGER).unwrap_err();
    let Error::BinaryFiles { paths } = &err else {
        panic!("expected a refusal, got {err}");
    };
    assert_eq!(paths, &[t.join("b-blob.so"), t.join("c-blob.pyc")]);
    let message = err.to_string();
    assert!(
        message.contains("b-blob.so") && message.contains("c-blob.pyc"),
        "{message}"
    );
    assert_eq!(fs::read(t.join("a-text")).unwrap(), text);
    assert_eq!(fs::read(t.join("b-blob.so")).unwrap(), blob);
    for f in ["a-text", "b-blob.so", "c-blob.pyc"] {
        assert_eq!(mtime(&t.join(f)), old_time(), "{f} was touched");
    }
}

#[test]
fn a_tree_that_changed_since_the_scan_is_an_error_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (blob, hits) = binary_with_all_forms(ROOT);
    fs::write(t.join("a.so"), &blob).unwrap();
    fs::write(t.join("b.so"), &blob).unwrap();
    let records = scan(t, ROOT, &[b"a.so".to_vec(), b"b.so".to_vec()]).unwrap();

    // b.so loses its third hit after the scan.
    let (offset, form) = hits[2];
    let mut changed = blob.clone();
    changed[offset as usize + 4] ^= 0x20;
    fs::write(t.join("b.so"), &changed).unwrap();

    let err = relocate(t, &records, SAME_LEN).unwrap_err();
    let Error::Mismatch {
        path,
        offset: at,
        form: f,
    } = &err
    else {
        panic!("expected a mismatch, got {err}");
    };
    assert_eq!((path, *at, *f), (&t.join("b.so"), offset, form));
    let message = err.to_string();
    assert!(
        message.contains("b.so") && message.contains(&format!("byte {offset}")),
        "{message}"
    );
    assert_eq!(
        fs::read(t.join("a.so")).unwrap(),
        blob,
        "checked before writing"
    );

    // A file cut short reports the offset past its end the same way.
    fs::write(t.join("b.so"), &blob[..hits[3].0 as usize + 3]).unwrap();
    let err = relocate(t, &records, SAME_LEN).unwrap_err();
    assert!(
        matches!(&err, Error::Mismatch { offset, .. } if *offset == hits[3].0),
        "{err}"
    );

    // A file that became a directory is named too.
    fs::remove_file(t.join("b.so")).unwrap();
    fs::create_dir(t.join("b.so")).unwrap();
    let err = relocate(t, &records, SAME_LEN).unwrap_err();
    assert!(
        matches!(&err, Error::NotRegular { path } if path == &t.join("b.so")),
        "{err}"
    );
}

#[cfg(unix)]
pub(crate) mod venv {
    //! A real Python venv with a package installed by pip, moved to another slot.

    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use strata_snapshot::relocate::{Records, relocate, scan};
    use strata_test_support::require;

    /// Every regular file under `root`, relative, symlinks not followed.
    fn regular_files(root: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in fs::read_dir(root.join(&rel)).unwrap() {
                let entry = entry.unwrap();
                let kind = entry.file_type().unwrap();
                let child = rel.join(entry.file_name());
                if kind.is_dir() {
                    stack.push(child);
                } else if kind.is_file() {
                    out.push(child.as_os_str().as_bytes().to_vec());
                }
            }
        }
        out
    }

    /// A command that sees nothing of the environment's own Python setup.
    pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for var in ["VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP"] {
            cmd.env_remove(var);
        }
        cmd.env("PIP_NO_CACHE_DIR", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1");
        cmd
    }

    fn describe(out: &Output) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    const MODULE: &str = "import os\n\n\ndef hello():\n    \
                          print('hello from stratademo in ' + os.path.dirname(__file__))\n";

    /// Writes a wheel by hand (a zip with a dist-info), for when setuptools cannot build one
    /// offline: before 70.1 it needs the separate `wheel` package, which a fresh venv lacks.
    const MAKE_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
out, module = sys.argv[1], sys.argv[2]
info = "stratademo-0.1.0.dist-info/"
files = {
    "stratademo/__init__.py": module,
    info + "METADATA": "Metadata-Version: 2.1\nName: stratademo\nVersion: 0.1.0\n",
    info + "WHEEL": "Wheel-Version: 1.0\nGenerator: strata-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    info + "entry_points.txt": "[console_scripts]\nstratademo-hello = stratademo:hello\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(info + "RECORD,,")
    z.writestr(info + "RECORD", "\n".join(record) + "\n")
"#;

    /// Installs `stratademo` into the venv at `venv` without network: from source with
    /// setuptools if it can, else from a hand-made wheel, which needs nothing but the venv's
    /// own pip. Says how it was installed.
    pub(crate) fn install_demo(tmp: &Path, venv: &Path) -> &'static str {
        let pkg = tmp.join("pkg");
        fs::create_dir_all(pkg.join("stratademo")).unwrap();
        fs::write(
            pkg.join("pyproject.toml"),
            "[build-system]\nrequires = [\"setuptools\"]\n\
             build-backend = \"setuptools.build_meta\"\n\n\
             [project]\nname = \"stratademo\"\nversion = \"0.1.0\"\n\n\
             [project.scripts]\nstratademo-hello = \"stratademo:hello\"\n",
        )
        .unwrap();
        fs::write(pkg.join("stratademo/__init__.py"), MODULE).unwrap();

        let pip = venv.join("bin/pip");
        let has_setuptools = command(venv.join("bin/python"))
            .args(["-c", "import setuptools"])
            .output()
            .is_ok_and(|o| o.status.success());
        let mut why = String::from("setuptools is not in the venv");
        if has_setuptools {
            let out = command(&pip)
                .args(["install", "--no-index", "--no-build-isolation"])
                .arg(&pkg)
                .output()
                .unwrap();
            if out.status.success() {
                return "from source with setuptools";
            }
            why = format!("pip install from source failed: {}", describe(&out));
        }
        println!("{why}\nfalling back to a hand-made wheel");

        let wheel = tmp.join("stratademo-0.1.0-py3-none-any.whl");
        let out = command(venv.join("bin/python"))
            .args(["-c", MAKE_WHEEL])
            .arg(&wheel)
            .arg(MODULE)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{why}; writing a wheel failed: {}",
            describe(&out)
        );
        let out = command(&pip)
            .args(["install", "--no-index"])
            .arg(&wheel)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{why}; installing a wheel failed: {}",
            describe(&out)
        );
        "from a hand-made wheel"
    }

    fn run(program: &Path, args: &[&str]) -> Output {
        command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    #[test]
    fn a_python_venv_works_after_moving_to_another_slot() {
        let tmp = tempfile::tempdir().unwrap();
        let slots = tmp.path().join("slots");
        fs::create_dir(&slots).unwrap();
        let (s01, s02, s03) = (slots.join("s01"), slots.join("s02"), slots.join("s03"));

        let venv = command("python3").args(["-m", "venv"]).arg(&s01).output();
        let problem = match venv {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!("`python3 -m venv` failed: {}", describe(&out))),
            Err(e) => Some(format!("cannot run python3: {e}")),
        };
        if !require("a Python venv moved between slots", problem) {
            return;
        }
        let how = install_demo(tmp.path(), &s01);
        println!("installed stratademo {how}");
        assert!(run(&s01.join("bin/stratademo-hello"), &[]).status.success());

        // Commit: scan every regular file, and store the records as a layer would.
        let root01 = s01.as_os_str().as_bytes();
        let root02 = s02.as_os_str().as_bytes();
        let records = scan(&s01, root01, &regular_files(&s01)).unwrap();
        let records = Records::from_bytes(&records.to_bytes()).unwrap();
        let n_hits: usize = records.files.iter().map(|f| f.hits.len()).sum();
        println!(
            "{} files mention the root, {n_hits} times",
            records.files.len()
        );
        for must in [&b"bin/pip"[..], b"bin/stratademo-hello", b"pyvenv.cfg"] {
            assert!(
                records.files.iter().any(|f| f.path == must),
                "{} is not recorded",
                String::from_utf8_lossy(must)
            );
        }

        // Check out elsewhere: s02 gets relocated, s03 is the control that does not.
        for dst in [&s02, &s03] {
            let cp = Command::new("cp")
                .arg("-a")
                .arg(&s01)
                .arg(dst)
                .output()
                .unwrap();
            assert!(cp.status.success(), "cp -a: {}", describe(&cp));
        }
        fs::remove_dir_all(&s01).unwrap();
        let report = relocate(&s02, &records, root02).unwrap();
        assert_eq!(report.files, records.files.len());
        assert_eq!(report.hits, n_hits);
        assert_eq!(report.replaced, 0, "equal-length roots patch in place");

        let s02_str = s02.to_str().unwrap();
        let pip = run(&s02.join("bin/pip"), &["--version"]);
        assert!(pip.status.success(), "pip --version: {}", describe(&pip));
        let pip_out = String::from_utf8_lossy(&pip.stdout);
        assert!(pip_out.contains(&format!("from {s02_str}/")), "{pip_out}");

        let py = run(
            &s02.join("bin/python"),
            &[
                "-c",
                "import stratademo, sys; print(stratademo.__file__); print(sys.prefix)",
            ],
        );
        assert!(py.status.success(), "python: {}", describe(&py));
        let py_out = String::from_utf8_lossy(&py.stdout);
        let lines: Vec<&str> = py_out.lines().collect();
        assert_eq!(lines.len(), 2, "{py_out}");
        assert!(lines[0].starts_with(&format!("{s02_str}/lib/")), "{py_out}");
        assert_eq!(lines[1], s02_str);

        let hello = run(&s02.join("bin/stratademo-hello"), &[]);
        assert!(
            hello.status.success(),
            "stratademo-hello: {}",
            describe(&hello)
        );
        let hello_out = String::from_utf8_lossy(&hello.stdout);
        assert!(
            hello_out.contains(&format!("hello from stratademo in {s02_str}/")),
            "{hello_out}"
        );

        // Nothing mentions the old root any more.
        let left = scan(&s02, root01, &regular_files(&s02)).unwrap();
        assert!(left.is_empty(), "still mention s01: {:?}", left.files);

        // The control proves the test can fail: pip's shebang names the deleted s01.
        let control = command(s03.join("bin/pip")).arg("--version").output();
        match control {
            Ok(out) => assert!(
                !out.status.success(),
                "unrelocated pip ran: {}",
                describe(&out)
            ),
            Err(e) => println!("unrelocated pip cannot start, as expected: {e}"),
        }
    }
}
