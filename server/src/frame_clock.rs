//! `FrameClock`: how long the client has been in the middle of a frame.
//!
//! fastwebsockets waits for the rest of a frame as patiently as for the next one, and
//! its `read_frame` cannot tell the two apart. With heartbeat and idle timeout both off,
//! a client could send a frame header and then nothing, holding the connection forever.
//! So the socket's read half counts the bytes it hands over ([`CountingReader`]), the
//! reader counts the bytes of the frames it got back, and while the first is ahead a
//! frame is under way: it must complete within the app's `handshakeTimeoutSeconds`
//! (give or take half of it, see [`FrameClock::tick`]); else the connection closes 1002.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// Wraps the socket's read half and counts every byte read from it.
pub struct CountingReader<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, read: Arc<AtomicU64>) -> Self {
        Self { inner, read }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let added = buf.filled().len() - before;
        self.read.fetch_add(added as u64, Ordering::Relaxed);
        poll
    }
}

/// Bytes read against bytes of complete frames, and since when a frame is under way.
pub struct FrameClock {
    read: Arc<AtomicU64>,
    framed: u64,
    started: Option<Instant>,
    deadline: Duration,
}

impl FrameClock {
    pub fn new(read: Arc<AtomicU64>, deadline: Duration) -> Self {
        Self {
            read,
            framed: 0,
            started: None,
            deadline,
        }
    }

    /// A frame with `payload_len` payload bytes was read: its header (2 bytes, the
    /// extended length, the 4-byte mask every client frame carries) and payload are
    /// accounted for.
    pub fn frame_read(&mut self, payload_len: usize) {
        let extended = match payload_len {
            0..=125 => 0,
            126..=65_535 => 2,
            _ => 8,
        };
        self.framed += 2 + extended + 4 + payload_len as u64;
        self.started = None;
    }

    /// Whether a frame begun more than the deadline ago is still incomplete. Called
    /// periodically while the reader waits.
    pub fn overdue(&mut self, now: Instant) -> bool {
        if self.read.load(Ordering::Relaxed) <= self.framed {
            self.started = None;
            return false;
        }
        let started = *self.started.get_or_insert(now);
        now.duration_since(started) >= self.deadline
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

    #[test]
    fn a_partial_frame_is_overdue_after_the_deadline_and_a_complete_one_never() {
        let read = Arc::new(AtomicU64::new(0));
        let mut clock = FrameClock::new(read.clone(), Duration::from_secs(2));
        let t = Instant::now();
        assert!(
            !clock.overdue(t),
            "nothing read: waiting for a frame is fine"
        );
        // A 10-byte text frame: 2 + 4 + 10 bytes.
        read.store(16, Ordering::Relaxed);
        clock.frame_read(10);
        assert!(!clock.overdue(t + Duration::from_secs(60)));
        // Two header bytes of the next frame, then silence.
        read.store(18, Ordering::Relaxed);
        assert!(!clock.overdue(t + Duration::from_secs(61)));
        assert!(!clock.overdue(t + Duration::from_millis(62_900)));
        assert!(clock.overdue(t + Duration::from_secs(63)));
        // Lengths past 125 carry an extended length.
        read.store(18 + 2 + 4 + 126 - 2, Ordering::Relaxed);
        clock.frame_read(126);
        assert!(!clock.overdue(t + Duration::from_secs(100)));
    }
}
