//! The bus behind NATS permissions: a real nats-server running the shipped
//! `manifests/dev/nats-auth.conf` as it is, two replicas logged in as `server`, a
//! backend logged in as `backend`. Everything the app does over NATS still works, and
//! the backend can neither pose as a replica nor get an unchecked frame to clients.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::harness::*;

/// The authorization README's "Securing the bus" documents, for the example chat app.
pub const SHIPPED_AUTH: &str = include_str!("../../../manifests/dev/nats-auth.conf");

pub const SERVER_PASSWORD: &str = "server-password-for-tests";
pub const BACKEND_PASSWORD: &str = "backend-password-for-tests";

/// An app named like the example chat app (the shipped config is written for
/// `sb.default.chat`), with a plain topic, one with history, presence, and a request.
const APP: &str = r#"
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {name: chat, namespace: default}
spec:
  auth: {anonymous: true}
  nats:
    url: nats://replaced-by-the-test:4222
    auth: {user: server, passwordRef: {name: nats, key: password}}
  heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}
  topics:
    - {pattern: "room:{roomId}", presence: {joinLeave: false}}
    - {pattern: "board:{id}", history: {size: 10, ttlSeconds: 600}}
  routes:
    - {type: JOIN, payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}, subscribe: {topic: "room:{roomId}"}}
    - type: SAY
      payload:
        type: object
        required: [roomId, text]
        additionalProperties: false
        properties: {roomId: {type: string}, text: {type: string}}
      publish: {topic: "room:{roomId}", emit: SAID}
    - {type: MEMBERS, payload: {type: object, properties: {roomId: {type: string}}}, presence: {topic: "room:{roomId}"}}
    - {type: PIN, payload: {type: object, required: [id], properties: {id: {type: string}}}, subscribe: {topic: "board:{id}"}}
    - {type: POST, payload: {type: object, required: [id, text], properties: {id: {type: string}, text: {type: string}}}, publish: {topic: "board:{id}", emit: POSTED}}
    - {type: ASK, payload: {type: object}, request: {subject: questions, reply: ANSWER, timeoutMs: 5000}}
"#;

/// nats-server with the shipped authorization, and JetStream.
pub async fn secured_nats() -> NatsServer {
    NatsServer::start_with_config(
        SHIPPED_AUTH,
        &[
            ("SWITCHBOARD_SERVER_PASSWORD", SERVER_PASSWORD),
            ("SWITCHBOARD_BACKEND_PASSWORD", BACKEND_PASSWORD),
        ],
    )
    .await
}

