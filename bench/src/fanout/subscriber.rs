//! The subscribers: each connects, joins, and tallies every delivery it reads (count,
//! latency from the marker, order); error frames and closes are counted for the run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use fastwebsockets::{Frame, OpCode, Payload};
use memchr::memmem;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::plan::{error_code, is_error, now_ns, parse_marker};
use crate::hist::Histogram;
use crate::ws::{self, Target, Ws};

/// Counters every connection adds to; touched only on errors and closes.
#[derive(Default)]
pub(super) struct Events {
    pub(super) error_frames: AtomicU64,
    pub(super) by_code: Mutex<BTreeMap<String, u64>>,
    pub(super) closes: Mutex<BTreeMap<String, u64>>,
}

impl Events {
    pub(super) fn error_frame(&self, text: &[u8]) {
        self.error_frames.fetch_add(1, Ordering::Relaxed);
        *lock(&self.by_code).entry(error_code(text)).or_default() += 1;
    }

    pub(super) fn closed(&self, why: String) {
        *lock(&self.closes).entry(why).or_default() += 1;
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One subscriber's tallies. The lock is only ever taken by its own task, except when
/// the run ends.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) latency_us: Histogram,
    pub(super) last_ns: u64,
    next_seq: u64,
    pub(super) out_of_order: u64,
    pub(super) other_frames: u64,
}

#[derive(Default)]
pub(super) struct Subscriber {
    pub(super) delivered: AtomicU64,
    pub(super) tally: Mutex<Tally>,
}

pub(super) struct Shared {
    pub(super) finder: memmem::Finder<'static>,
    pub(super) events: Events,
}

impl Shared {
    fn on_delivery_frame(&self, sub: &Subscriber, text: &[u8]) {
        let now = now_ns();
        let mut t = lock(&sub.tally);
        match self
            .finder
            .find(text)
            .and_then(|i| parse_marker(&text[i + self.finder.needle().len()..]))
        {
            Some((seq, ts)) => {
                t.latency_us.record(now.saturating_sub(ts) / 1000);
                t.last_ns = now;
                if seq < t.next_seq {
                    t.out_of_order += 1;
                } else {
                    t.next_seq = seq + 1;
                }
                sub.delivered.fetch_add(1, Ordering::Relaxed);
            }
            None if is_error(text) => {
                drop(t);
                self.events.error_frame(text);
            }
            None => t.other_frames += 1,
        }
    }
}

pub(super) fn close_reason(frame: &Frame<'_>) -> String {
    match frame.payload.len() {
        0 | 1 => "close".to_owned(),
        _ => format!(
            "close {}",
            u16::from_be_bytes([frame.payload[0], frame.payload[1]])
        ),
    }
}

/// Connects, reads `$ws:open`, and joins (waiting for the ack) when `join` is set.
pub(super) async fn connect_and_join(
    target: &Target,
    join: Option<Vec<u8>>,
    correlation_id: &str,
) -> anyhow::Result<Ws> {
    let mut ws = ws::connect(target).await?;
    let open = ws.read_frame().await?;
    if open.opcode != OpCode::Text || memmem::find(&open.payload, b"\"$ws:open\"").is_none() {
        bail!(
            "the first frame is not $ws:open: {}",
            String::from_utf8_lossy(&open.payload)
        );
    }
    drop(open);
    let Some(join) = join else { return Ok(ws) };
    ws.write_frame(Frame::text(Payload::Owned(join))).await?;
    let ack_id = format!(r#""correlationId":"{correlation_id}""#);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text => {
                let text = &frame.payload[..];
                if memmem::find(text, ack_id.as_bytes()).is_some() {
                    if text.starts_with(br#"{"type":"$ws:ack""#) {
                        return Ok(ws);
                    }
                    bail!("join refused: {}", String::from_utf8_lossy(text));
                }
            }
            OpCode::Close => bail!("closed while joining ({})", close_reason(&frame)),
            _ => {}
        }
    }
}

pub(super) struct SubscriberTask {
    pub(super) sub: Arc<Subscriber>,
    pub(super) handle: JoinHandle<()>,
}

pub(super) fn spawn_subscriber(
    i: usize,
    target: Target,
    join: Option<Vec<u8>>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    connect_timeout: Duration,
    ready: mpsc::UnboundedSender<Result<Duration, String>>,
) -> SubscriberTask {
    let sub = Arc::new(Subscriber::default());
    let mine = sub.clone();
    let handle = tokio::spawn(async move {
        let joined = {
            // The gate is never closed; if it were, connecting unthrottled is harmless.
            let _permit = gate.acquire().await.ok();
            let started = Instant::now();
            let id = format!("j{i}");
            match tokio::time::timeout(connect_timeout, connect_and_join(&target, join, &id)).await
            {
                Ok(Ok(ws)) => Ok((ws, started.elapsed())),
                Ok(Err(e)) => Err(format!("{}: {e:#}", target.url)),
                Err(_) => Err(format!(
                    "{}: connect and join took over {connect_timeout:?}",
                    target.url
                )),
            }
        };
        let mut ws = match joined {
            Ok((ws, took)) => {
                let _ = ready.send(Ok(took));
                ws
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        drop(ready);
        loop {
            match ws.read_frame().await {
                Ok(frame) => match frame.opcode {
                    OpCode::Text => shared.on_delivery_frame(&mine, &frame.payload),
                    OpCode::Close => {
                        shared.events.closed(close_reason(&frame));
                        return;
                    }
                    _ => {}
                },
                Err(e) => {
                    shared.events.closed(format!("error: {e}"));
                    return;
                }
            }
        }
    });
    SubscriberTask { sub, handle }
}
