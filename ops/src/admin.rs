//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and documents the binary
//! serves (the server's `/asyncapi.json`).
//!
//! Kept off any client-facing port so probes and scrapes never compete with clients for
//! connection slots, and so the port can stay cluster-internal. What "ready" means and
//! which metrics exist is the binary's business, told through [`AdminState`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A complete, buffered HTTP response: every admin answer is small.
pub type HttpResponse = Response<Full<Bytes>>;

/// What the admin listener asks of the binary behind it.
pub trait AdminState: Send + Sync + 'static {
    /// `Ok` when the process should receive work; `Err(reason)` (served as 503 with the
    /// reason as body) while it should not: draining, not yet connected, ...
    fn readiness(&self) -> Result<(), &'static str>;
    /// The OpenMetrics text exposition of every metric.
    fn encode_metrics(&self) -> String;
    /// A JSON document served at `path`, if the binary has one there.
    fn json_document(&self, _path: &str) -> Option<Bytes> {
        None
    }
}

/// The OpenMetrics text exposition of `registry`, as both binaries serve it.
pub fn encode_registry(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Serves admin requests until `stop` is cancelled.
pub async fn accept_loop<S: AdminState>(
    listener: TcpListener,
    state: Arc<S>,
    stop: CancellationToken,
) {
    crate::listener::accept_until(listener, stop, "admin", move |stream, _| {
        let state = state.clone();
        async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, state.as_ref())) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
}

fn respond<B, S: AdminState>(req: &Request<B>, state: &S) -> HttpResponse {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(state.encode_metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        path => match state.json_document(path) {
            Some(body) => {
                let mut r = Response::new(Full::new(body));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            None => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        },
    }
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
