//! The example apps of `manifests/examples`, served from the files users run, on a real
//! nats-server. A backend here is a plain NATS client, as it would be in any language.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::*;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn read_example(file: &str) -> String {
    let path = examples_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The dev key of `notifications-secret.yaml`: (Secret name, data key, value).
///
/// The server's test dependencies have no YAML reader, and the file is a flat Secret,
/// so reading its lines is enough; the assertions catch a reshaped file.
fn notifications_dev_secret() -> (String, String, String) {
    let text = read_example("notifications-secret.yaml");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let value_after = |prefix: &str| {
        let at = lines
            .iter()
            .position(|l| l.trim_end() == prefix)
            .unwrap_or_else(|| panic!("notifications-secret.yaml has no {prefix:?} line"));
        lines[at + 1].trim().to_owned()
    };
    let name = value_after("metadata:");
    let name = name
        .strip_prefix("name: ")
        .unwrap_or_else(|| panic!("expected metadata.name, got {name:?}"));
    let entry = value_after("stringData:");
    let (key, value) = entry
        .split_once(": ")
        .unwrap_or_else(|| panic!("expected `key: value` under stringData, got {entry:?}"));
    (name.to_owned(), key.to_owned(), value.to_owned())
}

/// A server of one example app, with the dev Secret mounted the way the operator
/// mounts Secrets, connected to NATS (until then a subscription would not reach the
/// backends' publishes).
async fn start_example(file: &str, nats_url: &str) -> TestServer {
    let (name, key, value) = notifications_dev_secret();
    let server = TestServer::start_with_secrets(
        &read_example(file),
        Some(nats_url),
        "example-0",
        &[(&name, &key, value.as_bytes())],
    )
    .await;
    wait_for_metric(&server, "switchboard_bus_connected", 1.0).await;
    server
}

/// A fresh secrets directory holding the example notifications Secret.
fn secrets_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sb-examples-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let (name, key, value) = notifications_dev_secret();
    std::fs::create_dir_all(dir.join(&name)).unwrap();
    std::fs::write(dir.join(&name).join(&key), value).unwrap();
    dir
}

/// A token the notifications app accepts, signed with the example's dev key.
fn notifications_token(sub: &str, roles: &[&str]) -> String {
    let (_, _, key) = notifications_dev_secret();
    let claims = json!({"sub": sub, "aud": "notifications", "exp": now() + 300, "roles": roles});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// Publishes `body` to `subject` (a `.t.` subject) as a backend would, naming
/// `publisher` in `Sb-User`.
async fn backend_publish(nats: &async_nats::Client, subject: &str, publisher: &str, body: Value) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sb-User", publisher);
    nats.publish_with_headers(subject.to_owned(), headers, body.to_string().into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
}

#[tokio::test]
async fn examples_run_with_the_server_binary_and_its_check() {
    let secrets = secrets_dir();
    for file in ["chat.yaml", "notifications.yaml", "rpc.yaml"] {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-server"))
            .arg("--app")
            .arg(examples_dir().join(file))
            .arg("--secrets-dir")
            .arg(&secrets)
            .arg("--check")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, run)
            .await
            .expect("--check did not finish")
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&secrets);
}

#[tokio::test]
async fn examples_notifications_need_a_token_signed_with_the_apps_key() {
    let nats = NatsServer::start().await;
    let server = start_example("notifications.yaml", &nats.url()).await;

    let refused = |url: String| async move {
        match Client::connect_request(
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap(),
        )
        .await
        {
            Ok(c) => panic!("expected 401, got a connection: {}", c.open),
            Err(r) => r,
        }
    };
    let r = refused(server.url()).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("UNAUTHENTICATED"), "{}", r.body);

    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "aud": "notifications", "exp": now() + 300}),
        &EncodingKey::from_secret(b"some other key"),
    )
    .unwrap();
    let r = refused(format!("{}?access_token={forged}", server.url())).await;
    assert_eq!(r.status, 401);

    let alice = server
        .client_with_token(&notifications_token("alice", &[]))
        .await;
    assert_eq!(alice.open["app"], "notifications");
    assert_eq!(alice.open["user"]["id"], "alice");
    assert_eq!(alice.open["user"]["roles"], json!(["user"]));
    server.stop().await;
}

