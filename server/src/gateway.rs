//! The WebSocket listener: HTTP/1.1 on `--listen`, upgrades on `/ws`.
//!
//! Everything that can refuse a client is decided here, before a WebSocket exists, with
//! a plain HTTP status the client's library can report: 503 while draining or when the
//! pod is full, 403 for a foreign Origin, 429 past the per-IP limit, 401 for a missing
//! or invalid token. The handshake must complete within `handshakeTimeoutSeconds`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde_json::json;
use switchboard_ops::metrics::CounterByLabel;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::admission::Refusal as AdmissionRefusal;
use crate::connection;
use crate::deflate;
use crate::handle::ConnectionHandle;
use crate::liveness::Liveness;
use crate::log_budget::LogBudget;
use crate::outbound::OutboundQueue;
use crate::protocol::{self, ErrorCode};
use crate::ratelimit::ConnectionBuckets;
use crate::session::Session;
use crate::state::AppState;
use crate::tls::TlsListener;

pub use switchboard_ops::admin::HttpResponse;

/// Accepts TCP connections until `stop` fires; with `tls`, each one is a TLS
/// connection first (after its PROXY protocol header, if any: balancers send that in
/// the clear).
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<TlsListener>>,
    stop: CancellationToken,
) {
    let handshake_timeout =
        Duration::from_secs(u64::from(state.app.spec.limits.handshake_timeout_seconds));
    switchboard_ops::listener::accept_until(
        listener,
        stop,
        "websocket",
        move |mut stream, tcp_peer| {
            let state = state.clone();
            let tls = tls.clone();
            async move {
                let _ = stream.set_nodelay(true);
                // With the PROXY protocol, the header says whose connection this is; it is
                // believed only from a trusted proxy.
                let mut peer = tcp_peer;
                if state
                    .app
                    .spec
                    .network
                    .as_ref()
                    .is_some_and(|n| n.proxy_protocol)
                {
                    match crate::proxy_protocol::read_header(&mut stream, handshake_timeout).await {
                        Ok(Some(source))
                            if crate::client_addr::is_trusted(
                                tcp_peer.ip(),
                                &state.app.trusted_proxies,
                            ) =>
                        {
                            peer = source;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            debug!(peer = %tcp_peer, error = %e, "connection closed before HTTP");
                            return;
                        }
                    }
                }
                let Some(tls) = tls else {
                    return serve_http(stream, state, peer, handshake_timeout).await;
                };
                // The TLS handshake counts against the same deadline as the HTTP one.
                let started = tokio::time::Instant::now();
                match tokio::time::timeout(handshake_timeout, tls.acceptor().accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let left = handshake_timeout.saturating_sub(started.elapsed());
                        serve_http(stream, state, peer, left).await;
                    }
                    failed => {
                        state
                            .metrics
                            .gateway
                            .rejected
                            .inc(RejectReason::TlsHandshake);
                        match failed {
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            _ => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            }
        },
    )
    .await;
}

/// HTTP/1.1 on one connection, plain or TLS, until its upgrade is handed over.
async fn serve_http<S>(stream: S, state: Arc<AppState>, peer: SocketAddr, timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, &state, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    // The connection future ends once the upgrade is handed over, so this bounds the
    // handshake only; the WebSocket runs on in its own task.
    match tokio::time::timeout(timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "http connection error"),
        Err(_) => debug!(%peer, "handshake timed out"),
    }
}

async fn route(
    mut req: Request<Incoming>,
    state: &Arc<AppState>,
    peer: SocketAddr,
) -> HttpResponse {
    if req.uri().path() != "/ws" {
        if state.demo
            && req.method() == Method::GET
            && let Some(page) = crate::demo::page(req.uri().path())
        {
            return page;
        }
        return error_response(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "the WebSocket endpoint is /ws",
        );
    }
    if req.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut r = error_response(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::FailedPrecondition,
            "this endpoint speaks WebSocket: send an upgrade request",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    let client = if state.app.trusted_proxies.is_empty() {
        peer.ip()
    } else {
        crate::client_addr::client_ip(peer.ip(), req.headers(), &state.app.trusted_proxies)
    };
    match upgrade(&mut req, state, peer, client).await {
        Ok(response) => response,
        Err(refused) => {
            state.metrics.gateway.rejected.inc(refused.reason);
            log_refusal(&refused, peer, client);
            refused.response
        }
    }
}

switchboard_ops::label_values! {
    /// Why an upgrade was refused: the `reason` of `switchboard_upgrades_rejected_total`.
    pub enum RejectReason {
        /// No token, or one that fails verification (401).
        Unauthenticated => "unauthenticated",
        /// An Origin outside `allowedOrigins` (403).
        Origin => "origin",
        /// Past `limits.maxConnectionsPerIp` (429).
        PerIpLimit => "per_ip_limit",
        /// The pod is at `limits.maxConnections` (503).
        Capacity => "capacity",
        /// The pod is draining (503).
        Draining => "draining",
        /// Not a valid WebSocket upgrade (400).
        BadRequest => "bad_request",
        /// The TLS handshake failed or timed out (`spec.tls`); no HTTP was spoken.
        TlsHandshake => "tls_handshake",
    }
}

/// Upgrades refused before a WebSocket existed.
pub struct GatewayMetrics {
    pub rejected: CounterByLabel<RejectReason>,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let rejected = CounterByLabel::register(
            registry,
            "switchboard_upgrades_rejected",
            "WebSocket upgrades refused before the handshake, by reason",
            "reason",
        );
        Self { rejected }
    }
}

/// Refused upgrades logged per second at most; a flood is summarized by the next line.
static REFUSAL_LOG: LogBudget = LogBudget::new(10);

/// One info line per refused upgrade (within [`REFUSAL_LOG`]), so an operator can see
/// why a client cannot connect: the client itself often shows only the status. The
/// message is the one the client gets, which never contains the token.
fn log_refusal(refused: &Refusal, peer: SocketAddr, client: std::net::IpAddr) {
    if let Some(suppressed) = REFUSAL_LOG.admit(std::time::Instant::now()) {
        info!(
            status = refused.response.status().as_u16(),
            reason = refused.reason.as_str(),
            peer = %peer,
            client = %client,
            message = %refused.message,
            suppressed_since_last = suppressed,
            "upgrade refused"
        );
    }
}

/// A refused upgrade: why (the metric's reason, the message the client gets) and the
/// HTTP response that says so. Boxed where returned: the error path is rare and the
/// response is large.
struct Refusal {
    reason: RejectReason,
    message: String,
    response: HttpResponse,
}

type Refused = Box<Refusal>;

impl Refusal {
    fn new(reason: RejectReason, status: StatusCode, code: ErrorCode, message: &str) -> Self {
        Self {
            reason,
            message: message.to_owned(),
            response: error_response(status, code, message),
        }
    }

    fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
        self
    }
}

