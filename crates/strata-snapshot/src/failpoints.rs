//! Named crash points between the engine's effects, for the crash tests. Compiled only with
//! the `failpoints` feature (see the engine's module docs): a process that embeds Strata must
//! never abort because an environment variable happens to be set.

use std::sync::OnceLock;

/// Every named failpoint, in roughly the order a workload meets them. `<op>.<mode>.<step>`
/// names the step just completed.
pub const FAILPOINTS: &[&str] = &[
    "import.stored",
    "import.recorded",
    "checkout.portable.state",
    "checkout.portable.row",
    "unpack.extracted",
    "unpack.renamed",
    "checkout.portable.unpacked",
    "checkout.portable.materialized",
    "checkout.portable.done",
    "commit.portable.stored",
    "commit.portable.recorded",
    "discard.portable.abandoned",
    "discard.portable.removed",
    "discard.portable.state",
    "trash.claimed",
    "checkout.overlay.state",
    "checkout.overlay.row",
    "checkout.overlay.unpacked",
    "checkout.overlay.relocated",
    "checkout.overlay.mounted",
    "commit.overlay.unmounted",
    "commit.overlay.stored",
    "commit.overlay.recorded",
    "commit.overlay.renamed",
    "commit.overlay.marked",
    "discard.overlay.unmounted",
    "discard.overlay.abandoned",
    "discard.overlay.removed",
    "discard.overlay.state",
    "prune.removed",
    "gc.row",
    "gc.blob",
];

/// Aborts the process if `STRATA_FAILPOINT` names this point: crash tests use it to die
/// between two effects. The variable is read once; otherwise this is one load and a branch.
pub(crate) fn failpoint(name: &'static str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    debug_assert!(FAILPOINTS.contains(&name), "failpoint {name} is not listed");
    let armed = ARMED.get_or_init(|| std::env::var("STRATA_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        std::process::abort();
    }
}