#[tokio::test]
async fn examples_notifications_from_a_backend_reach_only_their_owner() {
    let nats = NatsServer::start().await;
    let server = start_example("notifications.yaml", &nats.url()).await;
    let mut alice = server
        .client_with_token(&notifications_token("alice", &[]))
        .await;
    let mut bob = server
        .client_with_token(&notifications_token("bob", &[]))
        .await;

    let ack = alice
        .call("WATCH_NOTIFICATIONS", "w1", json!({"userId": "alice"}))
        .await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    assert_eq!(ack["payload"]["topic"], "user:alice");
    let e = bob
        .call("WATCH_NOTIFICATIONS", "w2", json!({"userId": "alice"}))
        .await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("w2"));
    let ack = bob
        .call("WATCH_NOTIFICATIONS", "w3", json!({"userId": "bob"}))
        .await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    let alice_subject = "sb.default.notifications.t.user.alice";
    nats.wait_for_subscription(alice_subject).await;
    nats.wait_for_subscription("sb.default.notifications.t.user.bob")
        .await;

    let backend = nats.client().await;
    let notification = json!({
        "userId": "alice",
        "notificationId": "n1",
        "title": "Your invoice is ready",
        "link": "https://example.com/invoices/1",
    });
    backend_publish(
        &backend,
        alice_subject,
        "billing",
        json!({"type": "NOTIFICATION", "payload": notification}),
    )
    .await;
    let m = alice.recv().await;
    assert_eq!(m["type"], "NOTIFICATION", "{m}");
    assert_eq!(m["meta"]["topic"], "user:alice");
    assert_eq!(m["meta"]["publisher"], "billing");
    assert_eq!(m["payload"], notification);

    // A payload that SEND_NOTIFICATION's schema refuses (no title) is dropped.
    backend_publish(
        &backend,
        alice_subject,
        "billing",
        json!({"type": "NOTIFICATION", "payload": {"userId": "alice", "notificationId": "n2"}}),
    )
    .await;
    wait_for_metric(
        &server,
        r#"switchboard_bus_rejected_total{reason="invalid_payload"}"#,
        1.0,
    )
    .await;
    alice.expect_silence(Duration::from_millis(300)).await;
    bob.expect_silence(Duration::from_millis(100)).await;

    // Plain users cannot push notifications themselves, not even to their own topic.
    let e = bob
        .call(
            "SEND_NOTIFICATION",
            "s1",
            json!({"userId": "bob", "notificationId": "x", "title": "hi"}),
        )
        .await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("s1"));
    server.stop().await;
}

