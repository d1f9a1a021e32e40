//! Turns the S-expression tree into a [`Spec`], checking it as OBuilder's `t_of_sexp` does.
//!
//! OBuilder derives its grammar from ppx_sexp_conv records, so record fields come in any
//! order, at most once each, and `cache`/`network`/`secrets`/`src`/`exclude` list their
//! values inline. Errors point at the exact node at fault.

use std::collections::HashMap;

use crate::ParseError;
use crate::model::{Copy, CopyFrom, Mount, Op, Run, Spec, Stage, User};
use crate::sexp::{self, Sexp, Span};

const OPS: &[&str] = &["comment", "workdir", "shell", "run", "copy", "user", "env"];

/// Bytes in a stage name or a cache or secret id at most: a file name's limit, since they
/// name directories; it also bounds the work of suggesting one name for another.
pub const MAX_NAME_LEN: usize = 255;

pub(crate) fn parse(source: &str) -> Result<Spec, ParseError> {
    let sexp = sexp::parse_one(source)?;
    Cx { source }.spec(&sexp, &mut Scope::default())
}

/// The stage names a `copy (from (build NAME))` may use at a point of the spec: a stack,
/// since a nested spec sees the stages before its own stage and then its own.
#[derive(Default)]
struct Scope {
    names: Vec<String>,
    /// How many times each name is in `names`.
    counts: HashMap<String, usize>,
}

impl Scope {
    fn push(&mut self, name: String) {
        *self.counts.entry(name.clone()).or_default() += 1;
        self.names.push(name);
    }

    /// Forgets the names pushed since `names.len()` was `len`.
    fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len..) {
            if let Some(count) = self.counts.get_mut(&name) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&name);
                }
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.counts.contains_key(name)
    }
}

/// A record field: `(name value...)`.
struct Field<'a> {
    name: &'a str,
    sexp: &'a Sexp,
    values: &'a [Sexp],
}

struct Cx<'s> {
    source: &'s str,
}

