//! Several replicas on one real nats-server: cross-replica fan-out, interest-based
//! subscriptions, backends publishing and answering requests, NATS outages.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::harness::*;

/// Replicas `a`, `b`, `c` of the test app on one NATS.
async fn cluster(nats: &NatsServer, names: &[&str]) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for name in names {
        let s = TestServer::start_on(TEST_APP, Some(&nats.url()), name).await;
        wait_for_metric(&s, "switchboard_bus_connected", 1.0).await;
        servers.push(s);
    }
    servers
}

/// Joins `room` and waits until the replica is subscribed to it on NATS, after which
/// publishes from every replica reach this client.
async fn join(nats: &NatsServer, server: &TestServer, client: &mut Client, room: &str) {
    let ack = client.call("JOIN", "join", json!({"roomId": room})).await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    wait_for_metric(server, "switchboard_bus_subscriptions", 1.0).await;
    nats.wait_for_subscription(&format!("sb.tests.test.t.room.{room}"))
        .await;
}

#[tokio::test]
async fn a_publish_on_one_replica_reaches_every_replica_exactly_once() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a", "b", "c"]).await;
    let mut clients = Vec::new();
    for s in &servers {
        let mut c = s.client().await;
        join(&nats, s, &mut c, "lobby").await;
        clients.push(c);
    }
    clients[0]
        .tell("SAY", json!({"roomId": "lobby", "text": "from a"}))
        .await;
    for c in &mut clients {
        let m = c.recv().await;
        assert_eq!(m["type"], "SAID");
        assert_eq!(m["payload"]["text"], "from a");
        assert_eq!(m["meta"]["topic"], "room:lobby");
    }
    for c in &mut clients {
        c.expect_silence(Duration::from_millis(300)).await;
    }
    let m = servers[1].metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchboard_bus_messages_received_total{source="replica"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"switchboard_messages_sent_total{type="SAID"}"#),
        Some(1.0)
    );
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn exclude_self_holds_across_replicas() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a", "b"]).await;
    let mut publisher = servers[0].client().await;
    join(&nats, &servers[0], &mut publisher, "r").await;
    let mut peer = servers[1].client().await;
    join(&nats, &servers[1], &mut peer, "r").await;
    publisher.tell("SAY_OTHERS", json!({"roomId": "r"})).await;
    assert_eq!(peer.recv().await["type"], "SAID");
    publisher.expect_silence(Duration::from_millis(300)).await;
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn a_replica_subscribes_on_nats_only_while_it_has_local_subscribers() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a"]).await;
    let subject = "sb.tests.test.t.room.r";
    let mut one = servers[0].client().await;
    let mut two = servers[0].client().await;
    join(&nats, &servers[0], &mut one, "r").await;
    join(&nats, &servers[0], &mut two, "r").await;
    let subs = nats.subscriptions().await;
    assert_eq!(subs.iter().filter(|s| *s == subject).count(), 1, "{subs:?}");
    one.call("LEAVE", "l", json!({"roomId": "r"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        nats.subscriptions().await.contains(&subject.to_owned()),
        "one subscriber is left"
    );
    two.call("LEAVE", "l", json!({"roomId": "r"})).await;
    wait_for_metric(&servers[0], "switchboard_bus_subscriptions", 0.0).await;
    let mut subs = nats.subscriptions().await;
    for _ in 0..20 {
        if !subs.contains(&subject.to_owned()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        subs = nats.subscriptions().await;
    }
    assert!(!subs.contains(&subject.to_owned()), "{subs:?}");
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn backends_publish_into_topics_through_the_emitting_routes_schema() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a"]).await;
    let mut c = servers[0].client().await;
    join(&nats, &servers[0], &mut c, "news").await;
    let backend = nats.client().await;
    let subject = "sb.tests.test.t.room.news";
    let publish = |body: Value| {
        let backend = backend.clone();
        async move {
            backend
                .publish(subject, body.to_string().into())
                .await
                .unwrap();
            backend.flush().await.unwrap();
        }
    };
    publish(json!({"type": "SAID", "payload": {"roomId": "news", "text": "from the backend"}}))
        .await;
    let m = c.recv().await;
    assert_eq!(m["type"], "SAID");
    assert_eq!(m["meta"]["topic"], "room:news");
    assert_eq!(m["payload"]["text"], "from the backend");

    // SAID is emitted by SAY and SAY_OTHERS; without a roomId it fits neither schema.
    publish(json!({"type": "SAID", "payload": {"text": "no room"}})).await;
    publish(json!({"type": "NOT_EMITTED_BY_ANY_ROUTE", "payload": {}})).await;
    publish(json!("not an envelope")).await;
    c.expect_silence(Duration::from_millis(300)).await;
    let m = servers[0].metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchboard_bus_rejected_total{reason="invalid_payload"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"switchboard_bus_rejected_total{reason="unknown_type"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, r#"switchboard_bus_rejected_total{reason="no_type"}"#),
        Some(1.0)
    );
    for s in servers {
        s.stop().await;
    }
}

/// A backend answering `sb.tests.test.rpc.questions` in a queue group with `answer`.
async fn backend(
    nats: &NatsServer,
    answer: impl Fn(&async_nats::Message) -> Option<Value> + Send + 'static,
) {
    let client = nats.client().await;
    let mut sub = client
        .queue_subscribe("sb.tests.test.rpc.questions", "backends".into())
        .await
        .unwrap();
    nats.wait_for_subscription("sb.tests.test.rpc.questions")
        .await;
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let (Some(reply), Some(body)) = (msg.reply.clone(), answer(&msg)) {
                client
                    .publish(reply, body.to_string().into())
                    .await
                    .unwrap();
            }
        }
    });
}

