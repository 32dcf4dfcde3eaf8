//! permessage-deflate (RFC 7692): the client's offer, the server's answer, compressing
//! what the server sends and inflating what it receives (README, "Compression").
//!
//! The server always compresses with `server_no_context_takeover`: every message is
//! its own deflate stream, so a compressed message does not depend on what one
//! connection saw before. That is what lets a publication be compressed once, in the
//! fan-out, and the same bytes be written to every recipient that negotiated
//! compression; per-connection compressors (Centrifugo, Socket.IO) compress it once
//! per recipient instead. The compressor is per worker thread and reset between
//! messages, so no connection holds one.
//!
//! Inbound, the client keeps its context unless it offered
//! `client_no_context_takeover`: then the inflater must live as long as the connection
//! (about 40 KiB, allocated at its first compressed message). Inflating stops at
//! `limits.maxPayloadBytes` of output, so a small frame that inflates to gigabytes (a
//! deflate bomb) costs at most that much before the connection closes with 1009.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hyper::HeaderMap;
use hyper::header::SEC_WEBSOCKET_EXTENSIONS;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use switchboard_ops::metrics::{CounterByLabel, register};
use switchboard_spec::RealtimeAppSpec;

/// The extension's registered name.
const EXTENSION: &str = "permessage-deflate";
/// What RFC 7692 §7.2.1 strips from the end of every compressed message and §7.2.2
/// appends again before inflating: the empty stored block a sync flush ends with.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The window this server compresses and inflates with. A client asking the server for
/// a smaller one (`server_max_window_bits` < 15) is declined: one window for every
/// recipient is what lets one compressed publication serve them all.
const WINDOW_BITS: u8 = 15;

/// The app's compression settings, when `spec.compression.enabled`; a connection that
/// negotiated the extension carries a copy in its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// `spec.compression.thresholdBytes`: shorter frames go out as they are.
    threshold: usize,
}

impl Outgoing {
    pub fn from_spec(spec: &RealtimeAppSpec) -> Option<Self> {
        spec.compression.enabled.then_some(Self {
            threshold: spec.compression.threshold_bytes as usize,
        })
    }

    /// Whether a frame of `len` payload bytes is worth compressing.
    pub fn wants(self, len: usize) -> bool {
        len >= self.threshold.max(1)
    }
}

