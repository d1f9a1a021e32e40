//! The extraction policies both OS engines share, so that a layer is judged alike on every
//! OS: what an entry may be (device nodes, setuid bits, file capabilities, overlayfs's
//! attributes), which paths this layer has made (duplicates, whiteouts of its own entries,
//! files used as directories), the bounded cache of resolved directories, and how a failed
//! entry becomes an error. The engines (`unix.rs`, `windows.rs`) only create what these
//! rules let through, each with its OS's calls.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;

use super::{DevicePolicy, ExtractOptions, ExtractReport, SetuidPolicy, Skipped};
use crate::{Entry, EntryKind, EntryProblem, Error};

/// Resolved directories kept at most in a [`DirCache`].
const DIR_CACHE_MAX: usize = 512;
/// Symlinks followed while resolving one path at most (Linux's own limit).
pub(super) const MAX_SYMLINK_HOPS: u32 = 40;

/// What this layer put at a path, to refuse duplicates and conflicting children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    /// An explicit directory entry.
    Dir,
    /// A directory this layer created or walked through without an entry of its own.
    ImplicitDir,
    /// A regular file or a hard link (on Unix possibly still being written by the pool).
    File,
    /// A symlink.
    Symlink,
    /// A device, a fifo, or a whiteout or opaque marker.
    Other,
}

/// What this layer made, by the engine's key of each path (a hash of the path; on Windows
/// of its case-folded form, since Windows compares names that way).
#[derive(Debug, Default)]
pub(super) struct Ledger {
    made: HashMap<u128, Made>,
}

impl Ledger {
    /// Records a whiteout or opaque marker: one twice is a duplicate path like any other
    /// (and each opaque marker would list its directory again).
    pub(super) fn marker(&mut self, key: u128) -> Result<(), EntryProblem> {
        match self.made.insert(key, Made::Other) {
            Some(_) => Err(EntryProblem::Duplicate),
            None => Ok(()),
        }
    }

    /// Refuses an entry at a path this layer already made, but for a directory entry where
    /// the layer only walked through one.
    pub(super) fn check_new(&self, key: u128, kind: &EntryKind) -> Result<(), EntryProblem> {
        match self.made.get(&key) {
            None => Ok(()),
            Some(Made::ImplicitDir) if *kind == EntryKind::Dir => Ok(()),
            Some(_) => Err(EntryProblem::Duplicate),
        }
    }

    /// Refuses a whiteout of a path this layer made itself.
    pub(super) fn check_whiteout(&self, key: u128) -> Result<(), EntryProblem> {
        match self.made.contains_key(&key) {
            true => Err(EntryProblem::WhiteoutOfOwnEntry),
            false => Ok(()),
        }
    }

    /// Refuses walking through a path this layer made as something other than a directory
    /// or a symlink.
    pub(super) fn check_parent(&self, key: u128) -> Result<(), EntryProblem> {
        match self.made.get(&key) {
            Some(Made::File | Made::Other) => Err(EntryProblem::ParentNotDirectory),
            _ => Ok(()),
        }
    }

    /// Records what an entry became.
    pub(super) fn record(&mut self, key: u128, made: Made) {
        self.made.insert(key, made);
    }

    /// Records a directory walked through (or made opaque) without an entry of its own.
    pub(super) fn walked(&mut self, key: u128) {
        self.made.entry(key).or_insert(Made::ImplicitDir);
    }

    pub(super) fn get(&self, key: u128) -> Option<Made> {
        self.made.get(&key).copied()
    }

    pub(super) fn contains(&self, key: u128) -> bool {
        self.made.contains_key(&key)
    }
}

/// What the OS an engine runs on can hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Host {
    /// Why device nodes and fifos cannot be made here (with [`DevicePolicy::Create`]), or
    /// `None` where they can. Where they cannot, fifos follow the device policy too.
    pub(super) no_nodes: Option<&'static str>,
    /// Which extended attributes can be restored.
    pub(super) xattrs: Xattrs,
}

/// Which extended attributes an extraction restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Xattrs {
    /// All of them (Unix, as root).
    #[cfg_attr(windows, allow(dead_code, reason = "Windows restores none"))]
    All,
    /// All but `security.*` and `trusted.*`, which need privileges (Unix, not root).
    #[cfg_attr(windows, allow(dead_code, reason = "Windows restores none"))]
    Unprivileged,
    /// None: the note says why (recorded in the report for each entry that had some).
    #[cfg_attr(unix, allow(dead_code, reason = "only Windows drops every attribute"))]
    Dropped(&'static str),
}

