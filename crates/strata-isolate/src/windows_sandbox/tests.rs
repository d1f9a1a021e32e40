//! The sandbox driver's plans, checked on every platform against expected values.

use super::*;
use crate::{BindMount, SlotUsers};

fn options(launcher: Launcher) -> SandboxOptions {
    let mut o = SandboxOptions::new(r"C:\Users\ci\AppData\Local\strata\isolate-v1\windows-sandbox");
    o.launcher = launcher;
    o
}

fn classic() -> Launcher {
    Launcher::Classic {
        exe: r"C:\Windows\System32\WindowsSandbox.exe".to_owned(),
    }
}

fn job() -> Job {
    Job {
        name: "strata-42-7".to_owned(),
        root: PathBuf::from(r"C:\strata\w01"),
        argv: vec![
            "cmd".to_owned(),
            "/S".to_owned(),
            "/C".to_owned(),
            "make & echo 100%".to_owned(),
        ],
        cwd: "/src".to_owned(),
        env: vec![("OPAMYES".to_owned(), "1".to_owned())],
        user: User::Name(crate::windows_user::SLOT_USER.to_owned()),
        network: NetworkMode::None,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "builder".to_owned(),
    }
}

#[test]
fn one_slot_so_the_builder_queues() {
    let d = WindowsSandboxDriver::new(options(classic()));
    let caps = d.capabilities();
    assert_eq!(caps.slots, 1);
    assert_eq!(
        caps.layout,
        Layout::Slots {
            slots: vec![Slot {
                root: PathBuf::from(r"C:\strata\w01"),
                lock: PathBuf::from(r"C:\strata\w01.lock"),
            }]
        }
    );
    assert_eq!(caps.networks, [NetworkMode::None, NetworkMode::Host]);
}

#[test]
fn the_wsb_maps_the_slot_and_the_control_folder_with_networking_off() {
    let plan = WindowsSandboxDriver::new(options(classic()))
        .plan(&job())
        .unwrap();
    let control = r"C:\Users\ci\AppData\Local\strata\isolate-v1\windows-sandbox\jobs\strata-42-7";
    assert_eq!(
        plan.detail,
        serde_json::json!({
            "slot": r"C:\strata\w01",
            "control": control,
            "launcher": {"tool": "classic", "exe": r"C:\Windows\System32\WindowsSandbox.exe"},
            "networking": false,
        })
    );
    assert_eq!(plan.files[0].path, PathBuf::from("job.wsb"));
    let wsb = String::from_utf8(plan.files[0].contents.clone()).unwrap();
    assert_eq!(
        wsb,
        format!(
            "<Configuration>
  <Networking>Disable</Networking>
  <VGpu>Disable</VGpu>
  <AudioInput>Disable</AudioInput>
  <VideoInput>Disable</VideoInput>
  <PrinterRedirection>Disable</PrinterRedirection>
  <ClipboardRedirection>Disable</ClipboardRedirection>
  <MappedFolders>
    <MappedFolder>
      <HostFolder>C:\\strata\\w01</HostFolder>
      <SandboxFolder>C:\\strata\\w01</SandboxFolder>
      <ReadOnly>false</ReadOnly>
    </MappedFolder>
    <MappedFolder>
      <HostFolder>{control}</HostFolder>
      <SandboxFolder>C:\\strata-control</SandboxFolder>
      <ReadOnly>false</ReadOnly>
    </MappedFolder>
  </MappedFolders>
  <LogonCommand>
    <Command>cmd.exe /c C:\\strata-control\\run.cmd</Command>
  </LogonCommand>
</Configuration>
"
        )
    );
}

