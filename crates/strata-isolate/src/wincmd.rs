//! Windows command lines and environments, as data: how an argv becomes the single string
//! `CreateProcess` takes, how a command sits in a batch file, and how environment variables
//! merge when names are case-insensitive. Pure, so the Windows drivers' plans are tested on
//! every platform.

use std::cmp::Ordering;

/// The command line that hands `argv` to a Windows program.
///
/// Arguments are quoted as the Microsoft C runtime (and `CommandLineToArgvW`) splits them:
/// an argument with a space, a tab, a line break or a `"`, or an empty one, goes in quotes;
/// a `"` inside is written `\"`, and backslashes are doubled where they precede a quote.
///
/// `cmd.exe` splits its own command line differently: after `/C` (or `/K`) it takes the
/// rest verbatim and, with `/S`, drops only the first and last quote. So for `cmd` the
/// arguments after `/C` are joined with spaces and put in one pair of quotes, untouched:
/// `["cmd", "/S", "/C", "echo \"a b\" & exit 3"]` is `cmd /S /C "echo "a b" & exit 3"`,
/// which runs exactly the shell text a spec gave.
///
/// A NUL cannot be passed at all: `Err` says which argument holds one.
pub fn command_line(argv: &[String]) -> Result<String, String> {
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(format!("argument {i} contains a NUL character"));
    }
    let Some(program) = argv.first() else {
        return Err("the command is empty".to_owned());
    };
    let cmd_switch = if is_cmd(program) {
        argv.iter()
            .skip(1)
            .position(|a| a.eq_ignore_ascii_case("/c") || a.eq_ignore_ascii_case("/k"))
            .map(|i| i + 1)
    } else {
        None
    };
    let mut out = String::new();
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if let Some(switch) = cmd_switch
            && i > switch
        {
            out.push('"');
            out.push_str(&argv[switch + 1..].join(" "));
            out.push('"');
            break;
        }
        // The program name is split by CreateProcess's own simpler rule: quotes, no escapes.
        if i == 0 {
            if program.contains('"') {
                return Err(format!("the program name `{program}` contains a quote"));
            }
            if program.is_empty() || program.contains([' ', '\t']) {
                out.push('"');
                out.push_str(program);
                out.push('"');
            } else {
                out.push_str(program);
            }
            continue;
        }
        quote_into(&mut out, arg);
    }
    Ok(out)
}

/// Whether `program` names `cmd.exe` (any directory, any case, with or without `.exe`).
fn is_cmd(program: &str) -> bool {
    let name = program.rsplit(['\\', '/']).next().unwrap_or(program);
    name.eq_ignore_ascii_case("cmd") || name.eq_ignore_ascii_case("cmd.exe")
}

