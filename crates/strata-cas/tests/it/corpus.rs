//! Malicious-input corpus for extraction: crafted tar layers that try to escape the target.
//!
//! Every case runs in a fresh `base/` holding sentinel files in `base/outside/` and the
//! extraction root `base/target/`. Everything under `base` except `base/target/**` is
//! snapshotted (type, mode, owner, size, inode, link count, mtime, ctime, content hash, symlink
//! target) before extraction and must be identical afterwards, whatever the outcome; every path
//! under the target must resolve inside it and share no inode with the sentinels. Then the
//! case's own expectation is checked: an error of the expected kind that names the offending
//! entry, or success with a check of the resulting tree.
//!
//! Cases whose point is bounded memory (decompression bombs, huge header records) run in a
//! child copy of this test binary under `ulimit -v` and report their peak RSS.
//!
//! Set `STRATA_CORPUS_CASE=<substring>` to run only matching cases.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use strata_cas::extract::{apply_file, apply_tar};
use strata_cas::{
    DevicePolicy, EntryName, EntryProblem, Error, ExtractOptions, ExtractReport, SetuidPolicy,
};
use strata_test_support::{child_test_args, child_var, test_binary};

use crate::tarcraft::{
    Checksum, Header, Tar, gzip, gzip_zero_tar, pax_record, zstd_bomb, zstd_frame, zstd_zero_frame,
};

// ---------------------------------------------------------------------------------------------
// The case table's vocabulary.

/// The per-case environment: `base/`, its sentinels and the extraction root.
struct Ctx {
    /// Canonical temporary directory holding everything.
    base: PathBuf,
    /// `base/outside`: sentinel files that must never change.
    outside: PathBuf,
    /// `base/target`: the extraction root.
    target: PathBuf,
    /// A name unique to this run, used to detect writes to the host's `/`.
    token: String,
}

impl Ctx {
    /// A path inside the target, from raw bytes.
    fn t(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        self.target.join(OsStr::from_bytes(rel.as_ref()))
    }

    /// The absolute host path of `base/outside`, as a string.
    fn outside_abs(&self) -> String {
        self.outside.to_str().expect("utf-8 temp path").to_owned()
    }

    /// `base/outside` without its leading `/`: what to append to a symlink to `/`.
    fn outside_from_root(&self) -> String {
        self.outside_abs().trim_start_matches('/').to_owned()
    }
}

/// What is fed to the extractor.
enum Input {
    /// An uncompressed tar, given to `apply_tar`.
    Tar(Vec<u8>),
    /// A file (compressed or not) written to `base/input/<name>` and given to `apply_file`.
    File(&'static str, Vec<u8>),
}

/// An error matcher with a description for messages.
#[derive(Clone, Copy)]
struct M {
    f: fn(&Error) -> bool,
    what: &'static str,
}

/// Matches `Error::Entry` with the given problem pattern.
macro_rules! problem {
    ($p:pat) => {
        M {
            f: |e| matches!(e, Error::Entry { problem: $p, .. }),
            what: concat!("Error::Entry { problem: ", stringify!($p), " }"),
        }
    };
    ($p:pat if $guard:expr) => {
        M {
            f: |e| matches!(e, Error::Entry { problem: $p, .. } if $guard),
            what: concat!(
                "Error::Entry { problem: ",
                stringify!($p),
                " if ",
                stringify!($guard),
                " }"
            ),
        }
    };
}

/// Any error at all (the name check still applies).
const ANY: M = M {
    f: |_| true,
    what: "any error",
};
/// A malformed-tar error.
const TAR: M = M {
    f: |e| matches!(e, Error::Tar { .. }),
    what: "Error::Tar",
};
/// A limit error.
const LIMIT: M = M {
    f: |e| matches!(e, Error::Limit { .. }),
    what: "Error::Limit",
};
/// A limit or malformed-tar error (oversized header data may be reported either way).
const LIMIT_OR_TAR: M = M {
    f: |e| matches!(e, Error::Limit { .. } | Error::Tar { .. }),
    what: "Error::Limit or Error::Tar",
};
/// A malformed PAX header, reported as a tar error or a `BadPax` entry problem.
const BAD_PAX: M = M {
    f: |e| {
        matches!(
            e,
            Error::Tar { .. }
                | Error::Limit { .. }
                | Error::Entry {
                    problem: EntryProblem::BadPax(_),
                    ..
                }
        )
    },
    what: "Error::Tar or EntryProblem::BadPax",
};

type Names = Box<dyn Fn(&Ctx) -> Vec<Vec<u8>> + Send + Sync>;
type Build = Box<dyn Fn(&Ctx) -> Input + Send + Sync>;
type Setup = Box<dyn Fn(&Ctx) + Send + Sync>;
type Check = Box<dyn Fn(&Ctx, &ExtractReport) + Send + Sync>;

/// What a case must produce.
enum Expect {
    /// Success, then this check of the target.
    Ok(Check),
    /// An error matching `m` whose message contains one of `names` (none: no name check).
    Err { names: Names, m: M },
    /// Either success with the check, or any error naming one of `names`. For inputs where
    /// both outcomes are acceptable; the outside snapshot is what matters.
    Either { names: Names, ok: Check },
}

/// One corpus case.
struct Case {
    name: &'static str,
    build: Build,
    setup: Option<Setup>,
    opts: fn(&mut ExtractOptions),
    expect: Expect,
    /// The setup hard-links a sentinel into the target, so the sentinel's link count and
    /// ctime may legitimately change (content, mode and mtime still may not).
    outside_links_may_change: bool,
    /// Extraction must finish within this time.
    deadline: Duration,
}

impl Case {
    /// A case fed to `apply_tar`.
    fn tar(
        name: &'static str,
        build: impl Fn(&Ctx) -> Vec<u8> + Send + Sync + 'static,
        expect: Expect,
    ) -> Case {
        Case::input(name, move |c| Input::Tar(build(c)), expect)
    }

    /// A case with an arbitrary input.
    fn input(
        name: &'static str,
        build: impl Fn(&Ctx) -> Input + Send + Sync + 'static,
        expect: Expect,
    ) -> Case {
        Case {
            name,
            build: Box::new(build),
            setup: None,
            opts: |_| {},
            expect,
            outside_links_may_change: false,
            deadline: Duration::from_secs(60),
        }
    }

    /// Pre-existing "lower layer" content of the target.
    fn setup(mut self, f: impl Fn(&Ctx) + Send + Sync + 'static) -> Case {
        self.setup = Some(Box::new(f));
        self
    }

    /// Adjusts the extraction options.
    fn opts(mut self, f: fn(&mut ExtractOptions)) -> Case {
        self.opts = f;
        self
    }

    fn outside_links_may_change(mut self) -> Case {
        self.outside_links_may_change = true;
        self
    }

