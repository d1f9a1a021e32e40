//! Layers round-trip exactly: create → extract gives the same tree, the same tree gives the
//! same bytes, and GNU tar agrees with us in both directions.

use std::fs;
use std::path::Path;
use std::process::Command;

use strata_cas::create::{create_from_changes, create_from_dir, write_tar};
use strata_cas::extract::{apply_file, apply_tar};
use strata_cas::{
    Change, ChangeKind, CreateOptions, DevicePolicy, ExtractOptions, LayerId, SetuidPolicy,
};
use strata_test_support::{require, root, tool};

use crate::common::{assert_same_tree, rich_tree, set_mtime, write};

fn permissive() -> ExtractOptions {
    ExtractOptions {
        devices: DevicePolicy::Create,
        setuid: SetuidPolicy::Keep,
        ..ExtractOptions::default()
    }
}

fn layer_bytes(dir: &Path, opts: &CreateOptions) -> (Vec<u8>, strata_cas::LayerInfo) {
    let mut out = Vec::new();
    let info = create_from_dir(dir, &mut out, opts).unwrap();
    (out, info)
}

#[test]
fn create_then_extract_gives_the_same_tree_and_the_same_id() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    let (blob, info) = layer_bytes(&src, &CreateOptions::default());
    assert_eq!(info.compressed_size, blob.len() as u64);
    let tar = zstd::stream::decode_all(&blob[..]).unwrap();
    assert_eq!(
        info.id,
        LayerId::of(&tar),
        "the id is the blake3 of the uncompressed tar"
    );
    assert_eq!(info.uncompressed_size, tar.len() as u64);

    let layer = tmp.path().join("layer.tar.zst");
    fs::write(&layer, &blob).unwrap();
    let dst = tmp.path().join("dst");
    let report = apply_file(&layer, &dst, &permissive()).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.hardlinks, 1);
    assert_same_tree(&src, &dst);

    // A fixed point: the extracted tree commits to the very same layer.
    let (again, info2) = layer_bytes(&dst, &CreateOptions::default());
    assert_eq!(info2.id, info.id);
    assert_eq!(again, blob);
}

#[test]
fn output_does_not_depend_on_threads_or_chunking_of_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    rich_tree(tmp.path());
    let (_, base) = layer_bytes(tmp.path(), &CreateOptions::default());
    for (threads, chunk) in [(1, 1 << 20), (3, 256 << 10)] {
        let opts = CreateOptions {
            threads,
            chunk_size: chunk,
            ..CreateOptions::default()
        };
        let (_, info) = layer_bytes(tmp.path(), &opts);
        assert_eq!(info.id, base.id, "threads {threads}, chunk {chunk}");
    }
    let mut plain = Vec::new();
    let info = write_tar(tmp.path(), &mut plain, &CreateOptions::default()).unwrap();
    assert_eq!(info.id, base.id);
    assert_eq!(LayerId::of(&plain), base.id);
}

#[test]
fn single_threaded_extraction_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    let mut tar = Vec::new();
    write_tar(&src, &mut tar, &CreateOptions::default()).unwrap();
    let dst = tmp.path().join("dst");
    let opts = ExtractOptions {
        threads: 1,
        ..permissive()
    };
    apply_tar(&tar[..], &dst, &opts).unwrap();
    assert_same_tree(&src, &dst);
}

#[test]
fn mtime_clamp_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("a"), b"x", 0o644, 2_000_000_000);
    let mut tar = Vec::new();
    let opts = CreateOptions {
        mtime_clamp: Some(1_000),
        ..CreateOptions::default()
    };
    write_tar(tmp.path(), &mut tar, &opts).unwrap();
    let mut r = strata_cas::tar::TarReader::new(&tar[..], &strata_cas::Limits::default());
    let e = r.next_entry().unwrap().unwrap();
    assert_eq!(e.meta.mtime, 1_000);
}

#[test]
fn gnu_tar_extracts_our_layers_and_we_extract_gnu_tars() {
    if !require(
        "round trips with GNU tar",
        tool("tar").or_else(|| tool("zstd")),
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);

    // Ours → GNU: zstd -dc layer | tar -x.
    let (blob, _) = layer_bytes(&src, &CreateOptions::default());
    let layer = tmp.path().join("layer.tar.zst");
    fs::write(&layer, &blob).unwrap();
    let by_gnu = tmp.path().join("by-gnu");
    fs::create_dir(&by_gnu).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -q -dc {} | tar --xattrs --xattrs-include='*' --same-owner -xpf - -C {}",
            layer.display(),
            by_gnu.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    set_mtime(
        &by_gnu,
        fs::symlink_metadata(&src)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    assert_same_tree(&src, &by_gnu);

    // GNU → ours: a POSIX tar of the tree made by GNU tar, gzipped, extracted by us.
    let gnu_tar = tmp.path().join("gnu.tar.gz");
    let status = Command::new("tar")
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=user.*",
            "-czf",
        ])
        .arg(&gnu_tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let by_us = tmp.path().join("by-us");
    apply_file(&gnu_tar, &by_us, &permissive()).unwrap();
    assert_same_tree(&src, &by_us);
}

