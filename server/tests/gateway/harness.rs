//! A real server on an ephemeral loopback port and real WebSocket clients over TCP.
//!
//! The clients use tokio-tungstenite, an implementation independent of the server's
//! fastwebsockets, so the tests also check that we speak standard WebSocket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard_server::{Server, ServerConfig, Shutdown};
pub use switchboard_tests::{NatsServer, http_get, metric};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(5);

pub const JWT_SECRET: &[u8] = b"test-secret-0123456789";

/// The app most tests run: every action kind, policies and limits small enough to hit.
pub const TEST_APP: &str = r#"
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {name: test, namespace: tests}
spec:
  auth:
    anonymous: true
    jwt:
      algorithms: [HS256]
      secretRef: {name: jwt, key: secret}
      issuer: https://auth.test
      audience: test
      leewaySeconds: 0
  limits:
    maxPayloadBytes: 2048
    maxSubscriptionsPerConnection: 3
    outboundQueueMessages: 64
    handshakeTimeoutSeconds: 2
  heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}
  rateLimits:
    - {name: burst, capacity: 3, refillPerSecond: 2, key: connection}
  topics:
    - pattern: "room:{roomId}"
      publish: {requireSubscribed: true}
    - pattern: "feed:{feedId}"
    - pattern: "user:{userId}"
      subscribe: {owner: userId}
    - pattern: "staff:{team}"
      subscribe: {roles: [admin]}
  routes:
    - type: JOIN
      payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}
      subscribe: {topic: "room:{roomId}"}
    - type: LEAVE
      payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}
      unsubscribe: {topic: "room:{roomId}"}
    - type: SAY
      payload:
        type: object
        required: [roomId, text]
        additionalProperties: false
        properties:
          roomId: {type: string}
          text: {type: string, maxLength: 100}
      publish: {topic: "room:{roomId}", emit: SAID}
    - type: SAY_OTHERS
      payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}
      publish: {topic: "room:{roomId}", emit: SAID, excludeSelf: true}
    - type: FOLLOW
      payload: {type: object, required: [feedId], properties: {feedId: {type: string}}}
      subscribe: {topic: "feed:{feedId}"}
    - type: POST
      payload: {type: object, required: [feedId], properties: {feedId: {type: string}, body: {type: string}}}
      publish: {topic: "feed:{feedId}", emit: POSTED}
    - type: LIMITED
      payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}
      rateLimit: [{bucket: burst, cost: 1}]
      subscribe: {topic: "room:{roomId}"}
    - type: WATCH
      payload: {type: object, required: [userId], properties: {userId: {type: string}}}
      subscribe: {topic: "user:{userId}"}
    - type: STAFF_JOIN
      payload: {type: object, required: [team], properties: {team: {type: string}}}
      subscribe: {topic: "staff:{team}"}
    - type: MODERATE
      roles: [moderator]
      payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}
      subscribe: {topic: "room:{roomId}"}
    - type: ASK
      payload: {type: object}
      request: {subject: questions, reply: ANSWER, timeoutMs: 1000, replySchema: {type: object, required: [answer]}}
    - type: TELL
      forward: {subject: tells}
"#;

/// Applies `key: value` replacements to a YAML text, failing loudly if a key is absent
/// (so a test never silently runs with the default it meant to change).
pub fn with(yaml: &str, replacements: &[(&str, &str)]) -> String {
    let mut out = yaml.to_owned();
    for (from, to) in replacements {
        assert!(out.contains(from), "the app has no {from:?} to replace");
        out = out.replacen(from, to, 1);
    }
    out
}

pub struct TestServer {
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    secrets: PathBuf,
}

impl TestServer {
    pub async fn start(yaml: &str) -> Self {
        Self::start_on(yaml, None, "test-0").await
    }

    /// A replica named `instance` using the NATS server at `nats_url`.
    pub async fn start_on(yaml: &str, nats_url: Option<&str>, instance: &str) -> Self {
        let secrets = std::env::temp_dir().join(format!(
            "sb-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(secrets.join("jwt")).unwrap();
        std::fs::write(secrets.join("jwt/secret"), JWT_SECRET).unwrap();
        std::fs::create_dir_all(secrets.join("keys")).unwrap();
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for f in ["ed25519-public.pem", "ec-public.pem"] {
            std::fs::copy(fixtures.join(f), secrets.join("keys").join(f)).unwrap();
        }
        let app =
            switchboard_spec::load(yaml).unwrap_or_else(|e| panic!("test app is invalid: {e}"));
        let server = Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            app,
            secrets_dir: secrets.clone(),
            instance: instance.into(),
            nats_url: nats_url.map(str::to_owned),
        })
        .await
        .unwrap();
        let (ws, admin) = (server.ws_addr(), server.admin_addr());
        let shutdown = Shutdown::default();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            ws,
            admin,
            shutdown,
            task,
            secrets,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// A client connected with `token` in the `access_token` query parameter.
    pub async fn client_with_token(&self, token: &str) -> Client {
        Client::connect(&format!("{}?access_token={token}", self.url())).await
    }

    /// A plain HTTP GET on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(self) {
        self.shutdown.begin.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server did not stop within 10 s")
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// Polls /metrics until `series` has `value` (connections finish closing after their
/// close frame, so counters of closes settle a moment later). Returns the last text.
pub async fn wait_for_metric(server: &TestServer, series: &str, value: f64) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = server.metrics().await;
        if metric(&text, series) == Some(value) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} never reached {value}:\n{text}");
}

pub fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap()
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims the test app accepts, for user `sub`, valid for `ttl` seconds.
pub fn claims(sub: &str, ttl: u64) -> Value {
    json!({"sub": sub, "iss": "https://auth.test", "aud": "test", "exp": now() + ttl, "roles": []})
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
        let (ws, response) =
            match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
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
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame within the wait")
                .expect("connection ended")
                .expect("read failed");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
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

/// Asserts an error frame: type, code, and correlation id.
pub fn assert_error(frame: &Value, error_type: &str, code: &str, correlation_id: Option<&str>) {
    assert_eq!(frame["type"], error_type, "{frame}");
    assert_eq!(frame["payload"]["code"], code, "{frame}");
    assert!(
        frame["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{frame}"
    );
    assert!(frame["payload"]["retryable"].is_boolean(), "{frame}");
    match correlation_id {
        Some(c) => assert_eq!(frame["meta"]["correlationId"], c, "{frame}"),
        None => assert!(frame["meta"].get("correlationId").is_none(), "{frame}"),
    }
}