    fn deadline(mut self, d: Duration) -> Case {
        self.deadline = d;
        self
    }
}

fn ok(check: impl Fn(&Ctx, &ExtractReport) + Send + Sync + 'static) -> Expect {
    Expect::Ok(Box::new(check))
}

/// An error matching `m` that names one of the fixed `names`.
fn err(names: &[&str], m: M) -> Expect {
    let names: Vec<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
    Expect::Err {
        names: Box::new(move |_| names.clone()),
        m,
    }
}

/// An error matching `m` that names the entry computed from the context.
fn err_at(name: impl Fn(&Ctx) -> String + Send + Sync + 'static, m: M) -> Expect {
    Expect::Err {
        names: Box::new(move |c| vec![name(c).into_bytes()]),
        m,
    }
}

/// An error matching `m`, without a name check (stream-level errors name no entry).
fn err_unnamed(m: M) -> Expect {
    Expect::Err {
        names: Box::new(|_| Vec::new()),
        m,
    }
}

fn either(names: &[&str], check: impl Fn(&Ctx, &ExtractReport) + Send + Sync + 'static) -> Expect {
    let names: Vec<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
    Expect::Either {
        names: Box::new(move |_| names.clone()),
        ok: Box::new(check),
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions on the target, for `ok` checks.

fn lstat_path(p: &Path) -> fs::Metadata {
    let s = short(p).unwrap_or_else(|e| panic!("{} should exist: {e}", p.display()));
    fs::symlink_metadata(&s.path).unwrap_or_else(|e| panic!("{} should exist: {e}", p.display()))
}

fn lstat(c: &Ctx, rel: impl AsRef<[u8]>) -> fs::Metadata {
    lstat_path(&c.t(rel))
}

fn assert_file(c: &Ctx, rel: impl AsRef<[u8]>, content: &[u8]) {
    let p = c.t(rel);
    let m = lstat_path(&p);
    assert!(
        m.is_file(),
        "{} should be a regular file, is {:?}",
        p.display(),
        m.file_type()
    );
    let s = short(&p).unwrap();
    assert_eq!(
        fs::read(&s.path).unwrap(),
        content,
        "content of {}",
        p.display()
    );
}

fn assert_symlink(c: &Ctx, rel: impl AsRef<[u8]>, target: &[u8]) {
    let p = c.t(rel);
    let m = lstat_path(&p);
    assert!(
        m.file_type().is_symlink(),
        "{} should be a symlink",
        p.display()
    );
    let s = short(&p).unwrap();
    assert_eq!(
        fs::read_link(&s.path).unwrap().as_os_str().as_bytes(),
        target,
        "target of {}",
        p.display()
    );
}

fn assert_dir(c: &Ctx, rel: impl AsRef<[u8]>) {
    let p = c.t(rel);
    let m = lstat_path(&p);
    assert!(
        m.is_dir(),
        "{} should be a directory, is {:?}",
        p.display(),
        m.file_type()
    );
}

fn assert_absent(c: &Ctx, rel: impl AsRef<[u8]>) {
    let p = c.t(rel);
    let gone = match short(&p) {
        Ok(s) => fs::symlink_metadata(&s.path).is_err(),
        Err(_) => true,
    };
    assert!(gone, "{} should not exist", p.display());
}

fn mode(c: &Ctx, rel: impl AsRef<[u8]>) -> u32 {
    lstat(c, rel).mode() & 0o7777
}

/// Sorted raw names of a directory of the target.
fn children(c: &Ctx, rel: impl AsRef<[u8]>) -> Vec<Vec<u8>> {
    let s = short(&c.t(rel)).unwrap();
    let mut names: Vec<Vec<u8>> = fs::read_dir(&s.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    names
}

fn skipped(report: &ExtractReport, path: &str) -> bool {
    report
        .skipped
        .iter()
        .any(|s| s.path.as_slice() == path.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Lower-layer setup helpers.

fn lower_symlink(c: &Ctx, rel: &str, target: impl AsRef<Path>) {
    symlink(target, c.t(rel)).unwrap();
}

fn lower_file(c: &Ctx, rel: &str, content: &[u8]) {
    let p = c.t(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn lower_dir(c: &Ctx, rel: &str) {
    fs::create_dir_all(c.t(rel)).unwrap();
}

/// A version-2 `security.capability` value granting CAP_NET_RAW.
const CAPABILITY: &[u8] = &[
    0x00, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

/// The largest size an 11-digit octal field can hold: just under 8 GiB.
const MAX_OCTAL_SIZE: u64 = 0o77_777_777_777;

// ---------------------------------------------------------------------------------------------
// The corpus.

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(path_cases());
    v.extend(symlink_parent_cases());
    v.extend(final_component_cases());
    v.extend(hardlink_cases());
    v.extend(special_file_cases());
    v.extend(pax_and_gnu_cases());
    v.extend(duplicate_cases());
    v.extend(whiteout_cases());
    v.extend(name_cases());
    v.extend(format_cases());
    v.extend(limit_and_compression_cases());
    v
}

/// Rule 1: normalisation, `..`, absolute paths, NUL.
fn path_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "dotdot_leading",
            |_| Tar::new().file("../outside/pwned", b"x").finish(),
            err(&["../outside/pwned"], problem!(EntryProblem::DotDot)),
        ),
        Case::tar(
            "dotdot_inner_escape",
            |_| Tar::new().file("a/../../outside/pwned", b"x").finish(),
            err(&["a/../../outside/pwned"], problem!(EntryProblem::DotDot)),
        ),
        Case::tar(
            "dotdot_staying_inside_still_refused",
            |_| Tar::new().dir("dd").file("dd/../stay", b"x").finish(),
            err(&["dd/../stay"], problem!(EntryProblem::DotDot)),
        ),
        Case::tar(
            "dotdot_directory_entry",
            |_| Tar::new().dir("../outside/newdir/").finish(),
            err(&["../outside/newdir/"], problem!(EntryProblem::DotDot)),
        ),
        Case::tar(
            "absolute_host_path",
            |c| {
                Tar::new()
                    .file(format!("{}/pwned", c.outside_abs()), b"x")
                    .finish()
            },
            err_at(
                |c| format!("{}/pwned", c.outside_abs()),
                problem!(EntryProblem::Absolute),
            ),
        ),
        Case::tar(
            "absolute_root_directory_entry",
            |_| Tar::new().dir_mode("/", 0o777).finish(),
            err(&["/"], problem!(EntryProblem::Absolute)),
        ),
        Case::tar(
            "dot_components_normalised",
            |_| {
                Tar::new()
                    .dir_mode("./", 0o755)
                    .file("./a/./b//c", b"abc")
                    .file(".//top", b"top")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "a/b/c", b"abc");
                assert_file(c, "top", b"top");
                assert_eq!(mode(c, "a"), 0o755, "implicit parent mode");
                assert_eq!(mode(c, "a/b"), 0o755, "implicit parent mode");
            }),
        ),
        Case::tar(
            "nul_in_pax_path",
            |_| {
                Tar::new()
                    .pax(&[(b"path", b"nul\0case")])
                    .file("nulcase", b"x")
                    .finish()
            },
            err(
                &["nul\0case", "nulcase"],
                problem!(EntryProblem::InvalidPath),
            ),
        ),
    ]
}

/// Rule 2: parent components resolved inside the root.
fn symlink_parent_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "same_tar_relative_symlink_parent_escape",
            |_| {
                Tar::new()
                    .symlink("escape", "../outside")
                    .file("escape/pwned", b"x")
                    .finish()
            },
            err(&["escape/pwned"], ANY),
        ),
        Case::tar(
            "same_tar_absolute_symlink_parent_escape",
            |c| {
                Tar::new()
                    .symlink("abs", c.outside_abs())
                    .file("abs/pwned", b"x")
                    .finish()
            },
            err(&["abs/pwned"], ANY),
        ),
        Case::tar(
            "same_tar_symlink_to_slash_is_clamped",
            |c| {
                Tar::new()
                    .symlink("root", "/")
                    .file(format!("root/{}", c.token), b"clamped")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, &c.token, b"clamped");
                assert_symlink(c, "root", b"/");
            }),
        ),
        Case::tar(
            "same_tar_symlink_to_slash_then_host_path",
            |c| {
                Tar::new()
                    .symlink("root", "/")
                    .file(format!("root/{}/pwned", c.outside_from_root()), b"x")
                    .finish()
            },
            err_at(|c| format!("root/{}/pwned", c.outside_from_root()), ANY),
        ),
        Case::tar(
            "same_tar_nested_dotdot_symlink_is_clamped",
            |_| {
                Tar::new()
                    .dir("d")
                    .symlink("d/up", "../../../..")
                    .file("d/up/clamped", b"clamped")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "clamped", b"clamped");
                assert_symlink(c, "d/up", b"../../../..");
            }),
        ),
        Case::tar(
            "same_tar_symlink_parent_inside_ok",
            |_| {
                Tar::new()
                    .dir("real")
                    .symlink("s", "real")
                    .file("s/f", b"in")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "real/f", b"in");
                assert_symlink(c, "s", b"real");
            }),
        ),
        Case::tar(
            "missing_parent_after_followed_symlink",
            |_| {
                Tar::new()
                    .dir("d")
                    .symlink("s", "d")
                    .file("s/new/f", b"x")
                    .finish()
            },
            err(&["s/new/f"], ANY),
        ),
        Case::tar(
            "lower_relative_symlink_parent_escape",
            |_| Tar::new().file("escape/pwned", b"x").finish(),
            err(&["escape/pwned"], ANY),
        )
        .setup(|c| lower_symlink(c, "escape", "../outside")),
        Case::tar(
            "lower_relative_symlink_parent_clamped_into_target",
            |_| Tar::new().file("escape/pwned", b"clamped").finish(),
            ok(|c, _| {
                assert_file(c, "outside/pwned", b"clamped");
                assert_symlink(c, "escape", b"../outside");
            }),
        )
        .setup(|c| {
            lower_symlink(c, "escape", "../outside");
            lower_dir(c, "outside");
        }),
        Case::tar(
            "lower_absolute_symlink_parent_escape",
            |_| Tar::new().file("abs/pwned", b"x").finish(),
            err(&["abs/pwned"], ANY),
        )
        .setup(|c| lower_symlink(c, "abs", &c.outside)),
        Case::tar(
            "lower_absolute_symlink_to_sentinel_dir_mkdir",
            |_| Tar::new().dir("abs/newdir").finish(),
            err(&["abs/newdir"], ANY),
        )
        .setup(|c| lower_symlink(c, "abs", c.outside.join("dir"))),
        Case::tar(
            "lower_symlink_to_slash_then_host_path",
            |c| {
                Tar::new()
                    .file(format!("root/{}/pwned", c.outside_from_root()), b"x")
                    .finish()
            },
            err_at(|c| format!("root/{}/pwned", c.outside_from_root()), ANY),
        )
        .setup(|c| lower_symlink(c, "root", "/")),
        Case::tar(
            "lower_symlink_to_slash_mkdir_is_clamped",
            |c| Tar::new().dir(format!("root/{}", c.token)).finish(),
            ok(|c, _| assert_dir(c, &c.token)),
        )
        .setup(|c| lower_symlink(c, "root", "/")),
        Case::tar(
            "lower_symlink_loop_as_parent",
            |_| Tar::new().file("loop/x", b"x").finish(),
            err(&["loop/x"], ANY),
        )
        .setup(|c| lower_symlink(c, "loop", "loop")),
        Case::tar(
            "same_tar_symlink_cycle_as_parent",
            |_| {
                Tar::new()
                    .symlink("ping", "pong")
                    .symlink("pong", "ping")
                    .file("ping/x", b"x")
                    .finish()
            },
            err(&["ping/x"], ANY),
        ),
        Case::tar(
            "dangling_symlink_as_parent",
            |_| {
                Tar::new()
                    .symlink("dang", "nowhere/deeper")
                    .file("dang/f", b"x")
                    .finish()
            },
            err(&["dang/f"], ANY),
        ),
        Case::tar(
            "file_as_parent_same_layer",
            |_| Tar::new().file("pf", b"x").file("pf/child", b"y").finish(),
            err(&["pf/child"], problem!(EntryProblem::ParentNotDirectory)),
        ),
        Case::tar(
            "file_as_parent_lower_layer",
            |_| Tar::new().file("lf/child", b"y").finish(),
            err(&["lf/child"], ANY),
        )
        .setup(|c| lower_file(c, "lf", b"lower")),
    ]
}

