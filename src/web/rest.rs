//! The JSON REST API, in the style of Flink's: `/jobs`, `/jobs/{job}`, `/jobs/{job}/vertices`,
//! `/jobs/{job}/checkpoints`, `/jobs/{job}/exceptions`. Times are milliseconds (durations) or
//! milliseconds since the Unix epoch (instants).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::{not_found, WebView};
use crate::runtime::metrics::{MetricsSnapshot, TaskMetrics};
use crate::runtime::{JobEvent, JobHandle, JobStatus};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn status_name(status: &JobStatus) -> &'static str {
    match status {
        JobStatus::Running => "RUNNING",
        JobStatus::Finished(crate::JobEnd::Cancelled) => "CANCELED",
        JobStatus::Finished(_) => "FINISHED",
        JobStatus::Failed(_) => "FAILED",
    }
}

fn ok(v: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(v)
}

/// Runs `f` on the job named in the path, or answers 404.
fn with_job(
    view: &WebView,
    name: &str,
    f: impl FnOnce(&JobHandle, &MetricsSnapshot) -> Value,
) -> HttpResponse {
    match view.job(name) {
        Some(job) => {
            let m = job.metrics();
            ok(f(&job, &m))
        }
        None => not_found(),
    }
}

pub(super) async fn jobs(view: web::Data<WebView>) -> HttpResponse {
    let list: Vec<Value> = view
        .jobs()
        .iter()
        .map(|j| json!({ "id": j.name(), "name": j.name(), "state": status_name(&j.status()) }))
        .collect();
    ok(json!({ "jobs": list }))
}

pub(super) async fn job(view: web::Data<WebView>, path: web::Path<String>) -> HttpResponse {
    with_job(&view, &path, |job, m| {
        let status = job.status();
        json!({
            "id": job.name(),
            "name": job.name(),
            "state": status_name(&status),
            "error": match &status { JobStatus::Failed(e) => Some(e.clone()), _ => None },
            "uptime_ms": ms(m.uptime),
            "rss_bytes": m.rss_bytes,
            "records_in_flight": m.records_in_flight,
            "restarts": { "region": m.region_restarts, "job": m.job_restarts },
            "failures": failures(m),
            "checkpoints": counts(m),
            "vertices": vertex_list(job, m),
            "edges": edges(job),
        })
    })
}

pub(super) async fn vertices(view: web::Data<WebView>, path: web::Path<String>) -> HttpResponse {
    with_job(
        &view,
        &path,
        |job, m| json!({ "vertices": vertex_list(job, m), "edges": edges(job) }),
    )
}

