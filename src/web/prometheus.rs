//! `/metrics`: every job's metrics in the OpenMetrics text format, which Prometheus scrapes.
//!
//! Names follow Prometheus' conventions: `snapflow_` first, the unit in the name
//! (`_seconds`, `_bytes`), `_total` on counters (prometheus-client's encoder adds it, with the
//! `# TYPE`, `# HELP` and `# UNIT` lines and label escaping). Every series carries a `job`
//! label; task series add `vertex` and `task` (the index), source series `partition`.

use actix_web::{web, HttpResponse};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::WebView;
use crate::runtime::metrics::{MetricsSnapshot, SourcePartitionMetrics, TaskMetrics};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn metrics(view: web::Data<WebView>) -> HttpResponse {
    match encode(&view) {
        Ok(body) => HttpResponse::Ok().content_type(CONTENT_TYPE).body(body),
        Err(_) => HttpResponse::InternalServerError()
            .content_type("text/plain; charset=utf-8")
            .body("metrics could not be encoded\n"),
    }
}

/// The text exposition of every job of `view`.
pub(super) fn encode(view: &WebView) -> Result<String, std::fmt::Error> {
    let snapshots = view.jobs().iter().map(|j| j.metrics()).collect();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshots(snapshots)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Snapshots(Vec<MetricsSnapshot>);

type Labels = Vec<(&'static str, String)>;

fn task_labels(job: &str, t: &TaskMetrics) -> Labels {
    vec![
        ("job", job.to_string()),
        ("vertex", t.task.vertex.clone()),
        ("task", t.task.index.to_string()),
    ]
}

fn source_labels(job: &str, s: &SourcePartitionMetrics) -> Labels {
    vec![
        ("job", job.to_string()),
        ("vertex", s.task.vertex.clone()),
        ("task", s.task.index.to_string()),
        ("partition", s.partition.0.to_string()),
    ]
}

/// One metric family: its name, help, unit, and a value per label set.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    values: Vec<(Labels, f64)>,
}

impl<'a> Family<'a> {
    fn new(name: &'a str, help: &'a str, unit: Option<Unit>) -> Family<'a> {
        Family {
            name,
            help,
            unit,
            values: Vec::new(),
        }
    }

    fn counter(self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            self.name,
            self.help,
            self.unit.as_ref(),
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (labels, v) in &self.values {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauge(self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            self.name,
            self.help,
            self.unit.as_ref(),
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        for (labels, v) in &self.values {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// A per-task family: `f` gives each task's value (or none).
fn per_task<'a>(
    jobs: &[MetricsSnapshot],
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    f: impl Fn(&TaskMetrics) -> Option<f64>,
) -> Family<'a> {
    let mut family = Family::new(name, help, unit);
    for m in jobs {
        for t in &m.tasks {
            if let Some(v) = f(t) {
                family.values.push((task_labels(&m.job, t), v));
            }
        }
    }
    family
}

/// A per-job family.
fn per_job<'a>(
    jobs: &[MetricsSnapshot],
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    f: impl Fn(&MetricsSnapshot) -> Option<f64>,
) -> Family<'a> {
    let mut family = Family::new(name, help, unit);
    for m in jobs {
        if let Some(v) = f(m) {
            family.values.push((vec![("job", m.job.clone())], v));
        }
    }
    family
}

impl Collector for Snapshots {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let jobs = &self.0;
        encode_tasks(jobs, &mut e)?;
        encode_sources(jobs, &mut e)?;
        encode_checkpoints(jobs, &mut e)?;
        encode_job(jobs, &mut e)
    }
}

/// Counter or gauge.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// A per-task metric: name, help, unit, kind, and the value of a task.
type TaskSpec = (
    &'static str,
    &'static str,
    Option<fn() -> Unit>,
    Kind,
    fn(&TaskMetrics) -> Option<f64>,
);

