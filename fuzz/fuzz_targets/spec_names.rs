//! Fuzz target for the shape of a quadratic-memory defect: specs whose stage and
//! `copy (from (build NAME))` names are up to 40,000 characters, many stages in scope.
//! Names over `MAX_NAME_LEN` must be refused; a near miss gets its suggestion.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_fuzz::Params;
use strata_spec::MAX_NAME_LEN;

fuzz_target!(|data: &[u8]| {
    let mut p = Params(data);
    let stages = 1 + usize::from(p.byte()) * 8;
    let len = 1 + p.u32() as usize % 40_000;
    // At most about 2 MB of spec.
    let stages = stages.min(1 + (2 << 20) / len);
    let edit = p.byte();
    let alphabet = if p.0.is_empty() { &b"ab"[..] } else { p.0 };
    let name = |i: usize| -> String {
        (0..len)
            .map(|j| char::from(b'a' + alphabet[(i + j) % alphabet.len()] % 26))
            .collect()
    };
    let mut source = String::from("(");
    for i in 0..stages {
        source.push_str(&format!("(build {} ((from b))) ", name(i)));
    }
    // The copy names stage 0 with one edit, or none.
    let mut wanted = name(0);
    match edit % 3 {
        0 => {}
        1 => wanted.push('z'),
        _ => _ = wanted.pop(),
    }
    let wanted = if wanted.is_empty() {
        "z".to_owned()
    } else {
        wanted
    };
    source.push_str(&format!(
        "(from b) (copy (from (build {wanted})) (src x) (dst y)))"
    ));
    match strata_spec::parse(&source) {
        Ok(spec) => assert!(len <= MAX_NAME_LEN && spec.stages.len() == stages),
        Err(e) => {
            if len > MAX_NAME_LEN || wanted.len() > MAX_NAME_LEN {
                assert!(e.message.contains("at most 255 bytes"), "{}", e.message);
            } else {
                assert!(
                    e.message.starts_with("unknown build stage"),
                    "{}",
                    e.message
                );
            }
        }
    }
});
