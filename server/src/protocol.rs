//! Wire protocol v1 (docs/PROTOCOL.md): the envelope clients send, the frames the server
//! sends, error codes and close codes.
//!
//! Everything the server writes is encoded here, once, into [`Bytes`]; connections and
//! fan-out only move those bytes around.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub use switchboard_spec::{ACK_TYPE, ERROR_TYPE, RPC_ERROR_TYPE};

/// Protocol name announced in `$ws:open` and accepted as a WebSocket subprotocol.
pub const PROTOCOL: &str = "switchboard.v1";
pub const OPEN_TYPE: &str = "$ws:open";
pub const DRAIN_TYPE: &str = "$ws:drain";
pub const AUTH_TYPE: &str = "$ws:auth";
/// Sent when the server ends a subscription the client did not ask to end: a refreshed
/// token no longer allows it (docs/PROTOCOL.md §5).
pub const UNSUBSCRIBED_TYPE: &str = "$ws:unsubscribed";
/// A user joined a presence topic (docs/PROTOCOL.md §5).
pub const JOIN_TYPE: &str = "$ws:join";
/// A user left a presence topic.
pub const LEAVE_TYPE: &str = "$ws:leave";
pub const HEARTBEAT_TYPE: &str = "__heartbeat";
pub const HEARTBEAT_ACK_TYPE: &str = "__heartbeat_ack";
/// Longest `meta.correlationId` accepted.
pub const MAX_CORRELATION_ID: usize = 128;
/// Most characters of one error message: messages quote what they refuse (a schema
/// error repeats the offending value), and an error frame must stay small whatever the
/// input was (docs/PROTOCOL.md §4).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 256;

/// `text` cut to [`MAX_ERROR_MESSAGE_CHARS`] characters, saying how much was left out.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

/// Every WebSocket close code the server sends, and nothing else (docs/PROTOCOL.md §7 has
/// the same table for client authors). No close code is written as a number anywhere else
/// in the server. 1011 and 1013 are reserved by the protocol and not sent by this
/// version: capacity is refused with HTTP 503 before the upgrade instead.
pub mod close {
    /// Normal closure; also the default echo of a client's own close.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down, after `$ws:drain`: reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke RFC 6455 framing: a stray continuation, a new message
    /// mid-fragment, a control frame over 125 bytes, a malformed close frame.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message (whole or reassembled) or a close reason that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: too many failed `$ws:auth` refreshes in a row.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than `limits.maxPayloadBytes`, fragments counted together.
    pub const TOO_BIG: u16 = 1009;
    /// No pong within `heartbeat.timeoutSeconds` of a ping.
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    /// No application message for `limits.idleTimeoutSeconds`.
    pub const IDLE_TIMEOUT: u16 = 4003;
    /// The outbound queue overflowed under `slowConsumer: disconnect`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The token's `exp` (plus leeway) passed without a `$ws:auth` refresh.
    pub const TOKEN_EXPIRED: u16 = 4401;

    /// Longest payload of a control frame (ping, pong, close), RFC 6455 §5.5.
    pub const MAX_CONTROL_PAYLOAD: usize = 125;

    /// How the server answers a client's close frame (RFC 6455 §5.5.1, §7.4): 1000 for
    /// an empty one; the client's own code when an endpoint may send it (1000–1003,
    /// 1007–1014, 3000–4999); 1002 for a malformed close (one byte, or a code no
    /// endpoint may send: 1004–1006, 1015, below 1000, 1016–2999, 5000 and up); 1007 for
    /// a reason that is not UTF-8. The bool says whether the close was well formed.
    pub fn answer(payload: &[u8]) -> (u16, bool) {
        match payload {
            [] => (NORMAL, true),
            [_] => (PROTOCOL_ERROR, false),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                    (PROTOCOL_ERROR, false)
                } else if std::str::from_utf8(reason).is_err() {
                    (INVALID_DATA, false)
                } else {
                    (code, true)
                }
            }
        }
    }
}

switchboard_ops::label_values! {
    /// Why a connection ended: its close code, close text, and the `reason` label of
    /// `switchboard_connections_closed_total`.
    pub enum CloseReason {
        Client => "client",
        HeartbeatTimeout => "heartbeat_timeout",
        IdleTimeout => "idle_timeout",
        SlowConsumer => "slow_consumer",
        TokenExpired => "token_expired",
        /// Too many failed `$ws:auth` refreshes in a row.
        RefreshFailures => "refresh_failures",
        TooBig => "too_big",
        ProtocolError => "protocol_error",
        Shutdown => "shutdown",
    }
}

