//! permessage-deflate (`spec.compression`) on real sockets: what is negotiated, what is
//! compressed, that a publication is compressed once for all its recipients, inbound
//! inflation with the client's context kept, and the frames that close the connection.
//! The client side is written here with flate2, independently of the server's code.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};

use crate::harness::*;

const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits";
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
/// FIN + RSV1 + text: the first byte of a compressed single-frame text message.
const COMPRESSED_TEXT: u8 = 0xc1;
const PLAIN_TEXT: u8 = 0x81;

fn app() -> String {
    with(
        TEST_APP,
        &[(
            "  limits:\n",
            "  compression: {enabled: true, thresholdBytes: 512}\n  limits:\n",
        )],
    )
}

/// RFC 7692 §7.2.2: append the tail, inflate.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let input = [payload, &TAIL].concat();
    let mut out = Vec::with_capacity(64 << 10);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// A client-side compressor, kept across messages (context takeover) unless reset.
struct ClientDeflate(Compress);

impl ClientDeflate {
    fn new() -> Self {
        Self(Compress::new(Compression::default(), false))
    }

    fn compress(&mut self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.len() + 64);
        self.0
            .compress_vec(message, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    }
}

/// The next text frame: whether it was compressed, and its JSON.
async fn next_text(ws: &mut RawWs) -> (bool, Value) {
    let (first, payload) = ws.read_frame_head().await.expect("a frame");
    assert_eq!(first & 0x0f, 1, "a text frame");
    let compressed = first == COMPRESSED_TEXT;
    assert!(compressed || first == PLAIN_TEXT, "first byte {first:#x}");
    let text = if compressed {
        inflate(&payload)
    } else {
        payload
    };
    (compressed, serde_json::from_slice(&text).unwrap())
}

fn frame(message_type: &str, id: &str, payload: Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"type": message_type, "payload": payload, "meta": {"correlationId": id}}),
    )
    .unwrap()
}

async fn negotiated(server: &TestServer) -> RawWs {
    let (head, ws) = RawWs::connect_with(server.ws, &[DEFLATE_OFFER]).await;
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
    ws
}

#[tokio::test]
async fn a_publication_is_compressed_once_for_every_recipient_that_negotiated_it() {
    let server = TestServer::start(&app()).await;
    let mut readers = [negotiated(&server).await, negotiated(&server).await];
    let mut plain = server.client().await;
    for (i, r) in readers.iter_mut().enumerate() {
        r.send(
            1,
            true,
            &frame("FOLLOW", &format!("f{i}"), json!({"feedId": "news"})),
        )
        .await;
        let (compressed, ack) = next_text(r).await;
        assert_eq!(ack["type"], "$ws:ack");
        assert!(!compressed, "a short ack goes out as it is");
    }
    plain.call("FOLLOW", "f", json!({"feedId": "news"})).await;

    let long = "all work and no play makes jack a dull boy ".repeat(30);
    plain
        .tell("POST", json!({"feedId": "news", "body": long}))
        .await;
    let mut wire = Vec::new();
    for r in &mut readers {
        let (first, payload) = r.read_frame_head().await.unwrap();
        assert_eq!(first, COMPRESSED_TEXT, "RSV1 set on the delivery");
        let m: Value = serde_json::from_slice(&inflate(&payload)).unwrap();
        assert_eq!(m["type"], "POSTED");
        assert_eq!(m["payload"]["body"], long.as_str());
        wire.push(payload);
    }
    assert_eq!(wire[0], wire[1], "the same bytes for both recipients");
    let uncompressed = plain.recv_text().await;
    assert!(
        uncompressed.contains(&long),
        "the client that did not offer gets text"
    );
    assert!(
        wire[0].len() * 5 < uncompressed.len(),
        "{} compressed vs {} plain",
        wire[0].len(),
        uncompressed.len()
    );

    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "switchboard_deflate_compressions_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "switchboard_deflate_frames_written_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"switchboard_deflate_bytes_total{stage="compressed"}"#
        ),
        Some(wire[0].len() as f64)
    );
    assert_eq!(
        metric(&text, r#"switchboard_deflate_bytes_total{stage="raw"}"#),
        Some(uncompressed.len() as f64)
    );

    // Below the threshold: plain, to everyone.
    plain
        .tell("POST", json!({"feedId": "news", "body": "short"}))
        .await;
    for r in &mut readers {
        let (compressed, m) = next_text(r).await;
        assert!(!compressed);
        assert_eq!(m["payload"]["body"], "short");
    }
    server.stop().await;
}

