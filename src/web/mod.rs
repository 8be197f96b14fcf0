//! Seeing running jobs over HTTP (feature `web`): Prometheus metrics at `/metrics`, a JSON
//! REST API in the style of Flink's under `/jobs`, and a live web page at `/`.
//!
//! ```no_run
//! # async fn demo(handle: snapflow::JobHandle) -> snapflow::Result<()> {
//! use snapflow::web::Serve;
//! let server = handle.serve("127.0.0.1:8081").await?; // a server of its own
//! println!("open {}", server.url());
//! # Ok(()) }
//! ```
//!
//! The same routes mount in an application's own actix-web `App`:
//!
//! ```no_run
//! # async fn demo(handle: snapflow::JobHandle) -> std::io::Result<()> {
//! use actix_web::{web, App, HttpServer};
//! let view = snapflow::web::WebView::new().with_job(&handle);
//! HttpServer::new(move || App::new().service(web::scope("/snapflow").configure(view.routes())))
//!     .bind("127.0.0.1:8080")?
//!     .run()
//!     .await
//! # }
//! ```
//!
//! Invariants: every route answers GET only (another method gets 405, an unknown job or path
//! 404, each with a short plain-text body), reads the jobs' metrics through
//! [`JobHandle::metrics`] and nothing else, and never panics on a request. The page's assets
//! are compiled into the binary: it works offline. A server binds where it is told, and
//! [`DEFAULT_ADDRESS`] is loopback.

mod prometheus;
mod rest;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, RwLock};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};

use crate::error::{Error, Result};
use crate::runtime::JobHandle;

/// Where [`Serve::serve_default`] listens: loopback only.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8081";

/// The jobs a web view shows. Cheap to clone: clones share the list, so a job added to one
/// shows in every server and `App` built from any clone.
#[derive(Debug, Clone, Default)]
pub struct WebView {
    jobs: Arc<RwLock<Vec<JobHandle>>>,
}

impl WebView {
    /// A view of no job yet.
    pub fn new() -> WebView {
        WebView::default()
    }

    /// The view with `job` added.
    pub fn with_job(self, job: &JobHandle) -> WebView {
        self.add_job(job);
        self
    }

    /// Adds `job` (replacing a job of the same name, such as an earlier run of it).
    pub fn add_job(&self, job: &JobHandle) {
        let mut jobs = self.jobs.write().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|j| j.name() != job.name());
        jobs.push(job.clone());
    }

    /// The jobs shown, in the order they were added.
    pub fn jobs(&self) -> Vec<JobHandle> {
        self.jobs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn job(&self, name: &str) -> Option<JobHandle> {
        self.jobs().into_iter().find(|j| j.name() == name)
    }

    /// The routes, to mount in an actix-web `App` (`App::new().configure(view.routes())`, or
    /// inside a `web::scope`): `/`, `/assets/*`, `/metrics`, `/jobs`, `/jobs/{job}`,
    /// `/jobs/{job}/vertices`, `/jobs/{job}/checkpoints`, `/jobs/{job}/exceptions`.
    pub fn routes(&self) -> impl FnOnce(&mut web::ServiceConfig) + Clone + Send + 'static {
        let view = self.clone();
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::new(view));
            get(cfg, "/", page);
            get(cfg, "/assets/{file}", asset);
            get(cfg, "/metrics", prometheus::metrics);
            get(cfg, "/jobs", rest::jobs);
            get(cfg, "/jobs/{job}", rest::job);
            get(cfg, "/jobs/{job}/vertices", rest::vertices);
            get(cfg, "/jobs/{job}/checkpoints", rest::checkpoints);
            get(cfg, "/jobs/{job}/exceptions", rest::exceptions);
        }
    }

    /// Starts a server of its own for this view on `addr` (one worker thread; it does not
    /// take over Ctrl-C). Must be called inside an actix `System` (as a job's handle is).
    pub async fn serve(&self, addr: impl ToSocketAddrs) -> Result<WebServer> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("web view address: {e}")))?
            .collect();
        let routes = self.routes();
        let server = HttpServer::new(move || {
            App::new()
                .configure(routes.clone())
                .default_service(web::to(unknown_path))
        })
        .workers(1)
        .disable_signals()
        .bind(&addrs[..])
        .map_err(|e| Error::Config(format!("web view cannot bind {addrs:?}: {e}")))?;
        let bound = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| Error::Config(format!("web view bound no address of {addrs:?}")))?;
        let running = server.run();
        let handle = running.handle();
        actix::spawn(async move {
            if let Err(e) = running.await {
                tracing::error!(error = %e, "web view server failed");
            }
        });
        tracing::info!(address = %bound, "web view serving");
        Ok(WebServer {
            addr: bound,
            handle,
        })
    }
}

/// Registers `path` as a resource answering GET with `handler` (and 405 otherwise).
fn get<F, Args>(cfg: &mut web::ServiceConfig, path: &str, handler: F)
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    cfg.service(
        web::resource(path)
            .route(web::get().to(handler))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A server started by [`WebView::serve`] or [`Serve::serve`].
#[derive(Debug, Clone)]
pub struct WebServer {
    addr: SocketAddr,
    handle: ServerHandle,
}

impl WebServer {
    /// The address it listens on (with the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The web page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops it, finishing the requests in progress.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// `handle.serve(addr)`: a web view of one job.
#[allow(async_fn_in_trait)]
pub trait Serve {
    /// Starts a server for this job on `addr` (see [`WebView::serve`]).
    async fn serve(&self, addr: impl ToSocketAddrs) -> Result<WebServer>;

    /// Starts a server for this job on [`DEFAULT_ADDRESS`].
    async fn serve_default(&self) -> Result<WebServer> {
        self.serve(DEFAULT_ADDRESS).await
    }
}

impl Serve for JobHandle {
    async fn serve(&self, addr: impl ToSocketAddrs) -> Result<WebServer> {
        WebView::new().with_job(self).serve(addr).await
    }
}

pub(crate) fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body("not found\n")
}

async fn unknown_path() -> HttpResponse {
    not_found()
}

async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "GET"))
        .content_type("text/plain; charset=utf-8")
        .body("method not allowed: only GET\n")
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return not_found(),
    };
    HttpResponse::Ok().content_type(kind).body(body)
}