/// Rule 3: the final component is never followed.
fn final_component_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "same_tar_symlink_then_file_same_name",
            |_| {
                Tar::new()
                    .symlink("sf", "../outside/secret")
                    .file("sf", b"pwned")
                    .finish()
            },
            err(&["sf"], problem!(EntryProblem::Duplicate)),
        ),
        Case::tar(
            "lower_symlinks_replaced_by_files",
            |_| {
                Tar::new()
                    .file("rel", b"new1")
                    .file("abs", b"new2")
                    .file("dirlink", b"new3")
                    .file_mode("chmodlink", 0o777, b"new4")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "rel", b"new1");
                assert_file(c, "abs", b"new2");
                assert_file(c, "dirlink", b"new3");
                assert_file(c, "chmodlink", b"new4");
                assert_eq!(mode(c, "chmodlink"), 0o777);
            }),
        )
        .setup(|c| {
            lower_symlink(c, "rel", "../outside/secret");
            lower_symlink(c, "abs", c.outside.join("secret"));
            lower_symlink(c, "dirlink", "../outside");
            lower_symlink(c, "chmodlink", c.outside.join("dir/inner"));
        }),
        Case::tar(
            "lower_symlink_replaced_by_directory",
            |_| {
                Tar::new()
                    .header(&{
                        let mut h = Header::new(b'5', "ldir");
                        h.mode = 0o777;
                        h.uid = 4242;
                        h.gid = 4242;
                        h
                    })
                    .file("ldir/x", b"x")
                    .finish()
            },
            either(&["ldir"], |c, _| {
                assert_dir(c, "ldir");
                assert_file(c, "ldir/x", b"x");
            }),
        )
        .setup(|c| lower_symlink(c, "ldir", "../outside")),
        Case::tar(
            "lower_symlink_to_outside_dir_owner_and_mtime_not_followed",
            |_| {
                let mut h = Header::new(b'2', "owned");
                h.linkname = b"elsewhere".to_vec();
                h.uid = 4242;
                h.gid = 4242;
                h.mtime = 1;
                Tar::new().header(&h).finish()
            },
            ok(|c, _| assert_symlink(c, "owned", b"elsewhere")),
        )
        .setup(|c| lower_symlink(c, "owned", &c.outside)),
        Case::tar(
            "symlink_owner_mode_mtime_not_applied_through_link",
            |c| {
                let mut h = Header::new(b'2', "own");
                h.linkname = format!("{}/secret", c.outside_abs()).into_bytes();
                h.mode = 0o777;
                h.uid = 4242;
                h.gid = 4242;
                h.mtime = 1;
                Tar::new().header(&h).finish()
            },
            ok(|c, _| {
                let expect = c.outside.join("secret");
                assert_symlink(c, "own", expect.as_os_str().as_bytes());
            }),
        ),
        Case::tar(
            "hardlink_over_lower_symlink_replaces_it",
            |_| {
                Tar::new()
                    .file("hsrc", b"src")
                    .hardlink("hl_over", "hsrc")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "hl_over", b"src");
                assert_eq!(lstat(c, "hl_over").ino(), lstat(c, "hsrc").ino());
            }),
        )
        .setup(|c| lower_symlink(c, "hl_over", c.outside.join("secret"))),
        Case::tar(
            "fifo_over_lower_symlink_replaces_it",
            |_| Tar::new().fifo("fifo_over").finish(),
            ok(|c, _| {
                assert!(
                    lstat(c, "fifo_over").file_type().is_fifo(),
                    "fifo_over is not a fifo"
                );
            }),
        )
        .setup(|c| lower_symlink(c, "fifo_over", c.outside.join("secret"))),
        Case::tar(
            "lower_hardlink_to_sentinel_replaced_not_truncated",
            |_| Tar::new().file("shared", b"pwned").finish(),
            ok(|c, _| assert_file(c, "shared", b"pwned")),
        )
        .setup(|c| fs::hard_link(c.outside.join("secret"), c.t("shared")).unwrap())
        .outside_links_may_change(),
    ]
}

/// Rule 4: hard links.
fn hardlink_cases() -> Vec<Case> {
    const BAD_LINK_PATH: M =
        problem!(EntryProblem::DotDot | EntryProblem::Absolute | EntryProblem::BadHardlink(_));
    vec![
        Case::tar(
            "hardlink_dotdot_target",
            |_| {
                Tar::new()
                    .hardlink("hl_dotdot", "../outside/secret")
                    .finish()
            },
            err(&["hl_dotdot"], BAD_LINK_PATH),
        ),
        Case::tar(
            "hardlink_absolute_target",
            |c| {
                Tar::new()
                    .hardlink("hl_abs", format!("{}/secret", c.outside_abs()))
                    .finish()
            },
            err(&["hl_abs"], BAD_LINK_PATH),
        ),
        Case::tar(
            "hardlink_inner_dotdot_target",
            |_| {
                Tar::new()
                    .file("a", b"a")
                    .hardlink("hl_inner", "sub/../a")
                    .finish()
            },
            err(&["hl_inner"], BAD_LINK_PATH),
        ),
        Case::tar(
            "hardlink_through_lower_relative_symlink",
            |_| Tar::new().hardlink("hl_esc", "escape/secret").finish(),
            err(&["hl_esc"], ANY),
        )
        .setup(|c| lower_symlink(c, "escape", "../outside")),
        Case::tar(
            "hardlink_through_lower_slash_symlink",
            |c| {
                Tar::new()
                    .hardlink("hl_root", format!("root/{}/secret", c.outside_from_root()))
                    .finish()
            },
            err(&["hl_root"], ANY),
        )
        .setup(|c| lower_symlink(c, "root", "/")),
        Case::tar(
            "hardlink_through_same_tar_absolute_symlink",
            |c| {
                Tar::new()
                    .symlink("abs", c.outside_abs())
                    .hardlink("hl_viaabs", "abs/secret")
                    .finish()
            },
            err(&["hl_viaabs"], ANY),
        ),
        Case::tar(
            "hardlink_to_directory",
            |_| Tar::new().dir("dd").hardlink("hl_dir", "dd").finish(),
            err(&["hl_dir"], problem!(EntryProblem::BadHardlink(_))),
        ),
        Case::tar(
            "hardlink_to_lower_directory",
            |_| Tar::new().hardlink("hl_ldir", "ld").finish(),
            err(&["hl_ldir"], problem!(EntryProblem::BadHardlink(_))),
        )
        .setup(|c| lower_dir(c, "ld")),
        Case::tar(
            "hardlink_to_missing_target",
            |_| Tar::new().hardlink("hl_missing", "nothere").finish(),
            err(&["hl_missing"], problem!(EntryProblem::BadHardlink(_))),
        ),
        Case::tar(
            "hardlink_to_symlink_links_the_symlink",
            |_| {
                Tar::new()
                    .symlink("s", "../outside/secret")
                    .hardlink("hl_sym", "s")
                    .finish()
            },
            ok(|c, _| {
                assert_symlink(c, "hl_sym", b"../outside/secret");
                assert_eq!(lstat(c, "hl_sym").ino(), lstat(c, "s").ino(), "same inode");
            }),
        ),
        Case::tar(
            "hardlink_to_lower_absolute_symlink",
            |_| Tar::new().hardlink("hl_lsym", "ls").finish(),
            ok(|c, _| {
                let expect = c.outside.join("secret");
                assert_symlink(c, "hl_lsym", expect.as_os_str().as_bytes());
                assert_eq!(
                    lstat(c, "hl_lsym").ino(),
                    lstat(c, "ls").ino(),
                    "same inode"
                );
            }),
        )
        .setup(|c| lower_symlink(c, "ls", c.outside.join("secret"))),
        Case::tar(
            "hardlink_basic_ok",
            |_| {
                Tar::new()
                    .file("orig", b"data")
                    .hardlink("hl1", "orig")
                    .hardlink("hl2", "./orig")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "hl1", b"data");
                assert_eq!(lstat(c, "hl1").ino(), lstat(c, "orig").ino());
                assert_eq!(lstat(c, "hl2").ino(), lstat(c, "orig").ino());
            }),
        ),
        Case::tar(
            "hardlink_pax_linkpath_overrides_safe_target",
            |_| {
                Tar::new()
                    .file("safe", b"safe")
                    .pax(&[(b"linkpath", b"../outside/secret")])
                    .hardlink("hl_pax", "safe")
                    .finish()
            },
            err(&["hl_pax"], BAD_LINK_PATH),
        ),
        Case::tar(
            "hardlink_gnu_longlink_absolute",
            |c| {
                Tar::new()
                    .file("safe", b"safe")
                    .gnu_long_link(format!("{}/secret", c.outside_abs()).as_bytes())
                    .hardlink("hl_gnu", "safe")
                    .finish()
            },
            err(&["hl_gnu"], BAD_LINK_PATH),
        ),
    ]
}

