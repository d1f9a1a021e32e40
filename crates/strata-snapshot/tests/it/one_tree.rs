//! One snapshot, one tree: whatever a step leaves in a checkout (files named like
//! whiteouts, overlayfs's own attributes, whiteout devices), the snapshot it commits shows
//! the same tree in every view of it: an overlay and a portable checkout, a copy, the same
//! two once its layer is unpacked again from the blob, and its layer blobs applied afresh.
//! Or the commit is refused, naming the path. Tried from overlay and portable checkouts.
//! Needs root (trusted attributes, device nodes) and overlayfs: under `CI` both are
//! required, elsewhere what is missing is skipped.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, XattrFlags};
use strata_cas::{DevicePolicy, ExtractOptions, SetuidPolicy, WhiteoutMode};
use strata_snapshot::Snapshot;
use strata_snapshot::{CheckoutMode, Engine};
use strata_test_support::tree::{self, Fields, Mtimes, Tree};
use strata_test_support::{require, root};

use crate::overlay_problem;

/// What every view of a snapshot must agree on: kinds, modes, contents, link targets,
/// device numbers and the `user.*` and `trusted.*` attributes (the ones layers carry).
const FIELDS: Fields = Fields {
    owners: false,
    mtimes: Mtimes::None,
    xattrs: true,
    links: false,
};

/// Something a step may leave behind, and what the commit must make of it.
struct Trick {
    name: &'static str,
    /// Does it in a checkout; an error means the step could not (overlayfs refuses some
    /// things through its mounts).
    apply: fn(&Path) -> std::io::Result<()>,
    /// Texts a refusal must contain (the path, and the attribute where one is at fault);
    /// `None`: the commit must succeed.
    refusal: Option<&'static [&'static str]>,
    /// Whether the commit may also succeed (then every view must agree).
    may_commit: bool,
}

fn write(path: &Path, data: &str) -> std::io::Result<()> {
    fs::write(path, data)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).map_err(Into::into)
}

const TRICKS: &[Trick] = &[
    Trick {
        name: "a file named as the whiteout of its sibling",
        apply: |w| write(&w.join("e/.wh.foo"), "x\n"),
        refusal: Some(&["e/.wh.foo", ".wh."]),
        may_commit: false,
    },
    Trick {
        name: "a whiteout-named file of nothing, at the root",
        apply: |w| write(&w.join(".wh.zz"), "y\n"),
        refusal: Some(&[".wh.zz"]),
        may_commit: false,
    },
    Trick {
        name: "a file named as the opaque marker",
        apply: |w| write(&w.join("d/.wh..wh..opq"), ""),
        refusal: Some(&["d/.wh..wh..opq"]),
        may_commit: false,
    },
    Trick {
        name: "a file named as the bare whiteout prefix",
        apply: |w| write(&w.join("d/.wh."), ""),
        refusal: Some(&["d/.wh."]),
        may_commit: false,
    },
    Trick {
        name: "a directory named as a whiteout",
        apply: |w| {
            fs::create_dir(w.join(".wh.dir"))?;
            write(&w.join(".wh.dir/f"), "f\n")
        },
        refusal: Some(&[".wh.dir"]),
        may_commit: false,
    },
    Trick {
        name: "user.overlay.opaque on a directory with lower contents",
        apply: |w| set_xattr(&w.join("d"), "user.overlay.opaque", b"y"),
        refusal: Some(&["`d`", "user.overlay.opaque"]),
        may_commit: false,
    },
    Trick {
        name: "user.overlay.whiteout on a file",
        apply: |w| set_xattr(&w.join("e/foo"), "user.overlay.whiteout", b""),
        refusal: Some(&["e/foo", "user.overlay.whiteout"]),
        may_commit: false,
    },
    Trick {
        name: "user.overlay.redirect on a directory",
        apply: |w| set_xattr(&w.join("d"), "user.overlay.redirect", b"/e"),
        refusal: Some(&["`d`", "user.overlay.redirect"]),
        may_commit: false,
    },
    Trick {
        name: "trusted.overlay.opaque on a directory with lower contents",
        apply: |w| set_xattr(&w.join("d"), "trusted.overlay.opaque", b"y"),
        refusal: Some(&["`d`", "trusted.overlay.opaque"]),
        may_commit: true,
    },
    Trick {
        name: "overlay attributes on the root",
        apply: |w| {
            set_xattr(w, "user.overlay.opaque", b"y")?;
            set_xattr(w, "trusted.overlay.opaque", b"y")?;
            write(&w.join("top.txt"), "top\n")
        },
        refusal: Some(&["overlay.opaque"]),
        may_commit: true,
    },
    Trick {
        name: "a 0/0 character device, overlayfs's whiteout",
        apply: |w| {
            rustix::fs::mknodat(
                CWD,
                w.join("e/dev0"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o600),
                0,
            )
            .map_err(Into::into)
        },
        refusal: Some(&["e/dev0", "whiteout"]),
        may_commit: false,
    },
    Trick {
        name: "an ordinary change (the control)",
        apply: |w| {
            write(&w.join("new.txt"), "new\n")?;
            set_xattr(&w.join("d/lowerfile"), "user.note", b"kept")?;
            fs::remove_file(w.join("e/bar"))
        },
        refusal: None,
        may_commit: true,
    },
];

