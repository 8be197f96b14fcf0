//! The web view (feature `web`): `/metrics` parses as Prometheus text and its counters match
//! a bounded job's input; the REST API's checkpoint list is the last completed checkpoints;
//! the routes work mounted in a user's actix-web `App`; bad requests get 404 or 405 with a
//! short body; a server binds to loopback by default.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{test, web, App, HttpResponse};
use snapflow::checkpoint::CheckpointTiming;
use snapflow::log::GeneratorLog;
use snapflow::prelude::*;
use snapflow::web::{Serve, WebView, DEFAULT_ADDRESS};
use snapflow::CollectSink;

const N: u64 = 50_000;

fn config() -> JobConfig {
    JobConfig {
        parallelism: 2,
        threads: Threads::Arbiters(2),
        checkpoints: CheckpointTiming::every(Duration::from_millis(10)),
        metrics_window: 5,
        event_window: 100_000,
        ..JobConfig::default()
    }
}

/// Starts a bounded job of `N` numbers through a map into a sink, named `name`.
async fn bounded_job(name: &str) -> JobHandle {
    let job = common::memory_job(name, config());
    let numbers = GeneratorLog::numbers(2, Some(N / 2));
    job.source(
        "numbers",
        LogSource::with_decoder(Arc::new(numbers), GeneratorLog::number).bounded(),
    )
    .map("double", |x: u64| {
        if x % 200 == 0 {
            // Long enough for several checkpoints.
            std::thread::sleep(Duration::from_millis(1));
        }
        x * 2
    })
    .sink("out", CollectSink::new());
    job.build().expect("build").start().await.expect("start")
}

/// GETs `path` from a service built of `view`'s routes, returning status, content type and
/// body.
async fn call(view: &WebView, method: &str, path: &str) -> (u16, String, String) {
    let app = test::init_service(App::new().configure(view.routes())).await;
    let req = match method {
        "GET" => test::TestRequest::get(),
        "POST" => test::TestRequest::post(),
        "DELETE" => test::TestRequest::delete(),
        other => panic!("no such method in the test: {other}"),
    };
    let resp = test::call_service(&app, req.uri(path).to_request()).await;
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = test::read_body(resp).await;
    (status, kind, String::from_utf8_lossy(&body).into_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[actix_rt::test]
async fn metrics_parse_as_prometheus_text_and_counters_match_the_input_of_a_bounded_job() {
    let handle = bounded_job("web-prometheus").await;
    handle.wait().await.expect("the job ends");
    let view = WebView::new().with_job(&handle);
    let (status, kind, body) = call(&view, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let lines: Vec<std::io::Result<String>> = body.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("parses");
    // The parser skips what it cannot read: every sample line must have become a sample.
    let sample_lines = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "every line parsed:\n{body}"
    );
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let sum = |metric: &str, vertex: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && s.labels.get("vertex") == Some(vertex))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{metric} is not a number"),
            })
            .sum()
    };
    let n = N as f64;
    assert_eq!(sum("snapflow_task_records_in_total", "numbers"), n);
    assert_eq!(sum("snapflow_task_records_out_total", "numbers"), n);
    assert_eq!(sum("snapflow_task_records_in_total", "double"), n);
    assert_eq!(sum("snapflow_task_records_in_total", "out"), n);
    for s in scrape
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("snapflow_task_"))
    {
        assert_eq!(s.labels.get("job"), Some("web-prometheus"), "{s:?}");
        assert!(s.labels.get("task").is_some(), "{s:?}");
    }
    let completed = handle.metrics().checkpoints_completed as f64;
    assert!(completed >= 1.0);
    let checkpoints = scrape
        .samples
        .iter()
        .find(|s| s.metric == "snapflow_checkpoints_completed_total")
        .expect("the checkpoint counter");
    assert!(
        matches!(checkpoints.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v == completed),
        "{checkpoints:?} != {completed}"
    );
    for name in [
        "snapflow_task_busy_seconds_total",
        "snapflow_task_backpressure_ratio",
        "snapflow_source_lag_records",
        "snapflow_checkpoint_last_duration_seconds",
        "snapflow_job_failures_total",
        "snapflow_job_uptime_seconds",
        "snapflow_process_resident_memory_bytes",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing:\n{body}"
        );
    }
}