const TASK_METRICS: &[TaskSpec] = &[
    (
        "snapflow_task_records_in",
        "Records a task received (a source: read from its log).",
        None,
        Kind::Counter,
        |t| Some(t.records_in as f64),
    ),
    (
        "snapflow_task_records_out",
        "Records a task emitted.",
        None,
        Kind::Counter,
        |t| Some(t.records_out as f64),
    ),
    (
        "snapflow_task_late_records",
        "Records dropped for arriving after their window's allowed lateness.",
        None,
        Kind::Counter,
        |t| Some(t.late_records as f64),
    ),
    (
        "snapflow_task_busy",
        "Time a task spent handling input and emitting.",
        Some(|| Unit::Seconds),
        Kind::Counter,
        |t| Some(t.busy_time.as_secs_f64()),
    ),
    (
        "snapflow_task_backpressured",
        "Time a task spent waiting on a full output channel.",
        Some(|| Unit::Seconds),
        Kind::Counter,
        |t| Some(t.backpressure_time.as_secs_f64()),
    ),
    (
        "snapflow_task_records_in_per_second",
        "Records received per second over the last rate window.",
        None,
        Kind::Gauge,
        |t| Some(t.records_in_per_second),
    ),
    (
        "snapflow_task_records_out_per_second",
        "Records emitted per second over the last rate window.",
        None,
        Kind::Gauge,
        |t| Some(t.records_out_per_second),
    ),
    (
        "snapflow_task_busy_ratio",
        "Share of the last rate window spent busy.",
        None,
        Kind::Gauge,
        |t| Some(t.busy_ratio),
    ),
    (
        "snapflow_task_backpressure_ratio",
        "Share of the last rate window spent waiting on a full output channel.",
        None,
        Kind::Gauge,
        |t| Some(t.backpressure_ratio),
    ),
    (
        "snapflow_task_idle_ratio",
        "Share of the last rate window spent waiting for input.",
        None,
        Kind::Gauge,
        |t| Some(t.idle_ratio),
    ),
    (
        "snapflow_task_input_queue_batches",
        "Batches queued on a task's input channels.",
        None,
        Kind::Gauge,
        |t| Some(t.input_queued as f64),
    ),
    (
        "snapflow_task_input_capacity_batches",
        "Capacity of a task's input channels, in batches.",
        None,
        Kind::Gauge,
        |t| Some(t.input_capacity as f64),
    ),
    (
        "snapflow_task_watermark_timestamp",
        "A task's event-time watermark, since the Unix epoch.",
        Some(|| Unit::Seconds),
        Kind::Gauge,
        |t| {
            t.watermark
                .filter(|w| *w > i64::MIN + 1 && *w < i64::MAX)
                .map(|w| w as f64 / 1000.0)
        },
    ),
    (
        "snapflow_task_watermark_lag",
        "Processing time minus a task's watermark.",
        Some(|| Unit::Seconds),
        Kind::Gauge,
        |t| t.watermark_lag.map(|d| d.as_secs_f64()),
    ),
    (
        "snapflow_task_state_entries",
        "Keyed state entries of a task at its last checkpoint.",
        None,
        Kind::Gauge,
        |t| Some(t.state_entries as f64),
    ),
    (
        "snapflow_task_state_size",
        "Bytes of a task's last snapshot.",
        Some(|| Unit::Bytes),
        Kind::Gauge,
        |t| Some(t.state_bytes as f64),
    ),
];

fn encode_tasks(jobs: &[MetricsSnapshot], e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    for (name, help, unit, kind, value) in TASK_METRICS {
        let family = per_task(jobs, name, help, unit.map(|u| u()), value);
        match kind {
            Kind::Counter => family.counter(e)?,
            Kind::Gauge => family.gauge(e)?,
        }
    }
    Ok(())
}

fn encode_sources(jobs: &[MetricsSnapshot], e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let mut offset = Family::new(
        "snapflow_source_offset",
        "The next offset a source task reads in a partition.",
        None,
    );
    let mut end = Family::new(
        "snapflow_source_end_offset",
        "The end offset of a source partition's log.",
        None,
    );
    let mut lag = Family::new(
        "snapflow_source_lag_records",
        "Records appended to a source partition and not read yet.",
        None,
    );
    for m in jobs {
        for s in &m.sources {
            offset
                .values
                .push((source_labels(&m.job, s), s.offset as f64));
            if let (Some(e), Some(l)) = (s.end_offset, s.lag) {
                end.values.push((source_labels(&m.job, s), e as f64));
                lag.values.push((source_labels(&m.job, s), l as f64));
            }
        }
    }
    offset.gauge(e)?;
    end.gauge(e)?;
    lag.gauge(e)
}

