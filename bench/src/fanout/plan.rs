//! What the publisher sends and what subscribers look for: the message frames with
//! their marker `sblg<run>-<seq>-<ns>`, the join frame, and how a frame is read back.

use std::sync::OnceLock;
use std::time::Instant;

use memchr::memmem;
use serde_json::Value;

use super::{Args, usage};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on this process's monotonic clock.
pub(super) fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What the publisher sends, split around the marker, and what subscribers look for.
pub(super) struct Plan {
    join_frame: (String, String),
    pub(super) publish_head: Vec<u8>,
    publish_tail: Vec<u8>,
    pub(super) needle: Vec<u8>,
    pub(super) marker_bytes: usize,
}

impl Plan {
    pub(super) fn new(a: &Args, run: &str) -> anyhow::Result<Self> {
        // A JSON string literal; serializing a &str cannot fail.
        let type_json = |t: &str| Value::from(t).to_string();
        let join_payload = a.join_payload.replace("{room}", &a.room);
        serde_json::from_str::<Value>(&join_payload)
            .map_err(|e| usage(format!("--join-payload is not JSON: {e}")))?;
        // The correlation id goes between the two halves.
        let join_frame = (
            format!(
                r#"{{"type":{},"meta":{{"correlationId":""#,
                type_json(&a.join_type)
            ),
            format!(r#""}},"payload":{join_payload}}}"#),
        );
        let payload = a.publish_payload.replace("{room}", &a.room);
        let Some((head, tail)) = payload.split_once("{marker}") else {
            return Err(usage("--publish-payload must contain {marker}"));
        };
        if tail.contains("{marker}") {
            return Err(usage("--publish-payload must contain {marker} only once"));
        }
        serde_json::from_str::<Value>(&format!("{head}x{tail}")).map_err(|e| {
            usage(format!(
                "--publish-payload is not JSON once {{marker}} is replaced: {e}"
            ))
        })?;
        Ok(Self {
            join_frame,
            publish_head: format!(
                r#"{{"type":{},"payload":{head}"#,
                type_json(&a.publish_type)
            )
            .into_bytes(),
            publish_tail: format!("{tail}}}").into_bytes(),
            needle: format!("sblg{run}-").into_bytes(),
            marker_bytes: a.marker_bytes,
        })
    }

    pub(super) fn join_text(&self, correlation_id: &str) -> Vec<u8> {
        let (head, tail) = &self.join_frame;
        format!("{head}{correlation_id}{tail}").into_bytes()
    }

    /// Writes message `seq`, stamped now, into `buf`.
    pub(super) fn message(&self, buf: &mut Vec<u8>, seq: u64) {
        use std::io::Write;
        buf.clear();
        buf.extend_from_slice(&self.publish_head);
        let start = buf.len();
        buf.extend_from_slice(&self.needle);
        // Writing into a Vec cannot fail.
        let _ = write!(buf, "{seq}-{}", now_ns());
        let written = buf.len() - start;
        if written < self.marker_bytes {
            buf.push(b'-');
            buf.resize(buf.len() + self.marker_bytes - written - 1, b'x');
        }
        buf.extend_from_slice(&self.publish_tail);
    }
}

/// Reads the decimal number at the start of `s`: (value, digits).
fn number(s: &[u8]) -> Option<(u64, usize)> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = s[..n]
        .iter()
        .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
    Some((v, n))
}

/// `<seq>-<ns>` after the needle.
pub(super) fn parse_marker(rest: &[u8]) -> Option<(u64, u64)> {
    let (seq, n) = number(rest)?;
    if rest.get(n) != Some(&b'-') {
        return None;
    }
    let (ts, _) = number(&rest[n + 1..])?;
    Some((seq, ts))
}

/// Whether a server frame is an error (`ERROR` or `RPC_ERROR`); the server writes
/// `type` first, so only the head is searched.
pub(super) fn is_error(text: &[u8]) -> bool {
    let head = &text[..text.len().min(48)];
    memmem::find(head, br#""type":"ERROR""#).is_some()
        || memmem::find(head, br#""type":"RPC_ERROR""#).is_some()
}

/// The `code` of an error frame.
pub(super) fn error_code(text: &[u8]) -> String {
    const KEY: &[u8] = br#""code":""#;
    memmem::find(text, KEY)
        .and_then(|i| {
            let rest = &text[i + KEY.len()..];
            let end = memchr::memchr(b'"', rest)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        Cli::parse_from([&["t"], extra].concat()).args
    }

    #[test]
    fn messages_carry_a_parsable_marker() {
        let plan = Plan::new(&args(&["--marker-bytes", "64"]), "0badf00d").unwrap();
        let mut buf = Vec::new();
        plan.message(&mut buf, 42);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["type"], "SEND_MESSAGE");
        assert_eq!(v["payload"]["roomId"], "bench");
        let text = v["payload"]["text"].as_str().unwrap();
        assert_eq!(text.len(), 64, "{text}");
        let rest = text.strip_prefix("sblg0badf00d-").unwrap();
        let (seq, ts) = parse_marker(rest.as_bytes()).unwrap();
        assert_eq!(seq, 42);
        assert!(ts <= now_ns());
    }

    #[test]
    fn join_frames_carry_the_correlation_id() {
        let plan = Plan::new(&args(&["--room", "r1"]), "00000000").unwrap();
        let v: Value = serde_json::from_slice(&plan.join_text("j7")).unwrap();
        assert_eq!(
            v,
            json!({"type": "JOIN_ROOM", "meta": {"correlationId": "j7"}, "payload": {"roomId": "r1"}})
        );
    }

    #[test]
    fn templates_are_checked() {
        for bad in [
            &["--publish-payload", r#"{"text":"x"}"#][..],
            &["--publish-payload", r#"{"a":"{marker}","b":"{marker}"}"#],
            &["--publish-payload", r#"{"a":{marker}"#],
            &["--join-payload", "{"],
        ] {
            assert!(Plan::new(&args(bad), "00000000").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_are_recognised() {
        let e = br#"{"type":"ERROR","meta":{"timestamp":1},"payload":{"code":"RESOURCE_EXHAUSTED","message":"m"}}"#;
        assert!(is_error(e));
        assert_eq!(error_code(e), "RESOURCE_EXHAUSTED");
        assert!(!is_error(
            br#"{"type":"ROOM_MESSAGE","meta":{},"payload":{"text":"\"type\":\"ERROR\""}}"#
        ));
    }
}
