//! The `strata` binary itself, built for Windows and run under Wine (part of `cargo xtask
//! wine-test`, hence of `ci`): what the unit tests cannot show, end to end through the
//! command line, on Windows paths.
//!
//! 1. Relocation between slots: `import` an empty base, `checkout --portable` it at
//!    `C:\strata\s01`, write files naming that root in every form Windows toolchains use
//!    (both drive-letter cases, `/` and `\`, doubled backslashes, `/cygdrive/c/…`, `/c/…`,
//!    and UTF-16LE of each, in text and binary files), `commit`, `checkout` the result at
//!    `C:\strata\s02`, and compare every file byte for byte with the same files written for
//!    `s02`; a file that names no root, and the siblings (`s010`, `s01-old`…), must not
//!    change at all.
//! 2. The `windows-user` driver through the builder: `strata build --sandbox windows-user
//!    --slot-users current` (Wine has no user accounts, so the current user stands in for
//!    the slot users), whose steps run in a slot with the slot's profile variables, in a job
//!    object, their output captured; then `strata slots rm` removes the slot directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, bail, ensure};

use crate::project_root;
use crate::toolchain::{DEBIAN_RUSTC, TARGET, TARGET_DIR, WINE, windows_path, wine_env};

/// A slot's text files, naming its root in every form; `@@` is the slot's name. What
/// spells another path (a sibling slot, another drive) names `s01` literally.
const TEXT: &str = concat!(
    "PATH=C:\\strata\\@@\\bin;c:\\strata\\@@\\lib;D:\\strata\\s01\\bin\r\n",
    "url=C:/strata/@@/share c:/strata/@@\r\n",
    "cygwin=/cygdrive/c/strata/@@/usr/bin:/cygdrive/C/strata/@@\n",
    "msys=/c/strata/@@/mingw64/bin:/C/strata/@@\n",
    "siblings: C:\\strata\\s010 c:/strata/s01-old /cygdrive/c/strata/s01x /c/strata/s01.bak ",
    "C:\\\\strata\\\\s01_x E:/strata/s01\n",
);

/// An opam-style config: doubled backslashes, as JSON and opam escape them.
const OPAM: &str = concat!(
    "opam-version: \"2.0\"\n",
    "switch: \"C:\\\\strata\\\\@@\\\\AppData\\\\Local\\\\opam\\\\default\"\n",
    "{\"root\": \"c:\\\\strata\\\\@@\"}\n",
);

/// Every spelling of the root, for the binary file.
const FORMS: &[&str] = &[
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
];

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The files a job in slot `slot` would leave, as (relative path, bytes).
fn slot_files(slot: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut binary = b"MZ\x90\0\x03\0".to_vec();
    for form in FORMS {
        let s = form.replace("@@", slot);
        binary.extend(utf16(&s));
        binary.extend(utf16("x\0"));
        binary.extend(s.as_bytes());
        binary.extend(b"z\x01");
    }
    binary.extend(utf16("D:\\strata\\s01 stays"));
    let mut unicode_text = vec![0xFF, 0xFE];
    unicode_text.extend(utf16(&TEXT.replace("@@", slot)));
    vec![
        ("paths.txt", TEXT.replace("@@", slot).into_bytes()),
        (
            "AppData/Local/opam/config",
            OPAM.replace("@@", slot).into_bytes(),
        ),
        ("bin/tool.exe", binary),
        ("registry-export.reg", unicode_text),
        (
            "unrelated.txt",
            b"nothing here names a slot: C:\\strata\r\n".to_vec(),
        ),
    ]
}