pub(super) async fn checkpoints(view: web::Data<WebView>, path: web::Path<String>) -> HttpResponse {
    with_job(&view, &path, |_, m| {
        let history: Vec<Value> = m
            .checkpoints
            .iter()
            .rev()
            .map(|c| {
                json!({
                    "id": c.id.0,
                    "status": "COMPLETED",
                    "trigger_timestamp": epoch_ms(c.triggered_at),
                    "duration_ms": ms(c.duration),
                    "state_size_bytes": c.bytes,
                    "max_alignment_ms": ms(c.max_alignment),
                    "max_capture_ms": ms(c.max_capture),
                    "is_final": c.is_final,
                    "ack_latency_ms": c.ack_latency.iter()
                        .map(|(t, d)| json!({ "task": t.to_string(), "ms": ms(*d) }))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let aborted: Vec<Value> = m
            .aborted_checkpoints
            .iter()
            .rev()
            .map(|a| json!({ "id": a.id.0, "status": "ABORTED", "timestamp": epoch_ms(a.at), "reason": a.reason }))
            .collect();
        let restores: Vec<Value> = m
            .restarts
            .iter()
            .rev()
            .map(|r| {
                json!({
                    "timestamp": epoch_ms(r.at),
                    "tasks": r.tasks.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    "restored_from": r.restored_from.map(|c| c.0),
                })
            })
            .collect();
        json!({ "counts": counts(m), "history": history, "aborted": aborted, "restores": restores })
    })
}

pub(super) async fn exceptions(view: web::Data<WebView>, path: web::Path<String>) -> HttpResponse {
    with_job(&view, &path, |_, m| {
        let exceptions: Vec<Value> = m
            .exceptions
            .iter()
            .rev()
            .map(|e| {
                json!({
                    "timestamp": epoch_ms(e.at),
                    "task": e.task.as_ref().map(|t| t.to_string()),
                    "class": format!("{:?}", e.class),
                    "message": e.message,
                })
            })
            .collect();
        let timeline: Vec<Value> = m
            .timeline
            .iter()
            .map(|t| {
                let (kind, text) = describe(&t.event);
                json!({ "timestamp": epoch_ms(t.at), "kind": kind, "text": text })
            })
            .collect();
        json!({ "failures": failures(m), "exceptions": exceptions, "timeline": timeline })
    })
}

fn counts(m: &MetricsSnapshot) -> Value {
    json!({
        "completed": m.checkpoints_completed,
        "aborted": m.checkpoints_aborted,
        "latest": m.checkpoints.last().map(|c| c.id.0),
    })
}

fn failures(m: &MetricsSnapshot) -> Value {
    json!({
        "total": m.failures.total(),
        "retryable": m.failures.retryable,
        "restart": m.failures.restart,
        "fatal": m.failures.fatal,
    })
}

fn task_json(t: &TaskMetrics) -> Value {
    json!({
        "task": t.task.to_string(),
        "index": t.task.index,
        "records_in": t.records_in,
        "records_out": t.records_out,
        "late_records": t.late_records,
        "records_in_per_second": t.records_in_per_second,
        "records_out_per_second": t.records_out_per_second,
        "busy_ratio": t.busy_ratio,
        "backpressure_ratio": t.backpressure_ratio,
        "idle_ratio": t.idle_ratio,
        "input_queued": t.input_queued,
        "input_capacity": t.input_capacity,
        "watermark": t.watermark,
        "watermark_lag_ms": t.watermark_lag.map(ms),
        "state_entries": t.state_entries,
        "state_bytes": t.state_bytes,
    })
}

fn vertex_list(job: &JobHandle, m: &MetricsSnapshot) -> Vec<Value> {
    job.graph()
        .vertices
        .iter()
        .map(|v| {
            let tasks: Vec<&TaskMetrics> =
                m.tasks.iter().filter(|t| t.task.vertex == v.name).collect();
            let sum = |f: fn(&TaskMetrics) -> f64| tasks.iter().map(|t| f(t)).sum::<f64>();
            let max = |f: fn(&TaskMetrics) -> f64| tasks.iter().map(|t| f(t)).fold(0.0, f64::max);
            let sources: Vec<Value> = m
                .sources
                .iter()
                .filter(|s| s.task.vertex == v.name)
                .map(|s| json!({ "task": s.task.to_string(), "partition": s.partition.0, "offset": s.offset, "end_offset": s.end_offset, "lag": s.lag }))
                .collect();
            json!({
                "id": v.name,
                "name": v.name,
                "uid": v.uid,
                "kind": v.kind.as_str(),
                "parallelism": v.parallelism,
                "records_in": tasks.iter().map(|t| t.records_in).sum::<u64>(),
                "records_out": tasks.iter().map(|t| t.records_out).sum::<u64>(),
                "records_in_per_second": sum(|t| t.records_in_per_second),
                "records_out_per_second": sum(|t| t.records_out_per_second),
                "backpressure_ratio": max(|t| t.backpressure_ratio),
                "busy_ratio": max(|t| t.busy_ratio),
                "tasks": tasks.iter().map(|t| task_json(t)).collect::<Vec<_>>(),
                "source_partitions": sources,
            })
        })
        .collect()
}

fn edges(job: &JobHandle) -> Vec<Value> {
    job.graph()
        .edges
        .iter()
        .map(|e| json!({ "from": e.from, "to": e.to, "partitioning": e.partitioning.as_str() }))
        .collect()
}

/// A timeline event's kind (for the page's styling) and text.
fn describe(event: &JobEvent) -> (&'static str, String) {
    match event {
        JobEvent::TaskFailed { task, error } => ("failure", format!("task {task} failed: {error}")),
        JobEvent::ChaosKill { kill, task, how } => (
            "kill",
            match task {
                Some(t) => format!("chaos kill {kill}: {t} ({how})"),
                None => format!("chaos kill {kill}: coordinator or supervisor ({how})"),
            },
        ),
        JobEvent::Restarting { tasks, attempt, .. } => (
            "restart",
            format!("restarting {} task(s) (attempt {attempt})", tasks.len()),
        ),
        JobEvent::Restored { tasks, checkpoint } => (
            "restore",
            match checkpoint {
                Some(c) => format!("{} task(s) restored from checkpoint {c}", tasks.len()),
                None => format!("{} task(s) restarted from the beginning", tasks.len()),
            },
        ),
        JobEvent::CheckpointAborted { checkpoint, reason } => (
            "aborted",
            format!("checkpoint {checkpoint} aborted: {reason}"),
        ),
        JobEvent::Escalated { reason, .. } => {
            ("restart", format!("escalated to the job: {reason}"))
        }
        other => ("event", format!("{other:?}")),
    }
}