impl CloseReason {
    /// The close code the server sends for it (`Client`: the server echoes the client's).
    pub fn code(self) -> u16 {
        match self {
            Self::Client => close::NORMAL,
            Self::HeartbeatTimeout => close::HEARTBEAT_TIMEOUT,
            Self::IdleTimeout => close::IDLE_TIMEOUT,
            Self::SlowConsumer => close::SLOW_CONSUMER,
            Self::TokenExpired => close::TOKEN_EXPIRED,
            Self::RefreshFailures => close::POLICY_VIOLATION,
            Self::TooBig => close::TOO_BIG,
            Self::ProtocolError => close::PROTOCOL_ERROR,
            Self::Shutdown => close::GOING_AWAY,
        }
    }
}

switchboard_ops::label_values! {
    /// Error codes, gRPC-style: `payload.code` of ERROR and RPC_ERROR frames, and the
    /// `code` label of `switchboard_errors_total`.
    pub enum ErrorCode {
        Unauthenticated => "UNAUTHENTICATED",
        PermissionDenied => "PERMISSION_DENIED",
        InvalidArgument => "INVALID_ARGUMENT",
        FailedPrecondition => "FAILED_PRECONDITION",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        Unimplemented => "UNIMPLEMENTED",
        Cancelled => "CANCELLED",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        Unavailable => "UNAVAILABLE",
        Aborted => "ABORTED",
        Internal => "INTERNAL",
    }
}

impl ErrorCode {
    /// Whether sending the same message again later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::DeadlineExceeded | Self::ResourceExhausted | Self::Unavailable | Self::Aborted
        )
    }
}

/// A message the server refuses, with everything the ERROR frame needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    pub retry_after_ms: Option<u64>,
    pub details: Option<Value>,
}

impl Rejection {
    /// The message is clipped ([`clip`]): it may quote client input.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: clip(&message.into()),
            retryable: code.retryable(),
            retry_after_ms: None,
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self.retryable = true;
        self
    }

    /// An invalid field, located by its JSON pointer.
    pub fn invalid_field(pointer: &str, message: impl Into<String>) -> Self {
        let (pointer, message) = (clip(pointer), clip(&message.into()));
        let pointer = pointer.as_str();
        Self::new(ErrorCode::InvalidArgument, message.clone()).with_details(
            json!({"field": pointer, "errors": [{"pointer": pointer, "message": message}]}),
        )
    }
}

/// One parsed client message.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub message_type: String,
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
    /// `null` when the client sent none. What routes validate and render topics from.
    pub payload: Value,
    /// The payload exactly as the client wrote it: deliveries and backends get these
    /// bytes, so numbers like `2^64`, `-0` or `1e2` arrive unchanged (docs/PROTOCOL.md §3).
    pub raw_payload: Box<RawValue>,
    /// `meta.since`: where a recovering subscribe left off (docs/RECOVERY.md).
    pub since: Option<Since>,
}

/// A position in a topic's history, as a client last saw it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    #[serde(rename = "type")]
    message_type: String,
    #[serde(default)]
    meta: Option<ObjectOnly<RawMeta>>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

/// Known meta fields; other keys are the application's and pass through unread.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // read for its type check only: a timestamp must be a number
    timestamp: Option<serde_json::Number>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    since: Option<ObjectOnly<Since>>,
}

/// A message that could not be parsed, and the correlation id to answer it with if one
/// could still be read.
#[derive(Debug)]
pub struct BadEnvelope {
    pub rejection: Rejection,
    pub correlation_id: Option<String>,
}

/// `T` read from a JSON object only. serde's derived `Deserialize` also accepts a struct
/// written as an array of its fields (`["JOIN_ROOM", null, {…}]`), which the protocol
/// does not allow (docs/PROTOCOL.md §2): an envelope and its `meta` are objects.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Objects<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Objects<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        d.deserialize_map(Objects(std::marker::PhantomData))
    }
}

