//! Drivers with slots (`Layout::Slots`), through a host-process driver that declares two:
//! a step runs in a free slot, prepared while empty, with the snapshot checked out there and
//! relocated from the slot it was made in; steps wait while every slot is held (by any
//! process: the locks are files), and `remove_slots` refuses a held slot.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_build::{BuildOptions, Builder, Transcript};
use strata_isolate::host::HostDriver;
use strata_isolate::{
    Cancel, Capabilities, Driver, Job, Layout, Outcome, Plan, Result as IsoResult, Slot,
};
use strata_snapshot::Engine;

/// The host driver, with two slots of its own under `dir`.
#[derive(Debug)]
struct SlotHost {
    inner: HostDriver,
    caps: Capabilities,
    /// Each prepared slot, and whether it was an empty directory or absent then.
    prepared: Mutex<Vec<(PathBuf, bool)>>,
    removed: Mutex<bool>,
}

impl SlotHost {
    fn new(dir: &Path) -> SlotHost {
        let inner = HostDriver::new(2);
        let mut caps = inner.capabilities().clone();
        caps.layout = Layout::Slots {
            slots: ["s01", "s02"]
                .iter()
                .map(|n| Slot {
                    root: dir.join(n),
                    lock: dir.join(format!("{n}.lock")),
                })
                .collect(),
        };
        SlotHost {
            inner,
            caps,
            prepared: Mutex::new(Vec::new()),
            removed: Mutex::new(false),
        }
    }
}

impl Driver for SlotHost {
    fn name(&self) -> &str {
        "slot-host"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn plan(&self, job: &Job) -> IsoResult<Plan> {
        self.inner.plan(job)
    }
    fn run(&self, plan: &Plan, log: &mut dyn Write, cancel: &Cancel) -> IsoResult<Outcome> {
        self.inner.run(plan, log, cancel)
    }
    fn cleanup(&self) -> IsoResult<Vec<String>> {
        Ok(Vec::new())
    }
    fn check(&self) -> IsoResult<()> {
        Ok(())
    }
    fn prepare_slot(&self, slot: &Slot) -> IsoResult<()> {
        let empty = std::fs::read_dir(&slot.root).map_or(true, |mut d| d.next().is_none());
        self.prepared
            .lock()
            .unwrap()
            .push((slot.root.clone(), empty));
        std::fs::create_dir_all(&slot.root).unwrap();
        Ok(())
    }
    fn remove_slots(&self) -> IsoResult<Vec<String>> {
        *self.removed.lock().unwrap() = true;
        Ok(vec!["users".to_owned()])
    }
}

struct Setup {
    dir: tempfile::TempDir,
    builder: Builder,
    driver: Arc<SlotHost>,
}

/// `Driver` for an `Arc`, so the test keeps a handle on what the builder owns.
#[derive(Debug)]
struct Shared(Arc<SlotHost>);

impl Driver for Shared {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.0.capabilities()
    }
    fn plan(&self, job: &Job) -> IsoResult<Plan> {
        self.0.plan(job)
    }
    fn run(&self, plan: &Plan, log: &mut dyn Write, cancel: &Cancel) -> IsoResult<Outcome> {
        self.0.run(plan, log, cancel)
    }
    fn cleanup(&self) -> IsoResult<Vec<String>> {
        self.0.cleanup()
    }
    fn check(&self) -> IsoResult<()> {
        self.0.check()
    }
    fn prepare_slot(&self, slot: &Slot) -> IsoResult<()> {
        self.0.prepare_slot(slot)
    }
    fn remove_slots(&self) -> IsoResult<Vec<String>> {
        self.0.remove_slots()
    }
}

/// A store whose `empty` base is an empty root, and a builder on the slot driver.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("store")).unwrap();
    let tar = dir.path().join("empty.tar");
    std::fs::write(&tar, [0u8; 1024]).unwrap();
    engine.import(&tar, Some("empty")).unwrap();
    std::fs::create_dir(dir.path().join("slots")).unwrap();
    let driver = Arc::new(SlotHost::new(&dir.path().join("slots")));
    let builder = Builder::new(Arc::new(engine), Box::new(Shared(driver.clone()))).unwrap();
    Setup {
        dir,
        builder,
        driver,
    }
}