/// Rules 5-8: symlink targets as data, devices, fifos, setuid, capabilities, xattrs.
fn special_file_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "dangling_and_looping_symlinks_created_verbatim",
            |c| {
                Tar::new()
                    .symlink("d1", format!("/nonexistent/{}", c.token))
                    .symlink("d2", "../../outside/secret")
                    .symlink("d3", format!("{}/secret", c.outside_abs()))
                    .symlink("lp", "lp")
                    .finish()
            },
            ok(|c, _| {
                assert_symlink(c, "d1", format!("/nonexistent/{}", c.token).as_bytes());
                assert_symlink(c, "d2", b"../../outside/secret");
                assert_symlink(c, "d3", format!("{}/secret", c.outside_abs()).as_bytes());
                assert_symlink(c, "lp", b"lp");
            }),
        ),
        Case::tar(
            "char_device_refused",
            |_| Tar::new().device(b'3', "dev_null", 1, 3).finish(),
            err(&["dev_null"], problem!(EntryProblem::DeviceRefused)),
        ),
        Case::tar(
            "block_device_refused",
            |_| Tar::new().device(b'4', "dev_sda", 8, 0).finish(),
            err(&["dev_sda"], problem!(EntryProblem::DeviceRefused)),
        ),
        Case::tar(
            "devices_skipped",
            |_| {
                Tar::new()
                    .device(b'3', "dev_c", 1, 3)
                    .device(b'4', "dev_b", 8, 0)
                    .file("after", b"after")
                    .finish()
            },
            ok(|c, r| {
                assert_absent(c, "dev_c");
                assert_absent(c, "dev_b");
                assert_file(c, "after", b"after");
                assert!(skipped(r, "dev_c"), "dev_c not in report.skipped");
                assert!(skipped(r, "dev_b"), "dev_b not in report.skipped");
            }),
        )
        .opts(|o| o.devices = DevicePolicy::Skip),
        Case::tar(
            "device_created_when_allowed",
            |_| Tar::new().device(b'3', "dev_new", 1, 3).finish(),
            // Creating needs CAP_MKNOD; without it the error must still name the entry.
            either(&["dev_new"], |c, _| {
                let m = lstat(c, "dev_new");
                assert!(
                    m.file_type().is_char_device(),
                    "dev_new is not a char device"
                );
                assert_eq!(m.rdev(), (1 << 8) | 3, "dev_new rdev");
            }),
        )
        .opts(|o| o.devices = DevicePolicy::Create),
        Case::tar(
            "fifo_always_allowed",
            |_| Tar::new().fifo("pipe").finish(),
            ok(|c, _| assert!(lstat(c, "pipe").file_type().is_fifo(), "pipe is not a fifo")),
        ),
        Case::tar(
            "setuid_file_refused",
            |_| Tar::new().file_mode("suid", 0o4755, b"#!").finish(),
            err(&["suid"], problem!(EntryProblem::SetuidRefused)),
        ),
        Case::tar(
            "setgid_file_refused",
            |_| Tar::new().file_mode("sgid", 0o2755, b"#!").finish(),
            err(&["sgid"], problem!(EntryProblem::SetuidRefused)),
        ),
        Case::tar(
            "setuid_setgid_stripped",
            |_| {
                Tar::new()
                    .file_mode("suid", 0o4755, b"#!")
                    .file_mode("sgid", 0o2750, b"#!")
                    .file_mode("both", 0o6711, b"#!")
                    .finish()
            },
            ok(|c, _| {
                assert_eq!(mode(c, "suid"), 0o755, "suid mode");
                assert_eq!(mode(c, "sgid"), 0o750, "sgid mode");
                assert_eq!(mode(c, "both"), 0o711, "both mode");
            }),
        )
        .opts(|o| o.setuid = SetuidPolicy::Strip),
        Case::tar(
            "setuid_kept_when_allowed",
            |_| Tar::new().file_mode("suid", 0o4755, b"#!").finish(),
            ok(|c, _| assert_eq!(mode(c, "suid"), 0o4755, "suid mode")),
        )
        .opts(|o| o.setuid = SetuidPolicy::Keep),
        Case::tar(
            "setgid_directory_allowed",
            |_| Tar::new().dir_mode("sgdir", 0o2775).finish(),
            ok(|c, _| assert_eq!(mode(c, "sgdir"), 0o2775, "sgdir mode")),
        ),
        Case::tar(
            "security_capability_refused",
            |_| {
                Tar::new()
                    .pax(&[(b"SCHILY.xattr.security.capability", CAPABILITY)])
                    .file_mode("capfile", 0o755, b"#!")
                    .finish()
            },
            err(&["capfile"], problem!(EntryProblem::SetuidRefused)),
        ),
        Case::tar(
            "security_capability_stripped",
            |_| {
                Tar::new()
                    .pax(&[(b"SCHILY.xattr.security.capability", CAPABILITY)])
                    .file_mode("capfile", 0o755, b"#!")
                    .finish()
            },
            ok(|c, _| assert_file(c, "capfile", b"#!")),
        )
        .opts(|o| o.setuid = SetuidPolicy::Strip),
        Case::tar(
            "trusted_overlay_opaque_xattr_on_dir",
            |_| {
                Tar::new()
                    .pax(&[(b"SCHILY.xattr.trusted.overlay.opaque", b"y")])
                    .dir("ovl")
                    .finish()
            },
            err(
                &["ovl"],
                problem!(EntryProblem::ForbiddenXattr(x) if x.starts_with("trusted.overlay.")),
            ),
        ),
        Case::tar(
            "user_overlay_opaque_xattr_on_dir",
            |_| {
                Tar::new()
                    .pax(&[(b"SCHILY.xattr.user.overlay.opaque", b"y")])
                    .dir("uovl")
                    .finish()
            },
            err(
                &["uovl"],
                problem!(EntryProblem::ForbiddenXattr(x) if x == "user.overlay.opaque"),
            ),
        ),
        // The root entry passes the same checks: an opaque root would hide every lower layer
        // in an overlay mount, and nothing in a portable checkout.
        Case::tar(
            "trusted_overlay_opaque_xattr_on_the_root",
            |_| {
                Tar::new()
                    .pax(&[(b"SCHILY.xattr.trusted.overlay.opaque", b"y")])
                    .dir("./")
                    .file("f", b"f")
                    .finish()
            },
            err(
                &["./"],
                problem!(EntryProblem::ForbiddenXattr(x) if x == "trusted.overlay.opaque"),
            ),
        ),
        Case::tar(
            "security_capability_on_the_root_refused",
            |_| {
                Tar::new()
                    .pax(&[(b"SCHILY.xattr.security.capability", CAPABILITY)])
                    .dir("./")
                    .finish()
            },
            err(&["./"], problem!(EntryProblem::SetuidRefused)),
        ),
        Case::tar(
            "trusted_overlay_redirect_xattr_even_with_keep",
            |_| {
                Tar::new()
                    .pax(&[(b"SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
                    .file("redir", b"x")
                    .finish()
            },
            err(
                &["redir"],
                problem!(EntryProblem::ForbiddenXattr(x) if x.starts_with("trusted.overlay.")),
            ),
        )
        .opts(|o| {
            o.setuid = SetuidPolicy::Keep;
            o.devices = DevicePolicy::Create;
        }),
    ]
}

/// Rules 9 and 11 (small sizes): PAX and GNU records.
fn pax_and_gnu_cases() -> Vec<Case> {
    vec![
        Case::tar(
            // Flooring the fraction went below i64::MIN: a panic in debug builds, a file
            // dated 2446 in release.
            "pax_mtime_at_i64_min_with_a_fraction_refused",
            |_| {
                Tar::new()
                    .pax(&[(b"mtime", b"-9223372036854775808.5")])
                    .file("edge_time", b"x")
                    .finish()
            },
            err(
                &["edge_time"],
                problem!(EntryProblem::BadPax(m) if m == "mtime value out of range"),
            ),
        ),
        Case::tar(
            // 100 KB of PAX path: extraction used to take seconds, quadratic in the depth.
            "pax_path_of_50000_components_refused",
            |_| {
                let mut path = "a/".repeat(49_999);
                path.push('f');
                Tar::new()
                    .pax(&[(b"path", path.as_bytes())])
                    .file("deep", b"x")
                    .finish()
            },
            Expect::Err {
                names: Box::new(|_| {
                    let mut path = "a/".repeat(49_999);
                    path.push('f');
                    vec![path.into_bytes()]
                }),
                m: problem!(EntryProblem::TooDeep {
                    depth: 50_000,
                    limit: 4096
                }),
            },
        ),
        Case::tar(
            "path_at_the_depth_limit_ok",
            |_| {
                let mut path = "d/".repeat(63);
                path.push('f');
                Tar::new().file(path, b"deep").finish()
            },
            ok(|c, _| {
                let mut path = "d/".repeat(63);
                path.push('f');
                assert_file(c, path, b"deep");
            }),
        )
        .opts(|o| o.limits.max_depth = 64),
        Case::tar(
            "hardlink_target_beyond_the_depth_limit_refused",
            |_| {
                let mut path = "d/".repeat(32);
                path.push('f');
                Tar::new().hardlink("link", path).finish()
            },
            err(
                &["link"],
                problem!(EntryProblem::TooDeep {
                    depth: 33,
                    limit: 32
                }),
            ),
        )
        .opts(|o| o.limits.max_depth = 32),
        Case::tar(
            "pax_size_disagrees_with_ustar_size",
            |_| {
                let mut h = Header::new(b'0', "sized");
                h.size = 10;
                Tar::new()
                    .pax(&[(b"size", b"5")])
                    .header(&h)
                    .data(b"0123456789")
                    .finish()
            },
            err(
                &["sized"],
                problem!(EntryProblem::SizeMismatch { pax: 5, ustar: 10 }),
            ),
        ),
        Case::tar(
            "pax_size_with_zero_ustar_size_ok",
            |_| {
                Tar::new()
                    .pax(&[(b"size", b"5")])
                    .header(&Header::new(b'0', "paxsized"))
                    .data(b"hello")
                    .file("next", b"next")
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "paxsized", b"hello");
                assert_file(c, "next", b"next");
            }),
        ),
        Case::tar(
            "pax_record_length_too_long",
            |_| {
                Tar::new()
                    .pax_raw(b"99 path=x\n")
                    .file("badpax", b"x")
                    .finish()
            },
            err_unnamed(BAD_PAX),
        ),
        Case::tar(
            "pax_record_length_not_a_number",
            |_| {
                Tar::new()
                    .pax_raw(b"ab path=x\n")
                    .file("badpax", b"x")
                    .finish()
            },
            err_unnamed(BAD_PAX),
        ),
        Case::tar(
            "pax_record_length_zero",
            |_| {
                Tar::new()
                    .pax_raw(b"0 path=x\n")
                    .file("badpax", b"x")
                    .finish()
            },
            err_unnamed(BAD_PAX),
        ),
        Case::tar(
            "pax_record_without_equals",
            |_| {
                Tar::new()
                    .pax_raw(b"9 pathxy\n")
                    .file("badpax", b"x")
                    .finish()
            },
            err_unnamed(BAD_PAX),
        ),
        Case::tar(
            "pax_record_huge_declared_length",
            |_| {
                Tar::new()
                    .pax_raw(b"99999999999999999999 path=x\n")
                    .file("badpax", b"x")
                    .finish()
            },
            err_unnamed(BAD_PAX),
        ),
        Case::tar(
            "pax_size_not_a_number",
            |_| {
                Tar::new()
                    .pax(&[(b"size", b"-1")])
                    .file("badsize", b"x")
                    .finish()
            },
            err_unnamed(BAD_PAX),
        ),
        Case::tar(
            "pax_path_dotdot_overrides_safe_name",
            |_| {
                Tar::new()
                    .pax(&[(b"path", b"../outside/pwned")])
                    .file("innocent", b"x")
                    .finish()
            },
            err(&["../outside/pwned"], problem!(EntryProblem::DotDot)),
        ),
        Case::tar(
            "pax_path_absolute_overrides_safe_name",
            |c| {
                let p = format!("{}/pwned", c.outside_abs());
                Tar::new()
                    .pax(&[(b"path", p.as_bytes())])
                    .file("innocent", b"x")
                    .finish()
            },
            err_at(
                |c| format!("{}/pwned", c.outside_abs()),
                problem!(EntryProblem::Absolute),
            ),
        ),
        Case::tar(
            "gnu_long_name_dotdot",
            |_| {
                Tar::new()
                    .gnu_long_name(b"../outside/pwned")
                    .file("innocent", b"x")
                    .finish()
            },
            err(&["../outside/pwned"], problem!(EntryProblem::DotDot)),
        ),
        Case::tar(
            "gnu_long_name_ok",
            |_| {
                let name = format!("long/{}/{}", "a".repeat(200), "b".repeat(100));
                Tar::new()
                    .gnu_long_name(name.as_bytes())
                    .file("truncated", b"long")
                    .finish()
            },
            ok(|c, _| {
                assert_file(
                    c,
                    format!("long/{}/{}", "a".repeat(200), "b".repeat(100)),
                    b"long",
                );
                assert_absent(c, "truncated");
            }),
        ),
        Case::tar(
            "pax_header_limit_lowered",
            |_| {
                let p = format!("{}/f", "p".repeat(2000));
                Tar::new()
                    .pax(&[(b"path", p.as_bytes())])
                    .file("x", b"x")
                    .finish()
            },
            err_unnamed(LIMIT_OR_TAR),
        )
        .opts(|o| o.limits.max_header_bytes = 1024),
        Case::tar(
            "gnu_long_name_limit_lowered",
            |_| {
                let p = format!("{}/f", "g".repeat(2000));
                Tar::new()
                    .gnu_long_name(p.as_bytes())
                    .file("x", b"x")
                    .finish()
            },
            err_unnamed(LIMIT_OR_TAR),
        )
        .opts(|o| o.limits.max_header_bytes = 1024),
    ]
}