impl Cx<'_> {
    fn err(&self, span: Span, message: impl Into<String>) -> ParseError {
        ParseError::at(self.source, span, message)
    }

    /// `scope` holds the stage names a `copy (from (build NAME))` may use here; it is
    /// given back as it came.
    fn spec(&self, sexp: &Sexp, scope: &mut Scope) -> Result<Spec, ParseError> {
        let Some(items) = sexp.as_list() else {
            return Err(self.err(sexp.span, "a spec must be a list: ((from IMAGE) OP...)"));
        };
        let outer = scope.names.len();
        let mut stages = Vec::new();
        let mut items = items.iter();
        let from = loop {
            let Some(item) = items.next() else {
                let close = Span::new(sexp.span.end.saturating_sub(1), sexp.span.end);
                return Err(self.err(close, "missing `(from IMAGE)` in spec"));
            };
            let (head, name, args) =
                self.head(item, "expected `(build NAME SPEC)` or `(from IMAGE)`")?;
            match (name, args) {
                ("from", _) => break self.one_atom(item, name, args)?,
                ("build", [stage_name, spec]) => {
                    let stage_name = self.name(stage_name, "a stage name")?;
                    let spec = self.spec(spec, scope)?;
                    // Added after the stage itself: a stage cannot copy from itself.
                    scope.push(stage_name.clone());
                    stages.push(Stage {
                        name: stage_name,
                        spec,
                    });
                }
                ("build", _) => {
                    let message =
                        "`build` takes a name and a spec: (build NAME ((from IMAGE) OP...))";
                    return Err(self.err(item.span, message));
                }
                _ if OPS.contains(&name) => {
                    return Err(self.err(
                        head.span,
                        format!("`{name}` before `(from IMAGE)`: ops come after `from`"),
                    ));
                }
                _ => {
                    return Err(self.err(head.span, unknown("spec item", name, &["build", "from"])));
                }
            }
        };
        let ops = items
            .map(|item| self.op(item, scope))
            .collect::<Result<_, _>>()?;
        scope.truncate(outer);
        Ok(Spec { stages, from, ops })
    }

    fn op(&self, item: &Sexp, scope: &Scope) -> Result<Op, ParseError> {
        let (head, name, args) = self.head(item, "expected an op such as `(run (shell CMD))`")?;
        Ok(match name {
            "comment" => Op::Comment(self.one_atom(item, name, args)?),
            "workdir" => Op::Workdir(self.one_atom(item, name, args)?),
            "shell" => Op::Shell(self.atoms(args, "a shell argument")?),
            "env" => match args {
                [key, value] => Op::Env {
                    name: self.atom(key, "a variable name")?,
                    value: self.atom(value, "a value")?,
                },
                _ => {
                    return Err(self.err(
                        item.span,
                        "`env` takes a name and a value: (env NAME VALUE)",
                    ));
                }
            },
            "user" => Op::User(self.user(head, args)?),
            "run" => Op::Run(self.run(head, args)?),
            "copy" => Op::Copy(self.copy(head, args, scope)?),
            "from" => {
                let message =
                    "a spec has only one `from`; use `(build NAME SPEC)` for another stage";
                return Err(self.err(head.span, message));
            }
            "build" => {
                return Err(self.err(head.span, "`build` stages must come before `(from IMAGE)`"));
            }
            _ => return Err(self.err(head.span, unknown("op", name, OPS))),
        })
    }

    fn run(&self, head: &Sexp, args: &[Sexp]) -> Result<Run, ParseError> {
        let mut run = Run {
            cache: Vec::new(),
            network: Vec::new(),
            secrets: Vec::new(),
            shell: String::new(),
        };
        let mut shell = None;
        for field in self.record("run", args, &["cache", "network", "secrets", "shell"])? {
            match field.name {
                "cache" => run.cache = self.mounts(&field, "cache")?,
                "secrets" => run.secrets = self.mounts(&field, "secret")?,
                "network" => run.network = self.atoms(field.values, "a network name")?,
                _ => shell = Some(self.one_atom(field.sexp, field.name, field.values)?),
            }
        }
        run.shell =
            shell.ok_or_else(|| self.err(head.span, "`run` needs a `(shell CMD)` field"))?;
        Ok(run)
    }

    fn mounts(&self, field: &Field<'_>, kind: &str) -> Result<Vec<Mount>, ParseError> {
        field
            .values
            .iter()
            .map(|mount| self.mount(mount, kind))
            .collect()
    }

    /// `(ID (target PATH) [(buildkit_options ...)])`.
    fn mount(&self, sexp: &Sexp, kind: &str) -> Result<Mount, ParseError> {
        let (id_sexp, id, fields) = self.head(
            sexp,
            &format!("expected a {kind} mount `(ID (target PATH))`"),
        )?;
        let mut mount = Mount {
            id: self.name(id_sexp, &format!("a {kind} id"))?,
            target: String::new(),
            buildkit_options: Vec::new(),
        };
        let mut target = None;
        for field in self.record(kind, fields, &["target", "buildkit_options"])? {
            if field.name == "target" {
                target = Some(self.one_atom(field.sexp, field.name, field.values)?);
                continue;
            }
            // OBuilder writes `(buildkit_options ((K V)...))`; the pairs may also come inline.
            let pairs = match field.values {
                [one]
                    if let Some(pairs) = one.as_list()
                        && pairs.iter().all(|p| p.as_list().is_some()) =>
                {
                    pairs
                }
                pairs => pairs,
            };
            for pair in pairs {
                let Some([key, value]) = pair.as_list() else {
                    return Err(self.err(pair.span, "a buildkit option is a pair `(KEY VALUE)`"));
                };
                mount.buildkit_options.push((
                    self.atom(key, "an option name")?,
                    self.atom(value, "an option value")?,
                ));
            }
        }
        let message = format!("{kind} `{id}` needs a `(target PATH)` field");
        mount.target = target.ok_or_else(|| self.err(id_sexp.span, message))?;
        Ok(mount)
    }

    fn copy(&self, head: &Sexp, args: &[Sexp], scope: &Scope) -> Result<Copy, ParseError> {
        let mut copy = Copy {
            from: CopyFrom::Context,
            src: Vec::new(),
            dst: String::new(),
            exclude: Vec::new(),
        };
        let (mut src, mut dst) = (None, None);
        for field in self.record("copy", args, &["from", "src", "dst", "exclude"])? {
            match field.name {
                "from" => copy.from = self.copy_from(&field, scope)?,
                "src" => src = Some(self.atoms(field.values, "a source path")?),
                "dst" => dst = Some(self.one_atom(field.sexp, field.name, field.values)?),
                _ => copy.exclude = self.atoms(field.values, "a file name")?,
            }
        }
        copy.src =
            src.ok_or_else(|| self.err(head.span, "`copy` needs a `(src PATH...)` field"))?;
        copy.dst = dst.ok_or_else(|| self.err(head.span, "`copy` needs a `(dst PATH)` field"))?;
        Ok(copy)
    }

    /// `context` or `(build NAME)`, where NAME is a stage in scope.
    fn copy_from(&self, field: &Field<'_>, scope: &Scope) -> Result<CopyFrom, ParseError> {
        let expected = "`from` takes `context` or `(build NAME)`";
        let [value] = field.values else {
            return Err(self.err(field.sexp.span, expected));
        };
        match (value.as_atom(), value.as_list()) {
            (Some("context"), _) => Ok(CopyFrom::Context),
            (_, Some([build, name])) if build.as_atom() == Some("build") => {
                let stage = self.name(name, "a stage name")?;
                if scope.contains(&stage) {
                    return Ok(CopyFrom::Build(stage));
                }
                let names = || scope.names.iter().map(String::as_str);
                let hint = match suggest(&stage, names()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None if scope.names.is_empty() => {
                        "no `(build NAME SPEC)` stage is in scope here".to_owned()
                    }
                    None => format!("stages in scope: {}", backticked(names())),
                };
                Err(self.err(name.span, format!("unknown build stage `{stage}`; {hint}")))
            }
            _ => Err(self.err(value.span, expected)),
        }
    }

    fn user(&self, head: &Sexp, args: &[Sexp]) -> Result<User, ParseError> {
        let fields = self.record("user", args, &["uid", "gid", "name"])?;
        let find = |name: &str| fields.iter().find(|f| f.name == name);
        if let Some(name) = find("name") {
            if let Some(id) = find("uid").or_else(|| find("gid")) {
                return Err(self.err(
                    id.sexp.span,
                    "`user` takes `(name NAME)` or `(uid N) (gid N)`, not both",
                ));
            }
            return Ok(User::Name(self.one_atom(
                name.sexp,
                name.name,
                name.values,
            )?));
        }
        let (Some(uid), Some(gid)) = (find("uid"), find("gid")) else {
            return Err(self.err(head.span, "`user` needs `(uid N) (gid N)` or `(name NAME)`"));
        };
        Ok(User::Unix {
            uid: self.number(uid)?,
            gid: self.number(gid)?,
        })
    }

    fn number(&self, field: &Field<'_>) -> Result<u32, ParseError> {
        let text = self.one_atom(field.sexp, field.name, field.values)?;
        match text.parse() {
            Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => {
                let message = format!(
                    "`{}` must be a number from 0 to {}, found `{text}`",
                    field.name,
                    u32::MAX
                );
                Err(self.err(field.values[0].span, message))
            }
        }
    }

    /// Reads `(name value...)` fields, each allowed and present at most once.
    fn record<'a>(
        &self,
        owner: &str,
        args: &'a [Sexp],
        allowed: &[&str],
    ) -> Result<Vec<Field<'a>>, ParseError> {
        let mut fields: Vec<Field<'a>> = Vec::new();
        for sexp in args {
            let (head, name, values) = self.head(
                sexp,
                &format!("expected a `{owner}` field `(NAME VALUE...)`"),
            )?;
            if !allowed.contains(&name) {
                return Err(self.err(
                    head.span,
                    unknown(&format!("`{owner}` field"), name, allowed),
                ));
            }
            if fields.iter().any(|f| f.name == name) {
                return Err(self.err(head.span, format!("duplicate field `{name}` in `{owner}`")));
            }
            fields.push(Field { name, sexp, values });
        }
        Ok(fields)
    }

    /// Splits `(NAME args...)`, or fails with `expected` naming what was wanted.
    fn head<'a>(
        &self,
        sexp: &'a Sexp,
        expected: &str,
    ) -> Result<(&'a Sexp, &'a str, &'a [Sexp]), ParseError> {
        if let Some([head, args @ ..]) = sexp.as_list()
            && let Some(name) = head.as_atom()
        {
            return Ok((head, name, args));
        }
        let found = match (sexp.as_atom(), sexp.as_list()) {
            (Some(atom), _) => format!("`{}`", sexp::quote_atom(atom)),
            (_, Some([])) => "`()`".to_owned(),
            _ => "a list starting with a list".to_owned(),
        };
        Err(self.err(sexp.span, format!("{expected}, found {found}")))
    }

    fn atom(&self, sexp: &Sexp, what: &str) -> Result<String, ParseError> {
        match sexp.as_atom() {
            Some(text) => Ok(text.to_owned()),
            None => Err(self.err(sexp.span, format!("expected {what}, found a list"))),
        }
    }

    /// An atom naming a stage, a cache or a secret: at most [`MAX_NAME_LEN`] bytes.
    fn name(&self, sexp: &Sexp, what: &str) -> Result<String, ParseError> {
        let name = self.atom(sexp, what)?;
        if name.len() > MAX_NAME_LEN {
            let message = format!(
                "{what} is at most {MAX_NAME_LEN} bytes long, found {} bytes",
                name.len()
            );
            return Err(self.err(sexp.span, message));
        }
        Ok(name)
    }

    fn atoms(&self, sexps: &[Sexp], what: &str) -> Result<Vec<String>, ParseError> {
        sexps.iter().map(|sexp| self.atom(sexp, what)).collect()
    }

    /// The single value of `(name VALUE)`; `whole` is reported when it is missing.
    fn one_atom(&self, whole: &Sexp, name: &str, values: &[Sexp]) -> Result<String, ParseError> {
        match values {
            [value] => self.atom(value, &format!("a value for `{name}`")),
            [] => Err(self.err(whole.span, format!("`{name}` needs a value"))),
            [_, extra, ..] => {
                Err(self.err(extra.span, format!("`{name}` takes exactly one value")))
            }
        }
    }
}

