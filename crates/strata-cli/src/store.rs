//! Opening the store for a command, and handing the trash it leaves to a detached
//! `strata empty-trash`, so that no command waits for released trees to be deleted.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use strata_snapshot::Engine;

/// Opens the store at `root`; when the engine is dropped with trash left (a commit's or a
/// release's checkout tree), a detached `strata empty-trash` deletes it.
pub(crate) fn open(root: &Path) -> Result<Engine> {
    let engine = Engine::open(root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    hand_off(&engine);
    Ok(engine)
}

/// Has the trash `engine` leaves deleted by a detached `strata empty-trash`.
pub(crate) fn hand_off(engine: &Engine) {
    engine.hand_off_trash(Box::new(spawn_emptier));
}

/// Starts `strata --store STORE empty-trash` on its own: no terminal, no pipes of ours (a
/// caller waiting for our output must not wait for it), its own process group (a Ctrl-C
/// meant for us does not stop it). If it cannot start, the trash waits for the next
/// command's handoff or `strata gc`.
fn spawn_emptier(store: &Path) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(store)
        .arg("empty-trash")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt as _;
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
    }
    // Not waited for: it outlives us, and init (or nobody, on Windows) reaps it.
    cmd.spawn().map(drop)
}

/// `strata empty-trash` (hidden): deletes what the store's trash holds, but for trees
/// other live processes are deleting.
pub(crate) fn empty_trash(root: &Path) -> Result<()> {
    let engine = Engine::open(root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    engine
        .empty_trash()
        .with_context(|| format!("cannot empty the trash of {}", root.display()))?;
    Ok(())
}