/// The base: a directory with contents (for opaque markers to hide) and files to white out.
fn base_tar(top: &Path) -> PathBuf {
    let src = top.join("base-src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(src.join("e")).unwrap();
    fs::write(src.join("d/lowerfile"), "lower\n").unwrap();
    fs::write(src.join("e/foo"), "foo\n").unwrap();
    fs::write(src.join("e/bar"), "bar\n").unwrap();
    let out = top.join("base.tar");
    strata_cas::create::write_tar(&src, fs::File::create(&out).unwrap(), &Default::default())
        .unwrap();
    out
}

/// Every view of `snapshot`, by name; an error names the view that could not be made.
fn views(
    engine: &Engine,
    top: &Path,
    snapshot: &Snapshot,
    label: &str,
) -> Result<Vec<(String, Tree)>, String> {
    let mut out = Vec::new();
    let mut modes = vec![CheckoutMode::Portable];
    if strata_snapshot::overlay_available() {
        modes.push(CheckoutMode::Overlay);
    }
    for round in ["as committed", "unpacked again"] {
        if round == "unpacked again" {
            // Forget the unpacked layer (an overlay commit's upper dir, moved in) so that it
            // is extracted from its blob, as after a reboot or on another machine.
            let unpacked = engine.root().join("unpacked-v1");
            for entry in fs::read_dir(&unpacked).unwrap() {
                let entry = entry.unwrap();
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&snapshot.layer.to_hex())
                {
                    let path = entry.path();
                    if path.is_dir() {
                        fs::remove_dir_all(&path).unwrap();
                    } else {
                        fs::remove_file(&path).unwrap();
                    }
                }
            }
            engine.forget_unpacked(&snapshot.layer).unwrap();
        }
        for &mode in &modes {
            let dir = top.join(format!("{label}-{mode:?}-{}", round.replace(' ', "-")));
            let name = format!("{mode:?} checkout, {round}");
            engine
                .checkout(&snapshot.id, &dir, Some(mode))
                .map_err(|e| format!("{name}: {e}"))?;
            out.push((name, tree::snapshot_of(&dir, FIELDS)));
            engine.release(&dir).unwrap();
        }
        let copy = top.join(format!("{label}-copy-{}", round.replace(' ', "-")));
        let name = format!("copy, {round}");
        engine
            .copy_out(&snapshot.id, &copy)
            .map_err(|e| format!("{name}: {e}"))?;
        out.push((name, tree::snapshot_of(&copy, FIELDS)));
    }
    // The blobs themselves, applied one over the other as any OCI tool would.
    let applied = top.join(format!("{label}-applied"));
    let opts = ExtractOptions {
        devices: DevicePolicy::Create,
        setuid: SetuidPolicy::Keep,
        whiteouts: WhiteoutMode::Apply,
        ..ExtractOptions::default()
    };
    for row in engine.chain(&snapshot.id).unwrap() {
        engine
            .cas()
            .apply(&row.layer, &applied, &opts)
            .map_err(|e| format!("layers applied afresh: {e}"))?;
    }
    out.push((
        "layers applied afresh".to_owned(),
        tree::snapshot_of(&applied, FIELDS),
    ));
    Ok(out)
}

#[test]
fn whatever_a_step_leaves_every_view_of_its_snapshot_shows_one_tree_or_it_is_refused() {
    if !require("one tree in every view", root()) {
        return;
    }
    let mut modes = vec![CheckoutMode::Portable];
    if require("one tree in overlay checkouts", overlay_problem()) {
        modes.push(CheckoutMode::Overlay);
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let engine = Engine::open(&top.join("store")).unwrap();
    let base = engine.import(&base_tar(&top), None).unwrap();
    let mut failures = Vec::new();
    for &mode in &modes {
        for (i, trick) in TRICKS.iter().enumerate() {
            let label = format!("{mode:?}-{i}");
            let work = top.join(&label);
            engine.checkout(&base.id, &work, Some(mode)).unwrap();
            if let Err(e) = (trick.apply)(&work) {
                // The step cannot do it here: nothing to commit.
                eprintln!("{mode:?}: {}: the step cannot: {e}", trick.name);
                engine.release(&work).unwrap();
                continue;
            }
            match engine.commit(&work, None) {
                Err(e) => {
                    let message = e.to_string();
                    match trick.refusal {
                        Some(needles) if needles.iter().all(|n| message.contains(n)) => {}
                        _ => failures
                            .push(format!("{mode:?}: {}: refused with: {message}", trick.name)),
                    }
                    engine.release(&work).unwrap();
                }
                Ok(child) => {
                    if !trick.may_commit {
                        failures.push(format!("{mode:?}: {}: was committed", trick.name));
                    }
                    let views = match views(&engine, &top, &child, &label) {
                        Ok(views) => views,
                        Err(e) => {
                            failures.push(format!("{mode:?}: {}: {e}", trick.name));
                            continue;
                        }
                    };
                    let (first, expected) = &views[0];
                    for (name, seen) in &views[1..] {
                        if let Some(difference) = tree::difference(expected, seen) {
                            failures.push(format!(
                                "{mode:?}: {}: {name} differs from {first}: {difference}",
                                trick.name
                            ));
                        }
                    }
                }
            }
            assert!(engine.fsck(false).unwrap().is_empty(), "{label}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
