//! Tracing: a checkpoint is a span from trigger to completion (with its id), a restore a span
//! with the checkpoint it used, each task incarnation a span of its life with its attempt, and
//! a failure an event with its class, inside the failing task's span. Read here by a plain
//! `tracing-subscriber` layer, as a user's own setup would see them.

mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snapflow::checkpoint::CheckpointTiming;
use snapflow::log::GeneratorLog;
use snapflow::prelude::*;
use snapflow::CollectSink;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// "name k=v k=v" of a span or an event.
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

/// Records every new span and every event, with the names of the spans around the event.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut f = Fields(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut f);
        self.0.lock().expect("lock").push(f.0);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let scope: Vec<String> = ctx
            .event_scope(event)
            .map(|s| s.from_root().map(|span| span.name().to_string()).collect())
            .unwrap_or_default();
        let mut f = Fields(format!(
            "event [{}] {}",
            scope.join("/"),
            event.metadata().level()
        ));
        event.record(&mut f);
        self.0.lock().expect("lock").push(f.0);
    }
}

#[actix_rt::test]
async fn checkpoints_restores_and_task_lives_are_spans_and_failures_carry_their_class() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .expect("the only subscriber of this test binary");
    let config = JobConfig {
        parallelism: 1,
        threads: Threads::Arbiters(2),
        checkpoints: CheckpointTiming::every(Duration::from_millis(10)),
        // Short queues: a barrier waits behind few records, so checkpoints complete before
        // the failure.
        batch_size: 16,
        channel_capacity: 2,
        ..JobConfig::default()
    };
    let job = common::memory_job("traced", config);
    let failed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&failed);
    job.source(
        "numbers",
        LogSource::with_decoder(
            Arc::new(GeneratorLog::numbers(1, Some(20_000))),
            GeneratorLog::number,
        )
        .bounded(),
    )
    .map("boom", move |x: u64| {
        if x % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        if x == 15_000 && !flag.swap(true, Ordering::Relaxed) {
            panic!("an injected failure");
        }
        x
    })
    .sink("out", CollectSink::new());
    let report = common::run_to_end(job)
        .await
        .expect("the job recovers and ends");
    assert!(
        failed.load(Ordering::Relaxed) && report.restarts == 1,
        "{report:?}"
    );
    let lines = recorder.0.lock().expect("lock").clone();
    let has = |what: &str, parts: &[&str]| {
        lines
            .iter()
            .any(|l| l.starts_with(what) && parts.iter().all(|p| l.contains(p)))
    };
    let dump = || lines.join("\n");
    assert!(
        has("span checkpoint", &["job=traced", "id=1"]),
        "{}",
        dump()
    );
    assert!(
        has(
            "event [checkpoint]",
            &["checkpoint completed", "duration_ms="]
        ),
        "a checkpoint's completion is inside its span:\n{}",
        dump()
    );
    assert!(
        has("span task", &["task=boom[0]", "attempt=0"]),
        "{}",
        dump()
    );
    assert!(
        has("span task", &["task=boom[0]", "attempt=1"]),
        "the restarted incarnation:\n{}",
        dump()
    );
    assert!(
        has(
            "event [task] ERROR",
            &["task failed", "class=Restart", "an injected failure"]
        ),
        "the failure, with its class, inside the task's span:\n{}",
        dump()
    );
    assert!(has("span restore", &["job=traced"]), "{}", dump());
    assert!(
        has(
            "event [restore]",
            &["region restored and running", "checkpoint=Some("]
        ),
        "the restore names the checkpoint it used:\n{}",
        dump()
    );
}