/// A replica of [`APP`] logged in as `server`, ready (its history stream in place,
/// which needs the JetStream permissions).
async fn replica(nats: &NatsServer, name: &str) -> TestServer {
    let password = SERVER_PASSWORD.as_bytes();
    let s = TestServer::start_with_secrets(
        APP,
        Some(&nats.url()),
        name,
        &[("nats", "password", password)],
    )
    .await;
    eventually(&format!("replica {name} ready"), 20, || async {
        (s.admin_get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    s
}

/// The next error the NATS server sent the backend.
async fn next_error(errors: &mut UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("no error from the NATS server")
        .expect("the client is gone")
}

#[tokio::test]
async fn a_backend_with_the_shipped_permissions_cannot_forge_a_replica_frame() {
    let nats = secured_nats().await;
    let (a, b) = (replica(&nats, "a").await, replica(&nats, "b").await);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    for c in [&mut on_a, &mut on_b] {
        let ack = c.call("JOIN", "j", json!({"roomId": "lobby"})).await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
    }

    // Replicas still hand each other client publishes, and presence.
    on_a.tell("SAY", json!({"roomId": "lobby", "text": "from a"}))
        .await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.recv().await["payload"]["text"], "from a");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let members = on_b.call("MEMBERS", "m", json!({"roomId": "lobby"})).await;
        if members["payload"]["count"] == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never saw a's member: {members}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (backend, mut errors) = nats.client_as("backend", BACKEND_PASSWORD).await;
    let publish = |subject: &'static str, headers: async_nats::HeaderMap, body: Value| {
        let backend = backend.clone();
        async move {
            backend
                .publish_with_headers(subject, headers, body.to_string().into())
                .await
                .unwrap();
            backend.flush().await.unwrap();
        }
    };
    let say = |text: &str| json!({"type": "SAID", "payload": {"roomId": "lobby", "text": text}});
    let topic = "sb.default.chat.t.room.lobby";

    // A valid backend publish reaches every replica's subscribers.
    publish(topic, Default::default(), say("from the backend")).await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.recv().await["payload"]["text"], "from the backend");
    }

    // The replica subjects are closed to it: NATS refuses, nothing arrives.
    let forged = json!({"type": "SAID", "meta": {"topic": "room:lobby", "timestamp": 1}, "payload": {"text": "forged"}});
    let mut replica_headers = async_nats::HeaderMap::new();
    replica_headers.insert("Sb-Origin", "a");
    replica_headers.insert("Sb-Type", "SAID");
    publish(
        "sb.default.chat.x.room.lobby",
        replica_headers.clone(),
        forged.clone(),
    )
    .await;
    let error = next_error(&mut errors).await;
    assert!(
        error.contains("Permissions Violation for Publish to \"sb.default.chat.x.room.lobby\""),
        "{error}"
    );
    // So are the history stream's subjects and JetStream's API.
    publish(
        "sb.default.chat.s.board.b1",
        replica_headers.clone(),
        forged.clone(),
    )
    .await;
    assert!(
        next_error(&mut errors)
            .await
            .contains("sb.default.chat.s.board.b1")
    );
    let js = async_nats::jetstream::new(backend.clone());
    assert!(js.delete_stream("SB_SB_DEFAULT_CHAT").await.is_err());
    let error = next_error(&mut errors).await;
    assert!(
        error.contains("Publish to \"$JS.API.STREAM.DELETE.SB_SB_DEFAULT_CHAT\""),
        "{error}"
    );
    // Nor may it listen in on them.
    let mut eavesdrop = backend.subscribe("sb.default.chat.x.>").await.unwrap();
    let error = next_error(&mut errors).await;
    assert!(
        error.contains("Permissions Violation for Subscription to \"sb.default.chat.x.>\""),
        "{error}"
    );

    // On the topic subject, replica headers mean nothing: the frame is checked like
    // any backend publish (no roomId: no emitting route's schema accepts it).
    publish(topic, replica_headers.clone(), forged).await;
    publish(
        topic,
        Default::default(),
        json!({"type": "SAID", "payload": {"text": "no room"}}),
    )
    .await;
    // A valid one with them is delivered as a backend publish: `Sb-Exclude` silences
    // no one, the envelope is the server's own.
    let mut excluding = replica_headers.clone();
    excluding.insert("Sb-Exclude", on_a.open["connectionId"].as_str().unwrap());
    publish(topic, excluding, say("marker")).await;
    for c in [&mut on_a, &mut on_b] {
        let m = c.recv().await;
        assert_eq!(m["payload"]["text"], "marker", "nothing before it: {m}");
        assert_eq!(m["meta"]["topic"], "room:lobby", "{m}");
    }
    for s in [&a, &b] {
        let m = s.metrics().await;
        assert_eq!(
            metric(
                &m,
                r#"switchboard_bus_rejected_total{reason="invalid_payload"}"#
            ),
            Some(2.0),
            "{m}"
        );
        assert_eq!(
            metric(
                &m,
                r#"switchboard_bus_messages_received_total{source="backend"}"#
            ),
            Some(4.0),
            "{m}"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), eavesdrop.next())
            .await
            .is_err(),
        "the refused subscription gets nothing"
    );

    // What a backend is for still works: publishing into a topic with history (its
    // answer comes back to its inbox) and answering requests.
    let mut pinned = b.client().await;
    let ack = pinned.call("PIN", "p", json!({"id": "b1"})).await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    let stored = backend
        .request(
            "sb.default.chat.t.board.b1",
            json!({"type": "POSTED", "payload": {"id": "b1", "text": "kept"}})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    let stored: Value = serde_json::from_slice(&stored.payload).unwrap();
    assert!(stored["offset"].as_u64().is_some(), "{stored}");
    let m = pinned.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["meta"]["offset"].as_u64()),
        (Some("POSTED"), stored["offset"].as_u64()),
        "{m}"
    );

    let mut questions = backend
        .queue_subscribe("sb.default.chat.rpc.questions", "backends".into())
        .await
        .unwrap();
    nats.wait_for_subscription("sb.default.chat.rpc.questions")
        .await;
    let answering = backend.clone();
    tokio::spawn(async move {
        while let Some(msg) = questions.next().await {
            if let Some(reply) = msg.reply {
                answering
                    .publish(reply, json!({"answer": 42}).to_string().into())
                    .await
                    .unwrap();
            }
        }
    });
    let answer = on_a.call("ASK", "q", json!({})).await;
    assert_eq!(answer["payload"], json!({"answer": 42}), "{answer}");

    assert!(errors.try_recv().is_err(), "no other refusal");
    on_a.assert_alive().await;
    a.stop().await;
    b.stop().await;
}
