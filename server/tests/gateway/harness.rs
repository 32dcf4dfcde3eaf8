//! A real server on an ephemeral loopback port, and the app, tokens and assertions the
//! gateway tests share. The WebSocket client, nats-server and admin-port helpers come
//! from the workspace's shared harness (`switchboard-tests`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard_server::{Server, ServerConfig, Shutdown};
pub use switchboard_tests::{Client, NatsServer, Refused, WAIT, eventually, http_get, metric};

pub const JWT_SECRET: &[u8] = b"test-secret-0123456789abcdef0123456789";

/// A fresh directory holding `app` as `app.yaml` and the test app's JWT Secret under
/// `secrets/` (mounted as the operator mounts it), for servers run as processes.
/// Returns the directory, the app file and the secrets directory.
pub fn app_files_in_temp_dir(app: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "sb-app-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(dir.join("secrets/jwt")).unwrap();
    std::fs::write(dir.join("secrets/jwt/secret"), JWT_SECRET).unwrap();
    std::fs::write(dir.join("app.yaml"), app).unwrap();
    (dir.clone(), dir.join("app.yaml"), dir.join("secrets"))
}

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
        Self::start_with_secrets(yaml, nats_url, instance, &[]).await
    }

    /// Like `start_on`, with more Secret keys mounted the way the operator mounts them
    /// (`<secrets-dir>/<secret name>/<key>`), beside the test app's own.
    pub async fn start_with_secrets(
        yaml: &str,
        nats_url: Option<&str>,
        instance: &str,
        extra: &[(&str, &str, &[u8])],
    ) -> Self {
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
        for (name, key, value) in extra {
            std::fs::create_dir_all(secrets.join(name)).unwrap();
            std::fs::write(secrets.join(name).join(key), value).unwrap();
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
            demo: false,
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

    /// Where the server reads key `key` of Secret `name`.
    pub fn secret_path(&self, name: &str, key: &str) -> PathBuf {
        self.secrets.join(name).join(key)
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

/// Sends a hand-written upgrade request (`GET /ws`, `Host`, then `headers`, one
/// `Name: value` each) and returns the response head (status line and headers), for
/// handshakes a WebSocket library would refuse to send or to accept.
pub async fn raw_handshake(addr: SocketAddr, headers: &[&str]) -> String {
    let mut request = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    raw_request(addr, &request).await
}

/// Sends `request` as it is and returns the response head.
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    raw_exchange(addr, request).await.0
}

/// Sends `request` and reads the response head, keeping the stream for what follows.
async fn raw_exchange(addr: SocketAddr, request: &str) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

/// The usual upgrade headers, key and version included.
pub const UPGRADE_HEADERS: [&str; 4] = [
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// A WebSocket client written by hand on a TCP stream, for frames a WebSocket library
/// will not send: oversized control frames, malformed closes, invalid UTF-8.
pub struct RawWs {
    stream: tokio::net::TcpStream,
}

impl RawWs {
    /// Upgrades (anonymously) and reads past `$ws:open`.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, &[]).await.1
    }

    /// Upgrades with more request headers; the response head, and the client past
    /// `$ws:open` (which is short: never compressed).
    pub async fn connect_with(addr: SocketAddr, headers: &[&str]) -> (String, Self) {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\n{}\r\n{}\r\n",
            UPGRADE_HEADERS.join("\r\n"),
            headers
                .iter()
                .map(|h| format!("{h}\r\n"))
                .collect::<String>()
        );
        let (head, stream) = raw_exchange(addr, &request).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut ws = Self { stream };
        let (opcode, open) = ws.read_frame().await.unwrap();
        assert_eq!(opcode, 1, "the first frame is text");
        assert!(String::from_utf8_lossy(&open).contains("$ws:open"));
        (head, ws)
    }

    /// Writes one masked frame whose first header byte (FIN, RSV bits, opcode) is
    /// `first`, as it is.
    pub async fn send_first_byte(&mut self, first: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut frame = Self::frame(first & 0x0f, true, payload);
        frame[0] = first;
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Writes one masked frame: `opcode`, `fin`, `payload`.
    pub async fn send(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let frame = Self::frame(opcode, fin, payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The bytes of one frame as a server would send it: unmasked, which a client must
    /// never do (RFC 6455 §5.1).
    pub fn unmasked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut frame = Self::frame(opcode, fin, payload);
        let header = frame.len() - payload.len() - 4;
        frame[1] &= 0x7f;
        frame.truncate(header);
        frame.extend_from_slice(payload);
        frame
    }

    /// The bytes of one masked frame, as `send` writes them.
    pub fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        Self::frame(opcode, fin, payload)
    }

    /// Writes raw bytes as they are (e.g. half a frame).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Writes `n` masked text frames of `text` in one write: a burst.
    pub async fn send_burst(&mut self, text: &str, n: usize) {
        use tokio::io::AsyncWriteExt;
        let one = Self::frame(1, true, text.as_bytes());
        self.stream.write_all(&one.repeat(n)).await.unwrap();
    }

    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// The next frame (opcode, payload); `None` at EOF or after 5 s of silence.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let (first, payload) = self.read_frame_head().await?;
        Some((first & 0x0f, payload))
    }

    /// The next frame with its whole first header byte (FIN, RSV bits, opcode).
    pub async fn read_frame_head(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.stream.read_exact(&mut l).await.ok()?;
                    u64::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.stream.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some((head[0], payload))
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .ok()
            .flatten()
    }

    /// Reads until the server's close frame: the opcodes of the frames before it, and its
    /// code (`None`: EOF without one).
    pub async fn frames_until_close(&mut self) -> (Vec<u8>, Option<u16>) {
        let mut before = Vec::new();
        while let Some((opcode, payload)) = self.read_frame().await {
            if opcode == 8 {
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                return (before, code);
            }
            before.push(opcode);
        }
        (before, None)
    }

    /// Reads until the server's close frame; its code (`None`: EOF without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.read_frame().await?;
            if opcode == 8 {
                return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
    }
}
