//! The structured events a build reports, as an embedder sees them.

use strata_build::{Event, HitSource, StepInfo, Task};

use crate::common::{Fixture, SH, build_events, runc_ready};

fn started(events: &[Event]) -> Vec<&StepInfo> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted(info) => Some(info),
            _ => None,
        })
        .collect()
}

#[test]
fn a_build_reports_stages_steps_results_and_its_end() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[("a.txt", "a")]);
    let spec = format!(
        r#"((build tools ((from busybox) {SH} (run (shell "echo tool > /tool"))))
            (from busybox) {SH}
            (workdir /src)
            (copy (src a.txt) (dst a.txt))
            (copy (from (build tools)) (src /tool) (dst /tool))
            (run (shell "echo made; cat a.txt")))"#
    );
    let (r, events) = build_events(&f.builder, &spec, &ctx);
    let id = r.unwrap();
    let stages: Vec<Option<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::StageStarted { stage, .. } => Some(stage.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(stages, vec![Some("tools".to_owned()), None]);
    let steps = started(&events);
    let ops: Vec<(u32, Option<&str>, bool)> = steps
        .iter()
        .map(|s| (s.step, s.stage.as_deref(), s.key.is_some()))
        .collect();
    // shell, run in the stage; shell, workdir, copy, copy, run in the spec.
    assert_eq!(
        ops,
        vec![
            (0, Some("tools"), false),
            (1, Some("tools"), true),
            (2, None, false),
            (3, None, false),
            (4, None, true),
            (5, None, true),
            (6, None, true),
        ]
    );
    assert_eq!(steps[3].op, "(workdir /src)");
    assert_eq!(steps[4].workdir, "/src");
    let saved: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Saved {
                step, layer_bytes, ..
            } => Some((*step, *layer_bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(saved.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 4, 5, 6]);
    assert!(saved.iter().all(|s| s.1 > 0), "{saved:?}");
    let log: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::Log { step: 6, data } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(log, b"made\na");
    match events.last() {
        Some(Event::Finished {
            snapshot,
            hits,
            misses,
            ..
        }) => {
            assert_eq!(*snapshot, id);
            assert_eq!((*hits, *misses), (0, 4));
        }
        other => panic!("the last event is {other:?}"),
    }

    // Again: every keyed step is a local hit, and its log is replayed as log events.
    let (r, again) = build_events(&f.builder, &spec, &ctx);
    assert_eq!(r.unwrap(), id);
    let hits: Vec<(u32, HitSource)> = again
        .iter()
        .filter_map(|e| match e {
            Event::CacheHit { step, source, .. } => Some((*step, source.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        hits,
        [1, 4, 5, 6].map(|s| (s, HitSource::Local)).to_vec(),
        "{again:?}"
    );
    assert!(
        again
            .iter()
            .any(|e| matches!(e, Event::Log { step: 6, .. }))
    );
    assert!(matches!(
        again.last(),
        Some(Event::Finished {
            hits: 4,
            misses: 0,
            ..
        })
    ));
}

#[test]
fn a_failing_step_reports_its_failure_and_no_end() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    let ctx = f.context(&[]);
    let spec = format!(r#"((from busybox) {SH} (run (shell "echo oops; exit 3")))"#);
    let (r, events) = build_events(&f.builder, &spec, &ctx);
    let e = r.unwrap_err();
    match events.last() {
        Some(Event::Failed { step: 1, error }) => {
            assert_eq!(*error, e.to_string());
            assert!(error.contains("exited with status 3"), "{error}");
        }
        other => panic!("the last event is {other:?}"),
    }
    assert!(!events.iter().any(|e| matches!(e, Event::Finished { .. })));
    // JSON lines, as `strata build --progress json` prints them.
    for e in &events {
        let v = serde_json::to_value(e).unwrap();
        assert!(v["event"].is_string(), "{v}");
    }
}

#[test]
fn a_large_commit_reports_its_progress() {
    if !runc_ready() {
        return;
    }
    let f = Fixture::new();
    // Incompressible, so that the commit takes a while even on a fast machine, and larger
    // than one 8 MiB chunk, so that the counter moves while it runs.
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let ctx = f.context(&[]);
    std::fs::write(ctx.join("big.bin"), &data).unwrap();
    let spec = strata_spec::parse(&format!(
        r#"((from busybox) {SH} (copy (src big.bin) (dst /big.bin)))"#
    ))
    .unwrap();
    let log = strata_build::Transcript::new();
    let opts = strata_build::BuildOptions::new(&ctx)
        .reporter(log.clone())
        .progress_every(std::time::Duration::from_millis(1));
    f.builder.build(&spec, &opts).unwrap();
    let events = log.events();
    let copy = started(&events)
        .into_iter()
        .find(|s| s.op.starts_with("(copy"))
        .unwrap()
        .step;
    let progress: Vec<(u64, Option<u64>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                step,
                task: Task::Commit,
                done,
                total,
            } => {
                assert_eq!(*step, copy, "progress of another step: {e:?}");
                Some((*done, *total))
            }
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty(), "no progress events: {events:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress went back: {progress:?}"
    );
    let (_, total) = progress.last().unwrap();
    assert!(
        total.is_some_and(|t| t >= data.len() as u64),
        "the total covers the file: {progress:?}"
    );
    // Progress comes between the step's start and its result, and prints nothing.
    let at = |pred: &dyn Fn(&Event) -> bool| events.iter().position(pred).unwrap();
    let first = at(&|e| matches!(e, Event::Progress { .. }));
    let saved = at(&|e| matches!(e, Event::Saved { step, .. } if *step == copy));
    assert!(first < saved);
    assert!(strata_build::render_text(&events[first]).is_empty());
}
