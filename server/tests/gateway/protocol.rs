//! Wire protocol v1: the envelope, replies, acks and every rejection of a bad message.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn open_frame_announces_connection_instance_user_and_limits() {
    let server = TestServer::start(TEST_APP).await;
    let c = server.client().await;
    let open = &c.open;
    assert!(
        open["connectionId"]
            .as_str()
            .unwrap()
            .starts_with("test-0-")
    );
    assert_eq!(open["instance"], "test-0");
    assert_eq!(open["app"], "test");
    assert_eq!(open["protocol"], "switchboard.v1");
    assert_eq!(open["user"]["anonymous"], true);
    assert_eq!(open["user"]["roles"], json!(["anonymous"]));
    assert!(open["user"]["id"].as_str().unwrap().starts_with("anon-"));
    assert_eq!(open["heartbeat"]["intervalMs"], 25000);
    assert_eq!(open["heartbeat"]["timeoutMs"], 10000);
    assert_eq!(open["limits"]["maxPayloadBytes"], 2048);
    assert_eq!(open["limits"]["maxSubscriptions"], 3);
    server.stop().await;
}

#[tokio::test]
async fn acks_carry_the_correlation_id_and_no_id_means_no_ack() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    let ack = c.call("JOIN", "c1", json!({"roomId": "r1"})).await;
    assert_eq!(ack["type"], "$ws:ack");
    assert_eq!(ack["meta"]["correlationId"], "c1");
    assert_eq!(ack["payload"]["topic"], "room:r1");
    assert!(ack["meta"]["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    c.tell("LEAVE", json!({"roomId": "r1"})).await;
    // The leave has no correlation id: nothing comes back, and the next call is answered next.
    c.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn app_level_heartbeat_is_answered() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    let r = c.call("__heartbeat", "h1", json!(null)).await;
    assert_eq!(r["type"], "__heartbeat_ack");
    assert_eq!(r["meta"]["correlationId"], "h1");
    server.stop().await;
}

#[tokio::test]
async fn every_bad_message_gets_exactly_one_error_and_the_connection_lives_on() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;

    c.send_text("{not json").await;
    let e = c.recv().await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", None);
    assert!(
        e["payload"]["message"].as_str().unwrap().contains("JSON"),
        "{e}"
    );

    c.send_text(
        r#"{"type":"JOIN","meta":{"correlationId":"k1"},"payload":{"roomId":"a"},"extra":true}"#,
    )
    .await;
    let e = c.recv().await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("k1"));
    assert!(
        e["payload"]["message"].as_str().unwrap().contains("extra"),
        "{e}"
    );

    c.send_text("[1,2,3]").await;
    assert_error(&c.recv().await, "ERROR", "INVALID_ARGUMENT", None);
    // serde's array form of the envelope struct is not an envelope either.
    c.send_text(r#"["__heartbeat"]"#).await;
    assert_error(&c.recv().await, "ERROR", "INVALID_ARGUMENT", None);
    c.send_text(r#"["JOIN_ROOM",["ra"],{"roomId":"r"}]"#).await;
    assert_error(&c.recv().await, "ERROR", "INVALID_ARGUMENT", None);
    c.send_text(r#"{"type":"__heartbeat","meta":["c1"]}"#).await;
    assert_error(&c.recv().await, "ERROR", "INVALID_ARGUMENT", None);

    c.send_text(r#"{"payload":{}}"#).await;
    assert_error(&c.recv().await, "ERROR", "INVALID_ARGUMENT", None);

    c.send_text(&json!({"type": "x".repeat(129)}).to_string())
        .await;
    assert_error(&c.recv().await, "ERROR", "INVALID_ARGUMENT", None);

    let e = c.call("NO_SUCH_TYPE", "u1", json!({})).await;
    assert_error(&e, "ERROR", "UNIMPLEMENTED", Some("u1"));

    let e = c.call("$ws:open", "u2", json!({})).await;
    assert_error(&e, "ERROR", "UNIMPLEMENTED", Some("u2"));

    c.send_message(Message::binary(vec![1u8, 2, 3])).await;
    let e = c.recv().await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", None);
    assert!(
        e["payload"]["message"].as_str().unwrap().contains("binary"),
        "{e}"
    );

    c.assert_alive().await;
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"switchboard_errors_total{code="INVALID_ARGUMENT"}"#),
        Some(9.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"switchboard_errors_total{code="UNIMPLEMENTED"}"#),
        Some(2.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn schema_violations_name_the_failing_field_by_json_pointer() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    c.call("JOIN", "j", json!({"roomId": "r1"})).await;

    let e = c
        .call(
            "SAY",
            "s1",
            json!({"roomId": "r1", "text": "x".repeat(101)}),
        )
        .await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("s1"));
    assert_eq!(e["payload"]["retryable"], false);
    assert_eq!(e["payload"]["details"]["field"], "/text");
    assert_eq!(e["payload"]["details"]["errors"][0]["pointer"], "/text");

    let e = c
        .call(
            "SAY",
            "s2",
            json!({"roomId": "r1", "text": "hi", "color": "red"}),
        )
        .await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("s2"));
    assert!(
        e["payload"]["details"]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("color"),
        "{e}"
    );

    let e = c.call("SAY", "s3", json!({"text": "hi"})).await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("s3"));
    assert_eq!(e["payload"]["details"]["field"], "");

    c.send(json!({"type": "SAY", "meta": {"correlationId": "s4"}}))
        .await;
    assert_error(&c.recv().await, "ERROR", "INVALID_ARGUMENT", Some("s4"));

    c.assert_alive().await;
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"switchboard_validation_failures_total{type="SAY"}"#),
        Some(4.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn topic_values_are_encoded_into_one_segment_and_empty_or_nested_ones_refused() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    for (i, (evil, topic)) in [
        ("a.b", "room:a=2Eb"),
        ("*", "room:=2A"),
        (">", "room:=3E"),
        ("x:y", "room:x=3Ay"),
        ("a b", "room:a=20b"),
    ]
    .iter()
    .enumerate()
    {
        let ack = c
            .call("JOIN", &format!("j{i}"), json!({"roomId": evil}))
            .await;
        assert_eq!(ack["payload"]["topic"], *topic, "{evil:?}: {ack}");
        c.call("LEAVE", &format!("l{i}"), json!({"roomId": evil}))
            .await;
    }
    let e = c.call("JOIN", "e", json!({"roomId": ""})).await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("e"));
    assert_eq!(e["payload"]["details"]["field"], "/roomId", "{e}");
    let e = c.call("JOIN", "n", json!({"roomId": {"nested": 1}})).await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("n"));
    c.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn an_error_repeats_a_bounded_part_of_what_it_refuses() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client().await;
    c.call("JOIN", "j", json!({"roomId": "r1"})).await;
    let e = c
        .call(
            "SAY",
            "big",
            json!({"roomId": "r1", "text": "x".repeat(1_900)}),
        )
        .await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("big"));
    assert!(e.to_string().len() < 1_500, "{} bytes", e.to_string().len());
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("more bytes)"),
        "{e}"
    );
    c.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_opening_handshakes_get_400_and_other_versions_426() {
    let server = TestServer::start(TEST_APP).await;
    let [connection, upgrade, key, version] = UPGRADE_HEADERS;
    let head = raw_handshake(server.ws, &UPGRADE_HEADERS).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let head = raw_handshake(
        server.ws,
        &[connection, upgrade, key, "Sec-WebSocket-Version: 8"],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    for (what, headers) in [
        (
            "a key that is not base64 of 16 bytes",
            vec![connection, upgrade, "Sec-WebSocket-Key: c2hvcnQ=", version],
        ),
        (
            "two keys",
            vec![
                connection,
                upgrade,
                key,
                "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==",
                version,
            ],
        ),
        ("no key", vec![connection, upgrade, version]),
    ] {
        let head = raw_handshake(server.ws, &headers).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{what}: {head}");
    }
    let all = UPGRADE_HEADERS.join("\r\n");
    let no_host = raw_request(server.ws, &format!("GET /ws HTTP/1.1\r\n{all}\r\n\r\n")).await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "no Host: {no_host}");
    let old = raw_request(
        server.ws,
        &format!("GET /ws HTTP/1.0\r\nHost: {}\r\n{all}\r\n\r\n", server.ws),
    )
    .await;
    assert!(old.contains(" 400 "), "HTTP/1.0: {old}");
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchboard_upgrades_rejected_total{reason="bad_request"}"#
        ),
        Some(6.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn frames_that_break_rfc_6455_close_with_its_codes() {
    let server = TestServer::start(TEST_APP).await;
    let close = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
    let cases: Vec<(&str, u8, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in one text frame",
            1,
            vec![b'{', 0xff, b'}'],
            1007,
        ),
        ("a 126-byte pong", 10, vec![b'p'; 126], 1002),
        ("a 126-byte close", 8, close(1000, &[b'r'; 124]), 1002),
        ("a one-byte close", 8, vec![3], 1002),
        (
            "close 1005, which no endpoint may send",
            8,
            close(1005, b""),
            1002,
        ),
        ("close 999", 8, close(999, b""), 1002),
        ("close 2999", 8, close(2999, b""), 1002),
        ("close 5000", 8, close(5000, b""), 1002),
        (
            "a close reason that is not UTF-8",
            8,
            close(1000, &[0xc3, 0x28]),
            1007,
        ),
        ("close 1008 is echoed", 8, close(1008, b"policy"), 1008),
        ("close 1011 is echoed", 8, close(1011, b""), 1011),
        ("close 4000 is echoed", 8, close(4000, b""), 4000),
        ("an empty close", 8, vec![], 1000),
        (
            "a continuation with nothing to continue",
            0,
            b"x".to_vec(),
            1002,
        ),
        ("reserved opcode 3", 3, vec![], 1002),
        ("reserved opcode 11", 11, vec![], 1002),
        (
            "RSV1 set without an extension",
            0x40 | 1,
            b"{}".to_vec(),
            1002,
        ),
    ];
    for (what, opcode, payload, expected) in cases {
        let mut ws = RawWs::connect(server.ws).await;
        ws.send(opcode, true, &payload).await;
        assert_eq!(ws.close_code().await, Some(expected), "{what}");
    }
    // A new message while a fragmented one is unfinished.
    let mut ws = RawWs::connect(server.ws).await;
    ws.send(1, false, b"{\"type\":").await;
    ws.send(1, true, b"{}").await;
    assert_eq!(
        ws.close_code().await,
        Some(1002),
        "a new message mid-fragment"
    );
    server.stop().await;
}

