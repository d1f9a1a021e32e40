//! Running the real `strata` binary, building sample trees and comparing trees.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use strata_test_support::tree::{self, Fields};

/// The outcome of one run of `strata`.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Self {
        Run {
            code: output.status.code().expect("strata was killed by a signal"),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts success and returns stdout as text.
    #[track_caller]
    pub(crate) fn ok(&self) -> String {
        assert_eq!(self.code, 0, "strata failed:\n{self:#?}");
        self.stdout_text()
    }

    /// Asserts success and parses stdout as one JSON value.
    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        let text = self.ok();
        assert_eq!(
            text.lines().count(),
            1,
            "JSON output is not one line: {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    }

    /// Asserts failure with exit status 1 and an `error:` message containing every `needle`.
    #[track_caller]
    pub(crate) fn fails_with(&self, needles: &[&str]) {
        assert_eq!(self.code, 1, "expected exit status 1:\n{self:#?}");
        assert!(
            self.stderr.lines().any(|l| l.starts_with("error: ")),
            "stderr has no `error: ` line:\n{}",
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr does not mention `{needle}`:\n{}",
                self.stderr
            );
        }
    }
}

/// A scratch directory with a store in it, for one test.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) tmp: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new() -> Self {
        Env {
            tmp: tempfile::tempdir().expect("cannot create a temporary directory"),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub(crate) fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// A `strata` command using this environment's store, with nothing inherited that could
    /// change where it looks.
    pub(crate) fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.args(args)
            .env("STRATA_STORE", self.store())
            .env_remove("XDG_CACHE_HOME")
            .env("HOME", self.path("home"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `strata ARGS` with stdin empty.
    pub(crate) fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Run::from_output(self.command(args).output().expect("cannot run strata"))
    }

    /// Runs `strata ARGS` with `input` on stdin.
    pub(crate) fn run_with_stdin<I, S>(&self, args: I, input: &[u8]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run strata");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            // strata may stop reading early when it fails; that is not this test's concern.
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("cannot wait for strata");
        feeder.join().expect("stdin feeder panicked");
        Run::from_output(output)
    }
}

/// Path arguments as `OsString`s, for `args` lists mixing text and paths.
pub(crate) fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// A non-UTF-8 file name: "café.txt" in Latin-1.
pub(crate) fn latin1_name() -> &'static OsStr {
    OsStr::from_bytes(b"caf\xe9.txt")
}

fn write_file(path: &Path, content: &[u8], mode: u32) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic, poorly compressible bytes.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Builds a small tree with every common kind of entry under `root` (which must not exist).
pub(crate) fn sample_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    write_file(&root.join("a/hello.txt"), b"hello, layer\n", 0o644);
    write_file(&root.join("a/b/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&root.join("private.bin"), &noise(300 * 1024, 7), 0o600);
    write_file(&root.join(latin1_name()), b"latin-1 name\n", 0o640);
    write_file(&root.join("empty.txt"), b"", 0o644);
    symlink("a/hello.txt", root.join("link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::hard_link(root.join("a/hello.txt"), root.join("a/hard")).unwrap();
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o700)).unwrap();
}

/// Asserts that two trees have the same paths, kinds, modes, contents and link targets.
#[track_caller]
pub(crate) fn assert_same_tree(expected: &Path, actual: &Path) {
    tree::assert_same_tree(expected, actual, Fields::CONTENT);
}

/// The inode of a path (not following symlinks).
pub(crate) fn inode(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

/// Asserts that `value` is an object with exactly these keys.
#[track_caller]
pub(crate) fn assert_keys(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    let mut got: Vec<&str> = object.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "unexpected keys in {value}");
}

/// A JSON field as u64.
#[track_caller]
pub(crate) fn u64_field(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not an unsigned integer in {value}"))
}

/// A JSON field as a 64-hex-digit id.
#[track_caller]
pub(crate) fn id_field(value: &Value, key: &str) -> String {
    let id = value[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {value}"))
        .to_owned();
    assert_eq!(id.len(), 64, "`{key}` is not a full id: {id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "`{key}` is not lowercase hex: {id}"
    );
    id
}

/// A minimal ustar archive holding one regular file (mode 0644, owner 0:0, mtime 0).
pub(crate) fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let digits = format!("{value:0width$o}", width = field.len() - 1);
        field[..digits.len()].copy_from_slice(digits.as_bytes());
    }
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], content.len() as u64);
    octal(&mut header[136..148], 0);
    header[148..156].fill(b' ');
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(digits.as_bytes());

    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().next_multiple_of(512), 0);
    tar.resize(tar.len() + 1024, 0);
    tar
}

/// A root filesystem tarball made with `strata layer create`: the sample tree plus
/// `etc/hostname`.
pub(crate) fn rootfs(env: &Env) -> PathBuf {
    let src = env.path("rootfs");
    sample_tree(&src);
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), "builder\n").unwrap();
    let out = env.path("rootfs.tar.zst");
    env.run([os("layer"), os("create"), os(&src), os("-o"), os(&out)])
        .ok();
    out
}