#[tokio::test]
async fn compressed_messages_from_a_client_are_inflated_with_its_context_kept() {
    let server = TestServer::start(&app()).await;
    let mut ws = negotiated(&server).await;
    let mut reader = server.client().await;
    reader.call("FOLLOW", "f", json!({"feedId": "news"})).await;
    let mut deflate = ClientDeflate::new();
    for i in 0..3 {
        // The same message each time: from the second on, mostly back-references
        // into the context the server must have kept.
        let wire = deflate.compress(&frame(
            "POST",
            &format!("p{i}"),
            json!({"feedId": "news", "body": "the same words again"}),
        ));
        ws.send_first_byte(COMPRESSED_TEXT, &wire).await;
        let (_, ack) = next_text(&mut ws).await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
        assert_eq!(
            reader.recv().await["payload"]["body"],
            "the same words again"
        );
    }
    // A compressed message in two fragments: RSV1 on the first frame only.
    let wire = deflate.compress(&frame(
        "POST",
        "frag",
        json!({"feedId": "news", "body": "in pieces"}),
    ));
    let (a, b) = wire.split_at(wire.len() / 2);
    ws.send_first_byte(0x41, a).await; // RSV1 + text, FIN clear
    ws.send_first_byte(0x80, b).await; // FIN + continuation
    let (_, ack) = next_text(&mut ws).await;
    assert_eq!(ack["meta"]["correlationId"], "frag", "{ack}");
    assert_eq!(reader.recv().await["payload"]["body"], "in pieces");
    // Plain frames still work beside compressed ones.
    ws.send(
        1,
        true,
        &frame("POST", "plain", json!({"feedId": "news", "body": "plain"})),
    )
    .await;
    assert_eq!(next_text(&mut ws).await.1["meta"]["correlationId"], "plain");
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "switchboard_deflate_inflated_messages_total"),
        Some(4.0),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn bombs_corrupt_streams_and_misplaced_rsv1_close_the_connection() {
    let server = TestServer::start(&app()).await;
    // 1 MiB of zeros, compressed to about a kilobyte: under maxPayloadBytes (2048) on
    // the wire, 512 times over it inflated.
    let mut best = Compress::new(Compression::best(), false);
    let mut bomb = Vec::with_capacity(8 << 10);
    best.compress_vec(&vec![0u8; 1 << 20], &mut bomb, FlushCompress::Sync)
        .unwrap();
    bomb.truncate(bomb.len() - TAIL.len());
    assert!(bomb.len() < 2048, "{}", bomb.len());
    let invalid_utf8 = ClientDeflate::new().compress(&[0xff, 0xfe, 0xfd]);
    let cases: [(&str, u8, Vec<u8>, u16); 4] = [
        ("a deflate bomb", COMPRESSED_TEXT, bomb, 1009),
        (
            "bytes that are not deflate",
            COMPRESSED_TEXT,
            vec![0xff; 16],
            1007,
        ),
        (
            "text that inflates to invalid UTF-8",
            COMPRESSED_TEXT,
            invalid_utf8,
            1007,
        ),
        ("RSV1 on a ping", 0xc9, b"hi".to_vec(), 1002),
    ];
    for (what, first, payload, code) in cases {
        let mut ws = negotiated(&server).await;
        ws.send_first_byte(first, &payload).await;
        assert_eq!(ws.close_code().await, Some(code), "{what}");
    }
    // A client that did not negotiate the extension may not set RSV1.
    let mut ws = RawWs::connect(server.ws).await;
    ws.send_first_byte(COMPRESSED_TEXT, &ClientDeflate::new().compress(b"{}"))
        .await;
    assert_eq!(
        ws.close_code().await,
        Some(1002),
        "RSV1 without the extension"
    );
    server.stop().await;
}

#[tokio::test]
async fn no_offer_is_accepted_while_compression_is_off_or_the_offer_cannot_be_honoured() {
    let off = TestServer::start(TEST_APP).await;
    let (head, _) = RawWs::connect_with(off.ws, &[DEFLATE_OFFER]).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    off.stop().await;

    let on = TestServer::start(&app()).await;
    let (head, mut ws) = RawWs::connect_with(
        on.ws,
        &["Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10"],
    )
    .await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    // Declined, the connection goes on uncompressed.
    ws.send(1, true, &frame("FOLLOW", "f", json!({"feedId": "news"})))
        .await;
    let (compressed, ack) = next_text(&mut ws).await;
    assert!(!compressed);
    assert_eq!(ack["meta"]["correlationId"], "f", "{ack}");
    on.stop().await;
}