impl Setup {
    fn slot(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("slots"))
            .unwrap()
            .join(name)
    }

    /// Holds a slot as another process would: an exclusive lock on its file.
    fn hold(&self, name: &str) -> File {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.path().join(format!("slots/{name}.lock")))
            .unwrap();
        f.lock().unwrap();
        f
    }

    fn build(&self, spec: &str, cancel: &Cancel) -> (Result<(), strata_build::Error>, String) {
        let spec = strata_spec::parse(spec).unwrap();
        let log = Transcript::new();
        let opts = BuildOptions::new(self.dir.path())
            .reporter(log.clone())
            .cancel(cancel.clone());
        let r = self.builder.build(&spec, &opts).map(drop);
        (r, log.text())
    }
}

const WHERE: &str = r#"((from empty) (shell /bin/sh -c) (run (shell "pwd > where.txt")))"#;
const READ: &str = r#"((from empty) (shell /bin/sh -c) (run (shell "pwd > where.txt"))
                      (run (shell "echo was: $(cat where.txt)")))"#;

#[test]
fn a_snapshot_made_in_one_slot_is_relocated_into_another() {
    let s = setup();
    let (r, log) = s.build(WHERE, &Cancel::new());
    r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        s.driver.prepared.lock().unwrap().as_slice(),
        &[(s.dir.path().join("slots/s01"), true)],
        "the first free slot, prepared while empty"
    );
    // Another build holds s01: the next step runs in s02, on the snapshot made in s01.
    let _held = s.hold("s01");
    let (r, log) = s.build(READ, &Cancel::new());
    r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let s02 = s.slot("s02").display().to_string();
    assert!(log.contains(&format!("was: {s02}\n")), "{log}");
    assert!(!log.contains("s01"), "{log}");
    assert_eq!(
        s.driver.prepared.lock().unwrap().last(),
        Some(&(s.dir.path().join("slots/s02"), true))
    );
    // The slot is left empty for the next holder: the commit took the checkout away.
    assert!(!s.slot("s02").exists() || std::fs::read_dir(s.slot("s02")).unwrap().count() == 0);
}

#[test]
fn steps_wait_for_a_free_slot_and_a_cancel_ends_the_wait() {
    let s = setup();
    let held = [s.hold("s01"), s.hold("s02")];
    let cancel = Cancel::new();
    let (r, log) = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| s.build(WHERE, &cancel));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "it did not wait for a slot");
        cancel.cancel();
        waiting.join().unwrap()
    });
    assert!(
        matches!(r, Err(strata_build::Error::Cancelled)),
        "{r:?}\n{log}"
    );
    assert!(s.driver.prepared.lock().unwrap().is_empty());
    // Once one is free the step runs there.
    drop(held);
    let (r, log) = s.build(WHERE, &Cancel::new());
    r.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

#[test]
fn slots_are_removed_only_while_no_build_holds_one() {
    let s = setup();
    let leftover = s.dir.path().join("slots/s02");
    std::fs::create_dir_all(leftover.join("junk")).unwrap();
    let held = s.hold("s02");
    let err = strata_build::remove_slots(s.builder.engine(), s.builder.driver()).unwrap_err();
    assert!(
        matches!(&err, strata_build::Error::SlotBusy { slot } if slot.ends_with("s02")),
        "{err}"
    );
    assert!(!*s.driver.removed.lock().unwrap());
    assert!(leftover.join("junk").exists(), "nothing was touched");
    drop(held);
    let removed = strata_build::remove_slots(s.builder.engine(), s.builder.driver()).unwrap();
    assert_eq!(removed, ["users"]);
    assert!(!leftover.exists(), "what a dead holder left is cleared");
}