#[tokio::test]
async fn unmasked_client_frames_close_1002_and_are_never_processed() {
    let server = TestServer::start(TEST_APP).await;
    let heartbeat = br#"{"type":"__heartbeat"}"#;
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "an unmasked heartbeat",
            RawWs::unmasked(1, true, heartbeat),
            vec![],
        ),
        ("an unmasked ping", RawWs::unmasked(9, true, b"p"), vec![]),
        (
            "an unmasked frame after a masked one, in one write",
            [
                RawWs::masked(1, true, heartbeat),
                RawWs::unmasked(1, true, heartbeat),
            ]
            .concat(),
            vec![1],
        ),
        (
            "an unmasked continuation",
            [
                RawWs::masked(1, false, b"{\"type\":"),
                RawWs::unmasked(0, true, b"\"__heartbeat\"}"),
            ]
            .concat(),
            vec![],
        ),
    ];
    for (what, bytes, answered) in cases {
        let mut ws = RawWs::connect(server.ws).await;
        ws.send_bytes(&bytes).await;
        let (before, code) = ws.frames_until_close().await;
        assert_eq!(code, Some(1002), "{what}");
        assert_eq!(before, answered, "{what}: frames answered before the close");
    }
    // An unmasked header split across writes is caught too.
    let mut ws = RawWs::connect(server.ws).await;
    let frame = RawWs::unmasked(1, true, heartbeat);
    ws.send_bytes(&frame[..1]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    ws.send_bytes(&frame[1..]).await;
    assert_eq!(ws.frames_until_close().await, (vec![], Some(1002)));
    let mut c = server.client().await;
    c.assert_alive().await;
    server.stop().await;
}

