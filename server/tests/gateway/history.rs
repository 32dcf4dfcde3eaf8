//! History, recovery and presence on one replica (the in-memory store): offsets and
//! epochs on deliveries, subscribe acks with the position, gapless recovery with
//! `meta.since` (also while publishes keep arriving), each refusal reason, history
//! pages, members and join/leave events.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::Client;

use crate::harness::*;

pub const HISTORY_APP: &str = r#"
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {name: hist, namespace: test}
spec:
  auth:
    anonymous: true
    jwt: {algorithms: [HS256], secretRef: {name: jwt, key: secret}}
  limits: {maxRecoveryPublications: 1000, outboundQueueMessages: 4096}
  heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}
  topics:
    - {pattern: "room:{id}", history: {size: 1000, ttlSeconds: 60}, presence: {joinLeave: true}}
    - {pattern: "small:{id}", history: {size: 10, ttlSeconds: 60}}
    - {pattern: "brief:{id}", history: {size: 10, ttlSeconds: 1}}
  routes:
    - {type: JOIN, payload: {type: object, properties: {id: {type: string}}}, subscribe: {topic: "room:{id}"}}
    - {type: LEAVE, payload: {type: object, properties: {id: {type: string}}}, unsubscribe: {topic: "room:{id}"}}
    - {type: SAY, payload: {type: object, properties: {id: {type: string}, n: {type: integer}, text: {type: string}}}, publish: {topic: "room:{id}", emit: SAID}}
    - type: HISTORY
      payload: {type: object, properties: {id: {type: string}, limit: {type: integer}, before: {type: integer}, since: {type: integer}}}
      history: {topic: "room:{id}", maxLimit: 20}
    - {type: MEMBERS, payload: {type: object, properties: {id: {type: string}, cursor: {type: string}}}, presence: {topic: "room:{id}"}}
    - {type: JOIN_SMALL, payload: {type: object, properties: {id: {type: string}}}, subscribe: {topic: "small:{id}"}}
    - {type: SAY_SMALL, payload: {type: object, properties: {id: {type: string}, n: {type: integer}}}, publish: {topic: "small:{id}", emit: SAID}}
    - {type: JOIN_BRIEF, payload: {type: object, properties: {id: {type: string}}}, subscribe: {topic: "brief:{id}"}}
    - {type: SAY_BRIEF, payload: {type: object, properties: {id: {type: string}, n: {type: integer}}}, publish: {topic: "brief:{id}", emit: SAID}}
"#;

/// Subscribes with `meta.since` (no correlation id: the ack comes anyway) and returns
/// the ack.
pub async fn recover(c: &mut Client, join: &str, id: &str, offset: u64, epoch: &str) -> Value {
    c.send(json!({"type": join, "meta": {"since": {"offset": offset, "epoch": epoch}}, "payload": {"id": id}}))
        .await;
    let ack = c.recv().await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    ack["payload"].clone()
}

/// Publishes `n` messages numbered from `from` and waits for their acks.
pub async fn publish(c: &mut Client, say: &str, id: &str, from: u64, n: u64) {
    for i in from..from + n {
        let ack = c
            .call(say, &format!("p{i}"), json!({"id": id, "n": i}))
            .await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
    }
}

/// Asserts `got` is exactly 1..=total, naming the first entries out of place.
pub fn assert_in_order_once(got: &[u64], total: u64) {
    let wrong: Vec<(usize, u64)> = got
        .iter()
        .enumerate()
        .filter(|(i, n)| **n != *i as u64 + 1)
        .map(|(i, n)| (i, *n))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty() && got.len() as u64 == total,
        "{} received of {total}; first out of place (index, n): {wrong:?}",
        got.len()
    );
}

/// Fails if a `SAID` delivery arrives within `within` (presence events may).
pub async fn expect_no_more_said(c: &mut Client, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while let Some(m) = c
        .try_recv(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert_ne!(m["type"], "SAID", "a repeated or stray delivery: {m}");
    }
}