/// Rule 3: duplicates and the root entry.
fn duplicate_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "duplicate_file",
            |_| Tar::new().file("dup", b"1").file("dup", b"2").finish(),
            err(&["dup"], problem!(EntryProblem::Duplicate)),
        ),
        Case::tar(
            "duplicate_after_normalisation",
            |_| Tar::new().file("dupn", b"1").file("./dupn", b"2").finish(),
            err(&["./dupn"], problem!(EntryProblem::Duplicate)),
        ),
        Case::tar(
            "duplicate_directory",
            |_| Tar::new().dir("dupd/").dir("dupd/").finish(),
            err(&["dupd"], problem!(EntryProblem::Duplicate)),
        ),
        Case::tar(
            "duplicate_file_over_own_hardlink",
            |_| {
                Tar::new()
                    .file("hsrc", b"orig")
                    .hardlink("hdst", "hsrc")
                    .file("hdst", b"pwned")
                    .finish()
            },
            err(&["hdst"], problem!(EntryProblem::Duplicate)),
        ),
        Case::tar(
            "directory_after_implicit_parent_and_root_once",
            |_| {
                Tar::new()
                    .file("imp/child", b"c")
                    .dir_mode("imp/", 0o750)
                    .dir_mode("./", 0o755)
                    .finish()
            },
            ok(|c, _| {
                assert_file(c, "imp/child", b"c");
                assert_eq!(mode(c, "imp"), 0o750, "imp mode");
            }),
        ),
        Case::tar(
            "duplicate_root_entry",
            |_| Tar::new().dir("./").dir("./").finish(),
            err(&["./"], problem!(EntryProblem::Duplicate)),
        ),
        Case::tar(
            "root_entry_as_symlink",
            |_| Tar::new().symlink("./", "../outside").finish(),
            err(&["./"], ANY),
        ),
        Case::tar(
            "root_entry_as_file",
            |_| Tar::new().file(".", b"x").finish(),
            err(&["."], ANY),
        ),
    ]
}

/// Rule 10: whiteouts.
fn whiteout_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "whiteout_bare",
            |_| Tar::new().file(".wh.", b"").finish(),
            err(&[".wh."], problem!(EntryProblem::BadWhiteout)),
        ),
        Case::tar(
            "whiteout_of_dot",
            |_| Tar::new().file(".wh..", b"").finish(),
            err(&[".wh.."], problem!(EntryProblem::BadWhiteout)),
        ),
        Case::tar(
            "whiteout_of_dotdot",
            |_| Tar::new().file(".wh...", b"").finish(),
            err(&[".wh..."], problem!(EntryProblem::BadWhiteout)),
        ),
        Case::tar(
            "whiteout_of_dotdot_in_subdir",
            |_| Tar::new().file("sub/.wh...", b"").finish(),
            err(&["sub/.wh..."], problem!(EntryProblem::BadWhiteout)),
        )
        .setup(|c| lower_file(c, "sub/keep", b"keep")),
        Case::tar(
            "whiteout_path_with_dotdot",
            |_| Tar::new().file("a/../.wh.x", b"").finish(),
            err(&["a/../.wh.x"], problem!(EntryProblem::DotDot)),
        )
        .setup(|c| lower_file(c, "x", b"x")),
        Case::tar(
            "whiteout_unknown_meta",
            |_| Tar::new().file(".wh..wh.plnk", b"").finish(),
            err(&[".wh..wh.plnk"], problem!(EntryProblem::BadWhiteout)),
        ),
        Case::tar(
            "whiteout_of_own_entry",
            |_| Tar::new().file("mine", b"m").file(".wh.mine", b"").finish(),
            err(&[".wh.mine"], problem!(EntryProblem::WhiteoutOfOwnEntry)),
        ),
        Case::tar(
            "whiteout_of_own_implicit_parent",
            |_| Tar::new().file("own/x", b"x").file(".wh.own", b"").finish(),
            err(&[".wh.own"], ANY),
        ),
        Case::tar(
            "whiteout_removes_lower_entries",
            |_| {
                Tar::new()
                    .file(".wh.old", b"")
                    .file(".wh.oldd", b"")
                    .finish()
            },
            ok(|c, _| {
                assert_absent(c, "old");
                assert_absent(c, "oldd");
                assert_absent(c, ".wh.old");
                assert_absent(c, ".wh.oldd");
                assert_file(c, "keep", b"keep");
            }),
        )
        .setup(|c| {
            lower_file(c, "old", b"old");
            lower_file(c, "oldd/deep/f", b"f");
            lower_file(c, "keep", b"keep");
        }),
        Case::tar(
            "whiteout_of_lower_symlinks_to_outside_dir",
            |_| {
                Tar::new()
                    .file(".wh.link", b"")
                    .file(".wh.rlink", b"")
                    .finish()
            },
            ok(|c, _| {
                assert_absent(c, "link");
                assert_absent(c, "rlink");
            }),
        )
        .setup(|c| {
            lower_symlink(c, "link", &c.outside);
            lower_symlink(c, "rlink", "../outside");
        }),
        Case::tar(
            "whiteout_through_lower_symlink_parent_clamped",
            |_| Tar::new().file("escape/.wh.secret", b"").finish(),
            ok(|c, _| {
                assert_absent(c, "outside/secret");
                assert_file(c, "outside/other", b"other");
            }),
        )
        .setup(|c| {
            lower_symlink(c, "escape", "../outside");
            lower_file(c, "outside/secret", b"inner secret");
            lower_file(c, "outside/other", b"other");
        }),
        Case::tar(
            "whiteout_through_lower_absolute_symlink_parent",
            |_| Tar::new().file("abs/.wh.secret", b"").finish(),
            // The parent resolves (inside the root) to a missing directory: nothing below
            // to hide, so the whiteout is a documented no-op; the harness checks nothing
            // outside changed.
            ok(|_, _| {}),
        )
        .setup(|c| lower_symlink(c, "abs", &c.outside)),
        Case::tar(
            "opaque_whiteout_hides_lower_children_only",
            |_| {
                Tar::new()
                    .dir("d/")
                    .file("d/new1", b"1")
                    .file("d/.wh..wh..opq", b"")
                    .file("d/new2", b"2")
                    .finish()
            },
            ok(|c, _| {
                assert_eq!(
                    children(c, "d"),
                    vec![b"new1".to_vec(), b"new2".to_vec()],
                    "children of d"
                );
                assert_file(c, "d2/keep", b"keep");
            }),
        )
        .setup(|c| {
            lower_file(c, "d/old1", b"old");
            lower_file(c, "d/old2/x", b"old");
            lower_symlink(c, "d/oldlink", &c.outside);
            lower_file(c, "d2/keep", b"keep");
        }),
        Case::tar(
            "opaque_whiteout_through_lower_symlink",
            |_| Tar::new().file("link/.wh..wh..opq", b"").finish(),
            // The parent resolves (inside the root) to a missing directory: nothing below
            // to hide, so the whiteout is a documented no-op; the harness checks nothing
            // outside changed.
            ok(|_, _| {}),
        )
        .setup(|c| lower_symlink(c, "link", "../outside")),
        Case::tar(
            "opaque_whiteout_through_lower_absolute_symlink",
            |_| Tar::new().file("alink/.wh..wh..opq", b"").finish(),
            // The parent resolves (inside the root) to a missing directory: nothing below
            // to hide, so the whiteout is a documented no-op; the harness checks nothing
            // outside changed.
            ok(|_, _| {}),
        )
        .setup(|c| lower_symlink(c, "alink", &c.outside)),
    ]
}

