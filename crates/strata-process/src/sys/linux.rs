//! Linux: state and start time from `/proc/<pid>/stat`; without `/proc` (a chroot), signal 0.

use std::io;
use std::path::Path;

use crate::State;

pub(crate) fn state(pid: u32) -> State {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match parse_stat(&stat) {
            // Zombie, or dead and about to go.
            Some(('Z' | 'X' | 'x', _)) => State::Gone,
            Some((_, start_time)) => State::Running { start_time },
            // Unparsable: the process exists, its start time is unknown.
            None => State::Running { start_time: 0 },
        },
        // Without /proc absence proves nothing: ask the kernel instead.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !proc_mounted() => super::unix::state(pid),
        Err(e) if e.kind() == io::ErrorKind::NotFound => State::Gone,
        // Unsure (permissions, say).
        Err(_) => State::Unknown,
    }
}

/// `(state, start time)` from the text of `/proc/<pid>/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?; // field 3
    let start = fields.nth(18)?.parse().ok()?; // field 22
    Some((state, start))
}

fn proc_mounted() -> bool {
    Path::new("/proc/self/stat").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        // Field 22 is 4242; the command name has spaces and a `)`.
        let stat = "123 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 19 20";
        assert_eq!(parse_stat(stat), Some(('S', 4242)));
        let zombie = "9 (true) Z 1 9 9 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert_eq!(parse_stat(zombie), Some(('Z', 77)));
        assert_eq!(parse_stat("9 (x) S 1 2"), None);
        assert_eq!(parse_stat("no paren"), None);
    }
}
