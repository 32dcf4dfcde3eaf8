//! The `switchboard-server` binary as a user runs it: flags, the built-in example app,
//! exit codes, logs, and SIGTERM.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-server");

async fn run_to_end(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("SWITCHBOARD_SECRETS_DIR", "/nonexistent")
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn a_bad_flag_prints_usage_and_exits_2() {
    let (code, text) = run_to_end(&["--no-such-flag"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("Usage"), "{text}");
    let (code, text) = run_to_end(&["--listen", "not-an-address"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--listen"), "{text}");
}

#[tokio::test]
async fn an_invalid_app_names_the_field_and_exits_2_before_listening() {
    let dir = std::env::temp_dir().join(format!("sb-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    let bad = TEST_APP.replacen(
        "publish: {topic: \"room:{roomId}\", emit: SAID}",
        "publish: {topic: \"room:{nope}\", emit: SAID}",
        1,
    );
    std::fs::write(&file, bad).unwrap();
    let (code, text) =
        run_to_end(&["--app", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("spec.routes[2] (SAY).publish.topic") && text.contains("{nope}"),
        "{text}"
    );
    assert!(!text.contains("serving"), "{text}");

    std::fs::write(
        &file,
        TEST_APP.replacen(
            "      forward: {subject: tells}",
            "      forwrd: {subject: tells}",
            1,
        ),
    )
    .unwrap();
    let (code, text) = run_to_end(&["--app", file.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("spec.routes[11]") && text.contains("forwrd"),
        "{text}"
    );

    let (code, text) = run_to_end(&["--app", dir.join("missing.yaml").to_str().unwrap()]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("missing.yaml"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn check_validates_app_and_secrets() {
    let (code, text) = run_to_end(&["--check"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("built-in example app: ok"), "{text}");
    let dir = std::env::temp_dir().join(format!("sb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.yaml"), TEST_APP).unwrap();
    // TEST_APP needs the jwt Secret, which /nonexistent does not hold.
    let (code, text) =
        run_to_end(&["--check", "--app", dir.join("app.yaml").to_str().unwrap()]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("spec.auth.jwt.secretRef"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running binary with its stderr collected.
pub struct Running {
    pub child: Child,
    pub ws: String,
    pub admin: std::net::SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Running {
    pub async fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
    }
}

async fn start_default_app() -> Running {
    start_binary(&["--instance", "bin-0"]).await
}

/// Starts the binary on ephemeral loopback ports with `args` added, logging at debug,
/// and waits until it serves.
pub async fn start_binary(args: &[&str]) -> Running {
    start_binary_logging(args, Some("debug")).await
}

/// Like [`start_binary`], with `RUST_LOG` set to `filter` (`None`: the binary's default).
pub async fn start_binary_logging(args: &[&str], filter: Option<&str>) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args);
    match filter {
        Some(f) => command.env("RUST_LOG", f),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sink = log.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(line.clone());
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let line = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the server did not start")
        .unwrap();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line}"))
            .to_owned()
    };
    Running {
        child,
        ws: format!("ws://{}/ws", field("ws")),
        admin: field("admin").parse().unwrap(),
        log,
    }
}

#[tokio::test]
async fn the_built_in_chat_app_serves_two_clients_in_a_room() {
    let mut server = start_default_app().await;
    let (status, _) = http_get(server.admin, "/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = http_get(server.admin, "/readyz").await;
    assert_eq!(status, 200);

    let mut alice = Client::connect(&server.ws).await;
    let mut bob = Client::connect(&server.ws).await;
    assert_eq!(alice.open["app"], "chat");
    for (c, id) in [(&mut alice, "a"), (&mut bob, "b")] {
        let ack = c.call("JOIN_ROOM", id, json!({"roomId": "lobby"})).await;
        assert_eq!(ack["payload"]["topic"], "room:lobby");
    }
    bob.tell("TYPING", json!({"roomId": "lobby"})).await;
    assert_eq!(alice.recv().await["type"], "USER_TYPING");
    bob.tell("SEND_MESSAGE", json!({"roomId": "lobby", "text": "hello"}))
        .await;
    for c in [&mut alice, &mut bob] {
        let m = c.recv().await;
        assert_eq!(m["type"], "ROOM_MESSAGE");
        assert_eq!(m["payload"]["text"], "hello");
    }
    // A private inbox: only its owner may watch it; anyone may write to it.
    let alice_id = alice.open["user"]["id"].as_str().unwrap().to_owned();
    let e = bob
        .call("WATCH_INBOX", "w", json!({"userId": alice_id}))
        .await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("w"));
    alice
        .call("WATCH_INBOX", "w", json!({"userId": alice_id}))
        .await;
    bob.tell("SEND_DIRECT", json!({"userId": alice_id, "text": "psst"}))
        .await;
    assert_eq!(alice.recv().await["type"], "DIRECT_MESSAGE");
    let e = alice
        .call("FETCH_PROFILE", "p", json!({"userId": "x"}))
        .await;
    assert_error(&e, "RPC_ERROR", "UNAVAILABLE", Some("p"));

    // A token that fails verification is refused, and never written to the log.
    let secret_token =
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0b3Atc2VjcmV0In0.c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtbGVhaw";
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{}?access_token={secret_token}", server.ws),
    )
    .unwrap();
    assert_eq!(
        Client::connect_request(req).await.err().unwrap().status,
        401
    );

    // SIGTERM: every client is told to reconnect elsewhere, then closed with 1001,
    // and the process exits 0.
    let pid = server.child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    for c in [&mut alice, &mut bob] {
        let drain = c.recv().await;
        assert_eq!(drain["type"], "$ws:drain", "{drain}");
        assert_eq!(drain["payload"]["reason"], "shutdown");
        assert!(
            drain["payload"]["reconnectAfterMs"].as_u64().is_some(),
            "{drain}"
        );
    }
    assert_eq!(alice.expect_close(Duration::from_secs(5)).await, 1001);
    assert_eq!(bob.expect_close(Duration::from_secs(5)).await, 1001);
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("the server must exit after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("connection"),
        "debug logs were captured: {log}"
    );
    for part in secret_token.split('.') {
        assert!(
            !log.contains(part),
            "a token part leaked into the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn flags_come_from_the_environment_and_logs_can_be_json() {
    let child = Command::new(BIN)
        .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0")
        .env("POD_NAME", "from-env")
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["message"], "serving");
    assert!(v["ws"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert_eq!(v["instance"], "from-env");
}

/// A refused upgrade is invisible to most clients (they show the status only), so the
/// server logs each one, with the reason and the peer, never the token; and a flood of
/// them costs a bounded number of lines, the rest summarized.
#[tokio::test]
async fn refused_upgrades_are_logged_bounded_and_without_the_token() {
    let server = start_default_app().await;
    let secret_token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl";
    let url = format!("{}?access_token={secret_token}", server.ws);
    for _ in 0..40 {
        let r = Client::connect_request(url.as_str().into_client_request().unwrap())
            .await
            .err()
            .expect("a token for an app without JWT auth is refused");
        assert_eq!(r.status, 401);
    }
    // Past the per-second budget, the next admitted line reports what was left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = Client::connect_request(url.as_str().into_client_request().unwrap()).await;
    let log = eventually("the summarizing refusal line", 10, || {
        let log = server.log.lock().unwrap().clone();
        async move {
            log.lines()
                .any(|l| l.contains("upgrade refused") && !l.contains("suppressed_since_last=0"))
                .then_some(log)
        }
    })
    .await;
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upgrade refused"))
        .collect();
    assert!(
        (2..=20).contains(&refusals.len()),
        "41 refusals should log a bounded number of lines, got {}:\n{log}",
        refusals.len()
    );
    let first = refusals[0];
    for needle in [
        "status=401",
        "reason=\"unauthenticated\"",
        "peer=127.0.0.1:",
        "this app accepts no tokens",
    ] {
        assert!(first.contains(needle), "{needle} missing from {first}");
    }
    assert!(
        !log.contains(secret_token),
        "the token leaked into the log:\n{log}"
    );
    assert!(
        !log.contains("c2VjcmV0"),
        "part of the token leaked into the log:\n{log}"
    );
}

#[tokio::test]
async fn an_unreachable_nats_is_logged_once_with_its_cause_then_ever_less_often() {
    // A loopback port nothing listens on once the probe listener is gone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = start_binary_logging(&["--instance", "bin-nats", "--nats-url", &url], None).await;
    let log = eventually("the line of the 4th failed attempt", 30, || {
        let log = server.log.lock().unwrap().clone();
        async move { log.contains("failed_attempts=4").then_some(log) }
    })
    .await;
    let nats: Vec<&str> = log.lines().filter(|l| l.contains("NATS")).collect();
    let starts: Vec<&&str> = nats
        .iter()
        .filter(|l| l.contains("cannot connect to NATS"))
        .collect();
    assert_eq!(starts.len(), 1, "one line opens the outage:\n{log}");
    for needle in [url.as_str(), "Connection refused", "retrying"] {
        assert!(
            starts[0].contains(needle),
            "{needle} missing from {}",
            starts[0]
        );
    }
    assert!(nats[0].contains("cannot connect to NATS"), "{log}");
    assert!(
        !log.contains("failed_attempts=3"),
        "every attempt was logged:\n{log}"
    );
    assert!(
        !log.contains("async_nats"),
        "the NATS client's own per-attempt lines are shown by default:\n{log}"
    );
}

/// `switchboard-server asyncapi` prints the document the admin port serves at
/// `/asyncapi.json`: for the built-in example app, and for `--app` given after the
/// subcommand. An unknown subcommand is a usage error.
#[tokio::test]
async fn asyncapi_prints_what_the_admin_port_serves() {
    let out = Command::new(BIN).arg("asyncapi").output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["asyncapi"], "3.0.0");
    assert_eq!(printed["info"]["title"], "chat");

    let served = TestServer::start(TEST_APP).await;
    let (status, body) = served.admin_get("/asyncapi.json").await;
    assert_eq!(status, 200, "{body}");
    let dir = std::env::temp_dir().join(format!("sb-asyncapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("app.yaml");
    std::fs::write(&file, TEST_APP).unwrap();
    let out = Command::new(BIN)
        .args(["asyncapi", "--app", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), body);
    let _ = std::fs::remove_dir_all(&dir);

    let (code, text) = run_to_end(&["no-such-command"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("unrecognized subcommand"), "{text}");
}

/// The built-in app serves the demo page beside `/ws`; an app of one's own does not
/// unless `--demo` asks, so a real app's listener answers nothing but `/ws`.
#[tokio::test]
async fn the_demo_page_is_served_for_the_built_in_app_only() {
    let server = start_default_app().await;
    let ws: std::net::SocketAddr = server
        .ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let (status, page) = http_get(ws, "/").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<script type=\"module\" src=\"/demo.js\">"),
        "{page}"
    );
    let (status, script) = http_get(ws, "/demo.js").await;
    assert_eq!(status, 200);
    assert!(
        script.contains("BOARD_HISTORY"),
        "the bundle holds the generated chat module"
    );
    assert!(server.log.lock().unwrap().contains("demo page"));

    let own = TestServer::start(TEST_APP).await;
    let (status, body) = http_get(own.ws, "/").await;
    assert_eq!(status, 404, "{body}");
}
