//! A counter that long operations (storing a layer, importing, exporting, pushing) advance
//! and a display on another thread reads, so a caller can show progress without callbacks
//! on the hot path.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes done out of an optional total. Cloning shares the counter. The default counts
/// nothing and costs nothing: operations given it do no atomic work at all.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Counters>>);

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    /// `u64::MAX` while unknown.
    total: AtomicU64,
}

impl Progress {
    /// A counter at zero of an unknown total.
    pub fn new() -> Progress {
        Progress(Some(Arc::new(Counters {
            done: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
        })))
    }

    /// Whether anything reads this counter (false for the default, which counts nothing).
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// Counts `n` more bytes done.
    pub fn advance(&self, n: u64) {
        if let Some(c) = &self.0 {
            c.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sets how many bytes the whole operation is, once known.
    pub fn set_total(&self, total: u64) {
        if let Some(c) = &self.0 {
            c.total.store(total.min(u64::MAX - 1), Ordering::Relaxed);
        }
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |c| c.done.load(Ordering::Relaxed))
    }

    /// The total, where known.
    pub fn total(&self) -> Option<u64> {
        let total = self.0.as_ref()?.total.load(Ordering::Relaxed);
        (total != u64::MAX).then_some(total)
    }
}

/// Two handles are equal when they share one counter (or both count nothing), so options
/// holding a `Progress` stay comparable.
impl PartialEq for Progress {
    fn eq(&self, other: &Progress) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Progress {}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Progress(inactive)"),
            Some(_) => f
                .debug_struct("Progress")
                .field("done", &self.done())
                .field("total", &self.total())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_counter_and_the_default_counts_nothing() {
        let p = Progress::new();
        let q = p.clone();
        assert_eq!(p.total(), None);
        q.advance(5);
        q.set_total(10);
        assert_eq!((p.done(), p.total()), (5, Some(10)));
        assert_eq!(p, q);
        assert_ne!(p, Progress::new());

        let none = Progress::default();
        none.advance(5);
        none.set_total(1);
        assert!(!none.is_active());
        assert_eq!((none.done(), none.total()), (0, None));
        assert_eq!(none, Progress::default());
    }
}