/// `client`: the peer, or whom a trusted proxy says it forwards for.
async fn upgrade(
    req: &mut Request<Incoming>,
    state: &Arc<AppState>,
    peer: SocketAddr,
    client: std::net::IpAddr,
) -> Result<HttpResponse, Refused> {
    check_handshake(req)?;
    if state.is_draining() {
        return Err(Box::new(
            Refusal::new(
                RejectReason::Draining,
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "this pod is draining",
            )
            .with_header(header::RETRY_AFTER, "1"),
        ));
    }
    check_origin(req, state)?;
    let guard = state.admission.try_admit(client).map_err(|full| {
        Box::new(match full {
            AdmissionRefusal::PodFull => Refusal::new(
                RejectReason::Capacity,
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "this pod is at limits.maxConnections",
            ),
            AdmissionRefusal::TooManyFromIp => Refusal::new(
                RejectReason::PerIpLimit,
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::ResourceExhausted,
                "too many connections from this address (limits.maxConnectionsPerIp)",
            ),
        })
    })?;
    let offered = offered_protocols(req);
    let token = token_from(req, &offered);
    let connection_id = state.next_connection_id();
    let anonymous_id = format!("anon-{:016x}", rand::random::<u64>());
    let authed = state
        .auth
        .authenticate(token.as_deref(), &anonymous_id)
        .await
        .map_err(|e| {
            Box::new(
                Refusal::new(
                    RejectReason::Unauthenticated,
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    &e.to_string(),
                )
                .with_header(header::WWW_AUTHENTICATE, "Bearer"),
            )
        })?;
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut *req).map_err(|e| {
        Box::new(Refusal::new(
            RejectReason::BadRequest,
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            &e.to_string(),
        ))
    })?;
    let mut response = response.map(|_| Full::new(Bytes::new()));
    let negotiated = state
        .compression
        .and_then(|_| deflate::negotiate(req.headers()));
    if let Some(n) = negotiated {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(n.response()),
        );
    }
    if let Some(chosen) = choose_protocol(&offered)
        && let Ok(v) = HeaderValue::from_str(chosen)
    {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }

    let limits = &state.app.spec.limits;
    let handle = Arc::new(ConnectionHandle::new(
        connection_id,
        OutboundQueue::new(
            limits.outbound_queue_messages as usize,
            limits.slow_consumer,
        ),
        state.abort_all.child_token(),
        negotiated.and(state.compression),
        state.metrics.clone(),
    ));
    let (handle_id, authed_user) = (handle.id.clone(), authed.identity.user_id.clone());
    let session = Session {
        handle,
        user_id: Arc::from(authed.identity.user_id.as_str()),
        identity: authed.identity,
        ip: client,
        subscriptions: HashSet::new(),
        buckets: ConnectionBuckets::default(),
        liveness: Arc::new(Liveness::new(authed.expires_at)),
        deflate: negotiated,
        refresh_failures: 0,
        last_refresh_failure: None,
        span: tracing::info_span!(
            target: crate::trace::SPAN_TARGET,
            parent: None,
            "ws.connection",
            connection.id = %handle_id,
            user.id = %authed_user,
            peer = %peer,
            client = %client,
            instance = %state.instance,
        ),
    };
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        // Held for the connection's life: the slot frees when the task ends.
        let _guard = guard;
        match upgrade.await {
            Ok(ws) => connection::serve(ws, state, session).await,
            Err(e) => debug!(error = %e, "upgrade did not complete"),
        }
    });
    Ok(response)
}