/// Appends `arg` quoted for the C runtime's splitter.
fn quote_into(out: &mut String, arg: &str) {
    if !arg.is_empty() && !arg.contains([' ', '\t', '\n', '\u{b}', '"']) {
        out.push_str(arg);
        return;
    }
    out.push('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                // Each backslash before a quote is doubled, and the quote escaped.
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    // Before the closing quote, backslashes are doubled too.
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
}

/// `line` as a line of a batch file that runs it as typed: `%` doubled so no variable is
/// expanded. A line break would end the command early, so it is refused.
pub fn batch_line(line: &str) -> Result<String, String> {
    if line.contains(['\r', '\n']) {
        return Err("a batch file cannot hold a command with a line break".to_owned());
    }
    Ok(line.replace('%', "%%"))
}

/// A `set "NAME=value"` line of a batch file. Refused: a name with `=`, or a line break or
/// `"` in the name, or a line break in the value.
pub fn batch_set(name: &str, value: &str) -> Result<String, String> {
    if name.is_empty() || name.contains(['=', '"', '\r', '\n', '\0']) {
        return Err(format!("invalid environment variable name `{name}`"));
    }
    if value.contains(['\r', '\n', '\0']) {
        return Err(format!(
            "environment variable `{name}` holds a line break, which a batch file cannot set"
        ));
    }
    Ok(format!("set \"{}={}\"", name, value).replace('%', "%%"))
}

/// Windows compares variable names without regard to case.
fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// `base` with each of `overrides` put in place of the variable of the same name (in any
/// case) or added, in order.
pub fn merge_env(
    base: &[(String, String)],
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(base.len() + overrides.len());
    for (name, value) in base.iter().chain(overrides) {
        match out.iter_mut().find(|(n, _)| same_name(n, name)) {
            Some(slot) => *slot = (name.clone(), value.clone()),
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}

/// The variables of the host environment a job keeps: where Windows is, what the machine
/// is, and the system's `PATH`. The user-specific ones (profile, temp, app data, user
/// name) are the slot's instead.
pub const SYSTEM_VARIABLES: &[&str] = &[
    "ALLUSERSPROFILE",
    "CommonProgramFiles",
    "CommonProgramFiles(x86)",
    "CommonProgramW6432",
    "COMPUTERNAME",
    "ComSpec",
    "DriverData",
    "NUMBER_OF_PROCESSORS",
    "OS",
    "Path",
    "PATHEXT",
    "PROCESSOR_ARCHITECTURE",
    "PROCESSOR_IDENTIFIER",
    "PROCESSOR_LEVEL",
    "PROCESSOR_REVISION",
    "ProgramData",
    "ProgramFiles",
    "ProgramFiles(x86)",
    "ProgramW6432",
    "PSModulePath",
    "PUBLIC",
    "SystemDrive",
    "SystemRoot",
    "windir",
];

/// The [`SYSTEM_VARIABLES`] of `host`, in its order and spelling.
pub fn system_env(host: &[(String, String)]) -> Vec<(String, String)> {
    host.iter()
        .filter(|(name, _)| SYSTEM_VARIABLES.iter().any(|v| same_name(v, name)))
        .cloned()
        .collect()
}

/// The environment block `CreateProcess` takes with `CREATE_UNICODE_ENVIRONMENT`:
/// `NAME=value` strings in UTF-16, each ended by a NUL, sorted by name without regard to
/// case (as Windows keeps them), and a final NUL.
pub fn env_block(env: &[(String, String)]) -> Vec<u16> {
    let mut sorted: Vec<&(String, String)> = env.iter().collect();
    sorted.sort_by(|(a, _), (b, _)| compare_names(a, b));
    let mut out = Vec::new();
    for (name, value) in sorted {
        out.extend(name.encode_utf16());
        out.push(u16::from(b'='));
        out.extend(value.encode_utf16());
        out.push(0);
    }
    if out.is_empty() {
        out.push(0);
    }
    out.push(0);
    out
}

fn compare_names(a: &str, b: &str) -> Ordering {
    let upper = |s: &str| s.chars().flat_map(char::to_uppercase).collect::<String>();
    upper(a).cmp(&upper(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn arguments_are_quoted_for_the_c_runtime() {
        let line = |a: &[&str]| command_line(&args(a)).unwrap();
        assert_eq!(line(&["prog", "a", "b c"]), r#"prog a "b c""#);
        assert_eq!(line(&["prog", ""]), r#"prog """#);
        assert_eq!(line(&["prog", r#"say "hi""#]), r#"prog "say \"hi\"""#);
        assert_eq!(line(&["prog", r"C:\dir\"]), r"prog C:\dir\");
        assert_eq!(line(&["prog", r"C:\my dir\"]), r#"prog "C:\my dir\\""#);
        assert_eq!(line(&["prog", r#"a\"b"#]), r#"prog "a\\\"b""#);
        assert_eq!(
            line(&[r"C:\Program Files\x.exe", "1"]),
            r#""C:\Program Files\x.exe" 1"#
        );
    }

    #[test]
    fn cmd_gets_its_command_verbatim_after_slash_c() {
        let line = |a: &[&str]| command_line(&args(a)).unwrap();
        assert_eq!(
            line(&["cmd", "/S", "/C", r#"echo "a b" & exit 3"#]),
            r#"cmd /S /C "echo "a b" & exit 3""#
        );
        assert_eq!(
            line(&[r"C:\Windows\System32\CMD.EXE", "/s", "/c", "make", "all"]),
            r#"C:\Windows\System32\CMD.EXE /s /c "make all""#
        );
        // Not cmd: ordinary quoting.
        assert_eq!(
            line(&["powershell", "-Command", "echo 'a b'"]),
            r#"powershell -Command "echo 'a b'""#
        );
        assert!(command_line(&args(&["cmd", "/C", "a\0b"])).is_err());
        assert!(command_line(&[]).is_err());
    }

    #[test]
    fn batch_lines_expand_nothing() {
        assert_eq!(batch_line("echo 100% & ver").unwrap(), "echo 100%% & ver");
        assert!(batch_line("a\nb").is_err());
        assert_eq!(
            batch_set("OPAMROOT", r"C:\strata\s01\opam %x%").unwrap(),
            r#"set "OPAMROOT=C:\strata\s01\opam %%x%%""#
        );
        assert!(batch_set("A=B", "c").is_err());
        assert!(batch_set("A", "c\r\n").is_err());
    }

    #[test]
    fn environments_merge_without_regard_to_case() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let merged = merge_env(
            &env(&[("Path", r"C:\Windows"), ("TEMP", "x")]),
            &env(&[("PATH", r"C:\bin"), ("temp", "y"), ("NEW", "1")]),
        );
        assert_eq!(
            merged,
            env(&[("PATH", r"C:\bin"), ("temp", "y"), ("NEW", "1")])
        );
        let host = env(&[
            ("SystemRoot", r"C:\Windows"),
            ("USERPROFILE", r"C:\Users\admin"),
            ("PATH", r"C:\Windows\system32"),
        ]);
        assert_eq!(
            system_env(&host),
            env(&[
                ("SystemRoot", r"C:\Windows"),
                ("PATH", r"C:\Windows\system32")
            ])
        );
    }

    #[test]
    fn the_environment_block_is_sorted_and_double_terminated() {
        let block = env_block(&[
            ("b".to_owned(), "2".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ]);
        let text = String::from_utf16(&block).unwrap();
        assert_eq!(text, "A=1\0b=2\0\0");
        assert_eq!(String::from_utf16(&env_block(&[])).unwrap(), "\0\0");
    }
}