#[tokio::test]
async fn requests_reach_a_backend_and_every_outcome_is_answered() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a"]).await;
    let mut c = servers[0]
        .client_with_token(&hs256(claims("ann", 60)))
        .await;

    // No backend yet: no responders.
    let e = c.call("ASK", "q0", json!({"q": "anyone?"})).await;
    assert_error(&e, "RPC_ERROR", "UNAVAILABLE", Some("q0"));

    backend(&nats, |msg| {
        let body: Value = serde_json::from_slice(&msg.payload).unwrap();
        let user = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Sb-User"))
            .map(|v| v.to_string());
        match body["q"].as_str() {
            Some("meaning") => Some(json!({"answer": 42, "asker": user})),
            Some("missing") => {
                Some(json!({"error": {"code": "NOT_FOUND", "message": "no such question"}}))
            }
            Some("malformed") => Some(json!({"no_answer": true})),
            _ => None, // silence: the request times out
        }
    })
    .await;

    let r = c.call("ASK", "q1", json!({"q": "meaning"})).await;
    assert_eq!(r["type"], "ANSWER", "{r}");
    assert_eq!(r["meta"]["correlationId"], "q1");
    assert_eq!(r["payload"], json!({"answer": 42, "asker": "ann"}));

    let e = c.call("ASK", "q2", json!({"q": "missing"})).await;
    assert_error(&e, "RPC_ERROR", "NOT_FOUND", Some("q2"));
    assert_eq!(e["payload"]["message"], "no such question");

    let e = c.call("ASK", "q3", json!({"q": "malformed"})).await;
    assert_error(&e, "RPC_ERROR", "INTERNAL", Some("q3"));
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("replySchema"),
        "{e}"
    );

    let e = c.call("ASK", "q4", json!({"q": "silence"})).await;
    assert_error(&e, "RPC_ERROR", "DEADLINE_EXCEEDED", Some("q4"));
    assert_eq!(e["payload"]["retryable"], true);

    let m = servers[0].metrics().await;
    for (outcome, n) in [
        ("ok", 1.0),
        ("error", 1.0),
        ("invalid_reply", 1.0),
        ("timeout", 1.0),
        ("unavailable", 1.0),
    ] {
        let series = format!(r#"switchboard_rpc_requests_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&m, &series), Some(n), "{series}\n{m}");
    }
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn forward_routes_publish_to_backends_fire_and_forget() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a"]).await;
    let backend = nats.client().await;
    let mut events = backend.subscribe("sb.tests.test.evt.tells").await.unwrap();
    nats.wait_for_subscription("sb.tests.test.evt.tells").await;
    let mut c = servers[0].client().await;
    let ack = c.call("TELL", "t1", json!({"note": "hi"})).await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    let msg = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body, json!({"note": "hi"}));
    let user = msg.headers.unwrap().get("Sb-User").unwrap().to_string();
    assert_eq!(user, c.open["user"]["id"].as_str().unwrap());
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn local_delivery_survives_a_nats_outage_and_cross_replica_delivery_resumes() {
    let mut nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a", "b"]).await;
    let mut on_a = servers[0].client().await;
    join(&nats, &servers[0], &mut on_a, "r").await;
    let mut on_b = servers[1].client().await;
    join(&nats, &servers[1], &mut on_b, "r").await;

    nats.kill().await;
    wait_for_metric(&servers[0], "switchboard_bus_connected", 0.0).await;
    on_a.tell("SAY", json!({"roomId": "r", "text": "during the outage"}))
        .await;
    assert_eq!(on_a.recv().await["payload"]["text"], "during the outage");
    let (status, _) = servers[0].admin_get("/readyz").await;
    assert_eq!(status, 200, "readiness does not depend on NATS");

    nats.restart().await;
    wait_for_metric(&servers[0], "switchboard_bus_connected", 1.0).await;
    wait_for_metric(&servers[1], "switchboard_bus_connected", 1.0).await;
    // Subscriptions come back with the connection; retry until B hears A again.
    let mut heard = false;
    for i in 0..40 {
        on_a.tell("SAY", json!({"roomId": "r", "text": format!("after {i}")}))
            .await;
        assert!(
            on_a.recv().await["payload"]["text"]
                .as_str()
                .unwrap()
                .starts_with("after")
        );
        if let Some(m) = on_b.try_recv(Duration::from_millis(250)).await {
            // Whatever was buffered during the outage may arrive first.
            assert_eq!(m["type"], "SAID");
            heard = true;
            break;
        }
    }
    assert!(
        heard,
        "cross-replica delivery must resume without restarting the pods"
    );
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn topic_values_never_reach_a_nats_wildcard_or_another_apps_subjects() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a"]).await;
    // A spy sees every subject on the server.
    let spy = nats.client().await;
    let mut everything = spy.subscribe(">").await.unwrap();
    nats.wait_for_subscription(">").await;
    let mut c = servers[0].client().await;
    let evil = [
        "*",
        ">",
        "a.b",
        "x.>",
        "sb.tests.other.t.room",
        "r:*",
        " ",
        "a\tb",
    ];
    // Each value is encoded into one subject token of this app (docs/PROTOCOL.md,
    // "Topics"): the spy sees exactly the subjects expected, none a wildcard.
    for (i, room) in evil.iter().enumerate() {
        let ack = c
            .call("JOIN", &format!("j{i}"), json!({"roomId": room}))
            .await;
        assert_eq!(ack["type"], "$ws:ack", "{room:?}: {ack}");
        c.call("LEAVE", &format!("l{i}"), json!({"roomId": room}))
            .await;
        let ack = c
            .call("POST", &format!("p{i}"), json!({"feedId": room}))
            .await;
        assert_eq!(ack["type"], "$ws:ack", "{room:?}: {ack}");
        // Request inboxes aside, everything stays under the app's prefix.
        let msg = loop {
            let msg = tokio::time::timeout(WAIT, everything.next())
                .await
                .unwrap()
                .unwrap();
            if msg.subject.starts_with("sb.tests.test.x.feed.") {
                break msg;
            }
            assert!(
                msg.subject.starts_with("_INBOX.") || msg.subject.starts_with("sb.tests.test."),
                "{}",
                msg.subject
            );
        };
        let token = switchboard_spec::topic::encode_segment(room);
        assert_eq!(
            msg.subject.as_str(),
            format!("sb.tests.test.x.feed.{token}")
        );
        assert_eq!(msg.subject.split('.').count(), 6, "{}", msg.subject);
        assert!(!token.contains(['*', '>', '.', ' ', '\t']), "{token}");
    }
    for sub in nats.subscriptions().await.iter().filter(|s| {
        *s != ">" && !s.starts_with("_INBOX.") && !s.starts_with("sb.tests.test._inbox.")
    }) {
        assert!(
            sub.starts_with("sb.tests.test.") && !sub.contains('*') && !sub.contains('>'),
            "{sub}"
        );
    }
    for s in servers {
        s.stop().await;
    }
}