/// A fuzzer of the reader over a real socket: seeded random frame sequences (any
/// opcode, reserved ones included; fin or not; masked or not; random payloads; control
/// frames too large), each followed by a valid close. Whatever came before, the server answers with
/// a close code an endpoint may send, and keeps serving. Seeded, so a failure repeats.
#[tokio::test]
async fn random_frame_sequences_always_end_in_a_valid_close() {
    use rand::{Rng, SeedableRng};
    let server = TestServer::start(TEST_APP).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x005b_0a7d);
    for case in 0..150 {
        let mut ws = RawWs::connect(server.ws).await;
        let mut sent = Vec::new();
        for _ in 0..rng.random_range(1..6) {
            let opcode: u8 = *[0u8, 1, 2, 3, 8, 9, 10, 11, 0x41]
                .get(rng.random_range(0..9))
                .unwrap();
            let fin = rng.random_bool(0.7);
            let len = *[0usize, 1, 2, 10, 125, 126, 300]
                .get(rng.random_range(0..7))
                .unwrap();
            let payload: Vec<u8> = if rng.random_bool(0.5) {
                (0..len).map(|_| rng.random()).collect()
            } else {
                br#"{"type":"__heartbeat"}"#.iter().copied().cycle().take(len).collect()
            };
            let masked = rng.random_bool(0.9);
            sent.push((opcode, fin, len, masked));
            if masked {
                ws.send(opcode, fin, &payload).await;
            } else {
                ws.send_bytes(&RawWs::unmasked(opcode, fin, &payload)).await;
            }
        }
        ws.send(8, true, &1000u16.to_be_bytes()).await;
        let code = ws.close_code().await;
        assert!(
            code.is_some_and(|c| matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)),
            "case {case}: {sent:?} ended with {code:?}"
        );
    }
    let mut c = server.client().await;
    c.assert_alive().await;
    server.stop().await;
}
