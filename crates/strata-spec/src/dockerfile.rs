//! Converts a spec to a Dockerfile, following OBuilder's `Docker.dockerfile_of_spec`.
//!
//! Each stage becomes `FROM IMAGE as NAME` followed by a blank line; `exclude` and `network`
//! have no Dockerfile form and are dropped, as are caches and secrets unless BuildKit syntax
//! is asked for. OBuilder fails (or asserts) where a mount cannot be expressed; this returns
//! a [`DockerfileError`] instead.

use crate::model::{Copy, CopyFrom, Mount, Op, Run, Spec, User};

/// Which Dockerfile dialect to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DockerOs {
    /// `\` escapes; the default user is `0:0`.
    Unix,
    /// `` ` `` escapes (declared by a leading `#escape=`` ` ``); the default user is
    /// `ContainerAdministrator`.
    Windows,
}

impl DockerOs {
    fn escape(self) -> char {
        match self {
            DockerOs::Unix => '\\',
            DockerOs::Windows => '`',
        }
    }

    fn root(self) -> User {
        match self {
            DockerOs::Unix => User::Unix { uid: 0, gid: 0 },
            DockerOs::Windows => User::Name("ContainerAdministrator".to_owned()),
        }
    }
}

/// A spec that has no Dockerfile equivalent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DockerfileError {
    #[error("buildkit {kind} mount `{id}` is not supported on windows")]
    WindowsMount { kind: &'static str, id: String },
    #[error("buildkit {kind} mount `{id}` needs a numeric user id, but the user is `{user}`")]
    NamedUserMount {
        kind: &'static str,
        id: String,
        user: String,
    },
}

/// Writes `spec` as a Dockerfile. With `buildkit`, caches and secrets become
/// `RUN --mount=...` options; without it they are left out.
pub fn to_dockerfile(spec: &Spec, buildkit: bool, os: DockerOs) -> Result<String, DockerfileError> {
    let mut out = String::new();
    if os == DockerOs::Windows {
        out.push_str("#escape=`\n");
    }
    stage(&mut out, spec, None, buildkit, os)?;
    Ok(out)
}