/// Rule 12: odd names.
fn name_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "invalid_utf8_names_byte_exact",
            |_| {
                Tar::new()
                    .dir(b"caf\xe9")
                    .file(b"caf\xe9/\xff\xfe.bin", b"bytes")
                    .symlink(b"lnk\x80", b"\xfe\xff/tgt")
                    .finish()
            },
            ok(|c, _| {
                assert_eq!(
                    children(c, ""),
                    vec![b"caf\xe9".to_vec(), b"lnk\x80".to_vec()]
                );
                assert_eq!(children(c, b"caf\xe9"), vec![b"\xff\xfe.bin".to_vec()]);
                assert_file(c, b"caf\xe9/\xff\xfe.bin", b"bytes");
                assert_symlink(c, b"lnk\x80", b"\xfe\xff/tgt");
            }),
        ),
        Case::tar(
            "component_of_255_bytes_ok",
            |_| {
                let p = "n".repeat(255);
                Tar::new()
                    .pax(&[(b"path", p.as_bytes())])
                    .file("short", b"255")
                    .finish()
            },
            ok(|c, _| assert_file(c, "n".repeat(255), b"255")),
        ),
        Case::tar(
            "component_of_256_bytes_fails_naming_entry",
            |_| {
                let p = format!("dir/{}", "c".repeat(256));
                Tar::new()
                    .pax(&[(b"path", p.as_bytes())])
                    .file("short", b"256")
                    .finish()
            },
            err_at(|_| format!("dir/{}", "c".repeat(256)), ANY),
        ),
        Case::tar(
            "path_of_4096_bytes",
            |_| {
                let p = long_path();
                Tar::new()
                    .pax(&[(b"path", p.as_bytes())])
                    .file("short", b"4096")
                    .finish()
            },
            Expect::Either {
                names: Box::new(|_| vec![long_path().into_bytes()]),
                ok: Box::new(|c, _| assert_file(c, long_path(), b"4096")),
            },
        ),
    ]
}

/// Exactly 4096 bytes of 8-byte components.
fn long_path() -> String {
    let mut p = String::new();
    let mut i = 0;
    while p.len() + 8 < 4096 {
        p.push_str(&format!("c{i:06}/"));
        i += 1;
    }
    while p.len() < 4096 {
        p.push('f');
    }
    p
}

/// Rule 13 and tar framing.
fn format_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "bad_checksum",
            |_| {
                let mut h = Header::new(b'0', "badsum");
                h.size = 1;
                h.checksum = Checksum::Wrong(1);
                Tar::new().header(&h).data(b"x").finish()
            },
            err_unnamed(TAR),
        ),
        Case::tar(
            "garbage_checksum_field",
            |_| {
                let mut h = Header::new(b'0', "badsum");
                h.checksum = Checksum::Raw(*b"zzzzzz\0 ");
                Tar::new().header(&h).finish()
            },
            err_unnamed(TAR),
        ),
        Case::tar(
            "bad_checksum_after_good_entry",
            |_| {
                let mut h = Header::new(b'0', "second");
                h.checksum = Checksum::Wrong(-1);
                Tar::new().file("first", b"1").header(&h).finish()
            },
            err_unnamed(TAR),
        ),
        Case::tar(
            "garbage_size_field",
            |_| {
                let mut h = Header::new(b'0', "badsize");
                h.patches.push((124, b"zzzzzzzzzzz\0".to_vec()));
                Tar::new().header(&h).finish()
            },
            err_unnamed(TAR),
        ),
        Case::tar(
            "truncated_in_data",
            |_| {
                let mut h = Header::new(b'0', "trunc");
                h.size = 1000;
                Tar::new().header(&h).raw(&[b'x'; 100]).unterminated()
            },
            err_unnamed(TAR),
        ),
        Case::tar(
            "truncated_in_header",
            |_| {
                let t = Tar::new()
                    .file("whole", b"w")
                    .file("half", b"h")
                    .unterminated();
                t[..t.len() - 512 - 212].to_vec()
            },
            err_unnamed(TAR),
        ),
        Case::tar(
            "symlink_with_data",
            |_| {
                let mut h = Header::new(b'2', "sym_data");
                h.linkname = b"t".to_vec();
                Tar::new().entry(h, b"0123456789").finish()
            },
            err(
                &["sym_data"],
                problem!(EntryProblem::UnexpectedData { size: 10, .. }),
            ),
        ),
        Case::tar(
            "directory_with_data",
            |_| {
                Tar::new()
                    .entry(Header::new(b'5', "dir_data"), &[0u8; 512])
                    .finish()
            },
            err(
                &["dir_data"],
                problem!(EntryProblem::UnexpectedData { size: 512, .. }),
            ),
        ),
        Case::tar(
            "hardlink_with_data",
            |_| {
                let mut h = Header::new(b'1', "hl_data");
                h.linkname = b"src".to_vec();
                Tar::new().file("src", b"s").entry(h, b"data").finish()
            },
            err(
                &["hl_data"],
                problem!(EntryProblem::UnexpectedData { size: 4, .. }),
            ),
        ),
        Case::tar(
            "fifo_with_data",
            |_| {
                Tar::new()
                    .entry(Header::new(b'6', "fifo_data"), b"d")
                    .finish()
            },
            err(
                &["fifo_data"],
                problem!(EntryProblem::UnexpectedData { size: 1, .. }),
            ),
        ),
        Case::tar(
            "char_device_with_data_allowed_devices",
            |_| {
                let mut h = Header::new(b'3', "dev_data");
                h.devmajor = 1;
                h.devminor = 3;
                Tar::new().entry(h, b"d").finish()
            },
            err(
                &["dev_data"],
                problem!(EntryProblem::UnexpectedData { size: 1, .. }),
            ),
        )
        .opts(|o| o.devices = DevicePolicy::Create),
        Case::tar(
            "gnu_sparse_typeflag",
            |_| Tar::new().entry(Header::new(b'S', "sparse"), b"s").finish(),
            err(&["sparse"], problem!(EntryProblem::UnsupportedType('S'))),
        ),
        Case::tar(
            "gnu_multivolume_typeflag",
            |_| Tar::new().header(&Header::new(b'M', "multi")).finish(),
            err(&["multi"], problem!(EntryProblem::UnsupportedType('M'))),
        ),
        Case::tar(
            "unknown_typeflag",
            |_| Tar::new().header(&Header::new(b'Z', "zed")).finish(),
            err(&["zed"], problem!(EntryProblem::UnsupportedType('Z'))),
        ),
    ]
}

/// Rule 11 (small) and compressed inputs.
fn limit_and_compression_cases() -> Vec<Case> {
    vec![
        Case::tar(
            "entry_count_limit",
            |_| {
                let mut t = Tar::new();
                for i in 0..10 {
                    t.file(format!("f{i}"), b"x");
                }
                t.finish()
            },
            err_unnamed(LIMIT),
        )
        .opts(|o| o.limits.max_entries = 3),
        Case::tar(
            "byte_limit_plain_tar",
            |_| Tar::new().file("big", &vec![7u8; 1 << 20]).finish(),
            err_unnamed(LIMIT),
        )
        .opts(|o| o.limits.max_bytes = 64 << 10),
        Case::input(
            "apply_file_plain_tar",
            |_| Input::File("layer.tar", Tar::new().file("p", b"plain").finish()),
            ok(|c, _| assert_file(c, "p", b"plain")),
        ),
        Case::input(
            "apply_file_zstd_multi_frame",
            |_| {
                let a = Tar::new().file("z1", b"zstd1").unterminated();
                let b = Tar::new().file("z2", b"zstd2").finish();
                let mut bytes = zstd_frame(&a);
                bytes.extend_from_slice(&zstd_frame(&b));
                Input::File("layer.tar.zst", bytes)
            },
            ok(|c, _| {
                assert_file(c, "z1", b"zstd1");
                assert_file(c, "z2", b"zstd2");
            }),
        ),
        Case::input(
            "apply_file_gzip",
            |_| {
                Input::File(
                    "layer.tar.gz",
                    gzip(&Tar::new().file("g", b"gzip").finish()),
                )
            },
            ok(|c, _| assert_file(c, "g", b"gzip")),
        ),
        Case::input(
            "apply_file_zstd_escape_still_refused",
            |_| {
                let t = Tar::new()
                    .symlink("escape", "../outside")
                    .file("escape/pwned", b"x")
                    .finish();
                Input::File("layer.tar.zst", zstd_frame(&t))
            },
            err(&["escape/pwned"], ANY),
        ),
        Case::input(
            "apply_file_truncated_zstd",
            |_| {
                let z = zstd_frame(&Tar::new().file("zt", &[1u8; 5000]).finish());
                Input::File("layer.tar.zst", z[..z.len() / 2].to_vec())
            },
            Expect::Err {
                names: Box::new(|_| Vec::new()),
                m: M {
                    f: |e| matches!(e, Error::Stream { .. } | Error::Tar { .. }),
                    what: "Error::Stream or Error::Tar",
                },
            },
        ),
    ]
}

