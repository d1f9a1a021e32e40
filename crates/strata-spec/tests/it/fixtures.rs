//! Reads OBuilder's own example specs, copied unchanged into `fixtures/obuilder-specs`.

use std::path::PathBuf;

use strata_spec::dockerfile::{DockerOs, DockerfileError, to_dockerfile};
use strata_spec::{CopyFrom, Op, Spec, User};

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/obuilder-specs"
    ))
}

fn read(name: &str) -> Spec {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    strata_spec::parse(&text).unwrap_or_else(|e| panic!("{}", e.render(&text, name)))
}

/// Every `*.spec` in the fixtures directory, parsed.
fn all() -> Vec<(String, Spec)> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".spec"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| (name.clone(), read(&name)))
        .collect()
}

#[test]
fn every_reference_spec_parses() {
    let names: Vec<String> = all().into_iter().map(|(name, _)| name).collect();
    let expected = [
        "example.spec",
        "example.windows.hcs.spec",
        "example.windows.spec",
        "opam.macos.spec",
        "simple.macos.spec",
    ];
    assert_eq!(names, expected);
}

#[test]
fn example_spec_reads_as_obuilder_does() {
    let spec = read("example.spec");
    assert_eq!(spec.from, "debian:12");
    assert_eq!(spec.stages.len(), 1);
    let dev = &spec.stages[0];
    assert_eq!(
        (dev.name.as_str(), dev.spec.from.as_str()),
        ("dev", "ocaml/opam:debian")
    );
    assert_eq!(dev.spec.ops.len(), 12);
    assert_eq!(
        dev.spec.ops[1],
        Op::User(User::Unix {
            uid: 1000,
            gid: 1000
        })
    );
    // The `\`-newline continuations drop the line breaks and the indentation after them.
    let Op::Run(run) = &dev.spec.ops[5] else {
        panic!("not a run")
    };
    assert_eq!(run.network, ["host"]);
    assert_eq!(
        run.shell,
        "cd ~/opam-repository && (git cat-file -e $OPAM_HASH || git fetch origin master) \
         && git reset -q --hard $OPAM_HASH && git --no-pager log --no-decorate -n1 --oneline \
         && opam update -u"
    );
    let Op::Copy(copy) = &dev.spec.ops[10] else {
        panic!("not a copy")
    };
    assert_eq!(
        (copy.src.as_slice(), copy.dst.as_str()),
        (&[".".to_owned()][..], "/src/")
    );
    assert_eq!(copy.exclude, [".git", "_build", "_opam"]);
    let Op::Copy(copy) = &spec.ops[1] else {
        panic!("not a copy")
    };
    assert_eq!(copy.from, CopyFrom::Build("dev".into()));
}

#[test]
fn windows_specs_keep_backslashes_and_drive_paths() {
    let spec = read("example.windows.spec");
    assert_eq!(spec.ops[0], run("mkdir C:\\obuilder"));
    let dev = &spec.stages[0].spec;
    assert_eq!(
        dev.ops[3],
        Op::Shell(vec![
            "/cygwin64/bin/bash.exe".into(),
            "--login".into(),
            "-c".into()
        ])
    );
    let Op::Run(nat) = &dev.ops[4] else {
        panic!("not a run")
    };
    assert_eq!(nat.network, ["nat"]);
    let hcs = read("example.windows.hcs.spec");
    assert_eq!(hcs.ops[0], Op::Workdir("C:/src".into()));
    assert_eq!(hcs.ops[2], run("echo (lang dune 3.0)> dune-project"));
}

fn run(shell: &str) -> Op {
    Op::Run(strata_spec::Run {
        cache: vec![],
        network: vec![],
        secrets: vec![],
        shell: shell.into(),
    })
}

#[test]
fn printed_specs_read_back_and_print_the_same() {
    for (name, spec) in all() {
        let printed = spec.to_string();
        let again = strata_spec::parse(&printed)
            .unwrap_or_else(|e| panic!("{}", e.render(&printed, &name)));
        assert_eq!(again, spec, "{name}");
        assert_eq!(again.to_string(), printed, "{name}");
        let from_str: Spec = printed.parse().unwrap();
        assert_eq!(from_str, spec);
    }
}