fn stage(
    out: &mut String,
    spec: &Spec,
    name: Option<&str>,
    buildkit: bool,
    os: DockerOs,
) -> Result<(), DockerfileError> {
    for child in &spec.stages {
        stage(out, &child.spec, Some(&child.name), buildkit, os)?;
        out.push('\n');
    }
    out.push_str(&format!("FROM {}", spec.from));
    if let Some(name) = name {
        out.push_str(&format!(" as {name}"));
    }
    out.push('\n');
    // Every stage starts as the default user, whatever the stage around it did.
    let mut user = os.root();
    for op in &spec.ops {
        let line = match op {
            // A comment must not spill onto lines Docker would read as instructions.
            Op::Comment(text) => format!("# {}", text.replace('\n', "\n# ")),
            Op::Workdir(path) => format!("WORKDIR {path}"),
            Op::Shell(args) => {
                let args: Vec<String> = args.iter().map(|a| json_string(a)).collect();
                format!("SHELL [ {} ]", args.join(", "))
            }
            Op::Run(run) => self::run(run, &user, buildkit, os)?,
            Op::Copy(copy) => self::copy(copy, &user, os),
            Op::User(new) => {
                user = new.clone();
                match new {
                    User::Unix { uid, gid } => format!("USER {uid}:{gid}"),
                    User::Name(name) => format!("USER {name}"),
                }
            }
            Op::Env { name, value } => format!("ENV {name}=\"{}\"", escape(value, os.escape())),
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(())
}

fn run(run: &Run, user: &User, buildkit: bool, os: DockerOs) -> Result<String, DockerfileError> {
    let mut line = String::from("RUN ");
    if buildkit {
        let mounts = run
            .secrets
            .iter()
            .map(|m| ("secret", m))
            .chain(run.cache.iter().map(|m| ("cache", m)));
        for (kind, mount) in mounts {
            line.push_str(&mount_option(kind, mount, user, os)?);
            line.push(' ');
        }
    }
    // Each line of the command is trimmed and continued with the escape character.
    let separator = format!(" {}\n    ", os.escape());
    let mut lines: Vec<&str> = run.shell.split('\n').map(ocaml_trim).collect();
    // OBuilder keeps a trailing empty line, whose dangling continuation would swallow the
    // next instruction; drop it.
    while lines.len() > 1 && lines.last() == Some(&"") {
        lines.pop();
    }
    line.push_str(&lines.join(&separator));
    Ok(line)
}

fn mount_option(
    kind: &'static str,
    mount: &Mount,
    user: &User,
    os: DockerOs,
) -> Result<String, DockerfileError> {
    let uid = match (os, user) {
        (DockerOs::Windows, _) => {
            return Err(DockerfileError::WindowsMount {
                kind,
                id: mount.id.clone(),
            });
        }
        (DockerOs::Unix, User::Unix { uid, .. }) => uid,
        (DockerOs::Unix, User::Name(name)) => {
            return Err(DockerfileError::NamedUserMount {
                kind,
                id: mount.id.clone(),
                user: name.clone(),
            });
        }
    };
    let mut option = format!(
        "--mount=type={kind},id={},target={},uid={uid}",
        mount.id, mount.target
    );
    for (key, value) in &mount.buildkit_options {
        option.push_str(&format!(",{key}={value}"));
    }
    Ok(option)
}

fn copy(copy: &Copy, user: &User, os: DockerOs) -> String {
    let mut line = String::from("COPY ");
    // Files copied in belong to the current user, as in OBuilder; a named user can only be
    // given to `--chown` on Unix. Either OS's root counts as root on both, as there.
    if *user != DockerOs::Unix.root() && *user != DockerOs::Windows.root() {
        match user {
            User::Unix { uid, gid } => line.push_str(&format!("--chown={uid}:{gid} ")),
            User::Name(name) if os == DockerOs::Unix => line.push_str(&format!("--chown={name} ")),
            User::Name(_) => {}
        }
    }
    if let CopyFrom::Build(stage) = &copy.from {
        line.push_str(&format!("--from={stage} "));
    }
    for src in &copy.src {
        line.push_str(src);
        line.push(' ');
    }
    line.push_str(&copy.dst);
    line
}

/// Prefixes `"` and the escape character with the escape character, for `ENV K="v"`.
fn escape(value: &str, escape: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '"' || c == escape {
            out.push(escape);
        }
        out.push(c);
    }
    out
}

/// A JSON string for `SHELL [...]`: OBuilder writes the text raw, which only differs (and
/// only breaks) when it holds `"` or `\`.
fn json_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// OCaml's `String.trim`: only ASCII blanks, unlike `str::trim`.
fn ocaml_trim(line: &str) -> &str {
    line.trim_matches([' ', '\t', '\n', '\r', '\x0c'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dockerfile(spec: &str, buildkit: bool, os: DockerOs) -> Result<String, DockerfileError> {
        to_dockerfile(&crate::parse(spec).unwrap(), buildkit, os)
    }

    /// The expected lines, each ending in a newline.
    fn lines(lines: &[&str]) -> String {
        lines.iter().map(|line| format!("{line}\n")).collect()
    }

    // The specs and outputs below are those of OBuilder's `test/test.ml`
    // (`test_docker_unix`, `test_docker_windows`).

    const UNIX_SPEC: &str = r#"
        ((from base)
         (comment "A test comment")
         (workdir /src)
         (run (shell "command1"))
         (shell /bin/sh -c)
         (run
          (cache (a (target /data))
                 (b (target /srv)))
          (shell "command2 &&
                  command3"))
         (copy (src a b) (dst c))
         (copy (src a b) (dst c) (exclude .git _build))
         (env DEBUG 1)
         (env ESCAPE "\"quote\\sla\\sh\"")
         (user (uid 1) (gid 2))
         (copy (src a b) (dst c)))"#;

    #[test]
    fn unix() {
        let expected = lines(&[
            "FROM base",
            "# A test comment",
            "WORKDIR /src",
            "RUN command1",
            r#"SHELL [ "/bin/sh", "-c" ]"#,
            r"RUN command2 && \",
            "    command3",
            "COPY a b c",
            "COPY a b c",
            r#"ENV DEBUG="1""#,
            r#"ENV ESCAPE="\"quote\\sla\\sh\"""#,
            "USER 1:2",
            "COPY --chown=1:2 a b c",
        ]);
        assert_eq!(
            dockerfile(UNIX_SPEC, false, DockerOs::Unix).unwrap(),
            expected
        );
    }

    #[test]
    fn unix_buildkit() {
        let spec = UNIX_SPEC.replace("command2 &&\n                  command3", "command2");
        let got = dockerfile(&spec, true, DockerOs::Unix).unwrap();
        let run = "RUN --mount=type=cache,id=a,target=/data,uid=0 --mount=type=cache,id=b,target=/srv,uid=0 command2";
        assert_eq!(got.lines().nth(5), Some(run));
    }

    #[test]
    fn multi_stage() {
        let spec = r#"
            ((build tools
                    ((from base)
                     (run (shell "make tools"))))
             (from base)
             (copy (from (build tools)) (src binary) (dst /usr/local/bin/)))"#;
        let expected = [
            "FROM base as tools",
            "RUN make tools",
            "",
            "FROM base",
            "COPY --from=tools binary /usr/local/bin/",
        ];
        assert_eq!(
            dockerfile(spec, false, DockerOs::Unix).unwrap(),
            lines(&expected)
        );
        let windows = [&["#escape=`"], &expected[..]].concat();
        assert_eq!(
            dockerfile(spec, false, DockerOs::Windows).unwrap(),
            lines(&windows)
        );
    }

    #[test]
    fn secrets() {
        let spec = r#"
            ((build tools ((from base) (run (shell "make tools"))))
             (from base)
             (run
              (secrets (a (target /secrets/a))
                       (b (target /secrets/b)))
              (shell "command1")))"#;
        let expected = lines(&[
            "FROM base as tools",
            "RUN make tools",
            "",
            "FROM base",
            "RUN --mount=type=secret,id=a,target=/secrets/a,uid=0 --mount=type=secret,id=b,target=/secrets/b,uid=0 command1",
        ]);
        assert_eq!(dockerfile(spec, true, DockerOs::Unix).unwrap(), expected);
        // Without BuildKit, mounts are dropped.
        assert!(
            dockerfile(spec, false, DockerOs::Unix)
                .unwrap()
                .ends_with("FROM base\nRUN command1\n")
        );
    }

    #[test]
    fn windows() {
        let spec = UNIX_SPEC
            .replace("(workdir /src)", "(workdir C:/src)")
            .replace(
                "(shell /bin/sh -c)",
                "(shell C:/Windows/System32/cmd.exe /c)",
            )
            .replace("(env ESCAPE \"\\\"quote\\\\sla\\\\sh\\\"\")", "")
            .replace("(user (uid 1) (gid 2))", "(user (name Zaphod))");
        let expected = lines(&[
            "#escape=`",
            "FROM base",
            "# A test comment",
            "WORKDIR C:/src",
            "RUN command1",
            r#"SHELL [ "C:/Windows/System32/cmd.exe", "/c" ]"#,
            "RUN command2 && `",
            "    command3",
            "COPY a b c",
            "COPY a b c",
            r#"ENV DEBUG="1""#,
            "USER Zaphod",
            "COPY a b c",
        ]);
        assert_eq!(
            dockerfile(&spec, false, DockerOs::Windows).unwrap(),
            expected
        );
    }

    #[test]
    fn windows_escapes_backticks_not_backslashes() {
        let spec = r#"((from b) (env P "C:\\a `b` \"c\""))"#;
        let got = dockerfile(spec, false, DockerOs::Windows).unwrap();
        assert_eq!(
            got,
            lines(&["#escape=`", "FROM b", r#"ENV P="C:\a ``b`` `"c`"""#])
        );
    }

    #[test]
    fn mounts_need_unix_and_a_numeric_user() {
        let spec = "((from b) (run (cache (c (target /c))) (shell x)))";
        assert_eq!(
            dockerfile(spec, true, DockerOs::Windows)
                .unwrap_err()
                .to_string(),
            "buildkit cache mount `c` is not supported on windows"
        );
        assert_eq!(
            dockerfile(spec, false, DockerOs::Windows).unwrap(),
            lines(&["#escape=`", "FROM b", "RUN x"])
        );
        let spec = "((from b) (user (name opam)) (run (secrets (s (target /s))) (shell x)))";
        assert_eq!(
            dockerfile(spec, true, DockerOs::Unix).unwrap_err(),
            DockerfileError::NamedUserMount {
                kind: "secret",
                id: "s".into(),
                user: "opam".into()
            }
        );
    }

    #[test]
    fn users_per_stage_and_chown() {
        let spec = r#"
            ((build a ((from b) (user (uid 5) (gid 6)) (copy (src x) (dst y))
                       (run (cache (c (target /c) (buildkit_options ((sharing locked) (mode 0700))))) (shell z))))
             (from b)
             (copy (from (build a)) (src x) (dst y))
             (user (name opam))
             (copy (src x) (dst y))
             (user (uid 0) (gid 0))
             (copy (src x) (dst y))
             (user (name ContainerAdministrator))
             (copy (src x) (dst y)))"#;
        let expected = lines(&[
            "FROM b as a",
            "USER 5:6",
            "COPY --chown=5:6 x y",
            "RUN --mount=type=cache,id=c,target=/c,uid=5,sharing=locked,mode=0700 z",
            "",
            "FROM b",
            "COPY --from=a x y",
            "USER opam",
            "COPY --chown=opam x y",
            "USER 0:0",
            "COPY x y",
            "USER ContainerAdministrator",
            "COPY x y",
        ]);
        assert_eq!(dockerfile(spec, true, DockerOs::Unix).unwrap(), expected);
    }

    #[test]
    fn comments_and_shell_stay_well_formed() {
        let spec = r#"((from b) (comment "two\nlines") (shell "C:\\cmd.exe" "say \"x\"") (run (shell "  a\n\t b  \n")))"#;
        let expected = lines(&[
            "FROM b",
            "# two",
            "# lines",
            r#"SHELL [ "C:\\cmd.exe", "say \"x\"" ]"#,
            r"RUN a \",
            "    b",
        ]);
        assert_eq!(dockerfile(spec, false, DockerOs::Unix).unwrap(), expected);
    }
}