fn check_origin(req: &Request<Incoming>, state: &AppState) -> Result<(), Refused> {
    let Some(allowed) = &state.app.spec.allowed_origins else {
        return Ok(());
    };
    // Browsers always send Origin; other clients usually do not, and an Origin check
    // protects browsers only. A present Origin must be on the list.
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let ok = origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
    if ok {
        Ok(())
    } else {
        Err(Box::new(Refusal::new(
            RejectReason::Origin,
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "this Origin is not in spec.allowedOrigins",
        )))
    }
}

fn offered_protocols(req: &Request<Incoming>) -> Vec<String> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The token, from (in order) `?access_token=`, `Authorization: Bearer`, or a
/// `bearer.<token>` subprotocol (for browsers, which cannot set headers).
fn token_from(req: &Request<Incoming>, offered: &[String]) -> Option<String> {
    if let Some(q) = req.uri().query()
        && let Some((_, v)) =
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "access_token")
    {
        return Some(v.into_owned());
    }
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    offered
        .iter()
        .find_map(|p| p.strip_prefix("bearer.").map(str::to_owned))
}

/// What RFC 6455 §4.2.1 asks of an opening handshake, checked before anything else so
/// a malformed one gets a clear status instead of a 101 that goes nowhere: HTTP/1.1,
/// a Host, exactly one `Sec-WebSocket-Key` that is base64 of 16 bytes, and version 13
/// (otherwise 426 naming it, §4.2.2).
fn check_handshake(req: &Request<Incoming>) -> Result<(), Refused> {
    let bad = |message: &str| {
        Box::new(Refusal::new(
            RejectReason::BadRequest,
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            message,
        ))
    };
    if req.version() != hyper::Version::HTTP_11 {
        return Err(bad("a WebSocket upgrade needs HTTP/1.1"));
    }
    if req.headers().get_all(header::HOST).iter().count() != 1 {
        return Err(bad("the upgrade request needs exactly one Host header"));
    }
    let versions: Vec<&HeaderValue> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_VERSION)
        .iter()
        .collect();
    if versions.len() != 1 || versions[0].as_bytes() != b"13" {
        return Err(Box::new(
            Refusal::new(
                RejectReason::BadRequest,
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::FailedPrecondition,
                "this server speaks WebSocket version 13 (Sec-WebSocket-Version: 13)",
            )
            .with_header(header::SEC_WEBSOCKET_VERSION, "13"),
        ));
    }
    let keys: Vec<&HeaderValue> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_KEY)
        .iter()
        .collect();
    if keys.len() != 1 || !is_handshake_key(keys[0].as_bytes()) {
        return Err(bad(
            "Sec-WebSocket-Key must be given once, as the base64 of 16 bytes",
        ));
    }
    Ok(())
}

/// Whether `key` is the base64 of exactly 16 bytes: 22 characters of the alphabet (the
/// last carrying only 2 bits, so its low 4 are zero) and `==`.
fn is_handshake_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |c: u8| ALPHABET.iter().position(|a| *a == c);
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|c| sextet(*c).is_some())
        && sextet(key[21]).is_some_and(|v| v & 0x0f == 0)
}

/// The subprotocol to select: `switchboard.v1` when offered, else none (RFC 6455
/// §4.2.2: only one the server speaks). Never `bearer.<token>`: the response header
/// would carry the token to every proxy log on the way. A browser that offers only the
/// token therefore fails the handshake; it must offer `switchboard.v1` beside it
/// (docs/PROTOCOL.md §1).
fn choose_protocol(offered: &[String]) -> Option<&'static str> {
    offered
        .iter()
        .any(|p| p == protocol::PROTOCOL)
        .then_some(protocol::PROTOCOL)
}

pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> HttpResponse {
    let body = json!({"code": code.as_str(), "message": message}).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn handshake_keys_are_base64_of_16_bytes() {
        assert!(super::is_handshake_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b"dGhlIHNhbXBsZSBub25jZQ"[..],
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25j!Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==dGhl",
            b"",
        ] {
            assert!(
                !super::is_handshake_key(bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
