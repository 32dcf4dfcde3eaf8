//! `FrameWriter`: server frames onto the socket.
//!
//! Server frames are never masked (RFC 6455 §5.1), so a frame is a 2 to 10 byte header
//! and the payload as it is: the payload a fan-out shares is written straight from its
//! shared buffer, with no per-recipient copy. The writer is our own rather than
//! fastwebsockets' because a compressed message needs the RSV1 bit set on its frame
//! (RFC 7692 §6), which fastwebsockets cannot write.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

/// Frame opcodes the server sends (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xa,
}

/// FIN: every frame the server sends is a whole message.
const FIN: u8 = 0x80;
/// RSV1: the message is compressed (permessage-deflate).
const RSV1: u8 = 0x40;

/// A frame header for a payload of `len` bytes: its bytes and how many of them count.
fn header(opcode: Opcode, compressed: bool, len: usize) -> ([u8; 10], usize) {
    let mut head = [0u8; 10];
    head[0] = FIN | if compressed { RSV1 } else { 0 } | opcode as u8;
    let used = match len {
        0..=125 => {
            head[1] = len as u8;
            2
        }
        126..=0xffff => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (head, used)
}

/// Writes whole frames into a buffered write half; [`FrameWriter::flush`] sends them.
pub struct FrameWriter<W> {
    io: BufWriter<W>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io: BufWriter::new(io),
        }
    }

    /// A text message, compressed already when `compressed`.
    pub async fn text(&mut self, payload: &[u8], compressed: bool) -> io::Result<()> {
        self.frame(Opcode::Text, compressed, payload).await
    }

    pub async fn control(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        self.frame(opcode, false, payload).await
    }

    /// A close frame: the code, then as much of the reason as a control frame holds.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        self.frame(Opcode::Close, false, &payload).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }

    async fn frame(&mut self, opcode: Opcode, compressed: bool, payload: &[u8]) -> io::Result<()> {
        let (head, used) = header(opcode, compressed, payload.len());
        self.io.write_all(&head[..used]).await?;
        self.io.write_all(payload).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        let (h, n) = header(Opcode::Text, false, 5);
        assert_eq!(&h[..n], &[0x81, 5]);
        let (h, n) = header(Opcode::Text, true, 126);
        assert_eq!(&h[..n], &[0xc1, 126, 0, 126]);
        let (h, n) = header(Opcode::Pong, false, 0);
        assert_eq!(&h[..n], &[0x8a, 0]);
        let (h, n) = header(Opcode::Text, false, 70_000);
        assert_eq!(&h[..n], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[tokio::test]
    async fn a_close_carries_its_code_and_a_reason_cut_to_fit() {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out);
        w.close(4008, &"x".repeat(200)).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(&out[..4], &[0x88, 125, 0x0f, 0xa8]);
        assert_eq!(out.len(), 2 + 125);
    }
}
