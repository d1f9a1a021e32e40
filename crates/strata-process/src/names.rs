//! The one encoding of an owner in a name: `<prefix><pid>.<start time>-<n>`.
//!
//! Strata names things a process makes and may leave behind (state directories, unpacks in
//! progress, sandbox containers and bundles) after their owner, so another process can tell
//! a dead owner's leftovers from a live owner's work by the name alone. `n` keeps one
//! process's names apart.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Owner;

/// `<prefix><owner>-<n>` for the calling process: the owner is written as `<pid>.<start
/// time>` ([`Owner`]'s `Display`). `n` must be unique among the names this process makes
/// with `prefix`; [`unique_name`] picks it.
pub fn owned_name(prefix: &str, n: u64) -> String {
    format!("{prefix}{}-{n}", Owner::current())
}

/// [`owned_name`] with a counter shared by the whole process, so every call returns a new
/// name.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    owned_name(prefix, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The owner of a name made by [`owned_name`] with `prefix`; also of names older Strata
/// versions made, `<prefix><pid>-<n>` and `<prefix><pid>-<millis>-<n>`, whose start time is
/// unknown (0: any process with the pid counts as the owner). `None` for any other name.
pub fn name_owner(name: &str, prefix: &str) -> Option<Owner> {
    let rest = name.strip_prefix(prefix)?;
    let (owner, counters) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !counters.split('-').all(digits) {
        return None;
    }
    owner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_maker_and_read_back() {
        let a = unique_name("c-");
        let b = unique_name("c-");
        assert_ne!(a, b);
        assert_eq!(name_owner(&a, "c-"), Some(Owner::current()));
        assert_eq!(name_owner(&a, "x-"), None, "another prefix");
        let me = Owner::current();
        assert_eq!(
            owned_name("strata-", 7),
            format!("strata-{}.{}-7", me.pid, me.start_time)
        );
        assert_eq!(
            name_owner("strata-12.345-0", "strata-"),
            Some(Owner::new(12, 345))
        );
        assert_eq!(name_owner("12.345-9", ""), Some(Owner::new(12, 345)));
    }

    #[test]
    fn older_pid_only_names_are_read_with_an_unknown_start_time() {
        assert_eq!(
            name_owner("strata-12-0", "strata-"),
            Some(Owner::new(12, 0))
        );
        assert_eq!(
            name_owner("tmp-77-1712345678901-3", "tmp-"),
            Some(Owner::new(77, 0))
        );
    }

    #[test]
    fn other_names_have_no_owner() {
        for bad in [
            "strata-12",
            "strata--1",
            "strata-+1-2",
            "strata-1-",
            "strata-1--2",
            "strata-1.-2",
            "strata-1.2.3-4",
            "strata-1-x",
            "other-1-2",
            "not-ours",
        ] {
            assert_eq!(name_owner(bad, "strata-"), None, "{bad}");
        }
    }
}