/// Applies the overlayfs-attribute, device, setuid and xattr policies to an entry before
/// it is created, noting in `report` what was left out. Returns whether to create it.
pub(super) fn check_policies(
    opts: &ExtractOptions,
    host: Host,
    entry: &mut Entry,
    report: &mut ExtractReport,
) -> Result<bool, EntryProblem> {
    if let Some((name, _)) = entry
        .meta
        .xattrs
        .iter()
        .find(|(n, _)| crate::tar::overlay_xattr(n))
    {
        return Err(EntryProblem::ForbiddenXattr(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    let special = match entry.kind {
        EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } => Some("device node"),
        EntryKind::Fifo if host.no_nodes.is_some() => Some("fifo"),
        _ => None,
    };
    if let Some(noun) = special {
        match (opts.devices, host.no_nodes) {
            (DevicePolicy::Refuse, _) => return Err(EntryProblem::DeviceRefused),
            (DevicePolicy::Skip, _) => {
                skip(report, &entry.path, &format!("{noun} skipped"));
                return Ok(false);
            }
            (DevicePolicy::Create, Some(why)) => return Err(EntryProblem::NotSupportedHere(why)),
            (DevicePolicy::Create, None) => {}
        }
    }
    let privileged_bits = entry.kind != EntryKind::Dir && entry.meta.mode & 0o6000 != 0;
    let capability = entry
        .meta
        .xattrs
        .iter()
        .any(|(n, _)| n == b"security.capability");
    if privileged_bits || capability {
        match opts.setuid {
            SetuidPolicy::Refuse => return Err(EntryProblem::SetuidRefused),
            SetuidPolicy::Strip => {
                entry.meta.mode &= !0o6000;
                entry
                    .meta
                    .xattrs
                    .retain(|(n, _)| n != b"security.capability");
                skip(
                    report,
                    &entry.path,
                    "setuid/setgid bits or file capability stripped",
                );
            }
            SetuidPolicy::Keep => {}
        }
    }
    match host.xattrs {
        Xattrs::All => {}
        Xattrs::Unprivileged => {
            // Without privilege, security.* and trusted.* cannot be set; say so.
            let before = entry.meta.xattrs.len();
            entry
                .meta
                .xattrs
                .retain(|(n, _)| !(n.starts_with(b"security.") || n.starts_with(b"trusted.")));
            if entry.meta.xattrs.len() != before {
                skip(
                    report,
                    &entry.path,
                    "privileged xattrs not restored (not running as root)",
                );
            }
        }
        Xattrs::Dropped(why) => {
            if !entry.meta.xattrs.is_empty() {
                entry.meta.xattrs.clear();
                skip(report, &entry.path, why);
            }
        }
    }
    Ok(true)
}

/// Notes in the report an entry left out or changed by a policy.
pub(super) fn skip(report: &mut ExtractReport, path: &[u8], reason: &str) {
    report.skipped.push(Skipped {
        path: path.to_vec(),
        reason: reason.to_owned(),
    });
}

/// Resolved directories (handles on Unix, real paths on Windows) by the layer path they
/// were resolved from; emptied when full, and by the engine whenever something it holds
/// may have been replaced.
#[derive(Debug)]
pub(super) struct DirCache<K, V> {
    map: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Clone> DirCache<K, V> {
    pub(super) fn new() -> Self {
        DirCache {
            map: HashMap::new(),
        }
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).cloned()
    }

    pub(super) fn insert(&mut self, key: K, value: V) {
        if self.map.len() >= DIR_CACHE_MAX {
            self.map.clear();
        }
        self.map.insert(key, value);
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
    }

    #[cfg_attr(unix, allow(dead_code, reason = "the Windows engine checks its keys"))]
    pub(super) fn any_key(&self, f: impl FnMut(&K) -> bool) -> bool {
        self.map.keys().any(f)
    }
}

/// The `op` of an [`EntryProblem::Io`] that wraps a stream error (see [`stream_problem`]).
const STREAM_OP: &str = "read entry data";

/// A failure to read the stream in the middle of an entry's data, carried as the entry's
/// problem until [`entry_error`] turns it back into the stream's error.
pub(super) fn stream_problem(e: Error) -> EntryProblem {
    EntryProblem::Io {
        op: STREAM_OP,
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

/// The error for an entry that failed: its problem, naming the entry as the tar has it;
/// but a failure to read the stream mid-entry is the stream's fault, not the entry's.
pub(super) fn entry_error(raw_name: &[u8], problem: EntryProblem) -> Error {
    match problem {
        EntryProblem::Io {
            op: STREAM_OP,
            source,
        } if source.get_ref().is_some_and(|i| i.is::<Error>()) => *source
            .into_inner()
            .expect("checked")
            .downcast::<Error>()
            .expect("checked"),
        problem => Error::entry(raw_name, problem),
    }
}