#[tokio::test]
async fn examples_notifications_forward_reads_and_admins_broadcast() {
    let nats = NatsServer::start().await;
    let server = start_example("notifications.yaml", &nats.url()).await;
    let mut alice = server
        .client_with_token(&notifications_token("alice", &[]))
        .await;
    let mut admin = server
        .client_with_token(&notifications_token("root", &["admin"]))
        .await;

    // MARK_READ reaches backends with the reader's id.
    let backend = nats.client().await;
    let reads_subject = "sb.default.notifications.evt.notifications.read";
    let mut reads = backend.subscribe(reads_subject).await.unwrap();
    nats.wait_for_subscription(reads_subject).await;
    let ack = alice
        .call("MARK_READ", "r1", json!({"notificationId": "n1"}))
        .await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    assert_eq!(ack["payload"], json!({}));
    let read = tokio::time::timeout(WAIT, reads.next())
        .await
        .expect("no MARK_READ reached the backend")
        .unwrap();
    let body: Value = serde_json::from_slice(&read.payload).unwrap();
    assert_eq!(body, json!({"notificationId": "n1"}));
    let reader = read.headers.as_ref().and_then(|h| h.get("Sb-User"));
    assert_eq!(reader.map(|v| v.as_str()), Some("alice"));

    // Announcements: everyone may watch (without a payload), only admins broadcast.
    alice
        .send(json!({"type": "WATCH_ANNOUNCEMENTS", "meta": {"correlationId": "a1"}}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    assert_eq!(ack["payload"]["topic"], "announcements");
    let e = alice
        .call("BROADCAST", "b1", json!({"text": "I am not an admin"}))
        .await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("b1"));
    admin
        .tell("BROADCAST", json!({"text": "Maintenance at noon"}))
        .await;
    let m = alice.recv().await;
    assert_eq!(m["type"], "ANNOUNCEMENT", "{m}");
    assert_eq!(m["meta"]["topic"], "announcements");
    assert_eq!(m["meta"]["publisher"], "root");
    assert_eq!(m["payload"], json!({"text": "Maintenance at noon"}));

    // An admin may also notify one user directly.
    alice
        .call("WATCH_NOTIFICATIONS", "w1", json!({"userId": "alice"}))
        .await;
    let ack = admin
        .call(
            "SEND_NOTIFICATION",
            "s1",
            json!({"userId": "alice", "notificationId": "n9", "title": "Welcome"}),
        )
        .await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    let m = alice.recv().await;
    assert_eq!(m["type"], "NOTIFICATION", "{m}");
    assert_eq!(m["payload"]["title"], "Welcome");
    assert_eq!(m["meta"]["publisher"], "root");
    server.stop().await;
}

/// A backend answering GET_QUOTE (`quotes.get`) and LIST_SYMBOLS (`quotes.symbols`)
/// with answers chosen to hit every outcome.
async fn quotes_backend(nats: &NatsServer) {
    let client = nats.client().await;
    let get = "sb.default.quotes.rpc.quotes.get";
    let list = "sb.default.quotes.rpc.quotes.symbols";
    let mut gets = client.queue_subscribe(get, "quotes".into()).await.unwrap();
    let mut lists = client.queue_subscribe(list, "quotes".into()).await.unwrap();
    nats.wait_for_subscription(get).await;
    nats.wait_for_subscription(list).await;
    tokio::spawn(async move {
        loop {
            let (msg, answer) = tokio::select! {
                Some(msg) = gets.next() => {
                    let body: Value = serde_json::from_slice(&msg.payload).unwrap();
                    let answer = match body["symbol"].as_str() {
                        Some("ACME") => json!({"symbol": "ACME", "price": 123.45, "currency": "USD"}),
                        // No price: breaks replySchema.
                        Some("BROKEN") => json!({"symbol": "BROKEN"}),
                        other => json!({"error": {"code": "NOT_FOUND", "message": format!("no quote for {other:?}")}}),
                    };
                    (msg, answer)
                }
                Some(msg) = lists.next() => (msg, json!({"symbols": ["ACME"]})),
                else => return,
            };
            if let Some(reply) = msg.reply {
                client
                    .publish(reply, answer.to_string().into())
                    .await
                    .unwrap();
            }
        }
    });
}

#[tokio::test]
async fn examples_rpc_quotes_are_answered_by_a_backend() {
    let nats = NatsServer::start().await;
    let server = start_example("rpc.yaml", &nats.url()).await;
    let mut c = Client::connect(&server.url()).await;
    assert_eq!(c.open["app"], "quotes");

    // Before any backend subscribes, NATS reports no responders.
    let e = c.call("GET_QUOTE", "q0", json!({"symbol": "ACME"})).await;
    assert_error(&e, "RPC_ERROR", "UNAVAILABLE", Some("q0"));

    quotes_backend(&nats).await;
    let r = c.call("GET_QUOTE", "q1", json!({"symbol": "ACME"})).await;
    assert_eq!(r["type"], "QUOTE", "{r}");
    assert_eq!(r["meta"]["correlationId"], "q1");
    assert_eq!(
        r["payload"],
        json!({"symbol": "ACME", "price": 123.45, "currency": "USD"})
    );

    c.send(json!({"type": "LIST_SYMBOLS", "meta": {"correlationId": "l1"}}))
        .await;
    let r = c.recv().await;
    assert_eq!(r["type"], "SYMBOLS", "{r}");
    assert_eq!(r["meta"]["correlationId"], "l1");
    assert_eq!(r["payload"], json!({"symbols": ["ACME"]}));

    // A reply that breaks replySchema never reaches the client as a QUOTE.
    let e = c.call("GET_QUOTE", "q2", json!({"symbol": "BROKEN"})).await;
    assert_error(&e, "RPC_ERROR", "INTERNAL", Some("q2"));
    assert_eq!(e["payload"]["retryable"], false);
    assert!(
        e["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("replySchema")),
        "{e}"
    );

    // The backend's own error code is passed through.
    let e = c.call("GET_QUOTE", "q3", json!({"symbol": "NOPE"})).await;
    assert_error(&e, "RPC_ERROR", "NOT_FOUND", Some("q3"));

    // The route's schema refuses a bad symbol before any backend sees it.
    let e = c.call("GET_QUOTE", "q4", json!({"symbol": "acme"})).await;
    assert_error(&e, "RPC_ERROR", "INVALID_ARGUMENT", Some("q4"));

    let m = server.metrics().await;
    for (outcome, n) in [
        ("ok", 2.0),
        ("error", 1.0),
        ("invalid_reply", 1.0),
        ("unavailable", 1.0),
    ] {
        let series = format!(r#"switchboard_rpc_requests_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&m, &series), Some(n), "{series}\n{m}");
    }
    server.stop().await;
}
