//! `--admin ADDR:PORT`: a small HTTP server beside the data path, for
//! operators and their monitoring:
//! - `/metrics`: the mode's counters in the Prometheus text format (read from
//!   the atomics the data path already keeps, at scrape time), and the
//!   process's (`process.rs`);
//! - `/flows`: one JSON object per live flow;
//! - `/health`: 200 while a proxy is usable, 503 otherwise.
//!
//! It knows neither mode: each gives it a [`Report`] (`tun::admin`,
//! `server::metrics`). It runs on the mode's runtime; a request costs the
//! data path nothing but the reads of its counters.

mod metrics;
mod process;
mod report;
mod scrape;
#[cfg(test)]
mod tests;

pub use metrics::render;
pub use report::{FlowInfo, Report};
pub use scrape::Scrape;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Refuse an admin address that is not loopback unless `public` (the
/// metrics and flows tell who talks to whom: they are not for anyone who can
/// reach the port).
pub fn check_addr(addr: SocketAddr, public: bool, flag: &str) -> Result<(), String> {
    if addr.ip().is_loopback() || public {
        return Ok(());
    }
    Err(format!(
        "--admin {addr} is not a loopback address: the admin endpoint shows every flow; \
         add {flag} to serve it there anyway"
    ))
}

/// The admin listener, bound before anything else starts (a port in use is
/// an error at once), or None without `--admin`. Call inside no runtime or
/// any: it is a std listener, made non-blocking for `serve`.
pub fn bind(
    addr: Option<SocketAddr>,
    public: bool,
    flag: &str,
) -> Result<Option<std::net::TcpListener>, String> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    check_addr(addr, public, flag)?;
    let l = std::net::TcpListener::bind(addr).map_err(|e| format!("--admin {addr}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("--admin {addr}: {e}"))?;
    Ok(Some(l))
}

/// Spawn `serve` on the current runtime for a listener from [`bind`].
pub fn spawn(listener: std::net::TcpListener, report: Arc<dyn Report>) -> std::io::Result<()> {
    let l = TcpListener::from_std(listener)?;
    tokio::spawn(serve(l, report));
    Ok(())
}

/// Admin connections served at once; more wait in the backlog.
const MAX_CONNS: usize = 16;
/// A connection's whole life (a scraper keeps one open between scrapes).
const CONN_LIMIT: Duration = Duration::from_secs(120);

/// Serve `report` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, report: Arc<dyn Report>) {
    if let Ok(a) = listener.local_addr() {
        info!("admin: http://{a}/metrics, /flows, /health");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("admin: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let report = report.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = respond(&report, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
            match tokio::time::timeout(CONN_LIMIT, conn).await {
                Ok(Err(e)) => debug!("admin: {peer}: {e}"),
                Err(_) => debug!("admin: {peer}: connection closed after {CONN_LIMIT:?}"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

/// The answer to one request.
pub fn respond(report: &Arc<dyn Report>, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match path {
        "/metrics" => reply(StatusCode::OK, metrics::CONTENT_TYPE, render(report)),
        "/flows" => {
            let mut body = serde_json::to_string_pretty(&report.flows()).unwrap_or_default();
            body.push('\n');
            reply(StatusCode::OK, "application/json", body)
        }
        "/health" if report.healthy() => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/health" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "no usable proxy\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /flows, /health\n".into(),
        ),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}