#[test]
fn json_round_trip() {
    for (name, spec) in all() {
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<Spec>(&json).unwrap(), spec, "{name}");
    }
    let spec = read("opam.macos.spec");
    assert_eq!(
        serde_json::to_value(&spec).unwrap(),
        serde_json::json!({
            "from": "patricoferris/macos-opam:macos-homebrew-ocaml-4.12",
            "ops": [{"run": {"shell": "./local/bin/opam --version"}}],
        })
    );
}

#[test]
fn example_dockerfile() {
    let expected = [
        "FROM ocaml/opam:debian as dev",
        "WORKDIR /src",
        "USER 1000:1000",
        "RUN sudo chown opam /src",
        "ENV OPAM_HASH=\"fb593fd72351e22b3778cfd880158a3c4542aa3f\"",
        "RUN sudo apt-get --allow-releaseinfo-change update",
        "RUN cd ~/opam-repository && (git cat-file -e $OPAM_HASH || git fetch origin master) && git reset -q --hard $OPAM_HASH && git --no-pager log --no-decorate -n1 --oneline && opam update -u",
        "COPY --chown=1000:1000 obuilder-spec.opam obuilder.opam ./",
        "RUN opam pin add -yn .",
        "RUN --mount=type=cache,id=opam-archives,target=/home/opam/.opam/download-cache,uid=1000 opam depext -yu obuilder",
        "RUN --mount=type=cache,id=opam-archives,target=/home/opam/.opam/download-cache,uid=1000 opam install --deps-only -t obuilder",
        "COPY --chown=1000:1000 . /src/",
        "RUN opam exec -- dune build @install @runtest",
        "",
        "FROM debian:12",
        "RUN apt-get update && apt-get install -y libsqlite3-0 --no-install-recommends",
        "COPY --from=dev /src/_build/default/main.exe /usr/local/bin/obuilder",
        "RUN obuilder --help",
    ];
    let got = to_dockerfile(&read("example.spec"), true, DockerOs::Unix).unwrap();
    assert_eq!(got, expected.map(|line| format!("{line}\n")).concat());
}

#[test]
fn windows_dockerfile_needs_no_buildkit() {
    let spec = read("example.windows.spec");
    let got = to_dockerfile(&spec, false, DockerOs::Windows).unwrap();
    assert!(got.starts_with("#escape=`\nFROM ocaml/opam@sha256:"));
    assert!(got.contains("\nRUN ocaml-env exec --64 -- opam pin add -yn .\n"));
    assert!(got.ends_with("\nFROM mcr.microsoft.com/windows/server:ltsc2022\nRUN mkdir C:\\obuilder\nCOPY --from=dev /cygwin64/usr/x86_64-w64-mingw32/sys-root/mingw/bin/libsqlite3-0.dll /obuilder/libsqlite3-0.dll\nCOPY --from=dev /src/_build/default/main.exe /obuilder/obuilder.exe\nRUN /obuilder/obuilder.exe --help\n"));
    let err = to_dockerfile(&spec, true, DockerOs::Windows).unwrap_err();
    assert_eq!(
        err,
        DockerfileError::WindowsMount {
            kind: "cache",
            id: "opam-archives".into()
        }
    );
}

#[test]
fn errors_render_against_the_file() {
    let text = std::fs::read_to_string(dir().join("example.spec"))
        .unwrap()
        .replace("(dst /src/)", "(dest /src/)");
    let err = strata_spec::parse(&text).unwrap_err();
    let expected = [
        "example.spec:41:5: unknown `copy` field `dest`; did you mean `dst`?",
        "   |",
        "41 | \t  (dest /src/)",
        "   | \t   ^^^^",
    ];
    assert_eq!(err.render(&text, "example.spec"), expected.join("\n"));
}
