//! A WebSocket client for tests, over real TCP.
//!
//! It uses tokio-tungstenite, an implementation independent of the server's
//! fastwebsockets, so the tests also check that the server speaks standard WebSocket.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One connected client; the first frame (`$ws:open`) is already read.
pub struct Client {
    ws: Ws,
    /// The `$ws:open` frame's payload.
    pub open: Value,
    /// Response headers of the upgrade.
    pub headers: tokio_tungstenite::tungstenite::http::HeaderMap,
}

/// How an upgrade attempt ended without a WebSocket.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        Self::connect_request(url.into_client_request().unwrap())
            .await
            .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
    }

    pub async fn connect_request(req: Request<()>) -> Result<Self, Refused> {
        Self::connect_with(req, None).await
    }

    /// A `wss://` client whose TLS is `tls` (e.g. trusting a [`crate::TestCa`]).
    pub async fn connect_tls(url: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::connect_with(
            url.into_client_request().unwrap(),
            Some(Connector::Rustls(tls)),
        )
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
    }

    /// Connects with `connector` (`None`: plain TCP for `ws://`, the default for
    /// `wss://`); a failed TLS handshake panics like any failed connect.
    async fn connect_with(req: Request<()>, connector: Option<Connector>) -> Result<Self, Refused> {
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector);
        let (ws, response) = match tokio::time::timeout(WAIT, connecting).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(WsError::Http(r))) => {
                return Err(Refused {
                    status: r.status().as_u16(),
                    body: String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
                        .into_owned(),
                });
            }
            Ok(Err(e)) => panic!("connect failed: {e}"),
            Err(_) => panic!("connect timed out"),
        };
        let mut client = Self {
            ws,
            open: Value::Null,
            headers: response.headers().clone(),
        };
        let open = client.recv().await;
        assert_eq!(
            open["type"], "$ws:open",
            "first frame must be $ws:open: {open}"
        );
        client.open = open["payload"].clone();
        Ok(client)
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_message(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Sends `{type, meta: {correlationId}, payload}`.
    pub async fn call(
        &mut self,
        message_type: &str,
        correlation_id: &str,
        payload: Value,
    ) -> Value {
        self.send(json!({"type": message_type, "meta": {"correlationId": correlation_id}, "payload": payload}))
            .await;
        self.recv().await
    }

    /// Sends without a correlation id (no ack expected).
    pub async fn tell(&mut self, message_type: &str, payload: Value) {
        self.send(json!({"type": message_type, "payload": payload}))
            .await;
    }

    /// The next data frame, parsed. Panics on close or silence.
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap()
    }

    /// The next data frame's text, as the server wrote it. Panics on close or silence.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame within the wait")
                .expect("connection ended")
                .expect("read failed");
            match msg {
                Message::Text(t) => return t.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next data frame if one arrives within `within`.
    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Every data frame until the server closes, and the close code.
    pub async fn frames_until_close(&mut self, within: Duration) -> (Vec<Value>, u16) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("the server did not close in time; got {frames:?}"));
            match msg {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                    return (frames, code.into());
                }
                Some(Ok(Message::Close(None))) => return (frames, 1005),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of closing: {e}; got {frames:?}"),
                None => panic!("connection ended without a close frame; got {frames:?}"),
            }
        }
    }

    /// Every data frame until the connection ends, however it ends (a close frame, or
    /// EOF as a slow consumer may see): the frames and the close code, if one came.
    pub async fn frames_until_end(&mut self, within: Duration) -> (Vec<Value>, Option<u16>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "the connection did not end in time; got {} frames",
                        frames.len()
                    )
                });
            match msg {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                    return (frames, Some(code.into()));
                }
                Some(Ok(Message::Close(None))) => return (frames, Some(1005)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (frames, None),
            }
        }
    }

    /// Expects the server to close; returns the close code.
    pub async fn expect_close(&mut self, within: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the server did not close in time");
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return code.into(),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Asserts nothing but control frames arrive for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// A round trip proving the connection is open and in order.
    pub async fn assert_alive(&mut self) {
        let r = self.call("__heartbeat", "alive", json!({})).await;
        assert_eq!(r["type"], "__heartbeat_ack", "{r}");
        assert_eq!(r["meta"]["correlationId"], "alive");
    }
}