pub fn parse_inbound(text: &[u8]) -> Result<Inbound, BadEnvelope> {
    match serde_json::from_slice::<ObjectOnly<RawEnvelope>>(text) {
        Ok(ObjectOnly(raw)) => {
            let (correlation_id, traceparent, since) = match raw.meta {
                Some(ObjectOnly(m)) => (m.correlation_id, m.traceparent, m.since.map(|s| s.0)),
                None => (None, None, None),
            };
            let bad = |message: &str| BadEnvelope {
                rejection: Rejection::new(ErrorCode::InvalidArgument, message),
                correlation_id: None,
            };
            if correlation_id
                .as_ref()
                .is_some_and(|c| c.chars().count() > MAX_CORRELATION_ID)
            {
                return Err(bad("meta.correlationId is longer than 128 characters"));
            }
            let n = raw.message_type.chars().count();
            if n == 0 || n > switchboard_spec::compile::MAX_TYPE_LEN {
                return Err(BadEnvelope {
                    rejection: Rejection::new(
                        ErrorCode::InvalidArgument,
                        "type must be 1 to 128 characters",
                    ),
                    correlation_id,
                });
            }
            let (payload, raw_payload) = match raw.payload {
                // Valid JSON already (the envelope parsed), so this parse cannot fail.
                Some(raw_payload) => match serde_json::from_str(raw_payload.get()) {
                    Ok(payload) => (payload, raw_payload),
                    Err(e) => {
                        return Err(BadEnvelope {
                            rejection: Rejection::new(
                                ErrorCode::InvalidArgument,
                                format!("payload is not valid JSON: {e}"),
                            ),
                            correlation_id,
                        });
                    }
                },
                None => (Value::Null, RawValue::NULL.to_owned()),
            };
            Ok(Inbound {
                message_type: raw.message_type,
                correlation_id,
                traceparent,
                payload,
                raw_payload,
                since,
            })
        }
        Err(e) => {
            // Answer with the correlation id when the JSON is fine but its shape is not.
            let value = serde_json::from_slice::<Value>(text).ok();
            let correlation_id = value
                .as_ref()
                .and_then(|v| v.pointer("/meta/correlationId"))
                .and_then(Value::as_str)
                .filter(|c| c.chars().count() <= MAX_CORRELATION_ID)
                .map(str::to_owned);
            let message = if value.is_none() {
                format!("not valid JSON: {e}")
            } else if !value.as_ref().is_some_and(Value::is_object) {
                "a message is a JSON object {\"type\", \"meta\"?, \"payload\"?}".to_owned()
            } else {
                format!("malformed envelope: {e}")
            };
            Err(BadEnvelope {
                rejection: Rejection::new(ErrorCode::InvalidArgument, message),
                correlation_id,
            })
        }
    }
}

#[derive(Serialize)]
struct OutFrame<'a, P: ?Sized> {
    #[serde(rename = "type")]
    message_type: &'a str,
    meta: OutMeta<'a>,
    payload: &'a P,
}

/// What a frame's payload may be: a parsed [`Value`] (replies, errors, system frames) or
/// the client's own bytes ([`RawValue`], deliveries). Neither can fail to serialize.
pub trait FramePayload: Serialize {}
impl FramePayload for Value {}
impl FramePayload for RawValue {}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<&'a str>,
    pub timestamp: u64,
    /// Position in the topic's history (topics with `history` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
}

/// What [`encode`] sends if serialization ever failed: a well-formed `ERROR`, never an
/// empty or truncated frame.
const UNENCODABLE_FRAME: &[u8] = br#"{"type":"ERROR","meta":{"timestamp":0},"payload":{"code":"INTERNAL","message":"the server could not encode a frame","retryable":false}}"#;

/// Encodes one frame. The payload is a [`serde_json::Value`] on purpose: a `Value` has
/// only string map keys and finite numbers, and `OutMeta` only strings and integers, so
/// serializing them into a `Vec` cannot fail. Were that ever broken, the client gets
/// `UNENCODABLE_FRAME` and the log says why, rather than an empty frame.
pub fn encode<P: FramePayload + ?Sized>(
    message_type: &str,
    meta: OutMeta<'_>,
    payload: &P,
) -> Bytes {
    let frame = OutFrame {
        message_type,
        meta,
        payload,
    };
    match serde_json::to_vec(&frame) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, message.type = message_type, "could not encode a frame");
            Bytes::from_static(UNENCODABLE_FRAME)
        }
    }
}

pub fn encode_reply(message_type: &str, correlation_id: Option<&str>, payload: &Value) -> Bytes {
    encode(
        message_type,
        OutMeta {
            correlation_id,
            timestamp: now_ms(),
            ..OutMeta::default()
        },
        payload,
    )
}

pub fn encode_error(error_type: &str, correlation_id: Option<&str>, r: &Rejection) -> Bytes {
    let mut payload = json!({
        "code": r.code.as_str(),
        "message": r.message,
        "retryable": r.retryable,
    });
    if let Some(ms) = r.retry_after_ms {
        payload["retryAfterMs"] = json!(ms);
    }
    if let Some(d) = &r.details {
        payload["details"] = d.clone();
    }
    encode_reply(error_type, correlation_id, &payload)
}