/// A replica is not ready before its first NATS connection: a client it took then would
/// be cut off from every other replica.
#[tokio::test]
async fn a_replica_is_ready_only_once_nats_has_answered() {
    let mut nats = NatsServer::start().await;
    nats.kill().await;
    let late = TestServer::start_on(TEST_APP, Some(&nats.url()), "late").await;
    let (status, body) = late.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("NATS"), "{body}");
    nats.restart().await;
    wait_for_metric(&late, "switchboard_bus_connected", 1.0).await;
    assert_eq!(late.admin_get("/readyz").await.0, 200);
    // A later outage does not unready it: local delivery goes on.
    nats.kill().await;
    wait_for_metric(&late, "switchboard_bus_connected", 0.0).await;
    assert_eq!(late.admin_get("/readyz").await.0, 200);
}

/// A subscribe's ack promises that publishes from every replica reach the client from
/// then on: no waiting on NATS in between, for many fresh topics in a row.
#[tokio::test]
async fn an_ack_of_a_join_means_other_replicas_reach_the_member() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a", "b"]).await;
    let mut speaker = servers[0].client().await;
    let mut member = servers[1].client().await;
    for i in 0..20 {
        let room = format!("fresh-{i}");
        let ack = speaker.call("JOIN", "s", json!({"roomId": room})).await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
        let ack = member.call("JOIN", "m", json!({"roomId": room})).await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
        speaker
            .tell("SAY", json!({"roomId": room, "text": "now"}))
            .await;
        assert_eq!(speaker.recv().await["type"], "SAID");
        let m = member.recv().await;
        assert_eq!(m["meta"]["topic"], format!("room:{room}"), "{m}");
        // (A connection may hold 3 subscriptions in the test app.)
        for c in [&mut speaker, &mut member] {
            let ack = c.call("LEAVE", "l", json!({"roomId": room})).await;
            assert_eq!(ack["type"], "$ws:ack", "{ack}");
        }
    }
}

