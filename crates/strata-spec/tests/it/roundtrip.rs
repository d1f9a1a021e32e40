//! Generated round trips: random specs and S-expressions, printed and read back.
//!
//! A small deterministic generator rather than proptest: the same cases every run, and no
//! extra compile time. Strings are drawn from pieces that stress quoting and escapes.

use strata_spec::dockerfile::{DockerOs, to_dockerfile};
use strata_spec::sexp::{self, Sexp};
use strata_spec::{Copy, CopyFrom, Mount, Op, Run, Spec, Stage, User};

/// xorshift64*: enough randomness for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a",
            "run",
            "copy",
            ".",
            "./",
            "--login",
            "@install",
            "4.10",
            "C:\\obuilder",
            "C:/src",
            " ",
            "\"",
            "\\",
            "(",
            ")",
            ";",
            "#|",
            "|#",
            "#;",
            "#",
            "|",
            "\n",
            "\t",
            "\r\n",
            "é",
            "\u{1}",
            "\u{7f}",
            "'",
            "`",
            "x y",
            "\\n",
            "\\065",
            "ü🦀",
        ];
        (0..self.below(5)).map(|_| *self.pick(PIECES)).collect()
    }

    fn texts(&mut self) -> Vec<String> {
        (0..self.below(4)).map(|_| self.text()).collect()
    }
}

fn mount(rng: &mut Rng) -> Mount {
    let buildkit_options = (0..rng.below(3))
        .map(|_| (rng.text(), rng.text()))
        .collect();
    Mount {
        id: rng.text(),
        target: rng.text(),
        buildkit_options,
    }
}

fn op(rng: &mut Rng, scope: &[String]) -> Op {
    match rng.below(7) {
        0 => Op::Comment(rng.text()),
        1 => Op::Workdir(rng.text()),
        2 => Op::Shell(rng.texts()),
        3 => Op::Run(Run {
            cache: (0..rng.below(3)).map(|_| mount(rng)).collect(),
            network: rng.texts(),
            secrets: (0..rng.below(3)).map(|_| mount(rng)).collect(),
            shell: rng.text(),
        }),
        4 => {
            let from = match rng.below(2) {
                0 if !scope.is_empty() => CopyFrom::Build(rng.pick(scope).clone()),
                _ => CopyFrom::Context,
            };
            Op::Copy(Copy {
                from,
                src: rng.texts(),
                dst: rng.text(),
                exclude: rng.texts(),
            })
        }
        5 if rng.below(2) == 0 => Op::User(User::Name(rng.text())),
        5 => Op::User(User::Unix {
            uid: rng.next() as u32 >> rng.below(32),
            gid: rng.below(70_000) as u32,
        }),
        _ => Op::Env {
            name: rng.text(),
            value: rng.text(),
        },
    }
}

/// A spec whose `copy (from (build X))` only name stages in scope, as parsing demands.
fn spec(rng: &mut Rng, depth: usize, scope: &[String]) -> Spec {
    let mut scope = scope.to_vec();
    let mut stages = Vec::new();
    for _ in 0..if depth < 2 { rng.below(3) } else { 0 } {
        let stage = Stage {
            name: rng.text(),
            spec: spec(rng, depth + 1, &scope),
        };
        scope.push(stage.name.clone());
        stages.push(stage);
    }
    let ops = (0..rng.below(8)).map(|_| op(rng, &scope)).collect();
    Spec {
        stages,
        from: rng.text(),
        ops,
    }
}

#[test]
fn generated_specs_print_and_read_back() {
    let mut rng = Rng(0x5eed_0f0b_11da);
    for case in 0..500 {
        let spec = spec(&mut rng, 0, &[]);
        let printed = spec.to_string();
        let again = strata_spec::parse(&printed)
            .unwrap_or_else(|e| panic!("case {case}: {}", e.render(&printed, "gen")));
        assert_eq!(again, spec, "case {case}:\n{printed}");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            serde_json::from_str::<Spec>(&json).unwrap(),
            spec,
            "case {case}: {json}"
        );
        // Conversion never panics; it may refuse (mounts on Windows or for named users).
        for os in [DockerOs::Unix, DockerOs::Windows] {
            let _ = to_dockerfile(&spec, case % 2 == 0, os);
        }
    }
}

fn tree(rng: &mut Rng, depth: usize) -> Sexp {
    if depth > 3 || rng.below(3) == 0 {
        Sexp::atom(rng.text())
    } else {
        Sexp::list((0..rng.below(5)).map(|_| tree(rng, depth + 1)).collect())
    }
}

/// Prints `sexp` with random blanks and comments between tokens, which reading must skip.
fn noisy(rng: &mut Rng, sexp: &Sexp, out: &mut String) {
    const NOISE: &[&str] = &[
        " ",
        "\n",
        "\t",
        "\r\n",
        "\x0c",
        "; comment (\"\n",
        "#| block ) |# ",
        "#| a #| nested |# \"|#\" |#",
        "#; dropped ",
        "#; (dropped (list)) ",
        "#;#; two dropped ",
        "#|| x ||#",
    ];
    match sexp.as_list() {
        None => out.push_str(&sexp.to_string()),
        Some(items) => {
            out.push('(');
            for item in items {
                out.push_str(NOISE[rng.below(NOISE.len())]);
                noisy(rng, item, out);
            }
            out.push_str(NOISE[rng.below(NOISE.len())]);
            out.push(')');
        }
    }
    // Separate the datum from whatever follows.
    out.push(' ');
}

#[test]
fn generated_sexps_survive_printing_with_noise() {
    let mut rng = Rng(0xc0ff_ee00_1234);
    for case in 0..1000 {
        let original = tree(&mut rng, 0);
        let plain = original.to_string();
        assert!(
            sexp::parse_one(&plain)
                .unwrap()
                .eq_ignoring_spans(&original),
            "case {case}: {plain}"
        );
        let mut text = String::from("; leading comment\n");
        noisy(&mut rng, &original, &mut text);
        let read = sexp::parse_one(&text)
            .unwrap_or_else(|e| panic!("case {case}: {}", e.render(&text, "gen")));
        assert!(read.eq_ignoring_spans(&original), "case {case}: {text}");
    }
}