/// Cases whose point is bounded memory and time; run in a child under `ulimit -v`.
fn memory_cases() -> Vec<Case> {
    const FAST: Duration = Duration::from_secs(60);
    vec![
        Case::input(
            "zstd_bomb_16_gib_bounded_by_max_bytes",
            |_| Input::File("bomb.tar.zst", zstd_bomb(16, 1 << 30)),
            err_unnamed(LIMIT),
        )
        .opts(|o| {
            o.limits.max_bytes = 64 << 20;
            o.threads = 2;
        })
        .deadline(FAST),
        Case::input(
            "zstd_bomb_many_small_entries_total_bounded",
            // Every entry is under the limit on its own, so only the running total stops it.
            |_| Input::File("bomb64.tar.zst", zstd_bomb(64, 64 << 20)),
            err_unnamed(LIMIT),
        )
        .opts(|o| {
            o.limits.max_bytes = 256 << 20;
            o.threads = 2;
        })
        .deadline(FAST),
        Case::input(
            "zstd_bomb_one_entry_declared_8_gib",
            |_| {
                let mut h = Header::new(b'0', "bomb");
                h.size = MAX_OCTAL_SIZE;
                let mut z = zstd_frame(&h.encode());
                let zeros = zstd_zero_frame(64 << 20);
                for _ in 0..16 {
                    z.extend_from_slice(&zeros);
                }
                Input::File("bomb1.tar.zst", z)
            },
            err_unnamed(LIMIT),
        )
        .opts(|o| {
            o.limits.max_bytes = 64 << 20;
            o.threads = 2;
        })
        .deadline(FAST),
        Case::input(
            "gzip_bomb_bounded_by_max_bytes",
            |_| Input::File("bomb.tar.gz", gzip_zero_tar(64 << 20)),
            err_unnamed(LIMIT),
        )
        .opts(|o| {
            o.limits.max_bytes = 8 << 20;
            o.threads = 2;
        })
        .deadline(FAST),
        Case::tar(
            "pax_header_declared_8_gib",
            |_| {
                let mut h = Header::new(b'x', "PaxHeaders/huge");
                h.size = MAX_OCTAL_SIZE;
                Tar::new()
                    .header(&h)
                    .data(&pax_record(b"comment", &[b'c'; 4000]))
                    .unterminated()
            },
            err_unnamed(LIMIT_OR_TAR),
        )
        .opts(|o| o.threads = 2)
        .deadline(FAST),
        Case::tar(
            "gnu_long_name_declared_8_gib",
            |_| {
                let mut h = Header::new(b'L', "././@LongLink");
                h.size = MAX_OCTAL_SIZE;
                Tar::new().header(&h).data(&[b'n'; 4000]).unterminated()
            },
            err_unnamed(LIMIT_OR_TAR),
        )
        .opts(|o| o.threads = 2)
        .deadline(FAST),
        Case::tar(
            "pax_record_of_2_mib",
            |_| {
                Tar::new()
                    .pax(&[(b"comment", &vec![b'c'; 2 << 20])])
                    .file("after", b"x")
                    .finish()
            },
            err_unnamed(LIMIT_OR_TAR),
        )
        .opts(|o| o.threads = 2)
        .deadline(FAST),
        Case::tar(
            "many_pax_records_totalling_2_mib",
            |_| {
                let big: Vec<(Vec<u8>, Vec<u8>)> = (0..2048)
                    .map(|i| (format!("STRATA.k{i}").into_bytes(), vec![b'v'; 1000]))
                    .collect();
                let refs: Vec<(&[u8], &[u8])> = big
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                    .collect();
                Tar::new().pax(&refs).file("after", b"x").finish()
            },
            err_unnamed(LIMIT_OR_TAR),
        )
        .opts(|o| o.threads = 2)
        .deadline(FAST),
        Case::tar(
            "gnu_long_name_of_2_mib",
            |_| {
                Tar::new()
                    .gnu_long_name(&vec![b'n'; 2 << 20])
                    .file("after", b"x")
                    .finish()
            },
            err_unnamed(LIMIT_OR_TAR),
        )
        .opts(|o| o.threads = 2)
        .deadline(FAST),
    ]
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// Everything observable about one path outside the target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    dev: u64,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<String>,
    link: Option<Vec<u8>>,
}

/// Paths at least this long are reached through `/proc/self/fd` (PATH_MAX is 4096).
const LONG_PATH: usize = 3000;

/// A name for a path usable in system calls whatever the path's length.
struct Short {
    /// The path itself when short, else `/proc/self/fd/<parent fd>/<last component>`.
    path: PathBuf,
    /// Keeps the parent's descriptor open while `path` is used.
    _dir: Option<fs::File>,
}

/// `/proc/self/fd/<fd of dir>/<name>`: a short path to a child of an open directory.
fn fd_path(dir: &fs::File, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if !name.is_empty() {
        p.push(OsStr::from_bytes(name));
    }
    p
}

/// Makes an absolute path usable in system calls: long paths are walked one directory at a
/// time (following symlinks in parents, like the plain path would).
fn short(long: &Path) -> io::Result<Short> {
    let bytes = long.as_os_str().as_bytes();
    if bytes.len() < LONG_PATH {
        return Ok(Short {
            path: long.to_path_buf(),
            _dir: None,
        });
    }
    let comps: Vec<&[u8]> = bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let (last, parents) = comps.split_last().expect("a long path has components");
    let mut dir = fs::File::open("/")?;
    for comp in parents {
        dir = fs::File::open(fd_path(&dir, comp))?;
    }
    Ok(Short {
        path: fd_path(&dir, last),
        _dir: Some(dir),
    })
}

/// Visits `root` and everything below it except `exclude` and below, without following
/// symlinks and without path-length limits. The visitor gets the logical path, a short path for
/// system calls, and the `lstat` metadata.
fn walk(
    root: &Path,
    exclude: Option<&Path>,
    mut visit: impl FnMut(&Path, &Path, &fs::Metadata) -> Result<(), String>,
) -> Result<(), String> {
    let io = |what: &str, p: &Path, e: io::Error| format!("{what} {}: {e}", p.display());
    let m = fs::symlink_metadata(root).map_err(|e| io("lstat", root, e))?;
    visit(root, root, &m)?;
    if !m.is_dir() {
        return Ok(());
    }
    let root_fd = fs::File::open(root).map_err(|e| io("open", root, e))?;
    let mut queue = VecDeque::from([(root.to_path_buf(), root_fd)]);
    while let Some((logical, dir)) = queue.pop_front() {
        let entries = fs::read_dir(fd_path(&dir, b"")).map_err(|e| io("read_dir", &logical, e))?;
        for e in entries {
            let e = e.map_err(|e| io("read_dir", &logical, e))?;
            let name = e.file_name();
            let child = logical.join(&name);
            if exclude == Some(child.as_path()) {
                continue;
            }
            let short = fd_path(&dir, name.as_bytes());
            let m = fs::symlink_metadata(&short).map_err(|e| io("lstat", &child, e))?;
            visit(&child, &short, &m)?;
            if m.is_dir() {
                let fd = fs::File::open(&short).map_err(|e| io("open", &child, e))?;
                queue.push_back((child, fd));
            }
        }
    }
    Ok(())
}

/// Snapshots every path under `root` (itself included) except `exclude` and below, without
/// following symlinks.
fn snapshot(root: &Path, exclude: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Some(exclude), |logical, short, m| {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else {
            "other"
        };
        let content = if ft.is_file() {
            let data = fs::read(short).map_err(|e| format!("read {}: {e}", logical.display()))?;
            Some(blake3::hash(&data).to_hex().to_string())
        } else {
            None
        };
        let link = if ft.is_symlink() {
            let t =
                fs::read_link(short).map_err(|e| format!("readlink {}: {e}", logical.display()))?;
            Some(t.as_os_str().as_bytes().to_vec())
        } else {
            None
        };
        out.insert(
            logical.to_path_buf(),
            Node {
                kind,
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: m.size(),
                dev: m.dev(),
                ino: m.ino(),
                nlink: m.nlink(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                content,
                link,
            },
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("snapshot of {}: {e}", root.display()));
    out
}

/// The fields that differ between two states of one path.
fn node_changes(b: &Node, a: &Node) -> String {
    let mut parts = Vec::new();
    macro_rules! field {
        ($f:ident) => {
            if b.$f != a.$f {
                parts.push(format!("{} {:?} -> {:?}", stringify!($f), b.$f, a.$f));
            }
        };
    }
    field!(kind);
    if b.mode != a.mode {
        parts.push(format!("mode {:o} -> {:o}", b.mode, a.mode));
    }
    field!(uid);
    field!(gid);
    field!(size);
    field!(dev);
    field!(ino);
    field!(nlink);
    field!(mtime);
    field!(ctime);
    field!(content);
    field!(link);
    parts.join(", ")
}

/// Describes every difference between two snapshots.
fn diff(
    before: &BTreeMap<PathBuf, Node>,
    after: &BTreeMap<PathBuf, Node>,
    relax_links: bool,
) -> Vec<String> {
    let norm = |n: &Node| {
        let mut n = n.clone();
        if relax_links && n.kind != "dir" {
            n.nlink = 0;
            n.ctime = (0, 0);
        }
        n
    };
    let mut out = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => out.push(format!("{} was removed", p.display())),
            Some(a) if norm(a) != norm(b) => {
                out.push(format!("{} changed: {}", p.display(), node_changes(b, a)));
            }
            Some(_) => {}
        }
    }
    for (p, a) in after {
        if !before.contains_key(p) {
            out.push(format!("{} was created ({})", p.display(), a.kind));
        }
    }
    out
}