#[test]
fn the_wrapper_sets_the_profile_runs_the_step_and_records_its_status() {
    let plan = WindowsSandboxDriver::new(options(classic()))
        .plan(&job())
        .unwrap();
    assert_eq!(plan.files[1].path, PathBuf::from("run.cmd"));
    let script = String::from_utf8(plan.files[1].contents.clone()).unwrap();
    let expected = [
        "@echo off",
        "rem Written by strata: runs one step in Windows Sandbox, then records its status.",
        r#"> "C:\strata-control\started" echo started"#,
        r#"set "USERPROFILE=C:\strata\w01""#,
        r#"set "HOME=C:\strata\w01""#,
        r#"set "HOMEDRIVE=C:""#,
        r#"set "HOMEPATH=\strata\w01""#,
        r#"set "APPDATA=C:\strata\w01\AppData\Roaming""#,
        r#"set "LOCALAPPDATA=C:\strata\w01\AppData\Local""#,
        r#"set "TEMP=C:\strata\w01\AppData\Local\Temp""#,
        r#"set "TMP=C:\strata\w01\AppData\Local\Temp""#,
        r#"set "OPAMROOT=C:\strata\w01\AppData\Local\opam""#,
        r#"set "OPAMYES=1""#,
        r#"if not exist "C:\strata\w01\AppData\Roaming" mkdir "C:\strata\w01\AppData\Roaming""#,
        r#"if not exist "C:\strata\w01\AppData\Local\Temp" mkdir "C:\strata\w01\AppData\Local\Temp""#,
        r#"if not exist "C:\strata\w01\src" mkdir "C:\strata\w01\src""#,
        r#"cd /d "C:\strata\w01\src""#,
        r#"cmd /S /C "make & echo 100%%" > "C:\strata-control\output.log" 2>&1"#,
        r#"> "C:\strata-control\status.tmp" echo %ERRORLEVEL%"#,
        r#"move /y "C:\strata-control\status.tmp" "C:\strata-control\status" > nul"#,
        "shutdown /s /t 0",
        "",
    ]
    .join("\r\n");
    assert_eq!(script, expected);
}

#[test]
fn wsb_runs_the_wrapper_itself_and_the_host_network_is_asked_for() {
    let d = WindowsSandboxDriver::new(options(Launcher::Wsb {
        exe: r"C:\Program Files\WindowsApps\wsb.exe".to_owned(),
    }));
    let mut job = job();
    job.network = NetworkMode::Host;
    let plan = d.plan(&job).unwrap();
    let wsb = String::from_utf8(plan.files[0].contents.clone()).unwrap();
    assert!(wsb.contains("<Networking>Default</Networking>"), "{wsb}");
    assert!(!wsb.contains("LogonCommand"), "{wsb}");
    let script = String::from_utf8(plan.files[1].contents.clone()).unwrap();
    assert!(!script.contains("shutdown"), "{script}");
    assert_eq!(plan.detail["networking"], true);
}

#[test]
fn it_refuses_what_it_cannot_do() {
    let d = WindowsSandboxDriver::new(options(classic()));
    let mut cache = job();
    cache.mounts.push(BindMount {
        source: "/c".into(),
        target: "/c".to_owned(),
        readonly: false,
    });
    let mut elsewhere = job();
    elsewhere.root = PathBuf::from(r"C:\strata\s01");
    let mut multiline = job();
    multiline.argv[3] = "echo a\r\necho b".to_owned();
    let mut bad_name = job();
    bad_name.name = r"..\x".to_owned();
    for (what, job, needle) in [
        ("cache", cache, "caches"),
        ("elsewhere", elsewhere, r"C:\strata\s01"),
        ("multiline", multiline, "line break"),
        ("bad name", bad_name, "job name"),
    ] {
        let err = d.plan(&job).unwrap_err().to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
    // The slot's paths are built like the user driver's, only named `w`.
    assert_eq!(sandbox_slot(r"D:\ci").root, r"D:\ci\w01");
    assert_eq!(
        crate::windows_user::slot_env(&sandbox_slot(r"D:\ci"), SlotUsers::Current)[0].1,
        r"D:\ci\w01"
    );
}

#[test]
fn xml_special_characters_are_escaped() {
    let xml = wsb_xml(r"C:\a&b", r"C:\<c>", false, false);
    assert!(
        xml.contains(r"<HostFolder>C:\a&amp;b</HostFolder>"),
        "{xml}"
    );
    assert!(
        xml.contains(r"<HostFolder>C:\&lt;c&gt;</HostFolder>"),
        "{xml}"
    );
}

#[test]
fn the_sandbox_id_is_the_first_guid() {
    assert_eq!(
        sandbox_id(r#"{"Id":"6f1c2a3b-1234-4cde-8f00-0123456789ab","Status":"Running"}"#),
        Some("6f1c2a3b-1234-4cde-8f00-0123456789ab".to_owned())
    );
    assert_eq!(sandbox_id("no id here"), None);
}