/// The next `SAID` deliveries' `n`, skipping anything else.
pub async fn said(c: &mut Client, count: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while out.len() < count {
        let m = c.recv().await;
        if m["type"] == "SAID" {
            out.push((
                m["payload"]["n"].as_u64().unwrap(),
                m["meta"]["offset"].as_u64().unwrap(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn deliveries_carry_offsets_and_acks_the_position() {
    let server = TestServer::start(HISTORY_APP).await;
    let mut a = server.client().await;
    let ack = a.call("JOIN", "j", json!({"id": "r"})).await;
    assert_eq!(ack["payload"]["offset"], 0, "{ack}");
    let epoch = ack["payload"]["epoch"].as_str().unwrap().to_owned();
    let mut p = server.client().await;
    publish(&mut p, "SAY", "r", 1, 3).await;
    let mut last = 0;
    for _ in 0..3 {
        let m = a.recv().await;
        let offset = m["meta"]["offset"].as_u64().unwrap();
        assert!(offset > last, "offsets increase: {m}");
        assert_eq!(m["meta"]["epoch"], epoch.as_str());
        last = offset;
    }
    let again = a.call("JOIN", "j2", json!({"id": "r"})).await;
    assert_eq!(again["payload"]["offset"], last);
    server.stop().await;
}

#[tokio::test]
async fn a_reconnect_with_since_gets_exactly_what_it_missed_then_live() {
    let server = TestServer::start(HISTORY_APP).await;
    let mut p = server.client().await;
    let mut a = server.client().await;
    let epoch = a.call("JOIN", "j", json!({"id": "r"})).await["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(&mut p, "SAY", "r", 1, 2).await;
    let seen = said(&mut a, 2).await;
    let last = seen[1].1;
    drop(a);
    publish(&mut p, "SAY", "r", 3, 3).await;
    let mut b = server.client().await;
    let ack = recover(&mut b, "JOIN", "r", last, &epoch).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    publish(&mut p, "SAY", "r", 6, 1).await;
    let rest: Vec<u64> = said(&mut b, 4).await.iter().map(|(n, _)| *n).collect();
    assert_eq!(rest, [3, 4, 5, 6]);
    expect_no_more_said(&mut b, Duration::from_millis(200)).await;
    server.stop().await;
}

/// A client that keeps dropping its connection while a publisher never pauses ends up
/// with every publication once, in order. A recovery that subscribed before reading
/// history would repeat some; one that read history first would miss some.
// Two workers, as in the server: the publisher's messages are handled while the
// recovering subscribe is, so a merge that is not atomic would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_while_publishes_keep_arriving_has_no_gap_and_no_repeat() {
    const TOTAL: u64 = 600;
    let server = TestServer::start(HISTORY_APP).await;
    let mut a = server.client().await;
    let epoch = a.call("JOIN", "j", json!({"id": "race"})).await["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = server.url();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&url).await;
        for i in 1..=TOTAL {
            p.tell("SAY", json!({"id": "race", "n": i})).await;
            // Paced, so publishes are still arriving at every reconnect.
            if i.is_multiple_of(4) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // The last one acknowledged: everything before it was published.
        p.call("SAY", "end", json!({"id": "race", "n": TOTAL + 1}))
            .await;
    });
    let mut got: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    while got.last() != Some(&(TOTAL + 1)) {
        let m = a.recv().await;
        if m["type"] != "SAID" {
            continue;
        }
        got.push(m["payload"]["n"].as_u64().unwrap());
        let last_offset = m["meta"]["offset"].as_u64().unwrap();
        if got.len().is_multiple_of(97) && reconnects < 5 {
            reconnects += 1;
            a = server.client().await;
            let ack = recover(&mut a, "JOIN", "race", last_offset, &epoch).await;
            assert_eq!(ack["recovered"], true, "{ack}");
        }
    }
    publisher.await.unwrap();
    assert_in_order_once(&got, TOTAL + 1);
    assert_eq!(reconnects, 5);
    server.stop().await;
}

#[tokio::test]
async fn recovery_is_refused_with_its_reason_and_the_new_position() {
    let app = with(
        HISTORY_APP,
        &[(
            "maxRecoveryPublications: 1000",
            "maxRecoveryPublications: 5",
        )],
    );
    let server = TestServer::start(&app).await;
    let mut p = server.client().await;
    let mut c = server.client().await;
    let epoch = c.call("JOIN_SMALL", "j", json!({"id": "s"})).await["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(&mut p, "SAY_SMALL", "s", 1, 15).await; // 10 kept: offsets 6..=15
    let cases = [
        (2, epoch.as_str(), "trimmed"),
        (7, epoch.as_str(), "limit"), // 8 missed, 5 allowed
        (7, "not-the-epoch", "epoch"),
        (99, epoch.as_str(), "epoch"),
    ];
    for (i, (offset, e, reason)) in cases.into_iter().enumerate() {
        let mut r = server.client().await;
        let ack = recover(&mut r, "JOIN_SMALL", "s", offset, e).await;
        assert_eq!(ack["recovered"], false, "{ack}");
        assert_eq!(ack["reason"], reason, "{ack}");
        // One more publication per case.
        assert_eq!(ack["offset"], 15 + i, "the new position: {ack}");
        assert_eq!(ack["epoch"], epoch.as_str());
        // Subscribed from now on all the same.
        publish(&mut p, "SAY_SMALL", "s", 100, 1).await;
        assert_eq!(said(&mut r, 1).await[0].0, 100);
    }
    let mut r = server.client().await;
    let ack = recover(&mut r, "JOIN_SMALL", "s", 15, &epoch).await;
    assert_eq!(ack["recovered"], true, "within the limit: {ack}");
    assert_eq!(
        said(&mut r, 4).await.len(),
        4,
        "the four publishes since 15"
    );

    let mut d = server.client().await;
    let b = d.call("JOIN_BRIEF", "b", json!({"id": "x"})).await;
    let brief_epoch = b["payload"]["epoch"].as_str().unwrap().to_owned();
    publish(&mut p, "SAY_BRIEF", "x", 1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut r = server.client().await;
    let ack = recover(&mut r, "JOIN_BRIEF", "x", 0, &brief_epoch).await;
    assert_eq!(
        (ack["recovered"].clone(), ack["reason"].clone()),
        (json!(false), json!("expired")),
        "{ack}"
    );
    server.stop().await;
}

#[tokio::test]
async fn history_pages_newest_last_within_max_limit() {
    let server = TestServer::start(HISTORY_APP).await;
    let mut p = server.client().await;
    publish(&mut p, "SAY", "h", 1, 30).await;
    let page = |reply: &Value| -> Vec<u64> {
        reply["payload"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["payload"]["n"].as_u64().unwrap())
            .collect()
    };
    let newest = p
        .call("HISTORY", "h1", json!({"id": "h", "limit": 3}))
        .await;
    assert_eq!(page(&newest), [28, 29, 30]);
    let first = &newest["payload"]["publications"][0];
    assert_eq!(first["type"], "SAID");
    assert_eq!(first["payload"], json!({"id": "h", "n": 28}));
    assert!(
        first["publisher"].is_string() && first["timestamp"].is_u64(),
        "{first}"
    );
    assert_eq!(newest["payload"]["offset"], 30);
    let before = first["offset"].as_u64().unwrap();
    let older = p
        .call(
            "HISTORY",
            "h2",
            json!({"id": "h", "limit": 2, "before": before}),
        )
        .await;
    assert_eq!(page(&older), [26, 27]);
    let since = p
        .call("HISTORY", "h3", json!({"id": "h", "since": 5, "limit": 2}))
        .await;
    assert_eq!(page(&since), [6, 7]);
    let capped = p
        .call("HISTORY", "h4", json!({"id": "h", "limit": 500}))
        .await;
    assert_eq!(page(&capped).len(), 20, "maxLimit caps the request");
    server.stop().await;
}

#[tokio::test]
async fn members_and_join_leave_events() {
    let server = TestServer::start(HISTORY_APP).await;
    let mut a = server.client().await;
    a.call("JOIN", "j", json!({"id": "p"})).await;
    let mut b = server.client().await;
    b.call("JOIN", "j", json!({"id": "p"})).await;
    let joined = a.recv().await;
    assert_eq!(joined["type"], "$ws:join");
    assert_eq!(joined["meta"]["topic"], "room:p");
    assert_eq!(joined["payload"]["userId"], b.open["user"]["id"]);
    assert_eq!(joined["payload"]["connectionId"], b.open["connectionId"]);
    let members = a.call("MEMBERS", "m", json!({"id": "p"})).await;
    assert_eq!(members["payload"]["count"], 2, "{members}");
    let ids: Vec<&str> = members["payload"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["connectionId"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&a.open["connectionId"].as_str().unwrap()));
    // An unsubscribe is a leave at once.
    b.call("LEAVE", "l", json!({"id": "p"})).await;
    let left = a.recv().await;
    assert_eq!(left["type"], "$ws:leave");
    assert_eq!(left["payload"]["userId"], b.open["user"]["id"]);
    // A disconnect is a leave after the grace.
    let mut c = server.client().await;
    c.call("JOIN", "j", json!({"id": "p"})).await;
    assert_eq!(a.recv().await["type"], "$ws:join");
    drop(c);
    a.expect_silence(Duration::from_secs(3)).await;
    let left = a
        .try_recv(Duration::from_secs(5))
        .await
        .expect("a leave after the grace");
    assert_eq!(left["type"], "$ws:leave");
    let members = a.call("MEMBERS", "m2", json!({"id": "p"})).await;
    assert_eq!(members["payload"]["count"], 1, "{members}");
    server.stop().await;
}

#[tokio::test]
async fn a_user_reconnecting_within_the_grace_neither_leaves_nor_joins_again() {
    let server = TestServer::start(HISTORY_APP).await;
    let mut a = server.client().await;
    a.call("JOIN", "j", json!({"id": "g"})).await;
    let token = hs256(claims("carol", 600));
    let mut c = server.client_with_token(&token).await;
    c.call("JOIN", "j", json!({"id": "g"})).await;
    assert_eq!(a.recv().await["type"], "$ws:join");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = server.client_with_token(&token).await;
    c.call("JOIN", "j", json!({"id": "g"})).await;
    a.expect_silence(Duration::from_secs(7)).await;
    let members = a.call("MEMBERS", "m", json!({"id": "g"})).await;
    assert_eq!(members["payload"]["count"], 2, "{members}");
    server.stop().await;
}

/// A subscriber that stops reading is cut (4008, or EOF when even the close cannot be
/// written); reconnecting with `since`, it ends with every publication once.
#[tokio::test]
async fn a_slow_consumer_cut_off_recovers_everything_it_missed() {
    let app = with(
        HISTORY_APP,
        &[("outboundQueueMessages: 4096", "outboundQueueMessages: 16")],
    );
    let server = TestServer::start(&app).await;
    slow_consumer_recovers(&server, &server).await;
    server.stop().await;
}

/// Shared with the NATS variant: the slow subscriber on `on`, recovering on `then`.
pub async fn slow_consumer_recovers(on: &TestServer, then: &TestServer) {
    const TOTAL: u64 = 300;
    let mut slow = on.client().await;
    let epoch = slow.call("JOIN", "j", json!({"id": "slow"})).await["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    // Big payloads fill the socket buffers quickly; the client reads nothing meanwhile.
    let text = "x".repeat(30_000);
    let mut p = on.client().await;
    for n in 1..=TOTAL {
        let ack = p
            .call(
                "SAY",
                &format!("p{n}"),
                json!({"id": "slow", "n": n, "text": text}),
            )
            .await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
    }
    let (frames, code) = slow.frames_until_end(Duration::from_secs(20)).await;
    assert!(
        matches!(code, Some(4008) | None),
        "cut as a slow consumer: {code:?}"
    );
    let mut got: Vec<u64> = Vec::new();
    let mut last = 0;
    for m in frames.iter().filter(|m| m["type"] == "SAID") {
        got.push(m["payload"]["n"].as_u64().unwrap());
        last = m["meta"]["offset"].as_u64().unwrap();
    }
    assert!(
        (got.len() as u64) < TOTAL,
        "it was cut before the end: {}",
        got.len()
    );
    let mut back = then.client().await;
    let ack = recover(&mut back, "JOIN", "slow", last, &epoch).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let missing = TOTAL as usize - got.len();
    got.extend(said(&mut back, missing).await.iter().map(|(n, _)| *n));
    assert_eq!(got, (1..=TOTAL).collect::<Vec<_>>());
}
