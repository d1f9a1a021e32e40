//! Child test processes: a multi-process test re-runs its own test binary for one ignored
//! test, the child side. Ignored (`#[ignore = "child process of <parent>"]`), a child never
//! runs, and so never passes, on its own; run by hand, it fails for lack of its parent's
//! environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A command running the ignored test `test` (its path in the binary, `module::name`) of this
/// test binary, alone and with its output uncaptured.
pub fn child_test(test: &str) -> Command {
    // Through /proc on Linux: it still runs this binary after a concurrent `cargo test` has
    // replaced the file that `current_exe` names. Only there: under Wine, `/proc/self/exe`
    // names the host's Wine loader.
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if cfg!(target_os = "linux") && proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        test_binary()
    };
    let mut command = Command::new(exe);
    command.args(child_test_args(test));
    command
}

/// The arguments that make this test binary run only the ignored test `test`, for a child
/// started through a wrapper (which cannot use `/proc/self/exe`: see [`test_binary`]).
pub fn child_test_args(test: &str) -> [&str; 5] {
    [
        "--ignored",
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
    ]
}

/// The path of this test binary, for a wrapper to run (`/proc/self/exe` would name the
/// wrapper there).
pub fn test_binary() -> PathBuf {
    std::env::current_exe().expect("the path of the test binary")
}

/// The variable `name` that a parent test set for its child; a child run without its
/// parent fails here.
#[track_caller]
pub fn child_var(name: &str) -> OsString {
    std::env::var_os(name).unwrap_or_else(|| {
        panic!("this test is the child side of a multi-process test: its parent sets {name}")
    })
}
