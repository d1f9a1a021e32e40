//! Writes a [`Spec`] back as S-expressions, laid out as OBuilder's `Spec.pp` does.
//!
//! One item per line, stages indented under `(build NAME`, `run` fields stacked, `copy`
//! fields on one line when that line fits in 78 columns. [`crate::parse`] reads the output
//! back to an equal spec, and so does OBuilder.

use std::fmt;

use crate::model::{CopyFrom, Mount, Op, Spec, User};
use crate::sexp::Sexp;

/// Format's default margin, which OBuilder's printer uses.
const MARGIN: usize = 78;

impl Spec {
    /// The spec as the S-expression OBuilder's `sexp_of_t` builds.
    pub fn to_sexp(&self) -> Sexp {
        Sexp::list(self.items())
    }

    fn items(&self) -> Vec<Sexp> {
        let stages = self.stages.iter().map(|stage| {
            Sexp::list(vec![
                Sexp::atom("build"),
                Sexp::atom(&stage.name),
                stage.spec.to_sexp(),
            ])
        });
        let from = field("from", [&self.from]);
        stages
            .chain([from])
            .chain(self.ops.iter().map(Op::to_sexp))
            .collect()
    }
}

impl Op {
    /// The op as OBuilder's `sexp_of_op` writes it, record fields inlined.
    pub fn to_sexp(&self) -> Sexp {
        let list = |name: &str, args: Vec<Sexp>| {
            Sexp::list([Sexp::atom(name)].into_iter().chain(args).collect())
        };
        match self {
            Op::Comment(text) => field("comment", [text]),
            Op::Workdir(path) => field("workdir", [path]),
            Op::Shell(args) => field("shell", args),
            Op::Env { name, value } => field("env", [name, value]),
            Op::User(User::Unix { uid, gid }) => list(
                "user",
                vec![
                    field("uid", [&uid.to_string()]),
                    field("gid", [&gid.to_string()]),
                ],
            ),
            Op::User(User::Name(name)) => list("user", vec![field("name", [name])]),
            Op::Run(run) => {
                let mut fields = Vec::new();
                if !run.cache.is_empty() {
                    fields.push(list("cache", run.cache.iter().map(mount).collect()));
                }
                if !run.network.is_empty() {
                    fields.push(field("network", &run.network));
                }
                if !run.secrets.is_empty() {
                    fields.push(list("secrets", run.secrets.iter().map(mount).collect()));
                }
                fields.push(field("shell", [&run.shell]));
                list("run", fields)
            }
            Op::Copy(copy) => {
                let mut fields = Vec::new();
                // Like OBuilder, leave out the default `(from context)`.
                if let CopyFrom::Build(name) = &copy.from {
                    fields.push(list("from", vec![field("build", [name])]));
                }
                fields.push(field("src", &copy.src));
                fields.push(field("dst", [&copy.dst]));
                if !copy.exclude.is_empty() {
                    fields.push(field("exclude", &copy.exclude));
                }
                list("copy", fields)
            }
        }
    }
}

/// `(ID (target PATH) [(buildkit_options ((K V)...))])`, the form OBuilder reads.
fn mount(mount: &Mount) -> Sexp {
    let mut items = vec![Sexp::atom(&mount.id), field("target", [&mount.target])];
    if !mount.buildkit_options.is_empty() {
        let pairs = mount
            .buildkit_options
            .iter()
            .map(|(k, v)| Sexp::list(vec![Sexp::atom(k), Sexp::atom(v)]));
        items.push(Sexp::list(vec![
            Sexp::atom("buildkit_options"),
            Sexp::list(pairs.collect()),
        ]));
    }
    Sexp::list(items)
}

/// `(name value...)` with atom values.
fn field<S: AsRef<str>>(name: &str, values: impl IntoIterator<Item = S>) -> Sexp {
    let values = values.into_iter().map(|v| Sexp::atom(v.as_ref()));
    Sexp::list([Sexp::atom(name)].into_iter().chain(values).collect())
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::from("(");
        write_items(&mut out, &self.items(), 1);
        out.push_str("\n)");
        f.write_str(&out)
    }
}