#[test]
fn a_change_list_layer_applied_on_the_base_gives_the_changed_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    write(&work.join("keep/a"), b"a", 0o644, 1_000);
    write(&work.join("keep/b"), b"b", 0o644, 1_000);
    write(&work.join("gone/x"), b"x", 0o644, 1_000);
    write(&work.join("gone/y/z"), b"z", 0o644, 1_000);
    write(&work.join("opaque/old"), b"old", 0o644, 1_000);
    write(&work.join("file-becomes-dir"), b"f", 0o644, 1_000);
    let (base, _) = layer_bytes(&work, &CreateOptions::default());

    // The step: modify, add, delete a file and a whole tree, replace a directory's
    // contents, turn a file into a directory.
    write(&work.join("keep/a"), b"a2", 0o600, 2_000);
    fs::remove_file(work.join("keep/b")).unwrap();
    write(&work.join("keep/new"), b"new", 0o644, 2_000);
    fs::remove_dir_all(work.join("gone")).unwrap();
    fs::remove_dir_all(work.join("opaque")).unwrap();
    write(&work.join("opaque/fresh"), b"fresh", 0o644, 2_000);
    fs::remove_file(work.join("file-becomes-dir")).unwrap();
    write(&work.join("file-becomes-dir/inside"), b"i", 0o644, 2_000);
    for d in ["keep", "opaque", "file-becomes-dir"] {
        set_mtime(&work.join(d), 3_000);
    }
    set_mtime(&work, 3_000);
    let changes = vec![
        Change::new("keep/a", ChangeKind::Modified),
        Change::new("keep/b", ChangeKind::Deleted),
        Change::new("keep/new", ChangeKind::Added),
        Change::new("gone", ChangeKind::Deleted),
        Change::new("opaque", ChangeKind::Opaque),
        Change::new("opaque/fresh", ChangeKind::Added),
        Change::new("file-becomes-dir", ChangeKind::Added),
        Change::new("file-becomes-dir/inside", ChangeKind::Added),
    ];
    let mut diff = Vec::new();
    let info = create_from_changes(&work, &changes, &mut diff, &CreateOptions::default()).unwrap();
    assert!(info.entries >= 8, "{info:?}");

    let dst = tmp.path().join("dst");
    apply_tar(
        &zstd::stream::decode_all(&base[..]).unwrap()[..],
        &dst,
        &permissive(),
    )
    .unwrap();
    let report = apply_tar(
        &zstd::stream::decode_all(&diff[..]).unwrap()[..],
        &dst,
        &permissive(),
    )
    .unwrap();
    assert_eq!(report.whiteouts, 3, "{report:?}");
    set_mtime(&dst, 3_000);
    assert_same_tree(&work, &dst);
}

#[test]
fn ownership_is_restored_as_root() {
    if !require("restoring ownership", root()) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("owned"), b"x", 0o4755, 1_000);
    std::os::unix::fs::lchown(src.join("owned"), Some(4321), Some(8765)).unwrap();
    fs::set_permissions(
        src.join("owned"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let mut tar = Vec::new();
    write_tar(&src, &mut tar, &CreateOptions::default()).unwrap();
    let dst = tmp.path().join("dst");
    apply_tar(&tar[..], &dst, &permissive()).unwrap();
    let meta = fs::metadata(dst.join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4321, 8765));
    assert_eq!(
        meta.mode() & 0o7777,
        0o4755,
        "chown must not clear the setuid bit we set after it"
    );
}

