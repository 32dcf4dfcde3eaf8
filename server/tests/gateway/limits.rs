//! Rate limits, connection limits, handshake timeout, message size, slow consumers.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::harness::*;

#[tokio::test]
async fn a_token_bucket_refuses_with_the_exact_wait_then_refills() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    for i in 0..3 {
        let ack = c
            .call("LIMITED", &format!("l{i}"), json!({"roomId": "r"}))
            .await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
    }
    let e = c.call("LIMITED", "l3", json!({"roomId": "r"})).await;
    assert_error(&e, "ERROR", "RESOURCE_EXHAUSTED", Some("l3"));
    assert_eq!(e["payload"]["retryable"], true);
    assert_eq!(e["payload"]["details"]["bucket"], "burst");
    let wait = e["payload"]["retryAfterMs"].as_u64().unwrap();
    // 2 tokens/s: one token is at most 500 ms away.
    assert!(wait > 0 && wait <= 500, "{wait}");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_eq!(
        c.call("LIMITED", "l4", json!({"roomId": "r"})).await["type"],
        "$ws:ack"
    );
    // Other routes draw from no bucket.
    c.assert_alive().await;
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"switchboard_rate_limited_total{bucket="burst"}"#),
        Some(1.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_per_ip_past_the_limit_get_429() {
    let app = with(
        TEST_APP,
        &[(
            "maxSubscriptionsPerConnection: 3",
            "maxSubscriptionsPerConnection: 3\n    maxConnectionsPerIp: 2",
        )],
    );
    let server = TestServer::start(&app).await;
    let a = server.client().await;
    let _b = server.client().await;
    let r = Client::connect_request(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url(),
        )
        .unwrap(),
    )
    .await
    .err()
    .expect("third connection must be refused");
    assert_eq!(r.status, 429);
    drop(a);
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url(),
        )
        .unwrap();
        if Client::connect_request(req).await.is_ok() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a closed connection frees its slot");
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_pod_limit_get_503() {
    let app = with(
        TEST_APP,
        &[(
            "maxSubscriptionsPerConnection: 3",
            "maxSubscriptionsPerConnection: 3\n    maxConnections: 2",
        )],
    );
    let server = TestServer::start(&app).await;
    let _a = server.client().await;
    let _b = server.client().await;
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        server.url(),
    )
    .unwrap();
    let r = Client::connect_request(req)
        .await
        .err()
        .expect("must be refused");
    assert_eq!(r.status, 503);
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchboard_upgrades_rejected_total{reason="capacity"}"#
        ),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_completes_the_handshake_is_dropped() {
    let server = TestServer::start(TEST_APP).await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.ws).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(server.ws).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut slow] {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the server must drop a stalled handshake");
        assert!(n.is_ok());
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "not before handshakeTimeoutSeconds"
    );
    server.stop().await;
}

#[tokio::test]
async fn plain_http_gets_a_clear_answer() {
    let server = TestServer::start(TEST_APP).await;
    let (status, body) = http_get(server.ws, "/ws").await;
    assert_eq!(status, 426);
    assert!(body.contains("WebSocket"), "{body}");
    let (status, _) = http_get(server.ws, "/elsewhere").await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_message_above_max_payload_closes_with_1009() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    // Just under the limit is processed normally.
    let text = json!({"type": "__heartbeat", "meta": {"correlationId": "big"}, "payload": {"pad": "x".repeat(1900)}}).to_string();
    assert!(text.len() < 2048);
    c.send_text(&text).await;
    assert_eq!(c.recv().await["type"], "__heartbeat_ack");
    c.send_text(&"x".repeat(3000)).await;
    assert_eq!(c.expect_close(Duration::from_secs(2)).await, 1009);
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchboard_connections_closed_total{reason="too_big"}"#
        ),
        Some(1.0),
        "{m}"
    );
    server.stop().await;
}

fn fragment(text: &str, first: bool, fin: bool) -> Message {
    let opcode = if first {
        OpCode::Data(Data::Text)
    } else {
        OpCode::Data(Data::Continue)
    };
    Message::Frame(Frame::message(text.as_bytes().to_vec(), opcode, fin))
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_and_bounded_as_a_whole() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    let text = r#"{"type":"__heartbeat","meta":{"correlationId":"frag"}}"#;
    let (a, b) = text.split_at(20);
    c.send_message(fragment(a, true, false)).await;
    c.send_message(fragment(b, false, true)).await;
    assert_eq!(c.recv().await["meta"]["correlationId"], "frag");
    // Each fragment is small; together they exceed maxPayloadBytes.
    let chunk = "x".repeat(1000);
    c.send_message(fragment(&chunk, true, false)).await;
    c.send_message(fragment(&chunk, false, false)).await;
    c.send_message(fragment(&chunk, false, true)).await;
    assert_eq!(c.expect_close(Duration::from_secs(2)).await, 1009);
    server.stop().await;
}

/// Publishes `count` posts of `size` bytes to feed `feed` as fast as the socket takes them.
async fn flood(publisher: &mut Client, feed: &str, count: usize, size: usize) {
    let body = "y".repeat(size);
    for _ in 0..count {
        publisher
            .tell("POST", json!({"feedId": feed, "body": body}))
            .await;
    }
}