/// Writes `items` one per line, each starting at column `col` (the first one is already there).
fn write_items(out: &mut String, items: &[Sexp], col: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            newline(out, col);
        }
        write_item(out, item, col);
    }
}

fn write_item(out: &mut String, item: &Sexp, col: usize) {
    match item.as_list().unwrap_or_default() {
        [head, name, spec]
            if head.as_atom() == Some("build")
                && let Some(items) = spec.as_list() =>
        {
            out.push_str(&format!("(build {name}"));
            newline(out, col + "(build ".len());
            out.push('(');
            write_items(out, items, col + "(build (".len());
            out.push_str("))");
        }
        [head, args @ ..]
            if let Some(op @ ("run" | "copy")) = head.as_atom()
                && !args.is_empty() =>
        {
            let inner = col + op.len() + 2;
            let args: Vec<String> = args.iter().map(Sexp::to_string).collect();
            // `run` fields always stack; `copy` stays on one line if the line, with its
            // closing paren, fits in the margin.
            let width = inner + args.iter().map(|a| a.chars().count() + 1).sum::<usize>();
            let one_line = op == "copy" && width <= MARGIN;
            out.push_str(&format!("({op} "));
            for (i, arg) in args.iter().enumerate() {
                if i > 0 {
                    if one_line {
                        out.push(' ')
                    } else {
                        newline(out, inner)
                    }
                }
                out.push_str(arg);
            }
            out.push(')');
        }
        _ => out.push_str(&item.to_string()),
    }
}

fn newline(out: &mut String, col: usize) {
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', col));
}

#[cfg(test)]
mod tests {
    use crate::parse;

    /// OBuilder's own round-trip test (`test/test.ml`, `test_sexp`): its printer's layout.
    #[test]
    fn matches_obuilder_layout() {
        let text = [
            "((build tools",
            "        ((from base)",
            "         (run (shell \"make tools\"))))",
            " (from base)",
            " (comment \"A test comment\")",
            " (workdir /src)",
            " (run (shell \"a command\"))",
            " (run (cache (a (target /data)) (b (target /srv)))",
            "      (secrets (a (target /run/secrets/a)) (b (target /b)))",
            "      (shell \"a very very very very very very very very very very very very very very very long command\"))",
            " (copy (src a b) (dst c))",
            " (copy (src a b) (dst c) (exclude .git _build))",
            " (copy (from (build tools)) (src binary) (dst /usr/local/bin/))",
            " (env DEBUG 1)",
            " (user (uid 1) (gid 2))",
            ")",
        ]
        .join("\n");
        assert_eq!(parse(&text).unwrap().to_string(), text);
    }

    #[test]
    fn copy_wraps_past_78_columns() {
        let fits = format!(
            "((from b)\n (copy (src {}) (dst /d))\n)",
            "s".repeat(78 - 23)
        );
        assert_eq!(fits.lines().nth(1).unwrap().len(), 78);
        assert_eq!(parse(&fits).unwrap().to_string(), fits);
        let long = format!(
            "((from b)\n (copy (src {}) (dst /d))\n)",
            "s".repeat(78 - 22)
        );
        let wrapped = format!(
            "((from b)\n (copy (src {})\n       (dst /d))\n)",
            "s".repeat(78 - 22)
        );
        assert_eq!(parse(&long).unwrap().to_string(), wrapped);
    }

    #[test]
    fn nested_stages_and_quoting() {
        let text = [
            "((build \"a b\"",
            "        ((build inner",
            "                ((from x)))",
            "         (from \"\")",
            "         (copy (from (build inner)) (src \"C:\\\\x\" \"(y)\") (dst \"\\\"z\\\"\"))))",
            " (from base)",
            " (run (cache (c (target /t) (buildkit_options ((sharing locked) (k \"v w\")))))",
            "      (network host)",
            "      (shell \"line 1\\nline 2\"))",
            " (user (name ContainerAdministrator))",
            " (shell)",
            ")",
        ]
        .join("\n");
        let spec = parse(&text).unwrap();
        assert_eq!(spec.stages[0].name, "a b");
        assert_eq!(spec.to_string(), text);
    }
}
