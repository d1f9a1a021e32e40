//! Fuzz target: the spec reader. Errors must render; a spec that reads must print back to
//! an equal spec and convert to a Dockerfile without panicking; any S-expression that
//! reads must print back to an equal tree.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_spec::dockerfile::{DockerOs, to_dockerfile};
use strata_spec::sexp;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match strata_spec::parse(source) {
        Ok(spec) => {
            let printed = spec.to_string();
            match strata_spec::parse(&printed) {
                Ok(back) => assert_eq!(back, spec, "printed as:\n{printed}"),
                Err(e) => panic!("the printed spec does not read back: {e}\n{printed}"),
            }
            for os in [DockerOs::Unix, DockerOs::Windows] {
                for buildkit in [false, true] {
                    let _ = to_dockerfile(&spec, buildkit, os);
                }
            }
        }
        Err(e) => {
            let _ = e.render(source, "fuzz.spec");
        }
    }
    if let Ok(all) = sexp::parse_all(source) {
        for tree in all {
            let printed = tree.to_string();
            let back = sexp::parse_one(&printed)
                .unwrap_or_else(|e| panic!("printed tree does not read back: {e}\n{printed}"));
            assert!(back.eq_ignoring_spans(&tree), "printed as {printed}");
        }
    }
});