fn encode_checkpoints(jobs: &[MetricsSnapshot], e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    per_job(
        jobs,
        "snapflow_checkpoints_completed",
        "Checkpoints completed.",
        None,
        |m| Some(m.checkpoints_completed as f64),
    )
    .counter(e)?;
    per_job(
        jobs,
        "snapflow_checkpoints_aborted",
        "Checkpoints aborted.",
        None,
        |m| Some(m.checkpoints_aborted as f64),
    )
    .counter(e)?;
    per_job(
        jobs,
        "snapflow_checkpoint_last_id",
        "The id of the last completed checkpoint.",
        None,
        |m| m.checkpoints.last().map(|c| c.id.0 as f64),
    )
    .gauge(e)?;
    per_job(
        jobs,
        "snapflow_checkpoint_last_duration",
        "Trigger to manifest of the last completed checkpoint.",
        Some(Unit::Seconds),
        |m| m.checkpoints.last().map(|c| c.duration.as_secs_f64()),
    )
    .gauge(e)?;
    per_job(
        jobs,
        "snapflow_checkpoint_last_size",
        "State bytes of the last completed checkpoint.",
        Some(Unit::Bytes),
        |m| m.checkpoints.last().map(|c| c.bytes as f64),
    )
    .gauge(e)?;
    per_job(
        jobs,
        "snapflow_checkpoint_last_max_alignment",
        "The longest barrier alignment of the last completed checkpoint.",
        Some(Unit::Seconds),
        |m| m.checkpoints.last().map(|c| c.max_alignment.as_secs_f64()),
    )
    .gauge(e)?;
    let mut ack = Family::new(
        "snapflow_checkpoint_last_ack_latency",
        "Trigger to a task's acknowledgement in the last completed checkpoint.",
        Some(Unit::Seconds),
    );
    for m in jobs {
        if let Some(c) = m.checkpoints.last() {
            for (t, d) in &c.ack_latency {
                let labels = vec![
                    ("job", m.job.clone()),
                    ("vertex", t.vertex.clone()),
                    ("task", t.index.to_string()),
                ];
                ack.values.push((labels, d.as_secs_f64()));
            }
        }
    }
    ack.gauge(e)
}

fn encode_job(jobs: &[MetricsSnapshot], e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    per_job(
        jobs,
        "snapflow_job_uptime",
        "Time since the job started.",
        Some(Unit::Seconds),
        |m| Some(m.uptime.as_secs_f64()),
    )
    .gauge(e)?;
    per_job(
        jobs,
        "snapflow_job_records_in_flight",
        "Records sent on channels and not yet taken.",
        None,
        |m| Some(m.records_in_flight as f64),
    )
    .gauge(e)?;
    let mut restarts = Family::new(
        "snapflow_job_restarts",
        "Restarts decided, by scope (a failover region or the whole job).",
        None,
    );
    let mut failures = Family::new(
        "snapflow_job_failures",
        "Failures reported, by error class.",
        None,
    );
    for m in jobs {
        let job = || ("job", m.job.clone());
        restarts.values.push((
            vec![job(), ("scope", "region".into())],
            m.region_restarts as f64,
        ));
        restarts
            .values
            .push((vec![job(), ("scope", "job".into())], m.job_restarts as f64));
        for (class, n) in [
            ("retryable", m.failures.retryable),
            ("restart", m.failures.restart),
            ("fatal", m.failures.fatal),
        ] {
            failures
                .values
                .push((vec![job(), ("class", class.into())], n as f64));
        }
    }
    restarts.counter(e)?;
    failures.counter(e)?;
    let rss = jobs.iter().find_map(|m| m.rss_bytes);
    let mut process = Family::new(
        "snapflow_process_resident_memory",
        "The process's resident set size.",
        Some(Unit::Bytes),
    );
    if let Some(r) = rss {
        process.values.push((Vec::new(), r as f64));
    }
    process.gauge(e)
}
