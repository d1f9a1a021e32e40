//! What a build tells its caller as it goes: structured [`Event`]s for embedders, and the
//! OBuilder-style text transcript as one consumer of them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use strata_snapshot::SnapshotId;

use crate::key::StepKey;

/// One thing that happened in a build. Events of one build arrive in order, from the thread
/// that called [`Builder::build`](crate::Builder::build).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A stage (or the spec itself, `stage: None`) starts from its base snapshot.
    StageStarted {
        stage: Option<String>,
        /// The `(from …)` image.
        from: String,
        base: SnapshotId,
    },
    /// A step starts. Every op is a step, those that only change the context (`workdir`,
    /// `env`, …) included; only `run` and `copy` have a key and end with a result.
    StepStarted(StepInfo),
    /// Output of a step: live, followed from a concurrent build of the same step, or
    /// replayed from the cache. Secrets are masked and the log limit applies.
    Log {
        step: u32,
        #[serde(serialize_with = "lossy_text")]
        data: Vec<u8>,
    },
    /// Long work of a step goes on: sent every quarter second or so while it lasts.
    Progress {
        step: u32,
        task: Task,
        /// Bytes done so far.
        done: u64,
        /// Bytes in all, where known (an estimate that `done` may pass).
        total: Option<u64>,
    },
    /// A remark on a step (another build's attempt at it failed, say).
    Note { step: u32, text: String },
    /// The step's result was already there.
    CacheHit {
        step: u32,
        snapshot: SnapshotId,
        source: HitSource,
    },
    /// The step ran here and its result was saved.
    Saved {
        step: u32,
        snapshot: SnapshotId,
        /// The compressed size of the layer the step added.
        layer_bytes: u64,
        #[serde(serialize_with = "millis")]
        duration: Duration,
    },
    /// The step failed; nothing of it was cached.
    Failed { step: u32, error: String },
    /// The build finished with this snapshot.
    Finished {
        snapshot: SnapshotId,
        hits: u64,
        misses: u64,
        #[serde(serialize_with = "millis")]
        duration: Duration,
    },
}

/// A step as it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StepInfo {
    /// Numbers the steps of one build from 0, stages included, in the order they start.
    pub step: u32,
    /// The stage the step belongs to; `None` for the spec's own steps.
    pub stage: Option<String>,
    /// The working directory the step sees.
    pub workdir: String,
    /// The op, as the spec would print it: `(run (shell "make"))`.
    pub op: String,
    /// The cache key (`run` and `copy` only).
    pub key: Option<StepKey>,
}

/// Long work a step reports [progress](Event::Progress) of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Task {
    /// Storing the step's changes as a layer (uncompressed bytes).
    Commit,
}

/// Where a cache hit came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HitSource {
    /// This store's step cache.
    Local,
    /// Another build running the same step at the same time, in this process or another one
    /// sharing the store: this build waited for it.
    Concurrent,
    /// A shared cache (`--cache-from`, an OCI registry): the step ran on another builder,
    /// its snapshot was pulled into this store.
    Registry,
}

/// Where a build's events go. Called from the building thread; keep it quick (hand heavy
/// work to another thread).
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

/// A reporter that drops everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event) {}
}

impl<R: Reporter + ?Sized> Reporter for Arc<R> {
    fn event(&self, event: &Event) {
        (**self).event(event);
    }
}

/// Renders events as OBuilder prints a build: a heading per step, its output, then
/// `---> saved as "<id>"` or `---> using "<id>" from cache`. Returns the bytes to show.
pub fn render_text(event: &Event) -> Vec<u8> {
    match event {
        Event::StageStarted { from, base, .. } => format!(
            "(from {})\n---> using \"{base}\" from cache\n",
            strata_spec::sexp::quote_atom(from)
        )
        .into_bytes(),
        Event::StepStarted(info) => format!("{}: {}\n", info.workdir, info.op).into_bytes(),
        Event::Log { data, .. } => data.clone(),
        Event::Note { text, .. } => format!("---> {text}\n").into_bytes(),
        Event::Saved { snapshot, .. } => format!("---> saved as \"{snapshot}\"\n").into_bytes(),
        // Whether it was recorded before or by a concurrent build this one waited for, this
        // build did not save it.
        Event::CacheHit {
            snapshot,
            source: HitSource::Registry,
            ..
        } => format!("---> using \"{snapshot}\" from the registry cache\n").into_bytes(),
        Event::CacheHit { snapshot, .. } => {
            format!("---> using \"{snapshot}\" from cache\n").into_bytes()
        }
        // Progress is for live displays; the transcript is what a build printed.
        Event::Progress { .. } | Event::Failed { .. } | Event::Finished { .. } => Vec::new(),
    }
}

/// A [`Reporter`] that keeps the events and the text transcript ([`render_text`]), for
/// embedders that show a build later and for tests. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Transcript(Arc<Mutex<Recorded>>);

#[derive(Debug, Default)]
struct Recorded {
    text: Vec<u8>,
    events: Vec<Event>,
}

impl Transcript {
    pub fn new() -> Transcript {
        Transcript::default()
    }

    /// The transcript so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().text).into_owned()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reporter for Transcript {
    fn event(&self, event: &Event) {
        let mut r = self.lock();
        r.text.extend(render_text(event));
        r.events.push(event.clone());
    }
}

fn lossy_text<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(data))
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_tagged_json_lines() {
        let id = SnapshotId::derive(None, &strata_cas::LayerId::of(b""));
        let e = Event::Log {
            step: 3,
            data: b"hi\xff\n".to_vec(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"log","step":3,"data":"hi\u{fffd}\n"}"#.replace("\\u{fffd}", "\u{fffd}")
        );
        let e = Event::Saved {
            step: 1,
            snapshot: id,
            layer_bytes: 10,
            duration: Duration::from_millis(1500),
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "saved");
        assert_eq!(v["snapshot"], id.to_hex());
        assert_eq!(v["duration"], 1500);
        let e = Event::CacheHit {
            step: 0,
            snapshot: id,
            source: HitSource::Local,
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["source"], "local");
    }

    #[test]
    fn the_transcript_reads_as_obuilder_prints() {
        let id = SnapshotId::derive(None, &strata_cas::LayerId::of(b""));
        let t = Transcript::new();
        t.event(&Event::StageStarted {
            stage: None,
            from: "busybox".into(),
            base: id,
        });
        t.event(&Event::StepStarted(StepInfo {
            step: 0,
            stage: None,
            workdir: "/src".into(),
            op: "(run (shell \"make\"))".into(),
            key: None,
        }));
        t.event(&Event::Log {
            step: 0,
            data: b"built\n".to_vec(),
        });
        t.event(&Event::Saved {
            step: 0,
            snapshot: id,
            layer_bytes: 1,
            duration: Duration::ZERO,
        });
        assert_eq!(
            t.text(),
            format!(
                "(from busybox)\n---> using \"{id}\" from cache\n/src: (run (shell \"make\"))\n\
                 built\n---> saved as \"{id}\"\n"
            )
        );
        assert_eq!(t.events().len(), 4);
    }
}
