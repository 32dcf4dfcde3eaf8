//! The publisher: sends the plan's messages on schedule over one connection, answering
//! pings while it does, and stays connected while deliveries drain.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::sync::mpsc;

use super::plan::{Plan, is_error, now_ns};
use super::subscriber::{Shared, close_reason};
use crate::ws::Ws;

/// What the publisher did.
pub(super) struct Published {
    pub(super) sent: u64,
    pub(super) first_ns: u64,
    pub(super) elapsed: Duration,
    pub(super) max_lag: Duration,
    pub(super) error: Option<String>,
}

/// Sends messages on schedule over `ws`'s write half, while a reader task answers
/// pings (through the writer), counts error frames and ignores deliveries.
pub(super) async fn publish(
    ws: Ws,
    plan: &Plan,
    shared: Arc<Shared>,
    rate: f64,
    duration: Duration,
    max_messages: u64,
) -> Published {
    let (mut rd, mut wr) = ws.split(tokio::io::split);
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel::<(OpCode, Vec<u8>)>();
    let reader_shared = shared.clone();
    let reader = tokio::spawn(async move {
        let mut obligation = |f: Frame<'_>| {
            std::future::ready(
                ctrl_tx
                    .send((f.opcode, f.payload.to_vec()))
                    .map_err(|_| "the publisher's writer is gone"),
            )
        };
        loop {
            match rd.read_frame(&mut obligation).await {
                Ok(f) if f.opcode == OpCode::Text => {
                    if is_error(&f.payload) {
                        reader_shared.events.error_frame(&f.payload);
                    }
                }
                Ok(f) if f.opcode == OpCode::Close => {
                    reader_shared
                        .events
                        .closed(format!("publisher {}", close_reason(&f)));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    reader_shared.events.closed(format!("publisher error: {e}"));
                    return;
                }
            }
        }
    });

    let mut buf = Vec::with_capacity(plan.publish_head.len() + plan.marker_bytes + 128);
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let first_ns = now_ns();
    let mut sent = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut error = None;
    let mut last_send = start;
    'send: while sent < max_messages {
        let due = if rate > 0.0 {
            start + Duration::from_secs_f64(sent as f64 / rate)
        } else {
            tokio::time::Instant::now()
        };
        if due >= end {
            break;
        }
        // Until it is due, answer what the reader asks for (pongs, the close echo).
        loop {
            while let Ok((op, payload)) = ctrl_rx.try_recv() {
                if let Err(e) = wr
                    .write_frame(Frame::new(true, op, None, Payload::Owned(payload)))
                    .await
                {
                    error = Some(format!("publisher write: {e}"));
                    break 'send;
                }
            }
            if tokio::time::Instant::now() >= due {
                break;
            }
            tokio::select! {
                biased;
                Some(ctrl) = ctrl_rx.recv() => {
                    if let Err(e) = wr
                        .write_frame(Frame::new(true, ctrl.0, None, Payload::Owned(ctrl.1)))
                        .await
                    {
                        error = Some(format!("publisher write: {e}"));
                        break 'send;
                    }
                }
                _ = tokio::time::sleep_until(due) => break,
            }
        }
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
        plan.message(&mut buf, sent);
        if let Err(e) = wr
            .write_frame(Frame::text(Payload::BorrowedMut(&mut buf)))
            .await
        {
            error = Some(format!("publisher write: {e}"));
            break;
        }
        sent += 1;
        last_send = tokio::time::Instant::now();
    }
    let elapsed = last_send.saturating_duration_since(start);
    // Keep the publisher connected (and answering pings) while deliveries drain.
    tokio::spawn(async move {
        while let Some((op, payload)) = ctrl_rx.recv().await {
            if wr
                .write_frame(Frame::new(true, op, None, Payload::Owned(payload)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    drop(reader);
    Published {
        sent,
        first_ns,
        elapsed,
        max_lag,
        error,
    }
}