fn big_messages(policy: &str) -> String {
    with(
        TEST_APP,
        &[
            ("maxPayloadBytes: 2048", "maxPayloadBytes: 65536"),
            (
                "outboundQueueMessages: 64",
                &format!("outboundQueueMessages: 64\n    slowConsumer: {policy}"),
            ),
        ],
    )
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_slows_no_one_else() {
    let server = TestServer::start(&big_messages("disconnect")).await;
    let mut stalled = server.client().await;
    stalled.call("FOLLOW", "f", json!({"feedId": "hot"})).await;
    let mut reader = server.client().await;
    reader.call("FOLLOW", "f", json!({"feedId": "hot"})).await;
    let mut publisher = server.client().await;

    // ~24 MiB in all: far more than socket buffers plus 64 queued frames can hold. The
    // publisher goes in rounds the reading subscriber can keep up with; the stalled one
    // must not hold back a single round.
    const ROUNDS: usize = 50;
    const PER_ROUND: usize = 30;
    for round in 0..ROUNDS {
        flood(&mut publisher, "hot", PER_ROUND, 16 * 1024).await;
        for i in 0..PER_ROUND {
            let m = reader.recv().await;
            assert_eq!(m["type"], "POSTED", "round {round}, frame {i}");
        }
    }
    reader.assert_alive().await;

    let m = wait_for_metric(
        &server,
        r#"switchboard_connections_closed_total{reason="slow_consumer"}"#,
        1.0,
    )
    .await;
    assert!(
        metric(
            &m,
            r#"switchboard_dropped_deliveries_total{reason="slow_consumer_disconnect"}"#
        )
        .unwrap()
            >= 1.0
    );
    // The stalled client, when it finally reads, finds the stream ended by the server.
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn drop_oldest_keeps_a_stalled_client_connected_and_counts_the_drops() {
    let server = TestServer::start(&big_messages("dropOldest")).await;
    let mut stalled = server.client().await;
    stalled
        .call("FOLLOW", "f", json!({"feedId": "ticker"}))
        .await;
    let mut publisher = server.client().await;
    flood(&mut publisher, "ticker", 1500, 16 * 1024).await;
    publisher.assert_alive().await;
    let mut dropped = 0.0;
    for _ in 0..100 {
        let m = server.metrics().await;
        dropped = metric(
            &m,
            r#"switchboard_dropped_deliveries_total{reason="slow_consumer_drop_oldest"}"#,
        )
        .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped > 0.0, "drops must be counted");
    // Still connected: its backlog is the newest posts, fewer than were published.
    let mut received = 0;
    while let Some(m) = stalled.try_recv(Duration::from_millis(500)).await {
        assert_eq!(m["type"], "POSTED");
        received += 1;
    }
    assert!(received > 0 && received < 1500, "{received}");
    stalled.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_a_burst_while_reading_is_slowed_not_cut_off() {
    // 1,030 heartbeats in one write, against a queue of 64: the reader waits for the
    // writer instead of overflowing the client's own queue into a 4008.
    let server = TestServer::start(TEST_APP).await;
    let mut ws = RawWs::connect(server.ws).await;
    ws.send_burst(r#"{"type":"__heartbeat"}"#, 1030).await;
    for i in 0..1030 {
        let (opcode, payload) = ws
            .read_frame()
            .await
            .unwrap_or_else(|| panic!("connection ended after {i} answers"));
        assert_eq!(opcode, 1, "answer {i}: opcode {opcode}, {payload:?}");
        assert!(
            String::from_utf8_lossy(&payload).contains("__heartbeat_ack"),
            "answer {i}"
        );
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchboard_connections_closed_total{reason="slow_consumer"}"#
        ),
        Some(0.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_frame_begun_and_never_finished_is_closed_even_without_heartbeat_or_idle() {
    // Heartbeat off, idle timeout off (the default): only the frame clock is left, with
    // the app's handshakeTimeoutSeconds (2 s here) as its deadline.
    let app = with(
        TEST_APP,
        &[(
            "heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}",
            "heartbeat: {intervalSeconds: 0, timeoutSeconds: 10}",
        )],
    );
    let server = TestServer::start(&app).await;
    // A complete frame first, then silence: the connection lives on.
    let mut idle = RawWs::connect(server.ws).await;
    idle.send(1, true, br#"{"type":"__heartbeat"}"#).await;
    assert!(idle.read_frame().await.is_some());
    // The header of a 100-byte text frame and 10 of its bytes, then silence.
    let mut stalled = RawWs::connect(server.ws).await;
    stalled
        .send_bytes(&[
            0x81,
            0x80 | 100,
            1,
            2,
            3,
            4,
            b'{',
            b'"',
            b't',
            b'y',
            b'p',
            b'e',
            b'"',
            b':',
            b'"',
            b'x',
        ])
        .await;
    let started = Instant::now();
    assert_eq!(stalled.close_code().await, Some(1002));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        started.elapsed()
    );
    // The idle one is still served.
    idle.send(1, true, br#"{"type":"__heartbeat"}"#).await;
    let (opcode, answer) = idle.read_frame().await.expect("the idle connection lives");
    assert_eq!(opcode, 1);
    assert!(String::from_utf8_lossy(&answer).contains("__heartbeat_ack"));
    server.stop().await;
}