/// Runs `strata.exe ARGS` under Wine; fails with its output unless it succeeds.
fn strata(exe: &Path, prefix: &Path, shim: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let out = wine_env(&mut Command::new(WINE), prefix)
        .arg(exe)
        .args(args)
        .env("WINEPATH", windows_path(shim))
        .stdin(Stdio::null())
        .output()
        .context("cannot run wine")?;
    if !out.status.success() {
        bail!(
            "strata {} failed under Wine ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Builds `strata.exe` for Windows, with the same settings as the Wine tests.
fn build_strata() -> anyhow::Result<PathBuf> {
    eprintln!("==> wine: cargo build -p strata-cli --target {TARGET}");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--locked", "-p", "strata-cli"])
        .args(["-Zbuild-std=std,panic_abort", "--target", TARGET])
        .args(["--target-dir", TARGET_DIR])
        .current_dir(project_root())
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-D warnings")
        .status()
        .context("cannot run cargo to build strata.exe")?;
    ensure!(status.success(), "building strata.exe failed ({status})");
    Ok(project_root()
        .join(TARGET_DIR)
        .join(TARGET)
        .join("debug/strata.exe"))
}

/// Runs both checks; `prefix` is the Wine prefix, `shim` the directory of the ProcessPrng
/// shim.
pub(crate) fn run(prefix: &Path, shim: &Path) -> anyhow::Result<()> {
    let exe = build_strata()?;
    let started = Instant::now();
    let drive_c = prefix.join("drive_c");
    let work = drive_c.join("strata-ci");
    let slots = drive_c.join("strata");
    for dir in [&work, &slots] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
    }
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&slots)?;
    // An empty root filesystem: a tar of two zero blocks.
    fs::write(work.join("empty.tar"), [0u8; 1024])?;
    let store = r"C:\strata-ci\store";
    let run = |args: &[&str]| -> anyhow::Result<Output> {
        let mut all = vec!["--store", store];
        all.extend_from_slice(args);
        strata(&exe, prefix, shim, &all)
    };

    eprintln!("==> wine: strata import, checkout --portable, commit, checkout (relocation)");
    run(&["import", r"C:\strata-ci\empty.tar", "--tag", "base"])?;
    run(&["checkout", "--portable", "base", r"C:\strata\s01"])?;
    for (rel, bytes) in slot_files("s01") {
        let path = slots.join("s01").join(rel);
        fs::create_dir_all(path.parent().unwrap_or(&slots))?;
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    run(&["commit", r"C:\strata\s01", "--tag", "step1"])?;
    run(&["checkout", "step1", r"C:\strata\s02"])?;
    for (rel, expected) in slot_files("s02") {
        let path = slots.join("s02").join(rel);
        let got = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if got != expected {
            bail!(
                "{rel} checked out at C:\\strata\\s02 is not the s01 file relocated:\n  \
                 expected {:?}\n  got      {:?}",
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(&got)
            );
        }
    }
    run(&["release", r"C:\strata\s02"])?;

    eprintln!("==> wine: strata build --sandbox windows-user --slot-users current");
    let context = work.join("context");
    fs::create_dir_all(&context)?;
    fs::write(
        context.join("build.spec"),
        "((from base)\n \
         (run (shell \"> where.txt echo %USERPROFILE% & echo built in %CD%\"))\n \
         (run (shell \"type where.txt & echo opam=%OPAMROOT% & exit 0\")))\n",
    )?;
    let sandbox = [
        "--sandbox",
        "windows-user",
        "--slot-users",
        "current",
        "--slot-dir",
        r"C:\strata-ci\slots",
        "--slots",
        "2",
    ];
    let mut args = vec!["build", "--progress", "plain", r"C:\strata-ci\context"];
    args.extend(sandbox);
    let out = run(&args)?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let slot = r"C:\strata-ci\slots\s01";
    for needle in [
        format!("built in {slot}"),
        slot.to_owned(),
        format!(r"opam={slot}\AppData\Local\opam"),
        "Got: ".to_owned(),
    ] {
        ensure!(
            text.contains(&needle),
            "the build's output lacks {needle:?}:\n{text}"
        );
    }
    let mut args = vec!["slots", "rm"];
    args.extend(sandbox);
    run(&args)?;
    ensure!(
        !drive_c.join("strata-ci/slots/s01").exists(),
        "strata slots rm left C:\\strata-ci\\slots\\s01"
    );
    eprintln!(
        "==> wine: strata.exe checks passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}