fn unknown(kind: &str, name: &str, candidates: &[&str]) -> String {
    match suggest(name, candidates.iter().copied()) {
        Some(close) => format!("unknown {kind} `{name}`; did you mean `{close}`?"),
        None => format!(
            "unknown {kind} `{name}`; expected one of {}",
            backticked(candidates.iter().copied())
        ),
    }
}

fn backticked<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
///
/// Up to a third of the word may be wrong, but two edits are always allowed (`cash` for
/// `cache`), and never a suggestion that shares nothing with the word. A candidate whose
/// length differs by more than that is not compared at all, so a huge word costs nothing
/// against short candidates.
fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let word: Vec<char> = word.to_lowercase().chars().collect();
    let len = word.len();
    if len == 0 {
        return None;
    }
    let allowed = (len / 3).max(2).min(len - 1);
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let lower: Vec<char> = candidate.to_lowercase().chars().collect();
        if lower.len().abs_diff(len) > allowed {
            continue;
        }
        if let Some(d) = distance_within(&word, &lower, allowed)
            && best.is_none_or(|(b, _)| d < b)
        {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Edit distance counting a swap of neighbours as one edit (optimal string alignment), if
/// it is at most `max`. Holds three rows of the table (the swap looks two rows back) and
/// stops as soon as a whole row exceeds `max`.
fn distance_within(a: &[char], b: &[char], max: usize) -> Option<usize> {
    #[cfg(test)]
    tests::count_table(3 * (b.len() + 1), 0);
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        #[cfg(test)]
        tests::count_table(0, b.len());
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        // Every cell of the next row is one more than a cell of this row, or (a swap) one
        // more than the cell this row's diagonal cell is at most one more than: once all
        // of this row is over `max`, every later row, and the distance, is too.
        if row.iter().all(|&d| d > max) {
            return None;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut row);
        row.resize(b.len() + 1, 0);
    }
    Some(prev[b.len()]).filter(|&d| d <= max)
}