#[tokio::test]
async fn frames_claiming_to_come_from_a_replica_are_checked_before_clients_see_them() {
    // A NATS without permissions: anything may publish on the replica subjects
    // (bus_security.rs shows permissions keeping backends off them).
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a"]).await;
    let mut c = servers[0].client().await;
    join(&nats, &servers[0], &mut c, "news").await;
    let forger = nats.client().await;
    let subject = "sb.tests.test.x.room.news";
    let forge = |message_type: &str, body: Vec<u8>| {
        let forger = forger.clone();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Sb-Origin", "not-a-replica");
        headers.insert("Sb-Type", message_type);
        async move {
            forger
                .publish_with_headers(subject, headers, body.into())
                .await
                .unwrap();
            forger.flush().await.unwrap();
        }
    };
    // Not UTF-8 (clients would have to fail the connection), not JSON, a type no route
    // emits, a type other than its header says, and far over any delivery's size.
    forge("SAID", vec![b'{', 0xff, 0xfe, b'}']).await;
    forge("SAID", b"plain text".to_vec()).await;
    forge(
        "NOT_EMITTED",
        br#"{"type":"NOT_EMITTED","payload":{}}"#.to_vec(),
    )
    .await;
    forge("SAID", br#"{"type":"OTHER","payload":{}}"#.to_vec()).await;
    let huge = format!(
        r#"{{"type":"SAID","payload":{{"text":"{}"}}}}"#,
        "x".repeat(64 * 1024)
    );
    forge("SAID", huge.into_bytes()).await;
    c.expect_silence(Duration::from_millis(300)).await;
    // A well-formed one still passes: only NATS permissions keep others off.
    forge(
        "SAID",
        br#"{"type":"SAID","meta":{"topic":"room:news","timestamp":1},"payload":{"text":"ok"}}"#
            .to_vec(),
    )
    .await;
    let m = c.recv().await;
    assert_eq!(m["payload"]["text"], "ok");
    let m = servers[0].metrics().await;
    for (reason, n) in [("not_json", 2.0), ("unknown_type", 2.0), ("too_large", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!("switchboard_bus_rejected_total{{reason=\"{reason}\"}}")
            ),
            Some(n),
            "{reason}: {m}"
        );
    }
    c.assert_alive().await;
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn a_backend_publish_reaches_clients_with_its_payload_as_written() {
    let nats = NatsServer::start().await;
    let servers = cluster(&nats, &["a"]).await;
    let mut c = servers[0].client().await;
    join(&nats, &servers[0], &mut c, "news").await;
    let backend = nats.client().await;
    let payload = r#"{"roomId":"news","n":18446744073709551616,"z":-0,"e":1e2}"#;
    backend
        .publish(
            "sb.tests.test.t.room.news",
            format!(r#"{{"type":"SAID","payload":{payload}}}"#).into(),
        )
        .await
        .unwrap();
    backend.flush().await.unwrap();
    let delivery = c.recv_text().await;
    assert!(
        delivery.ends_with(&format!(r#""payload":{payload}}}"#)),
        "{delivery}"
    );
    for s in servers {
        s.stop().await;
    }
}