/// What a connection agreed to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The client resets its compressor after every message, so the inflater need not
    /// keep anything between messages either.
    pub client_no_context_takeover: bool,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` answer.
    pub fn response(self) -> &'static str {
        if self.client_no_context_takeover {
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        } else {
            "permessage-deflate; server_no_context_takeover"
        }
    }
}

/// The first `permessage-deflate` offer among the request's `Sec-WebSocket-Extensions`
/// that this server can honour, or `None` (the connection goes uncompressed). An offer
/// with a parameter unknown, repeated, malformed or asking for a smaller server window
/// is declined, as RFC 7692 §5 asks, and the next one is looked at.
pub fn negotiate(headers: &HeaderMap) -> Option<Negotiated> {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

/// One offer: `permessage-deflate; param; param=value`.
fn accept_offer(offer: &str) -> Option<Negotiated> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut agreed = Negotiated {
        client_no_context_takeover: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            // The server may compress with any window up to this; only 15 is ours.
            ("server_max_window_bits", Some(v)) if window_bits(v)? == WINDOW_BITS => {}
            // The client may use a smaller window: the inflater's 15 reads any.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    Some(agreed)
}

/// A window size parameter: 8 to 15, in plain digits.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// This worker's compressor, reset before every message: a compressor's state is
    /// large (hundreds of KiB with its hash tables), so connections never own one.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new_with_window_bits(Compression::fast(), false, WINDOW_BITS));
}

/// Compresses one message as RFC 7692 §7.2.1 says: a fresh raw deflate stream, sync
/// flushed, its final empty block stripped. Counted once, however many recipients the
/// result is written to.
pub fn compress(payload: &[u8], metrics: &DeflateMetrics) -> Bytes {
    let out = COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            // A raw stream in memory cannot fail: only a buffer error (no room) can
            // come back, and room is made below.
            let _ = c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync);
            if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        out
    });
    let mut out = out;
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    metrics.compressions.inc();
    metrics.bytes.inc_by(Stage::Raw, payload.len() as u64);
    metrics.bytes.inc_by(Stage::Compressed, out.len() as u64);
    Bytes::from(out)
}

/// Why an inbound compressed message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past `limits.maxPayloadBytes`: closed with 1009.
    #[error("the message inflates past limits.maxPayloadBytes")]
    TooBig,
    /// It is not a deflate stream: closed with 1007.
    #[error("the message is not valid deflate data")]
    Corrupt,
}

/// Inflates one connection's compressed messages, keeping the client's context between
/// them unless it gave that up (`client_no_context_takeover`).
pub struct Inflater {
    stream: Decompress,
    /// Reset after every message: the client resets its side too.
    reset_each_message: bool,
}

impl Inflater {
    pub fn new(negotiated: Negotiated) -> Self {
        Self {
            stream: Decompress::new_with_window_bits(false, WINDOW_BITS),
            reset_each_message: negotiated.client_no_context_takeover,
        }
    }

    /// The message, inflated to at most `max` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let result = self.inflate_message(compressed, max);
        if result.is_err() || self.reset_each_message {
            self.stream.reset(false);
        }
        result
    }

    fn inflate_message(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        // Room for a typical ratio at first; grown up to one byte past the limit.
        let mut out = Vec::with_capacity((compressed.len() * 4).clamp(256, max + 1));
        for input in [compressed, &TAIL[..]] {
            let mut consumed = 0;
            loop {
                let (in_before, out_before) = (self.stream.total_in(), out.len());
                let status = self
                    .stream
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                consumed += (self.stream.total_in() - in_before) as usize;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // The client ended its stream (BFINAL): the next message starts a
                    // new one, and nothing after the end belongs to this one.
                    self.stream.reset(false);
                    return Ok(out);
                }
                let room_left = out.len() < out.capacity();
                if consumed == input.len() && room_left {
                    break;
                }
                if !room_left {
                    if out.capacity() > max {
                        return Err(InflateError::TooBig);
                    }
                    let more = out.capacity().min(max + 1 - out.capacity());
                    out.reserve_exact(more);
                } else if self.stream.total_in() == in_before && out.len() == out_before {
                    // Input left and room left, yet nothing moved: not deflate.
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(out)
    }
}

switchboard_ops::label_values! {
    /// Which side of a compression the bytes of `switchboard_deflate_bytes_total` count.
    pub enum Stage {
        /// What went in: the frame as it would be sent uncompressed.
        Raw => "raw",
        /// What came out and is written to each recipient.
        Compressed => "compressed",
    }
}

/// How much compression does and costs: compressions (each is CPU spent once, however
/// many recipients share it), the bytes in and out of them, compressed frames written
/// (one per recipient) and messages inflated.
pub struct DeflateMetrics {
    pub compressions: Counter,
    pub bytes: CounterByLabel<Stage>,
    pub frames_written: Counter,
    pub inflated: Counter,
}

impl DeflateMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let compressions = register(
            registry,
            "switchboard_deflate_compressions",
            "Frames compressed with permessage-deflate; a publication counts once however many recipients share it",
            Counter::default(),
        );
        let bytes = CounterByLabel::register(
            registry,
            "switchboard_deflate_bytes",
            "Bytes into (raw) and out of (compressed) those compressions",
            "stage",
        );
        let frames_written = register(
            registry,
            "switchboard_deflate_frames_written",
            "Compressed frames written to clients, one per recipient",
            Counter::default(),
        );
        let inflated = register(
            registry,
            "switchboard_deflate_inflated_messages",
            "Compressed messages from clients inflated",
            Counter::default(),
        );
        Self {
            compressions,
            bytes,
            frames_written,
            inflated,
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn offered(values: &[&str]) -> Option<Negotiated> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(v).unwrap());
        }
        negotiate(&headers)
    }

    const TAKEOVER: Option<Negotiated> = Some(Negotiated {
        client_no_context_takeover: false,
    });
    const NO_TAKEOVER: Option<Negotiated> = Some(Negotiated {
        client_no_context_takeover: true,
    });

    #[test]
    fn browsers_and_common_clients_offers_are_accepted() {
        // Chrome and Firefox.
        assert_eq!(
            offered(&["permessage-deflate; client_max_window_bits"]),
            TAKEOVER
        );
        // Node's ws.
        assert_eq!(
            offered(&["permessage-deflate; client_max_window_bits=15"]),
            TAKEOVER
        );
        assert_eq!(
            offered(&[
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            ]),
            NO_TAKEOVER
        );
        assert_eq!(offered(&["Permessage-Deflate"]), TAKEOVER);
        assert_eq!(
            offered(&[r#"permessage-deflate; server_max_window_bits="15""#]),
            TAKEOVER
        );
    }

    #[test]
    fn offers_this_server_cannot_honour_are_declined_and_the_next_one_is_tried() {
        for declined in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offered(&[declined]), None, "{declined}");
        }
        assert_eq!(
            offered(&[
                "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_no_context_takeover"
            ]),
            NO_TAKEOVER
        );
        assert_eq!(
            offered(&["x-other", "permessage-deflate"]),
            TAKEOVER,
            "offers spread over several header lines"
        );
        assert_eq!(offered(&[]), None);
    }

    fn metrics() -> DeflateMetrics {
        DeflateMetrics::register(&mut Registry::default())
    }

    #[test]
    fn a_compressed_message_inflates_back_with_or_without_context_takeover() {
        let m = metrics();
        let message = br#"{"type":"CHAT","payload":{"text":"hello hello hello hello hello"}}"#;
        let wire = compress(message, &m);
        assert!(!wire.ends_with(&TAIL), "the tail is stripped");
        assert!(wire.len() < message.len());
        for negotiated in [TAKEOVER, NO_TAKEOVER] {
            let mut inflater = Inflater::new(negotiated.unwrap());
            // Each message is its own stream, so it inflates after any other.
            for _ in 0..3 {
                assert_eq!(inflater.inflate(&wire, 1 << 16).unwrap(), message);
            }
        }
        assert_eq!(m.compressions.get(), 1);
    }

    #[test]
    fn context_takeover_messages_need_the_kept_context() {
        // A client that keeps its context: the second message refers back to the first.
        let mut client = Compress::new(Compression::fast(), false);
        let mut frames = Vec::new();
        for text in [
            "the same words again and again",
            "the same words again and again",
        ] {
            let mut out = Vec::with_capacity(256);
            client
                .compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - TAIL.len());
            frames.push(out);
        }
        assert!(
            frames[1].len() < frames[0].len(),
            "the second is a back-reference"
        );
        let mut inflater = Inflater::new(TAKEOVER.unwrap());
        for f in &frames {
            assert_eq!(
                inflater.inflate(f, 1024).unwrap(),
                b"the same words again and again"
            );
        }
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let m = metrics();
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(&zeros, &m);
        assert!(
            bomb.len() < 128 << 10,
            "10 MiB of zeros compress to {}",
            bomb.len()
        );
        let mut inflater = Inflater::new(TAKEOVER.unwrap());
        assert_eq!(inflater.inflate(&bomb, 65_536), Err(InflateError::TooBig));
        // Exactly at the limit is fine.
        let exact = compress(&zeros[..65_536], &m);
        assert_eq!(
            inflater.inflate(&exact, 65_536).map(|v| v.len()),
            Ok(65_536)
        );
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff, 0xff], 1024),
            Err(InflateError::Corrupt)
        );
        // And the inflater is usable again after a refusal.
        let ok = compress(b"fine", &m);
        assert_eq!(inflater.inflate(&ok, 1024).unwrap(), b"fine");
    }

    #[test]
    fn the_threshold_decides_what_is_compressed() {
        let out = Outgoing { threshold: 1024 };
        assert!(!out.wants(1023));
        assert!(out.wants(1024));
        assert!(
            Outgoing { threshold: 0 }.wants(1),
            "0 compresses everything"
        );
    }
}
