//! Routes and their actions: subscribe, unsubscribe, publish (emit, excludeSelf,
//! requireSubscribed), topic policies, and the backend actions without a bus.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn two_clients_in_a_room_see_each_others_messages() {
    let server = TestServer::start(TEST_APP).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.call("JOIN", "a", json!({"roomId": "lobby"})).await;
    bob.call("JOIN", "b", json!({"roomId": "lobby"})).await;

    alice
        .tell("SAY", json!({"roomId": "lobby", "text": "hi bob"}))
        .await;
    for c in [&mut alice, &mut bob] {
        let m = c.recv().await;
        assert_eq!(m["type"], "SAID");
        assert_eq!(m["meta"]["topic"], "room:lobby");
        assert_eq!(m["meta"]["publisher"], alice_id(&m));
        assert_eq!(m["payload"], json!({"roomId": "lobby", "text": "hi bob"}));
    }
    let ack = bob
        .call("SAY", "b2", json!({"roomId": "lobby", "text": "hi alice"}))
        .await;
    // The publisher's own copy and its ack both arrive; the order between them is free.
    let other = bob.recv().await;
    let types = [
        ack["type"].as_str().unwrap(),
        other["type"].as_str().unwrap(),
    ];
    assert!(
        types.contains(&"$ws:ack") && types.contains(&"SAID"),
        "{types:?}"
    );
    assert_eq!(alice.recv().await["payload"]["text"], "hi alice");
    server.stop().await;
}

fn alice_id(m: &serde_json::Value) -> serde_json::Value {
    m["meta"]["publisher"].clone()
}

#[tokio::test]
async fn publisher_id_is_the_users_id() {
    let server = TestServer::start(TEST_APP).await;
    let mut a = server.client().await;
    a.call("JOIN", "j", json!({"roomId": "r"})).await;
    a.tell("SAY", json!({"roomId": "r", "text": "x"})).await;
    let m = a.recv().await;
    assert_eq!(m["meta"]["publisher"], a.open["user"]["id"]);
    server.stop().await;
}

#[tokio::test]
async fn exclude_self_skips_only_the_publishing_connection() {
    let server = TestServer::start(TEST_APP).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.call("JOIN", "a", json!({"roomId": "r"})).await;
    b.call("JOIN", "b", json!({"roomId": "r"})).await;
    a.tell("SAY_OTHERS", json!({"roomId": "r"})).await;
    assert_eq!(b.recv().await["type"], "SAID");
    a.expect_silence(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn publishing_requires_subscription_where_the_rule_says_so() {
    let server = TestServer::start(TEST_APP).await;
    let mut a = server.client().await;
    let e = a
        .call("SAY", "s", json!({"roomId": "r", "text": "x"}))
        .await;
    assert_error(&e, "ERROR", "FAILED_PRECONDITION", Some("s"));
    // feed: has no such rule; a non-subscriber may post.
    let mut reader = server.client().await;
    reader.call("FOLLOW", "f", json!({"feedId": "news"})).await;
    let ack = a
        .call("POST", "p", json!({"feedId": "news", "body": "hello"}))
        .await;
    assert_eq!(ack["type"], "$ws:ack");
    let m = reader.recv().await;
    assert_eq!(m["type"], "POSTED");
    assert_eq!(m["payload"]["body"], "hello");
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_deliveries() {
    let server = TestServer::start(TEST_APP).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.call("JOIN", "a", json!({"roomId": "r"})).await;
    b.call("FOLLOW", "b", json!({"feedId": "f"})).await;
    let ack = b.call("LEAVE", "l", json!({"roomId": "r"})).await;
    assert_eq!(
        ack["type"], "$ws:ack",
        "leaving a room one is not in is fine"
    );
    a.tell("POST", json!({"feedId": "f"})).await;
    assert_eq!(b.recv().await["type"], "POSTED");
    b.call("JOIN", "j", json!({"roomId": "r"})).await;
    b.call("LEAVE", "l2", json!({"roomId": "r"})).await;
    a.tell("SAY", json!({"roomId": "r", "text": "anyone?"}))
        .await;
    assert_eq!(a.recv().await["type"], "SAID");
    b.expect_silence(Duration::from_millis(300)).await;
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "switchboard_topics"),
        Some(2.0),
        "room:r (a) and feed:f (b): {m}"
    );
    assert_eq!(metric(&m, "switchboard_subscriptions"), Some(2.0));
    server.stop().await;
}

#[tokio::test]
async fn closing_a_connection_drops_its_subscriptions() {
    let server = TestServer::start(TEST_APP).await;
    let mut a = server.client().await;
    a.call("JOIN", "a", json!({"roomId": "r"})).await;
    a.call("FOLLOW", "b", json!({"feedId": "f"})).await;
    drop(a);
    let mut m = String::new();
    for _ in 0..50 {
        m = server.metrics().await;
        if metric(&m, "switchboard_subscriptions") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&m, "switchboard_subscriptions"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "switchboard_topics"), Some(0.0));
    assert_eq!(metric(&m, "switchboard_connections"), Some(0.0));
    server.stop().await;
}

