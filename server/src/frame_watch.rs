//! `FrameWatch`: the socket's read half, following client frame boundaries.
//!
//! fastwebsockets hides two things the server must enforce (RFC 6455 §5.1, and
//! `docs/RELIABILITY.md`):
//!
//! - whether a client frame is masked: it unmasks when a mask is present and reads on
//!   when not, but every client frame MUST be masked and the server MUST fail the
//!   connection otherwise;
//! - whether a frame is under way: it waits for the rest of a frame as patiently as
//!   for the next one, so with heartbeat and idle timeout both off a client could send
//!   a frame header and then nothing, holding the connection forever.
//!
//! And one thing it refuses: a frame with RSV1 set, which is how permessage-deflate
//! (RFC 7692 §6) marks the first frame of a compressed message.
//!
//! So [`FrameWatch`] walks the frame headers in the bytes it hands over (payloads are
//! skipped by length, never looked at).
//! When the connection negotiated compression, a data frame
//! with RSV1 has the bit cleared (and a text frame becomes binary, so fastwebsockets
//! does not check compressed bytes as UTF-8) and is noted in [`CompressedFrames`], from
//! which the reader learns which frames to inflate. RSV1 anywhere else still reaches
//! fastwebsockets, which fails the connection with 1002. An unmasked header is never handed over: the
//! read fails with [`UnmaskedFrame`] and the connection closes 1002. After every read
//! it publishes a [`FrameProgress`] (frames completed, whether one is under way), from
//! which the reader's [`FrameClock`] tells a stalled frame: it must complete within the
//! app's `handshakeTimeoutSeconds` (give or take half of it, see [`FrameClock::tick`]),
//! else the connection closes 1002.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// The read failure that stands for a client frame without a mask.
#[derive(Debug, thiserror::Error)]
#[error("client frame is not masked (RFC 6455 §5.1)")]
pub struct UnmaskedFrame;

impl UnmaskedFrame {
    /// Whether a read error is this one (it reaches the reader wrapped by
    /// fastwebsockets as an I/O error).
    pub fn is(error: &std::io::Error) -> bool {
        error.get_ref().is_some_and(|e| e.is::<UnmaskedFrame>())
    }
}

/// Where the client's byte stream stands, shared by the read half (which writes it)
/// and the connection's reader (which looks at it a few times per deadline): frames
/// completed, shifted left once, with the low bit set while a frame is under way.
#[derive(Default)]
pub struct FrameProgress(AtomicU64);

impl FrameProgress {
    fn publish(&self, completed: u64, under_way: bool) {
        self.0
            .store((completed << 1) | u64::from(under_way), Ordering::Relaxed);
    }