/// Creates `base/` with its sentinels and an empty target.
fn make_ctx() -> (tempfile::TempDir, Ctx) {
    let tmp = tempfile::Builder::new()
        .prefix("strata-corpus-")
        .tempdir()
        .unwrap();
    let base = fs::canonicalize(tmp.path()).unwrap();
    let outside = base.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"SECRET\n").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("secret", outside.join("link")).unwrap();
    symlink(outside.join("secret"), outside.join("abslink")).unwrap();
    fs::create_dir(outside.join("dir")).unwrap();
    fs::write(outside.join("dir/inner"), b"INNER\n").unwrap();
    fs::set_permissions(outside.join("dir"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(base.join("sibling"), b"SIBLING\n").unwrap();
    let target = base.join("target");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    let token = format!(
        "{}-pwned",
        base.file_name().unwrap().to_str().expect("utf-8 temp name")
    );
    let ctx = Ctx {
        base,
        outside,
        target,
        token,
    };
    (tmp, ctx)
}

/// Every path under the target must resolve inside it and share no inode with the sentinels.
///
/// The walk never follows symlinks, so everything it meets is below the target by
/// construction; canonicalising each path (beyond PATH_MAX: its nearest short ancestor) also
/// catches anything the kernel would resolve elsewhere, such as a mount.
fn check_contained(c: &Ctx, sentinel_inodes: &HashSet<(u64, u64)>) -> Result<(), String> {
    let m = fs::symlink_metadata(&c.target).map_err(|e| format!("target vanished: {e}"))?;
    if !m.is_dir() {
        return Err(format!(
            "target is no longer a directory: {:?}",
            m.file_type()
        ));
    }
    walk(&c.target, None, |logical, _, m| {
        // Symlinks may point anywhere (targets are data); where they sit may not.
        let mut probe = if m.file_type().is_symlink() {
            logical.parent().unwrap_or(logical)
        } else {
            logical
        };
        while probe.as_os_str().len() >= LONG_PATH {
            probe = probe.parent().unwrap_or(probe);
        }
        let resolved = fs::canonicalize(probe)
            .map_err(|e| format!("canonicalize {}: {e}", probe.display()))?;
        if !resolved.starts_with(&c.target) {
            return Err(format!(
                "{} resolves to {}, outside the target",
                logical.display(),
                resolved.display()
            ));
        }
        if !m.is_dir() && sentinel_inodes.contains(&(m.dev(), m.ino())) {
            return Err(format!(
                "{} shares its inode with a sentinel",
                logical.display()
            ));
        }
        Ok(())
    })
}

/// Whether the error's message names the entry (raw, or escaped as `EntryName` shows it).
fn names_entry(e: &Error, name: &[u8]) -> bool {
    let msg = e.to_string();
    let shown = EntryName(name.to_vec()).to_string();
    let shown = &shown[1..shown.len() - 1];
    msg.contains(shown) || msg.contains(&*String::from_utf8_lossy(name))
}

fn check_err(c: &Ctx, e: &Error, names: &Names, m: M) -> Result<(), String> {
    if !(m.f)(e) {
        return Err(format!("expected {}, got `{e}` ({e:?})", m.what));
    }
    let names = names(c);
    if !names.is_empty() && !names.iter().any(|n| names_entry(e, n)) {
        let wanted: Vec<String> = names
            .iter()
            .map(|n| EntryName(n.clone()).to_string())
            .collect();
        return Err(format!(
            "error `{e}` does not name the entry (one of {})",
            wanted.join(", ")
        ));
    }
    Ok(())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Runs one case; `Err` describes every way it failed.
fn run_case(case: &Case) -> Result<(), String> {
    let (_tmp, c) = make_ctx();
    if let Some(setup) = &case.setup {
        setup(&c);
    }
    let input = (case.build)(&c);
    let input_path = match &input {
        Input::Tar(_) => None,
        Input::File(name, bytes) => {
            let dir = c.base.join("input");
            fs::create_dir(&dir).unwrap();
            let p = dir.join(name);
            fs::write(&p, bytes).unwrap();
            Some(p)
        }
    };
    let mut opts = ExtractOptions::default();
    (case.opts)(&mut opts);

    let before = snapshot(&c.base, &c.target);
    let sentinel_inodes: HashSet<(u64, u64)> = before
        .values()
        .filter(|n| n.kind != "dir")
        .map(|n| (n.dev, n.ino))
        .collect();

    let start = Instant::now();
    let result = match (&input, &input_path) {
        (Input::Tar(bytes), _) => apply_tar(bytes.as_slice(), &c.target, &opts),
        (Input::File(..), Some(p)) => apply_file(p, &c.target, &opts),
        (Input::File(..), None) => unreachable!("file inputs are written above"),
    };
    let elapsed = start.elapsed();
    drop(input);

    let mut problems = Vec::new();
    if elapsed > case.deadline {
        problems.push(format!("took {elapsed:?}, more than {:?}", case.deadline));
    }
    let after = snapshot(&c.base, &c.target);
    for d in diff(&before, &after, case.outside_links_may_change) {
        problems.push(format!("OUTSIDE THE TARGET CHANGED: {d}"));
    }
    let host = Path::new("/").join(&c.token);
    if fs::symlink_metadata(&host).is_ok() {
        problems.push(format!("WROTE TO THE HOST ROOT: {} exists", host.display()));
        let _ = fs::remove_dir_all(&host).or_else(|_| fs::remove_file(&host));
    }
    let inodes = if case.outside_links_may_change {
        HashSet::new()
    } else {
        sentinel_inodes
    };
    if let Err(e) = check_contained(&c, &inodes) {
        problems.push(format!("ESCAPE: {e}"));
    }

    let checked = catch_unwind(AssertUnwindSafe(|| match (&case.expect, &result) {
        (Expect::Ok(check), Ok(report)) => {
            check(&c, report);
            Ok(())
        }
        (Expect::Ok(_), Err(e)) => Err(format!("expected success, got `{e}` ({e:?})")),
        (Expect::Err { .. }, Ok(r)) => Err(format!(
            "expected an error, got success ({} entries, {} bytes, skipped {:?})",
            r.entries,
            r.bytes,
            r.skipped
                .iter()
                .map(|s| (
                    String::from_utf8_lossy(&s.path).into_owned(),
                    s.reason.clone()
                ))
                .collect::<Vec<_>>()
        )),
        (Expect::Err { names, m }, Err(e)) => check_err(&c, e, names, *m),
        (Expect::Either { ok, .. }, Ok(report)) => {
            ok(&c, report);
            Ok(())
        }
        (Expect::Either { names, .. }, Err(e)) => check_err(&c, e, names, ANY),
    }));
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => problems.push(msg),
        Err(p) => problems.push(format!("check failed: {}", panic_message(&*p))),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n    "))
    }
}

/// Runs the cases (filtered by `STRATA_CORPUS_CASE`), each in its own thread with a hang
/// guard, and returns one message per failing case.
fn run_all(cases: Vec<Case>) -> (usize, Vec<String>) {
    let filter = std::env::var("STRATA_CORPUS_CASE").ok();
    let mut seen = HashSet::new();
    for case in &cases {
        assert!(
            seen.insert(case.name),
            "case name {} is used twice",
            case.name
        );
    }
    let cases: Vec<Arc<Case>> = cases
        .into_iter()
        .filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .map(Arc::new)
        .collect();
    let mut failures = Vec::new();
    for case in &cases {
        let (tx, rx) = mpsc::channel();
        let worker = Arc::clone(case);
        std::thread::spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| run_case(&worker)))
                .unwrap_or_else(|p| Err(format!("harness panicked: {}", panic_message(&*p))));
            let _ = tx.send(r);
        });
        let limit = case.deadline + Duration::from_secs(60);
        match rx.recv_timeout(limit) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => failures.push(format!("case `{}`:\n    {msg}", case.name)),
            Err(_) => failures.push(format!(
                "case `{}`: did not finish within {limit:?} (hang?)",
                case.name
            )),
        }
    }
    (cases.len(), failures)
}

#[test]
fn malicious_corpus() {
    let all = cases();
    assert!(all.len() >= 25, "the corpus shrank to {} cases", all.len());
    let (ran, failures) = run_all(all);
    assert!(
        failures.is_empty(),
        "{} of {ran} corpus cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Set in the child process that runs [`memory_cases`].
const CHILD_ENV: &str = "STRATA_CORPUS_MEMORY_CHILD";
/// Address-space limit of the child, KiB: far below what buffering a bomb would need.
const CHILD_VMEM_KIB: u64 = 6 << 20;
/// Peak resident memory the child may reach, KiB.
const CHILD_MAX_RSS_KIB: u64 = 512 << 10;

/// Reads a `kB` field of `/proc/self/status`.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child spawned by [`memory_bounded_cases`].
#[test]
#[ignore = "child process of corpus::memory_bounded_cases"]
#[expect(
    clippy::print_stdout,
    reason = "reports the peak RSS to the parent test"
)]
fn child_memory() {
    child_var(CHILD_ENV);
    let (ran, failures) = run_all(memory_cases());
    let peak = proc_status_kib("VmHWM:").expect("VmHWM in /proc/self/status");
    println!("corpus memory child: {ran} cases, peak RSS {peak} KiB");
    assert!(
        failures.is_empty(),
        "{} of {ran} memory cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        peak < CHILD_MAX_RSS_KIB,
        "peak RSS {peak} KiB exceeds {CHILD_MAX_RSS_KIB} KiB: extraction is not memory-bounded"
    );
}

#[test]
fn memory_bounded_cases() {
    let script = format!("ulimit -v {CHILD_VMEM_KIB} || exit 97; exec \"$0\" \"$@\"");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(test_binary())
        .args(child_test_args("corpus::child_memory"))
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "memory child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("corpus memory child:") && stdout.contains("1 passed"),
        "memory child did not run its cases:\n{stdout}"
    );
}