#[tokio::test]
async fn route_roles_and_topic_roles_are_enforced() {
    let server = TestServer::start(TEST_APP).await;
    let mut anon = server.client().await;
    let e = anon.call("MODERATE", "m", json!({"roomId": "r"})).await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("m"));
    let e = anon.call("STAFF_JOIN", "s", json!({"team": "ops"})).await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("s"));

    let mut claims = claims("ada", 60);
    claims["roles"] = json!(["admin", "moderator"]);
    let mut admin = server.client_with_token(&hs256(claims)).await;
    assert_eq!(
        admin.open["user"]["roles"],
        json!(["user", "admin", "moderator"])
    );
    assert_eq!(
        admin.call("MODERATE", "m", json!({"roomId": "r"})).await["type"],
        "$ws:ack"
    );
    assert_eq!(
        admin.call("STAFF_JOIN", "s", json!({"team": "ops"})).await["type"],
        "$ws:ack"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_private_topic_is_only_for_its_owner() {
    let server = TestServer::start(TEST_APP).await;
    let mut alice = server.client_with_token(&hs256(claims("alice", 60))).await;
    let e = alice.call("WATCH", "w1", json!({"userId": "bob"})).await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("w1"));
    let ack = alice.call("WATCH", "w2", json!({"userId": "alice"})).await;
    assert_eq!(ack["payload"]["topic"], "user:alice");
    server.stop().await;
}

#[tokio::test]
async fn any_user_id_fills_a_private_topic_encoded_and_only_its_owner_gets_in() {
    let server = TestServer::start(TEST_APP).await;
    for (id, topic) in [
        ("auth0|64f1c2", "user:auth0=7C64f1c2"),
        ("ann.lee@example.com", "user:ann=2Elee@example=2Ecom"),
        ("a=b", "user:a=3Db"),
    ] {
        let mut owner = server.client_with_token(&hs256(claims(id, 60))).await;
        let ack = owner.call("WATCH", "w", json!({"userId": id})).await;
        assert_eq!(ack["payload"]["topic"], topic, "{ack}");
        // Someone else's id, and the encoded spelling sent as if it were an id (it
        // is encoded again, so it names a different user), are refused.
        let mut other = server.client_with_token(&hs256(claims("eve", 60))).await;
        let e = other.call("WATCH", "e", json!({"userId": id})).await;
        assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("e"));
        let encoded = topic.strip_prefix("user:").unwrap();
        let e = owner.call("WATCH", "x", json!({"userId": encoded})).await;
        if encoded != id {
            assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("x"));
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    for r in ["a", "b", "c"] {
        assert_eq!(
            c.call("JOIN", r, json!({"roomId": r})).await["type"],
            "$ws:ack"
        );
    }
    // Re-joining is idempotent and costs nothing.
    assert_eq!(
        c.call("JOIN", "again", json!({"roomId": "a"})).await["type"],
        "$ws:ack"
    );
    let e = c.call("JOIN", "d", json!({"roomId": "d"})).await;
    assert_error(&e, "ERROR", "RESOURCE_EXHAUSTED", Some("d"));
    assert_eq!(e["payload"]["retryable"], false);
    c.call("LEAVE", "l", json!({"roomId": "a"})).await;
    assert_eq!(
        c.call("JOIN", "d2", json!({"roomId": "d"})).await["type"],
        "$ws:ack"
    );
    server.stop().await;
}

#[tokio::test]
async fn request_and_forward_answer_unavailable_without_a_bus() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    let e = c.call("ASK", "q1", json!({"q": 1})).await;
    assert_error(&e, "RPC_ERROR", "UNAVAILABLE", Some("q1"));
    assert_eq!(e["payload"]["retryable"], true);
    let e = c.call("TELL", "t1", json!({"x": 1})).await;
    assert_error(&e, "ERROR", "UNAVAILABLE", Some("t1"));
    c.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn one_delivery_fans_out_to_many_subscribers() {
    let server = TestServer::start(TEST_APP).await;
    let mut subs = Vec::new();
    for i in 0..20 {
        let mut c = server.client().await;
        c.call("FOLLOW", &format!("f{i}"), json!({"feedId": "big"}))
            .await;
        subs.push(c);
    }
    let mut publisher = server.client().await;
    publisher
        .tell("POST", json!({"feedId": "big", "body": "to all"}))
        .await;
    let mut first: Option<serde_json::Value> = None;
    for c in &mut subs {
        let m = c.recv().await;
        assert_eq!(m["payload"]["body"], "to all");
        // Every recipient gets the very same frame (one encoding, shared bytes).
        match &first {
            None => first = Some(m),
            Some(f) => assert_eq!(f, &m),
        }
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"switchboard_messages_sent_total{type="POSTED"}"#),
        Some(20.0),
        "{m}"
    );
    assert_eq!(metric(&m, "switchboard_fanout_recipients_sum"), Some(20.0));
    assert!(metric(&m, "switchboard_delivery_latency_seconds_count").unwrap() >= 20.0);
    server.stop().await;
}

#[tokio::test]
async fn deliveries_carry_the_publishing_message_s_payload_byte_for_byte() {
    let server = TestServer::start(TEST_APP).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    b.call("FOLLOW", "f", json!({"feedId": "nums"})).await;
    let payload = r#"{"feedId":"nums","big":18446744073709551616,"long":123456789012345678901234567890,"neg":-0,"exp":1e2}"#;
    a.send_text(&format!(r#"{{"type":"POST","payload":{payload}}}"#))
        .await;
    let delivery = b.recv_text().await;
    assert!(
        delivery.ends_with(&format!(r#""payload":{payload}}}"#)),
        "{delivery}"
    );
    server.stop().await;
}