/// Milliseconds since the Unix epoch, for `meta.timestamp`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_envelope() {
        let m = parse_inbound(
            br#"{"type":"SEND_MESSAGE","meta":{"correlationId":"c1","timestamp":1,"traceparent":"00-x","app":"keep"},"payload":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(m.message_type, "SEND_MESSAGE");
        assert_eq!(m.correlation_id.as_deref(), Some("c1"));
        assert_eq!(m.traceparent.as_deref(), Some("00-x"));
        assert_eq!(m.payload, json!({"a":1}));
        assert_eq!(m.raw_payload.get(), r#"{"a":1}"#);
    }

    #[test]
    fn deliveries_carry_the_payload_as_written() {
        let text = r#"{"type":"P","payload":{"big":18446744073709551616,"long":123456789012345678901234567890,"neg":-0,"exp":1e2, "spaced" : [1 ,2]}}"#;
        let m = parse_inbound(text.as_bytes()).unwrap();
        let frame = encode("P", OutMeta::default(), &*m.raw_payload);
        let frame = std::str::from_utf8(&frame).unwrap();
        assert!(
            frame.ends_with(r#""payload":{"big":18446744073709551616,"long":123456789012345678901234567890,"neg":-0,"exp":1e2, "spaced" : [1 ,2]}}"#),
            "{frame}"
        );
        let none = parse_inbound(br#"{"type":"P"}"#).unwrap();
        assert_eq!(none.raw_payload.get(), "null");
    }

    #[test]
    fn rejects_unknown_root_keys_but_keeps_the_correlation_id() {
        let e =
            parse_inbound(br#"{"type":"X","meta":{"correlationId":"c9"},"extra":1}"#).unwrap_err();
        assert_eq!(e.rejection.code, ErrorCode::InvalidArgument);
        assert!(
            e.rejection.message.contains("extra"),
            "{}",
            e.rejection.message
        );
        assert_eq!(e.correlation_id.as_deref(), Some("c9"));
    }

    #[test]
    fn rejects_bad_json_non_objects_and_bad_meta() {
        for bad in [
            &b"{nope"[..],
            b"[1,2]",
            b"\"x\"",
            br#"{"meta":{}}"#,
            br#"{"type":""}"#,
            br#"{"type":"X","meta":{"timestamp":"yesterday"}}"#,
            br#"{"type":"X","meta":"m"}"#,
            // serde's array form of a struct is not an envelope, nor of meta.
            br#"["JOIN_ROOM",["ra"],{"roomId":"r"}]"#,
            br#"["__heartbeat"]"#,
            br#"{"type":"X","meta":["c1"]}"#,
        ] {
            assert!(
                parse_inbound(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"type":"X","meta":{{"correlationId":"{}"}}}}"#,
            "c".repeat(129)
        );
        assert!(parse_inbound(long.as_bytes()).is_err());
        let array = parse_inbound(br#"["__heartbeat"]"#).unwrap_err();
        assert!(
            array
                .rejection
                .message
                .contains("a message is a JSON object"),
            "{:?}",
            array.rejection
        );
        // A null meta is no meta, as before.
        assert!(parse_inbound(br#"{"type":"X","meta":null}"#).is_ok());
    }

    #[test]
    fn long_messages_are_clipped_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        let clipped = clip(&long);
        assert!(clipped.starts_with(&"é".repeat(MAX_ERROR_MESSAGE_CHARS)));
        assert!(clipped.ends_with("… (1488 more bytes)"), "{clipped}");
    }

    #[test]
    fn every_frame_is_a_complete_envelope() {
        for payload in [
            json!(null),
            json!({"nested": {"list": [1, 2.5, -3, "x", {"\u{0}": true}]}}),
            json!(u64::MAX),
            json!("\u{1F600} \"quoted\" \\"),
        ] {
            let frame = encode("T", OutMeta::default(), &payload);
            let v: Value = serde_json::from_slice(&frame).unwrap();
            assert_eq!(v["type"], "T");
            assert_eq!(v["payload"], payload);
        }
        let fallback: Value = serde_json::from_slice(UNENCODABLE_FRAME).unwrap();
        assert_eq!(fallback["type"], ERROR_TYPE);
        assert_eq!(fallback["payload"]["code"], ErrorCode::Internal.as_str());
    }

    #[test]
    fn a_client_close_is_echoed_only_when_well_formed() {
        let close = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert_eq!(close::answer(&close(code, b"bye")), (code, true), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(close::answer(&close(code, b"")), (1002, false), "{code}");
        }
        assert_eq!(close::answer(&[]), (1000, true));
        assert_eq!(close::answer(&[3]), (1002, false), "one byte is no code");
        assert_eq!(close::answer(&close(1000, &[0xff, 0xfe])), (1007, false));
    }

    #[test]
    fn encodes_errors_with_all_fields() {
        let r = Rejection::new(ErrorCode::ResourceExhausted, "slow down")
            .retry_after(250)
            .with_details(json!({"bucket": "chat"}));
        let v: Value = serde_json::from_slice(&encode_error(ERROR_TYPE, Some("c1"), &r)).unwrap();
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["meta"]["correlationId"], "c1");
        assert_eq!(v["payload"]["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["payload"]["retryable"], true);
        assert_eq!(v["payload"]["retryAfterMs"], 250);
        assert_eq!(v["payload"]["details"]["bucket"], "chat");
    }
}