    fn load(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The compressed frames seen ahead of the reader: each one's index among the
/// connection's frames, and whether it began a text message. The walk runs ahead of
/// fastwebsockets' parsing by at most its read buffer, so this holds a few entries.
#[derive(Default)]
pub struct CompressedFrames(Mutex<VecDeque<(u64, bool)>>);

impl CompressedFrames {
    fn note(&self, index: u64, text: bool) {
        self.lock().push_back((index, text));
    }

    /// Whether the connection's frame number `index` (from 0, every frame counted)
    /// was compressed: `Some(began a text message)`, else `None`. Asked once per frame,
    /// in order.
    pub fn take(&self, index: u64) -> Option<bool> {
        let mut frames = self.lock();
        match frames.front() {
            Some(&(i, text)) if i == index => {
                frames.pop_front();
                Some(text)
            }
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, bool)>> {
        // Entries are pushed and popped whole: a poisoned lock holds nothing half done.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// RSV1, and the data opcodes it may mark (RFC 7692 §6.1).
const RSV1: u8 = 0x40;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// Where the header walk is within the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Collecting header bytes: `have` of them so far, in `header`.
    Header { have: usize },
    /// Skipping the payload: this many bytes are still to come.
    Payload { remaining: u64 },
}

/// Longest client frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Walks frame headers across reads (a header may be split anywhere).
struct HeaderWalk {
    position: Position,
    header: [u8; MAX_HEADER],
    completed: u64,
    /// Set when the connection negotiated permessage-deflate.
    compressed: Option<Arc<CompressedFrames>>,
}

/// What a walk over a chunk found.
#[derive(Debug, PartialEq, Eq)]
enum Walked {
    /// Every byte belongs to masked frames.
    Clean,
    /// The byte at this offset in the chunk revealed an unmasked frame.
    Unmasked(usize),
}

impl HeaderWalk {
    fn new(compressed: Option<Arc<CompressedFrames>>) -> Self {
        Self {
            position: Position::Header { have: 0 },
            header: [0; MAX_HEADER],
            completed: 0,
            compressed,
        }
    }

    fn under_way(&self) -> bool {
        self.position != Position::Header { have: 0 }
    }

    /// Walks a chunk about to be handed over; may clear RSV1 in it (module docs).
    fn walk(&mut self, chunk: &mut [u8]) -> Walked {
        let mut at = 0;
        while at < chunk.len() {
            match self.position {
                Position::Payload { remaining } => {
                    let skip = remaining.min((chunk.len() - at) as u64);
                    at += skip as usize;
                    self.advance_payload(remaining - skip);
                }
                Position::Header { have } => {
                    if have == 0 {
                        self.take_compression_bit(&mut chunk[at]);
                    }
                    self.header[have] = chunk[at];
                    let have = have + 1;
                    if have == 2 && self.header[1] & 0x80 == 0 {
                        return Walked::Unmasked(at);
                    }
                    at += 1;
                    match self.header_len(have) {
                        Some(needed) if have == needed => {
                            let len = self.payload_len();
                            self.advance_payload(len);
                        }
                        _ => self.position = Position::Header { have },
                    }
                }
            }
        }
        Walked::Clean
    }

    /// A compressed data frame's first byte: note it, and hand it over as an
    /// uncompressed binary frame.
    fn take_compression_bit(&mut self, first: &mut u8) {
        let Some(compressed) = &self.compressed else {
            return;
        };
        let opcode = *first & 0x0f;
        if *first & RSV1 != 0 && (opcode == OPCODE_TEXT || opcode == OPCODE_BINARY) {
            compressed.note(self.completed, opcode == OPCODE_TEXT);
            *first = (*first & !(RSV1 | 0x0f)) | OPCODE_BINARY;
        }
    }

    /// The header's full length, once its first two bytes are known.
    fn header_len(&self, have: usize) -> Option<usize> {
        if have < 2 {
            return None;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + extended + 4)
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(be)
            }
            n => u64::from(n),
        }
    }

    fn advance_payload(&mut self, remaining: u64) {
        if remaining == 0 {
            self.completed += 1;
            self.position = Position::Header { have: 0 };
        } else {
            self.position = Position::Payload { remaining };
        }
    }
}

/// Wraps the socket's read half; see the module docs.
pub struct FrameWatch<R> {
    inner: R,
    walk: HeaderWalk,
    progress: Arc<FrameProgress>,
    /// An unmasked frame was found: every later read fails.
    refused: bool,
}

impl<R> FrameWatch<R> {
    /// `compressed`: where compressed frames are noted, when the connection negotiated
    /// permessage-deflate.
    pub fn new(
        inner: R,
        progress: Arc<FrameProgress>,
        compressed: Option<Arc<CompressedFrames>>,
    ) -> Self {
        Self {
            inner,
            walk: HeaderWalk::new(compressed),
            progress,
            refused: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameWatch<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let unmasked = || std::io::Error::new(std::io::ErrorKind::InvalidData, UnmaskedFrame);
        if self.refused {
            return Poll::Ready(Err(unmasked()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let this = &mut *self;
            if let Walked::Unmasked(offset) = this.walk.walk(&mut buf.filled_mut()[before..]) {
                // Hand over what came before the offending header byte; fail the read
                // at once when that is nothing (an empty read would look like EOF).
                this.refused = true;
                buf.set_filled(before + offset);
                if offset == 0 {
                    return Poll::Ready(Err(unmasked()));
                }
            }
            this.progress
                .publish(this.walk.completed, this.walk.under_way());
        }
        poll
    }
}

/// Since when the frame now under way has been under way.
pub struct FrameClock {
    progress: Arc<FrameProgress>,
    /// When a look first saw the current progress value with a frame under way.
    started: Option<(Instant, u64)>,
    deadline: Duration,
}

impl FrameClock {
    pub fn new(progress: Arc<FrameProgress>, deadline: Duration) -> Self {
        Self {
            progress,
            started: None,
            deadline,
        }
    }

    /// Whether a frame begun more than the deadline ago is still incomplete. Called
    /// periodically while the reader waits.
    pub fn overdue(&mut self, now: Instant) -> bool {
        let progress = self.progress.load();
        if progress & 1 == 0 {
            self.started = None;
            return false;
        }
        match self.started {
            Some((since, seen)) if seen == progress => now.duration_since(since) >= self.deadline,
            _ => {
                self.started = Some((now, progress));
                false
            }
        }
    }

    /// How often to look: twice per deadline, so a stalled frame is closed between one
    /// and one and a half deadlines after it stalled, and an idle connection wakes
    /// rarely (every 5 s with the default 10 s).
    pub fn tick(&self) -> Duration {
        (self.deadline / 2).max(Duration::from_millis(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (the mask is irrelevant to the walk).
    fn masked(payload_len: usize) -> Vec<u8> {
        let mut frame = vec![0x81];
        match payload_len {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.resize(frame.len() + payload_len, b'x');
        frame
    }

    #[test]
    fn headers_are_followed_across_any_split() {
        let mut stream: Vec<u8> = [masked(0), masked(5), masked(126), masked(70_000)].concat();
        let len = stream.len();
        for chunk in [1, 2, 3, 7, 13, 1000, len] {
            let mut walk = HeaderWalk::new(None);
            for piece in stream.chunks_mut(chunk) {
                assert_eq!(walk.walk(piece), Walked::Clean, "chunk {chunk}");
            }
            assert_eq!(walk.completed, 4, "chunk {chunk}");
            assert!(!walk.under_way());
        }
        let mut walk = HeaderWalk::new(None);
        assert_eq!(walk.walk(&mut masked(10)[..7]), Walked::Clean);
        assert!(walk.under_way(), "a partial frame is under way");
    }

    #[test]
    fn an_unmasked_header_is_found_at_its_second_byte() {
        let unmasked = [0x81, 0x05, b'h', b'e', b'l', b'l', b'o'];
        let mut stream = [masked(3), unmasked.to_vec()].concat();
        let mut walk = HeaderWalk::new(None);
        assert_eq!(
            walk.walk(&mut stream),
            Walked::Unmasked(masked(3).len() + 1)
        );
        let mut walk = HeaderWalk::new(None);
        assert_eq!(walk.walk(&mut stream[..10]), Walked::Clean);
        assert_eq!(walk.walk(&mut stream[10..]), Walked::Unmasked(0));
    }

    #[test]
    fn compressed_data_frames_are_noted_and_handed_over_as_plain_binary() {
        let with_rsv1 = |mut frame: Vec<u8>, first: u8| {
            frame[0] = first;
            frame
        };
        let stream = [
            masked(3),                  // 0: plain text
            with_rsv1(masked(4), 0xc1), // 1: compressed text
            with_rsv1(masked(4), 0x42), // 2: compressed binary, fragmented
            with_rsv1(masked(2), 0x80), // 3: its continuation
            with_rsv1(masked(0), 0xc9), // 4: a ping with RSV1: left for 1002
        ]
        .concat();
        for chunk in [1, 5, stream.len()] {
            let marks = Arc::new(CompressedFrames::default());
            let mut walk = HeaderWalk::new(Some(marks.clone()));
            let mut bytes = stream.clone();
            for piece in bytes.chunks_mut(chunk) {
                assert_eq!(walk.walk(piece), Walked::Clean);
            }
            let firsts: Vec<u8> = [0, 9, 19, 29, 37].iter().map(|&at| bytes[at]).collect();
            assert_eq!(firsts, [0x81, 0x82, 0x02, 0x80, 0xc9], "chunk {chunk}");
            let taken: Vec<_> = (0..5).map(|i| marks.take(i)).collect();
            assert_eq!(taken, [None, Some(true), Some(false), None, None]);
        }
        // Without compression negotiated nothing is touched.
        let mut walk = HeaderWalk::new(None);
        let mut bytes = stream.clone();
        walk.walk(&mut bytes);
        assert_eq!(bytes, stream);
    }

    #[test]
    fn a_partial_frame_is_overdue_after_the_deadline_and_a_complete_one_never() {
        let progress = Arc::new(FrameProgress::default());
        let mut clock = FrameClock::new(progress.clone(), Duration::from_secs(2));
        let t = Instant::now();
        assert!(!clock.overdue(t), "nothing read: waiting is fine");
        progress.publish(1, false);
        assert!(!clock.overdue(t + Duration::from_secs(60)));
        // The next frame begun, then silence.
        progress.publish(1, true);
        assert!(!clock.overdue(t + Duration::from_secs(61)));
        assert!(!clock.overdue(t + Duration::from_millis(62_900)));
        assert!(clock.overdue(t + Duration::from_secs(63)));
        // Frames completing while another is under way restart the clock.
        progress.publish(2, true);
        assert!(!clock.overdue(t + Duration::from_secs(64)));
        assert!(!clock.overdue(t + Duration::from_millis(65_900)));
        assert!(clock.overdue(t + Duration::from_secs(66)));
    }
}