/// Edit distance, unbounded (for tests of the metric itself).
#[cfg(test)]
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    distance_within(&a, &b, usize::MAX).expect("no bound")
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// (line, column, message) of the error parsing `source`.
    fn error(source: &str) -> (usize, usize, String) {
        let e = parse(source).unwrap_err();
        (e.line, e.column, e.message)
    }

    fn ops(source: &str) -> Vec<Op> {
        parse(source).unwrap().ops
    }

    fn run(shell: &str) -> Run {
        Run {
            cache: vec![],
            network: vec![],
            secrets: vec![],
            shell: shell.into(),
        }
    }

    #[test]
    fn every_op() {
        let spec = parse(
            r#"((from base)
                (comment "A test comment")
                (workdir /src)
                (shell /bin/sh -c)
                (shell)
                (env DEBUG 1)
                (user (uid 1) (gid 2))
                (user (name Zaphod))
                (run (shell "echo hi"))
                (copy (src a b) (dst c)))"#,
        )
        .unwrap();
        assert_eq!(spec.from, "base");
        assert!(spec.stages.is_empty());
        assert_eq!(
            spec.ops,
            [
                Op::Comment("A test comment".into()),
                Op::Workdir("/src".into()),
                Op::Shell(vec!["/bin/sh".into(), "-c".into()]),
                Op::Shell(vec![]),
                Op::Env {
                    name: "DEBUG".into(),
                    value: "1".into()
                },
                Op::User(User::Unix { uid: 1, gid: 2 }),
                Op::User(User::Name("Zaphod".into())),
                Op::Run(run("echo hi")),
                Op::Copy(Copy {
                    from: CopyFrom::Context,
                    src: vec!["a".into(), "b".into()],
                    dst: "c".into(),
                    exclude: vec![]
                }),
            ]
        );
    }

    #[test]
    fn record_fields_in_any_order() {
        let got = ops(
            "((from base)
              (run (shell \"make\")
                   (secrets (s1 (target /run/s1)) (s2 (buildkit_options ((mode 0400))) (target /s2)))
                   (network host bridge)
                   (cache (c1 (target /c) (buildkit_options (sharing locked) (a b)))))
              (run (network) (shell x))
              (user (gid 4294967295) (uid 0))
              (copy (exclude .git) (dst /d/) (src) (from context)))",
        );
        let mount = |id: &str, target: &str, options: &[(&str, &str)]| Mount {
            id: id.into(),
            target: target.into(),
            buildkit_options: options.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
        };
        let expected = Run {
            cache: vec![mount("c1", "/c", &[("sharing", "locked"), ("a", "b")])],
            network: vec!["host".into(), "bridge".into()],
            secrets: vec![
                mount("s1", "/run/s1", &[]),
                mount("s2", "/s2", &[("mode", "0400")]),
            ],
            shell: "make".into(),
        };
        assert_eq!(got[0], Op::Run(expected));
        assert_eq!(got[1], Op::Run(run("x")));
        assert_eq!(
            got[2],
            Op::User(User::Unix {
                uid: 0,
                gid: u32::MAX
            })
        );
        let copy = Copy {
            from: CopyFrom::Context,
            src: vec![],
            dst: "/d/".into(),
            exclude: vec![".git".into()],
        };
        assert_eq!(got[3], Op::Copy(copy));
        // `(buildkit_options ())` is OBuilder's empty list.
        let got = ops("((from b) (run (cache (c (target /t) (buildkit_options ()))) (shell x)))");
        assert_eq!(
            got,
            [Op::Run(Run {
                cache: vec![mount("c", "/t", &[])],
                ..run("x")
            })]
        );
    }

    thread_local! {
        /// Edit-distance table cells: the most held at once, and all computed.
        static TABLE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    pub(super) fn count_table(held: usize, computed: usize) {
        TABLE.with(|t| {
            let (h, c) = t.get();
            t.set((h.max(held as u64), c + computed as u64));
        });
    }

    /// Runs `f`, returning its result and the table cells (held at most, computed).
    fn measured<T>(f: impl FnOnce() -> T) -> (T, (u64, u64)) {
        TABLE.with(|t| t.set((0, 0)));
        let out = f();
        (out, TABLE.with(Cell::get))
    }

    /// The issue's shape: a 40 KB spec whose stage and `copy (from (build …))` names are
    /// 20,000 characters each took 3.4 s and 3.2 GB to suggest one for the other.
    #[test]
    fn long_stage_names_are_refused_before_any_suggestion() {
        let name = "a".repeat(20_000);
        let source = format!(
            "((build {name} ((from b))) (from b) (copy (from (build {name}b)) (src x) (dst y)))"
        );
        let ((line, column, message), (held, computed)) = measured(|| error(&source));
        assert_eq!(
            (line, column, message.as_str()),
            (
                1,
                9,
                "a stage name is at most 255 bytes long, found 20000 bytes"
            )
        );
        assert_eq!((held, computed), (0, 0));
        let source =
            format!("((build b ((from b))) (from b) (copy (from (build {name})) (src x) (dst y)))");
        let ((_, _, message), (held, computed)) = measured(|| error(&source));
        assert_eq!(
            message,
            "a stage name is at most 255 bytes long, found 20000 bytes"
        );
        assert_eq!((held, computed), (0, 0));
        // Cache and secret ids name directories too.
        let id = "c".repeat(256);
        for kind in ["cache", "secrets"] {
            let source = format!("((from b) (run ({kind} ({id} (target /c))) (shell x)))");
            let what = if kind == "cache" { "cache" } else { "secret" };
            assert_eq!(
                error(&source),
                (
                    1,
                    19 + kind.len(),
                    format!("a {what} id is at most 255 bytes long, found 256 bytes")
                )
            );
        }
        let fits = format!(
            "((from b) (run (cache ({} (target /c))) (shell x)))",
            &id[1..]
        );
        assert_eq!(parse(&fits).unwrap().ops.len(), 1);
    }

    /// Names at the limit: the table holds three rows of the shorter name, and names whose
    /// lengths differ by more than a typo's worth are not compared at all.
    #[test]
    fn suggestions_hold_three_rows_and_skip_names_of_other_lengths() {
        let near = |c: char| format!("{}{c}", "s".repeat(254));
        let mut source = String::from("(");
        for c in 'a'..='z' {
            source.push_str(&format!("(build {} ((from b))) ", near(c)));
        }
        for len in [10, 100, 150] {
            source.push_str(&format!("(build {} ((from b))) ", "s".repeat(len)));
        }
        source.push_str(&format!(
            "(from b) (copy (from (build {})) (src x) (dst y)))",
            near('#')
        ));
        let ((_, _, message), (held, computed)) = measured(|| error(&source));
        assert!(
            message.ends_with(&format!("did you mean `{}`?", near('a'))),
            "{message}"
        );
        assert!(held <= 3 * 256, "{held} cells held at once");
        // The 26 candidates of equal length at most, none of the shorter ones.
        assert!(computed <= 26 * 255 * 255, "{computed} cells computed");
        // A 100,000-character op name is compared with none of the seven ops.
        let source = format!("((from b) ({} x))", "r".repeat(100_000));
        let ((_, _, message), (held, computed)) = measured(|| error(&source));
        assert!(
            message.contains("expected one of `comment`"),
            "{}",
            &message[..60]
        );
        assert_eq!((held, computed), (0, 0));
    }

    /// Thousands of stages in scope: each stage used to get its own copy of the scope
    /// before it (quadratic), and each copy searched the scope linearly.
    #[test]
    fn stages_in_scope_are_not_copied_per_stage() {
        let mut source = String::from("(");
        for i in 0..2_000 {
            source.push_str(&format!(
                "(build s{i} ((from b) (copy (from (build s{})) (src x) (dst y)))) ",
                i / 2
            ));
        }
        source.push_str("(from b))");
        // s0 copies from itself: refused, as a stage cannot copy from itself.
        assert_eq!(
            error(&source).2,
            "unknown build stage `s0`; no `(build NAME SPEC)` stage is in scope here"
        );
        let source = source.replacen("(copy (from (build s0)) (src x) (dst y))", "", 1);
        let spec = parse(&source).unwrap();
        assert_eq!(spec.stages.len(), 2_000);
    }

    #[test]
    fn stages_and_scopes() {
        let spec = parse(
            "((build a ((from base) (run (shell a))))
              (build b ((build inner ((from base)))
                        (from base)
                        (copy (from (build a)) (src x) (dst y))
                        (copy (from (build inner)) (src x) (dst y))))
              (from base)
              (copy (from (build b)) (src x) (dst y)))",
        )
        .unwrap();
        let names: Vec<_> = spec.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(spec.stages[1].spec.stages[0].name, "inner");
        let Op::Copy(copy) = &spec.ops[0] else {
            panic!("not a copy")
        };
        assert_eq!(copy.from, CopyFrom::Build("b".into()));
        // A nested stage's own stages stay private to it.
        let e = error(
            "((build b ((build inner ((from base))) (from base))) (from base) (copy (from (build inner)) (src x) (dst y)))",
        );
        assert_eq!(
            e,
            (
                1,
                85,
                "unknown build stage `inner`; stages in scope: `b`".into()
            )
        );
        // A stage cannot copy from itself or from a later stage.
        let e =
            error("((build a ((from base) (copy (from (build a)) (src x) (dst y)))) (from base))");
        assert_eq!(
            e.2,
            "unknown build stage `a`; no `(build NAME SPEC)` stage is in scope here"
        );
        let e = error(
            "((build a ((from base) (copy (from (build b)) (src x) (dst y)))) (build b ((from base))) (from base))",
        );
        assert_eq!(
            e.2,
            "unknown build stage `b`; no `(build NAME SPEC)` stage is in scope here"
        );
    }

    #[test]
    fn spec_shape_errors() {
        let cases: &[(&str, (usize, usize, &str))] = &[
            (
                "base",
                (1, 1, "a spec must be a list: ((from IMAGE) OP...)"),
            ),
            ("()", (1, 2, "missing `(from IMAGE)` in spec")),
            (
                "((build a ((from b)))\n)",
                (2, 1, "missing `(from IMAGE)` in spec"),
            ),
            (
                "((run (shell x)) (from b))",
                (1, 3, "`run` before `(from IMAGE)`: ops come after `from`"),
            ),
            (
                "((frm b))",
                (1, 3, "unknown spec item `frm`; did you mean `from`?"),
            ),
            (
                "((xyz b))",
                (
                    1,
                    3,
                    "unknown spec item `xyz`; expected one of `build`, `from`",
                ),
            ),
            (
                "(from b)",
                (
                    1,
                    2,
                    "expected `(build NAME SPEC)` or `(from IMAGE)`, found `from`",
                ),
            ),
            ("((from))", (1, 2, "`from` needs a value")),
            ("((from a b))", (1, 10, "`from` takes exactly one value")),
            (
                "((from (a)))",
                (1, 8, "expected a value for `from`, found a list"),
            ),
            (
                "((build a) (from b))",
                (
                    1,
                    2,
                    "`build` takes a name and a spec: (build NAME ((from IMAGE) OP...))",
                ),
            ),
            (
                "((build (a) ((from b))) (from b))",
                (1, 9, "expected a stage name, found a list"),
            ),
            (
                "((build a b) (from c))",
                (1, 11, "a spec must be a list: ((from IMAGE) OP...)"),
            ),
            (
                "((from a) (build b ((from c))))",
                (1, 12, "`build` stages must come before `(from IMAGE)`"),
            ),
            (
                "((from a) (from b))",
                (
                    1,
                    12,
                    "a spec has only one `from`; use `(build NAME SPEC)` for another stage",
                ),
            ),
        ];
        for &(source, (line, column, message)) in cases {
            assert_eq!(
                error(source),
                (line, column, message.to_owned()),
                "{source}"
            );
        }
    }

    #[test]
    fn op_errors() {
        let cases: &[(&str, (usize, usize, &str))] = &[
            (
                "x",
                (
                    2,
                    1,
                    "expected an op such as `(run (shell CMD))`, found `x`",
                ),
            ),
            (
                "()",
                (
                    2,
                    1,
                    "expected an op such as `(run (shell CMD))`, found `()`",
                ),
            ),
            (
                "((run) x)",
                (
                    2,
                    1,
                    "expected an op such as `(run (shell CMD))`, found a list starting with a list",
                ),
            ),
            (
                "(rn (shell x))",
                (2, 2, "unknown op `rn`; did you mean `run`?"),
            ),
            (
                "(cpoy (src a) (dst b))",
                (2, 2, "unknown op `cpoy`; did you mean `copy`?"),
            ),
            (
                "(Run (shell x))",
                (2, 2, "unknown op `Run`; did you mean `run`?"),
            ),
            (
                "(frobnicate)",
                (
                    2,
                    2,
                    "unknown op `frobnicate`; expected one of `comment`, `workdir`, `shell`, `run`, `copy`, `user`, `env`",
                ),
            ),
            ("(comment)", (2, 1, "`comment` needs a value")),
            (
                "(comment a b)",
                (2, 12, "`comment` takes exactly one value"),
            ),
            (
                "(workdir (a))",
                (2, 10, "expected a value for `workdir`, found a list"),
            ),
            (
                "(shell a (b))",
                (2, 10, "expected a shell argument, found a list"),
            ),
            (
                "(env A)",
                (2, 1, "`env` takes a name and a value: (env NAME VALUE)"),
            ),
            (
                "(env A b c)",
                (2, 1, "`env` takes a name and a value: (env NAME VALUE)"),
            ),
            (
                "(env (A) b)",
                (2, 6, "expected a variable name, found a list"),
            ),
        ];
        for &(op, (line, column, message)) in cases {
            let source = format!("((from base)\n{op})");
            assert_eq!(error(&source), (line, column, message.to_owned()), "{op}");
        }
    }

    #[test]
    fn field_errors() {
        let cases: &[(&str, (usize, usize, &str))] = &[
            ("(run)", (2, 2, "`run` needs a `(shell CMD)` field")),
            (
                "(run (network host))",
                (2, 2, "`run` needs a `(shell CMD)` field"),
            ),
            ("(run (shell))", (2, 6, "`shell` needs a value")),
            (
                "(run (shell a b))",
                (2, 15, "`shell` takes exactly one value"),
            ),
            (
                "(run shell)",
                (
                    2,
                    6,
                    "expected a `run` field `(NAME VALUE...)`, found `shell`",
                ),
            ),
            (
                "(run (shel x))",
                (2, 7, "unknown `run` field `shel`; did you mean `shell`?"),
            ),
            (
                "(run (cash (c (target /c))) (shell x))",
                (2, 7, "unknown `run` field `cash`; did you mean `cache`?"),
            ),
            (
                "(run (secret (c (target /c))) (shell x))",
                (
                    2,
                    7,
                    "unknown `run` field `secret`; did you mean `secrets`?",
                ),
            ),
            (
                "(run (shell x) (timeout 5))",
                (
                    2,
                    17,
                    "unknown `run` field `timeout`; expected one of `cache`, `network`, `secrets`, `shell`",
                ),
            ),
            (
                "(run (shell x) (shell y))",
                (2, 17, "duplicate field `shell` in `run`"),
            ),
            (
                "(run (network (host)) (shell x))",
                (2, 15, "expected a network name, found a list"),
            ),
            (
                "(run (cache c) (shell x))",
                (
                    2,
                    13,
                    "expected a cache mount `(ID (target PATH))`, found `c`",
                ),
            ),
            (
                "(run (cache (c)) (shell x))",
                (2, 14, "cache `c` needs a `(target PATH)` field"),
            ),
            (
                "(run (secrets (s (targte /s))) (shell x))",
                (
                    2,
                    19,
                    "unknown `secret` field `targte`; did you mean `target`?",
                ),
            ),
            (
                "(run (cache (c (target /a) (target /b))) (shell x))",
                (2, 29, "duplicate field `target` in `cache`"),
            ),
            (
                "(run (cache (c (target /t) (buildkit_options (a b c)))) (shell x))",
                (2, 46, "a buildkit option is a pair `(KEY VALUE)`"),
            ),
            (
                "(run (cache (c (target /t) (buildkit_options a))) (shell x))",
                (2, 46, "a buildkit option is a pair `(KEY VALUE)`"),
            ),
            (
                "(copy (src a))",
                (2, 2, "`copy` needs a `(dst PATH)` field"),
            ),
            (
                "(copy (dst a))",
                (2, 2, "`copy` needs a `(src PATH...)` field"),
            ),
            (
                "(copy (src a) (dst b) (excludes c))",
                (
                    2,
                    24,
                    "unknown `copy` field `excludes`; did you mean `exclude`?",
                ),
            ),
            (
                "(copy (from) (src a) (dst b))",
                (2, 7, "`from` takes `context` or `(build NAME)`"),
            ),
            (
                "(copy (from ctx) (src a) (dst b))",
                (2, 13, "`from` takes `context` or `(build NAME)`"),
            ),
            (
                "(copy (from (stage a)) (src a) (dst b))",
                (2, 13, "`from` takes `context` or `(build NAME)`"),
            ),
            (
                "(copy (from (build tols)) (src a) (dst b))",
                (2, 20, "unknown build stage `tols`; did you mean `tools`?"),
            ),
            (
                "(copy (from (build zzz)) (src a) (dst b))",
                (
                    2,
                    20,
                    "unknown build stage `zzz`; stages in scope: `tools`, `dev`",
                ),
            ),
            (
                "(user)",
                (2, 2, "`user` needs `(uid N) (gid N)` or `(name NAME)`"),
            ),
            (
                "(user (uid 1))",
                (2, 2, "`user` needs `(uid N) (gid N)` or `(name NAME)`"),
            ),
            (
                "(user (name a) (uid 1))",
                (
                    2,
                    16,
                    "`user` takes `(name NAME)` or `(uid N) (gid N)`, not both",
                ),
            ),
            (
                "(user (uid -1) (gid 0))",
                (
                    2,
                    12,
                    "`uid` must be a number from 0 to 4294967295, found `-1`",
                ),
            ),
            (
                "(user (uid 0) (gid 4294967296))",
                (
                    2,
                    20,
                    "`gid` must be a number from 0 to 4294967295, found `4294967296`",
                ),
            ),
            (
                "(user (uid +1) (gid 0))",
                (
                    2,
                    12,
                    "`uid` must be a number from 0 to 4294967295, found `+1`",
                ),
            ),
            (
                "(user (uid 1) (gid 1) (nam x))",
                (2, 24, "unknown `user` field `nam`; did you mean `name`?"),
            ),
        ];
        for &(op, (line, column, message)) in cases {
            let source =
                format!("((build tools ((from b))) (build dev ((from b))) (from base)\n{op})");
            assert_eq!(error(&source), (line, column, message.to_owned()), "{op}");
        }
    }

    #[test]
    fn lexer_errors_come_through() {
        assert_eq!(
            error("((from base)\n (run (shell \"x)))"),
            (2, 14, "unterminated string".into())
        );
    }

    #[test]
    fn distance_counts_swaps_once() {
        assert_eq!(distance("run", "run"), 0);
        assert_eq!(distance("rnu", "run"), 1);
        assert_eq!(distance("cpy", "copy"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(suggest("x", ["shell", "run"].into_iter()), None);
        assert_eq!(suggest("ab", ["gid", "uid"].into_iter()), None);
        assert_eq!(suggest("ui", ["gid", "uid"].into_iter()), Some("uid"));
        assert_eq!(
            suggest("SHEL", ["cache", "shell"].into_iter()),
            Some("shell")
        );
    }
}