#[actix_rt::test]
async fn the_rest_checkpoint_list_is_the_last_completed_checkpoints_and_its_total_matches() {
    let handle = bounded_job("web-rest").await;
    let report = handle.wait().await.expect("the job ends");
    let view = WebView::new().with_job(&handle);
    let (status, _, body) = call(&view, "GET", "/jobs/web-rest/checkpoints").await;
    assert_eq!(status, 200);
    let v = json(&body);
    let completed: Vec<u64> = report
        .events
        .iter()
        .filter_map(|e| match e {
            JobEvent::CheckpointCompleted { checkpoint } => Some(checkpoint.0),
            _ => None,
        })
        .collect();
    assert!(
        completed.len() > 5,
        "enough checkpoints to fill the window: {completed:?}"
    );
    let newest_first: Vec<u64> = completed.iter().rev().take(5).copied().collect();
    let listed: Vec<u64> = v["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|c| c["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(listed, newest_first, "the last 5 completed, newest first");
    assert_eq!(
        v["counts"]["completed"].as_u64(),
        Some(report.checkpoints_completed)
    );
    assert_eq!(report.checkpoints_completed, completed.len() as u64);
    // The other routes answer for the same job.
    let (_, _, jobs) = call(&view, "GET", "/jobs").await;
    let jobs = json(&jobs);
    assert_eq!(jobs["jobs"][0]["id"], "web-rest");
    assert_eq!(jobs["jobs"][0]["state"], "FINISHED");
    let (_, _, vertices) = call(&view, "GET", "/jobs/web-rest/vertices").await;
    let vertices = json(&vertices);
    let names: Vec<&str> = vertices["vertices"]
        .as_array()
        .expect("vertices")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["numbers", "double", "out"]);
    assert_eq!(vertices["vertices"][1]["parallelism"], 2);
    assert_eq!(vertices["vertices"][0]["records_out"], N);
    assert_eq!(vertices["edges"][0]["partitioning"], "forward");
    let (status, _, exceptions) = call(&view, "GET", "/jobs/web-rest/exceptions").await;
    assert_eq!(status, 200);
    assert_eq!(json(&exceptions)["failures"]["total"], 0);
    let (status, _, overview) = call(&view, "GET", "/jobs/web-rest").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&overview)["checkpoints"]["completed"],
        report.checkpoints_completed
    );
}

#[actix_rt::test]
async fn routes_mounted_in_a_users_actix_web_app_work() {
    let handle = bounded_job("web-mounted").await;
    let view = WebView::new().with_job(&handle);
    let app = test::init_service(
        App::new()
            .route(
                "/hello",
                web::get().to(|| async { HttpResponse::Ok().body("mine") }),
            )
            .service(web::scope("/snapflow").configure(view.routes())),
    )
    .await;
    let get = |path: &'static str| test::TestRequest::get().uri(path).to_request();
    let mine = test::call_and_read_body(&app, get("/hello")).await;
    assert_eq!(&mine[..], b"mine", "the user's own route still works");
    let jobs = test::call_and_read_body(&app, get("/snapflow/jobs")).await;
    assert_eq!(
        json(&String::from_utf8_lossy(&jobs))["jobs"][0]["id"],
        "web-mounted"
    );
    let page = test::call_and_read_body(&app, get("/snapflow/")).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("assets/app.js") && page.contains("id=\"graph\""),
        "{page}"
    );
    let js = test::call_service(&app, get("/snapflow/assets/app.js")).await;
    assert_eq!(js.status(), 200);
    let metrics = test::call_service(&app, get("/snapflow/metrics")).await;
    assert_eq!(metrics.status(), 200);
    handle.wait().await.expect("the job ends");
}

/// One HTTP/1.1 request over a plain socket: status and body.
fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

#[actix_rt::test]
async fn bad_requests_get_404_or_405_with_a_short_body_and_the_server_binds_to_loopback() {
    let default: SocketAddr = DEFAULT_ADDRESS.parse().expect("an address");
    assert!(default.ip().is_loopback(), "{DEFAULT_ADDRESS}");
    let handle = bounded_job("web-errors").await;
    let server = handle.serve("127.0.0.1:0").await.expect("serve");
    let addr = server.addr();
    assert!(addr.ip().is_loopback());
    let cases = [
        ("GET", "/jobs/no-such-job", 404),
        ("GET", "/jobs/no-such-job/checkpoints", 404),
        ("GET", "/no/such/path", 404),
        ("GET", "/assets/nothing.js", 404),
        ("GET", "/jobs/web-errors/../../etc/passwd", 404),
        ("GET", "/jobs/%ff%fe", 404),
        ("POST", "/jobs", 405),
        ("DELETE", "/jobs/web-errors", 405),
        ("POST", "/metrics", 405),
        ("GET", "/jobs/web-errors", 200),
    ];
    for (method, path, want) in cases {
        let (status, body) = tokio::task::spawn_blocking(move || raw(addr, method, path))
            .await
            .expect("request");
        assert_eq!(status, want, "{method} {path}: {body}");
        if want != 200 {
            assert!(
                !body.is_empty() && body.len() < 100,
                "{method} {path}: a short body, not {body:?}"
            );
        }
    }
    server.stop().await;
    handle.wait().await.expect("the job ends");
}
