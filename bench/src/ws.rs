//! Target URLs (loopback unless allowed otherwise) and the client handshake.
//!
//! The client is fastwebsockets: a frame's payload is a slice split off the
//! connection's read buffer (no allocation per frame), so one task per connection
//! costs little next to the server it measures.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Ws = WebSocket<TokioIo<Upgraded>>;

/// One `ws://` URL, resolved.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    /// Every address the host resolves to, tried in order.
    pub addrs: Vec<SocketAddr>,
    host: String,
    path: String,
}

/// Parses and resolves `url`. Unless `allow_remote`, every address the host resolves
/// to must be a loopback address.
pub async fn resolve(url: &str, allow_remote: bool) -> anyhow::Result<Target> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!("{url}: wss:// is not supported; use ws://"),
        _ => bail!("{url}: the URL must start with ws://"),
    }
    let authority = uri.authority().with_context(|| format!("{url}: no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("{url}: cannot resolve {host}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{url}: {host} resolves to no address");
    }
    if !allow_remote && let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "{url}: {} is not a loopback address; load against other hosts needs --allow-remote",
            remote.ip()
        );
    }
    Ok(Target {
        url: url.to_owned(),
        addrs,
        host: authority.as_str().to_owned(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    })
}

impl Target {
    /// A hand-written upgrade request with `extra` headers (`Name: value\r\n` each),
    /// for clients that speak frames fastwebsockets does not (compressed ones).
    pub fn upgrade_request(&self, extra: &str) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            self.path,
            self.host,
            fastwebsockets::handshake::generate_key()
        )
    }
}

/// Spawns hyper's connection task on tokio (it ends once the upgrade is done).
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// TCP connect (with `TCP_NODELAY`) and the WebSocket upgrade.
pub async fn connect(target: &Target) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(&target.addrs[..])
        .await
        .with_context(|| format!("connect to {}", target.url))?;
    tcp.set_nodelay(true)?;
    let req = Request::builder()
        .method("GET")
        .uri(target.path.as_str())
        .header(HOST, target.host.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (ws, _response) = fastwebsockets::handshake::client(&SpawnExecutor, req, tcp)
        .await
        .with_context(|| format!("upgrade at {}", target.url))?;
    Ok(ws)
}