#[test]
fn overlay_whiteout_mode_records_whiteouts_for_overlayfs() {
    if !require("overlay whiteouts (mknod and trusted xattrs)", root()) {
        return;
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    write(&work.join("keep/x"), b"x", 0o644, 1_000);
    write(&work.join("opaque/new"), b"n", 0o644, 1_000);
    let changes = vec![
        Change::new("keep/x", ChangeKind::Added),
        Change::new("keep/gone", ChangeKind::Deleted),
        Change::new("opaque", ChangeKind::Opaque),
        Change::new("opaque/new", ChangeKind::Added),
    ];
    let mut layer = Vec::new();
    create_from_changes(&work, &changes, &mut layer, &CreateOptions::default()).unwrap();
    let tar = zstd::stream::decode_all(&layer[..]).unwrap();
    let dst = tmp.path().join("unpacked");
    let opts = ExtractOptions {
        whiteouts: strata_cas::WhiteoutMode::Overlay,
        ..permissive()
    };
    let report = apply_tar(&tar[..], &dst, &opts).unwrap();
    assert_eq!(report.whiteouts, 2);
    let wh = fs::symlink_metadata(dst.join("keep/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    let mut value = [0u8; 8];
    let n =
        rustix::fs::getxattr(dst.join("opaque"), "trusted.overlay.opaque", &mut value[..]).unwrap();
    assert_eq!(&value[..n], b"y");
    assert_eq!(fs::read(dst.join("opaque/new")).unwrap(), b"n");
    assert!(!dst.join("opaque/.wh..wh..opq").exists());

    // Keep mode leaves the markers as the files they are in the tar.
    let kept = tmp.path().join("kept");
    let opts = ExtractOptions {
        whiteouts: strata_cas::WhiteoutMode::Keep,
        ..permissive()
    };
    apply_tar(&tar[..], &kept, &opts).unwrap();
    assert_eq!(fs::read(kept.join("keep/.wh.gone")).unwrap(), b"");
    assert_eq!(fs::read(kept.join("opaque/.wh..wh..opq")).unwrap(), b"");
}

/// What a layer would read as a whiteout is refused by the writer, naming the entry: a
/// `.wh.` name (from a directory or a change list, deleted ones too), overlayfs's attributes
/// set by a process, a 0/0 character device. Overlayfs's own bookkeeping in an upper dir
/// (`trusted.overlay.*`) is left out.
#[test]
fn the_writer_refuses_what_a_layer_would_read_as_a_whiteout() {
    use strata_cas::EntryProblem;
    let tmp = tempfile::tempdir().unwrap();
    let create = |dir: &Path| create_from_dir(dir, &mut Vec::new(), &CreateOptions::default());
    let changes = |dir: &Path, list: &[Change]| {
        create_from_changes(dir, list, &mut Vec::new(), &CreateOptions::default())
    };
    let refused = |result: strata_cas::Result<strata_cas::LayerInfo>, entry: &str| {
        let err = result.unwrap_err();
        assert_eq!(
            err.entry_name().map(|n| n.0.clone()),
            Some(entry.as_bytes().to_vec()),
            "{err}"
        );
        err
    };

    for name in [
        ".wh.foo",
        ".wh..wh..opq",
        ".wh.",
        "sub/.wh.x",
        ".wh.dir/inner",
    ] {
        let dir = tmp.path().join(format!("names-{}", name.replace('/', "_")));
        write(&dir.join("ok"), b"ok", 0o644, 1_000);
        write(&dir.join(name), b"", 0o644, 1_000);
        let at = name.split('/').scan(String::new(), |acc, c| {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            Some(acc.clone())
        });
        let first = at
            .into_iter()
            .find(|p| p.rsplit('/').next().unwrap().starts_with(".wh."))
            .unwrap();
        let err = refused(create(&dir), &first);
        assert!(
            matches!(
                err,
                strata_cas::Error::Entry {
                    problem: EntryProblem::ReservedName,
                    ..
                }
            ),
            "{err}"
        );
        let err = refused(changes(&dir, &[Change::new(name, ChangeKind::Added)]), name);
        assert!(err.to_string().contains(".wh."), "{err}");
    }
    let dir = tmp.path().join("deleted");
    fs::create_dir_all(&dir).unwrap();
    refused(
        changes(&dir, &[Change::new("a/.wh.b", ChangeKind::Deleted)]),
        "a/.wh.b",
    );

    let dir = tmp.path().join("xattrs");
    write(&dir.join("d/f"), b"f", 0o644, 1_000);
    for attr in ["user.overlay.opaque", "user.overlay.whiteout"] {
        rustix::fs::setxattr(dir.join("d"), attr, b"y", rustix::fs::XattrFlags::empty()).unwrap();
        let err = refused(create(&dir), "d");
        assert!(err.to_string().contains(attr), "{err}");
        let err = refused(changes(&dir, &[Change::new("d/f", ChangeKind::Added)]), "d");
        assert!(err.to_string().contains(attr), "{err}");
        rustix::fs::removexattr(dir.join("d"), attr).unwrap();
    }
    create(&dir).unwrap();

    if !require("the trusted attributes and the device", root()) {
        return;
    }
    // Overlayfs's bookkeeping is left out; what a process set through a mount (escaped by
    // overlayfs as trusted.overlay.overlay.*) is refused under the name it was given.
    let set = |p: &Path, name: &str| {
        rustix::fs::setxattr(p, name, b"y", rustix::fs::XattrFlags::empty()).unwrap();
    };
    set(&dir.join("d"), "trusted.overlay.origin");
    set(&dir.join("d"), "trusted.overlay.impure");
    set(&dir.join("d"), "trusted.note");
    let mut layer = Vec::new();
    create_from_dir(&dir, &mut layer, &CreateOptions::default()).unwrap();
    let tar = zstd::stream::decode_all(&layer[..]).unwrap();
    let out = tmp.path().join("out");
    apply_tar(&tar[..], &out, &permissive()).unwrap();
    let mut names = vec![0u8; 1024];
    let n = rustix::fs::llistxattr(out.join("d"), &mut names[..]).unwrap();
    assert_eq!(&names[..n], b"trusted.note\0");
    set(&dir.join("d/f"), "trusted.overlay.overlay.opaque");
    let err = refused(create(&dir), "d/f");
    assert!(
        err.to_string().contains("`trusted.overlay.opaque`"),
        "{err}"
    );
    rustix::fs::removexattr(dir.join("d/f"), "trusted.overlay.overlay.opaque").unwrap();

    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("d/wh"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let err = refused(create(&dir), "d/wh");
    assert!(err.to_string().contains("whiteout"), "{err}");
}
