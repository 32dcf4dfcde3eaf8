//! One WebSocket connection: a reader and a writer, run together in one task.
//!
//! The reader parses frames (fastwebsockets, behind `FrameWatch`), reassembles
//! fragments and inflates compressed messages within `maxPayloadBytes`, and hands each
//! message to the router. The writer drains the connection's `OutboundQueue` into the
//! socket in batches (one flush per batch) with a `FrameWriter`, compresses what the
//! fan-out did not already, sends pings, and enforces every deadline: pong, idle,
//! token expiry. Either side ending closes the other: the reader
//! queues a close for the writer; the writer's end stops the reader after a short linger
//! for the client's close reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use switchboard_ops::metrics::{CounterByLabel, register};
use switchboard_spec::CompiledApp;
use tokio::io::{ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::actions;
use crate::deflate::{self, InflateError, Inflater};
use crate::frame_watch::{CompressedFrames, FrameClock, FrameProgress, FrameWatch, UnmaskedFrame};
use crate::frame_write::{FrameWriter, Opcode};
use crate::handle::ConnectionHandle;
use crate::outbound::Outbound;
use crate::protocol::{self, CloseReason};
use crate::router;
use crate::session::Session;
use crate::state::AppState;

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<FrameWatch<ReadHalf<Io>>>;
type Writer = FrameWriter<WriteHalf<Io>>;

/// How long the reader waits for the client's close reply after the server closed.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// How long a write may take before the client is considered gone. A client that
/// stopped reading is caught earlier by its queue bound; this catches a dead network.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to try to get a close frame out to a client that overflowed its queue.
const ABORT_CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Serves an upgraded connection until it closes.
pub async fn serve(ws: WebSocket<Io>, state: Arc<AppState>, mut session: Session) {
    let handle = session.handle.clone();
    let span = info_span!("connection", id = %handle.id, user = %session.identity.user_id, peer = %session.ip);
    async move {
        state.connections.insert(handle.id.clone(), handle.clone());
        state.metrics.connections.open.inc();
        state.metrics.connections.opened.inc();
        send_open(&state, &session);

        let progress = Arc::new(FrameProgress::default());
        let compressed = session
            .deflate
            .map(|_| Arc::new(CompressedFrames::default()));
        // fastwebsockets reads; the write half is ours (see frame_write.rs), so its
        // writer is given nothing to write to.
        let (r, w) = tokio::io::split(ws.into_inner());
        let watched = FrameWatch::new(r, progress.clone(), compressed.clone());
        let (rx, _) =
            fastwebsockets::after_handshake_split(watched, tokio::io::sink(), Role::Server);
        let tx = FrameWriter::new(w);
        let frame_deadline =
            Duration::from_secs(u64::from(state.app.spec.limits.handshake_timeout_seconds));
        let clock = FrameClock::new(progress, frame_deadline);
        let liveness = session.liveness.clone();
        let writer_done = CancellationToken::new();
        let reader = read_loop(rx, &state, &mut session, &writer_done, clock, compressed);
        let writer = async {
            let reason = write_loop(tx, &state, &handle, &liveness).await;
            writer_done.cancel();
            reason
        };
        let ((), reason) = tokio::join!(reader, writer);

        actions::unsubscribe::all(&state, &mut session);
        state.connections.remove(&handle.id);
        state.metrics.connections.open.dec();
        state.metrics.connections.closed.inc(reason);
        debug!(reason = reason.as_str(), "connection closed");
    }
    .instrument(span)
    .await
}

fn send_open(state: &AppState, session: &Session) {
    let spec = &state.app.spec;
    let payload = json!({
        "connectionId": &*session.handle.id,
        "instance": &*state.instance,
        "app": state.app.name,
        "protocol": protocol::PROTOCOL,
        "user": {
            "id": session.identity.user_id,
            "roles": session.identity.roles,
            "anonymous": session.identity.anonymous,
        },
        "heartbeat": {
            "intervalMs": u64::from(spec.heartbeat.interval_seconds) * 1000,
            "timeoutMs": u64::from(spec.heartbeat.timeout_seconds) * 1000,
        },
        "limits": {
            "maxPayloadBytes": spec.limits.max_payload_bytes,
            "maxSubscriptions": spec.limits.max_subscriptions_per_connection,
            "outboundQueueMessages": spec.limits.outbound_queue_messages,
            "idleTimeoutMs": u64::from(spec.limits.idle_timeout_seconds) * 1000,
        },
    });
    session.handle.reply(protocol::OPEN_TYPE, None, &payload);
}

/// A frame's payload bytes, whatever fastwebsockets handed us.
fn payload_bytes<'a>(frame: &'a Frame<'_>) -> &'a [u8] {
    &frame.payload
}

/// What a message's first frame says about it.
#[derive(Clone, Copy)]
struct MessageStart {
    text: bool,
    /// It had RSV1: the bytes are inflated once the message is whole.
    compressed: bool,
}

/// A message being reassembled from fragments.
struct Partial {
    start: MessageStart,
    bytes: Vec<u8>,
}

/// Hands a whole message to the router, inflating it first if it is compressed.
/// `single_frame`: it came in one frame, whose UTF-8 fastwebsockets checked already
/// unless it was compressed. Returns false once the connection is closing.
async fn message(
    state: &Arc<AppState>,
    session: &mut Session,
    inflater: &mut Option<Inflater>,
    start: MessageStart,
    bytes: &[u8],
    single_frame: bool,
) -> bool {
    let max = state.app.spec.limits.max_payload_bytes as usize;
    let inflated;
    let bytes = if start.compressed {
        let negotiated = session.deflate.unwrap_or_default();
        let inflater = inflater.get_or_insert_with(|| Inflater::new(negotiated));
        match inflater.inflate(bytes, max) {
            Ok(b) => {
                state.metrics.deflate.inflated.inc();
                inflated = b;
                &inflated[..]
            }
            Err(e) => {
                let (code, reason) = match e {
                    InflateError::TooBig => (protocol::close::TOO_BIG, CloseReason::TooBig),
                    InflateError::Corrupt => {
                        (protocol::close::INVALID_DATA, CloseReason::ProtocolError)
                    }
                };
                session.handle.queue.close(code, reason);
                return false;
            }
        }
    } else {
        bytes
    };
    if !start.text {
        router::handle_binary(state, session);
    } else if (start.compressed || !single_frame) && std::str::from_utf8(bytes).is_err() {
        session
            .handle
            .queue
            .close(protocol::close::INVALID_DATA, CloseReason::ProtocolError);
        return false;
    } else {
        router::handle_text(state, session, bytes).await;
    }
    true
}

/// Reads until the client closes, the socket fails, or the writer has finished.
/// `compressed`: where `FrameWatch` notes compressed frames, when the connection
/// negotiated permessage-deflate.
async fn read_loop(
    mut rx: Reader,
    state: &Arc<AppState>,
    session: &mut Session,
    writer_done: &CancellationToken,
    mut clock: FrameClock,
    compressed: Option<Arc<CompressedFrames>>,
) {
    let max = state.app.spec.limits.max_payload_bytes as usize;
    // fastwebsockets refuses a single frame of `max_message_size` bytes or more.
    rx.set_max_message_size(max + 1);
    rx.set_auto_close(false);
    rx.set_auto_pong(false);
    let handle = session.handle.clone();
    // Nothing is ever obligated: auto close and auto pong are off, we answer ourselves.
    let mut no_obligated_send = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    let mut partial: Option<Partial> = None;
    // Frames read so far, to ask `compressed` about each.
    let mut frames_read: u64 = 0;
    // Made at the first compressed message: most connections never send one.
    let mut inflater: Option<Inflater> = None;
    // One timer for the connection, not one per frame: the frame clock is looked at a
    // few times per deadline.
    let mut frame_ticks = tokio::time::interval(clock.tick());
    frame_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Backpressure: answers are queued faster than written only when the client
        // sends a burst; read on once the writer has caught up.
        tokio::select! {
            () = handle.queue.room_to_answer() => {}
            () = writer_done.cancelled() => break,
        }
        let frame = {
            let mut read = std::pin::pin!(rx.read_frame(&mut no_obligated_send));
            let mut overdue = false;
            let frame = loop {
                tokio::select! {
                    frame = &mut read => break Some(frame),
                    () = writer_done.cancelled() => break None,
                    _ = frame_ticks.tick() => {
                        if clock.overdue(Instant::now()) {
                            overdue = true;
                            break None;
                        }
                    }
                }
            };
            if overdue {
                // A frame begun and never finished (see frame_watch.rs).
                handle
                    .queue
                    .close(protocol::close::PROTOCOL_ERROR, CloseReason::ProtocolError);
            }
            match frame {
                Some(frame) => frame,
                None => break,
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(WebSocketError::FrameTooLarge) => {
                handle
                    .queue
                    .close(protocol::close::TOO_BIG, CloseReason::TooBig);
                break;
            }
            Err(WebSocketError::IoError(e)) if UnmaskedFrame::is(&e) => {
                handle
                    .queue
                    .close(protocol::close::PROTOCOL_ERROR, CloseReason::ProtocolError);
                break;
            }
            Err(WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => {
                handle
                    .queue
                    .close(protocol::close::NORMAL, CloseReason::Client);
                break;
            }
            Err(WebSocketError::InvalidUTF8) => {
                handle
                    .queue
                    .close(protocol::close::INVALID_DATA, CloseReason::ProtocolError);
                break;
            }
            Err(e) => {
                debug!(error = %e, "protocol error");
                handle
                    .queue
                    .close(protocol::close::PROTOCOL_ERROR, CloseReason::ProtocolError);
                break;
            }
        };
        let deflated = compressed.as_ref().and_then(|c| c.take(frames_read));
        frames_read += 1;
        match frame.opcode {
            OpCode::Text | OpCode::Binary if partial.is_none() => {
                let start = MessageStart {
                    // A compressed text frame reaches us as binary (frame_watch.rs).
                    text: deflated.unwrap_or(frame.opcode == OpCode::Text),
                    compressed: deflated.is_some(),
                };
                if !frame.fin {
                    partial = Some(Partial {
                        start,
                        bytes: payload_bytes(&frame).to_vec(),
                    });
                } else if !message(
                    state,
                    session,
                    &mut inflater,
                    start,
                    payload_bytes(&frame),
                    true,
                )
                .await
                {
                    break;
                }
            }
            OpCode::Continuation if partial.is_some() => {
                let Some(mut p) = partial.take() else {
                    break;
                };
                if p.bytes.len() + frame.payload.len() > max {
                    handle
                        .queue
                        .close(protocol::close::TOO_BIG, CloseReason::TooBig);
                    break;
                }
                p.bytes.extend_from_slice(payload_bytes(&frame));
                if !frame.fin {
                    partial = Some(p);
                } else if !message(state, session, &mut inflater, p.start, &p.bytes, false).await {
                    break;
                }
            }
            OpCode::Ping => {
                handle
                    .queue
                    .push(Outbound::Pong(Bytes::copy_from_slice(payload_bytes(
                        &frame,
                    ))));
            }
            // fastwebsockets bounds pings itself, not pongs or closes.
            OpCode::Pong | OpCode::Close
                if frame.payload.len() > protocol::close::MAX_CONTROL_PAYLOAD =>
            {
                handle
                    .queue
                    .close(protocol::close::PROTOCOL_ERROR, CloseReason::ProtocolError);
                break;
            }
            OpCode::Pong => session.liveness.touch_pong(),
            OpCode::Close => {
                // Echo the client's code, as RFC 6455 asks, when the close is well formed.
                let (code, well_formed) = protocol::close::answer(payload_bytes(&frame));
                let reason = if well_formed {
                    CloseReason::Client
                } else {
                    CloseReason::ProtocolError
                };
                handle.queue.close(code, reason);
                break;
            }
            _ => {
                // A continuation with nothing to continue, or a new message mid-fragment.
                handle
                    .queue
                    .close(protocol::close::PROTOCOL_ERROR, CloseReason::ProtocolError);
                break;
            }
        }
    }
    // Let the client's close reply (or EOF) arrive so the close handshake completes.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        writer_done.cancelled().await;
        while let Ok(frame) = rx.read_frame(&mut no_obligated_send).await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    })
    .await;
}

/// What woke the writer when no frame was queued.
enum Due {
    Ping,
    PongOverdue,
    Idle,
    TokenExpired,
}

/// Writes until a close has been written. Returns why the connection ended.
async fn write_loop(
    mut tx: Writer,
    state: &AppState,
    handle: &ConnectionHandle,
    liveness: &crate::liveness::Liveness,
) -> CloseReason {
    let spec = &state.app.spec;
    let ping_every = (spec.heartbeat.interval_seconds > 0)
        .then(|| Duration::from_secs(u64::from(spec.heartbeat.interval_seconds)));
    let pong_within = Duration::from_secs(u64::from(spec.heartbeat.timeout_seconds));
    let idle_after = (spec.limits.idle_timeout_seconds > 0)
        .then(|| Duration::from_secs(u64::from(spec.limits.idle_timeout_seconds)));
    let mut next_ping = ping_every.map(|d| Instant::now() + d);
    let mut awaiting_pong: Option<Instant> = None;
    liveness.touch_activity();
    let mut batch = Vec::with_capacity(64);
    loop {
        // On a tie the earlier entry wins: a pong that is due is judged before the next
        // ping goes out.
        let mut due = [
            awaiting_pong.map(|sent| (sent + pong_within, Due::PongOverdue)),
            next_ping.map(|t| (t, Due::Ping)),
            idle_after.map(|d| (liveness.last_activity() + d, Due::Idle)),
            liveness.expiry().map(|t| (t, Due::TokenExpired)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(t, _)| *t);
        let sleep_until = due
            .as_ref()
            .map_or_else(|| Instant::now() + Duration::from_secs(3600), |(t, _)| *t);
        tokio::select! {
            biased;
            () = handle.abort.cancelled() => return abort(&mut tx, state).await,
            () = handle.queue.pop_all(&mut batch) => {
                match write_batch(&mut tx, state, handle, &mut batch).await {
                    Ok(None) => {}
                    Ok(Some(reason)) => return reason,
                    Err(reason) => return reason,
                }
            }
            () = liveness.changed.notified() => {}
            () = tokio::time::sleep_until(sleep_until.into()) => {
                let now = Instant::now();
                match due.take() {
                    Some((_, Due::Ping)) => {
                        if write_now(&mut tx, Opcode::Ping, b"sb").await.is_err() {
                            return CloseReason::Client;
                        }
                        // The oldest unanswered ping sets the pong deadline.
                        awaiting_pong = awaiting_pong.or(Some(now));
                        next_ping = ping_every.map(|d| now + d);
                    }
                    Some((_, Due::PongOverdue)) => {
                        if awaiting_pong.is_some_and(|sent| liveness.last_pong() >= sent) {
                            awaiting_pong = None;
                        } else {
                            handle.queue.close(protocol::close::HEARTBEAT_TIMEOUT, CloseReason::HeartbeatTimeout);
                            awaiting_pong = None;
                        }
                    }
                    Some((_, Due::Idle)) if liveness.last_activity() + idle_after.unwrap_or_default() <= now => {
                        handle.queue.close(protocol::close::IDLE_TIMEOUT, CloseReason::IdleTimeout);
                    }
                    Some((_, Due::TokenExpired)) if liveness.token_expired() => {
                        handle.queue.close(protocol::close::TOKEN_EXPIRED, CloseReason::TokenExpired);
                    }
                    // Activity or a refresh moved the deadline: recompute it.
                    Some((_, Due::Idle | Due::TokenExpired)) | None => {}
                }
            }
        }
    }
}

/// Writes a batch and flushes once. `Ok(Some(reason))` once a close was written.
async fn write_batch(
    tx: &mut Writer,
    state: &AppState,
    handle: &ConnectionHandle,
    batch: &mut Vec<Outbound>,
) -> Result<Option<CloseReason>, CloseReason> {
    let work = async {
        for item in batch.drain(..) {
            let result = match item {
                Outbound::Frame(bytes) => write_text(tx, state, handle, &bytes, false).await,
                Outbound::Delivery {
                    frame,
                    compressed,
                    published_at,
                } => {
                    let r = write_text(tx, state, handle, &frame, compressed).await;
                    state
                        .metrics
                        .outbound
                        .delivery_latency
                        .observe(published_at.elapsed().as_secs_f64());
                    r
                }
                Outbound::Pong(bytes) => tx.control(Opcode::Pong, &bytes).await,
                Outbound::Close { code, reason } => {
                    let _ = tx.close(code, reason.as_str()).await;
                    let _ = tx.flush().await;
                    return Ok(Some(reason));
                }
            };
            if result.is_err() {
                return Err(CloseReason::Client);
            }
            state.metrics.connections.frames_written.inc();
        }
        tx.flush()
            .await
            .map(|()| None)
            .map_err(|_| CloseReason::Client)
    };
    tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, work) => r.unwrap_or(Err(CloseReason::SlowConsumer)),
        () = handle.abort.cancelled() => Err(CloseReason::SlowConsumer),
    }
}

/// Writes a text message. `compressed`: the fan-out compressed it already, once for
/// every recipient. A frame for this client alone (a reply, a replayed publication) is
/// compressed here when the connection negotiated it and it is long enough.
async fn write_text(
    tx: &mut Writer,
    state: &AppState,
    handle: &ConnectionHandle,
    bytes: &Bytes,
    compressed: bool,
) -> std::io::Result<()> {
    if compressed {
        state.metrics.deflate.frames_written.inc();
        return tx.text(bytes, true).await;
    }
    match handle.deflate {
        Some(out) if out.wants(bytes.len()) => {
            let deflated = deflate::compress(bytes, &state.metrics.deflate);
            state.metrics.deflate.frames_written.inc();
            tx.text(&deflated, true).await
        }
        _ => tx.text(bytes, false).await,
    }
}

/// Writes one control frame and flushes.
async fn write_now(tx: &mut Writer, opcode: Opcode, payload: &[u8]) -> std::io::Result<()> {
    tx.control(opcode, payload).await?;
    tx.flush().await
}

/// The client overflowed its queue, or the process is exiting now: one short try to
/// tell it why, then the socket is dropped.
async fn abort(tx: &mut Writer, state: &AppState) -> CloseReason {
    // The process-wide abort means shutdown, even for a connection that already had a
    // (graceful) close queued; otherwise only an overflow fires a connection's abort.
    let reason = if state.abort_all.is_cancelled() {
        CloseReason::Shutdown
    } else {
        CloseReason::SlowConsumer
    };
    let close = async {
        tx.close(reason.code(), reason.as_str()).await?;
        tx.flush().await
    };
    let _ = tokio::time::timeout(ABORT_CLOSE_TIMEOUT, close).await;
    reason
}

/// Connections open, opened and closed (by why), frames written, and the app's limit.
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub opened: Counter,
    pub closed: CounterByLabel<CloseReason>,
    pub frames_written: Counter,
}

impl ConnectionMetrics {
    pub fn register(registry: &mut Registry, app: &CompiledApp) -> Self {
        let open = register(
            registry,
            "switchboard_connections",
            "Open WebSocket connections",
            Gauge::default(),
        );
        // On-call's headroom: `switchboard_connections` over this. Upgrades refused for
        // `capacity` only show once it is gone, and the limit lives in the app's spec,
        // which Prometheus cannot see otherwise.
        let max: Gauge = Gauge::default();
        max.set(i64::from(app.spec.limits.max_connections));
        registry.register(
            "switchboard_connections_max",
            "Open WebSocket connections this pod accepts (the app's limits.maxConnections)",
            max,
        );
        let opened = register(
            registry,
            "switchboard_connections_opened",
            "WebSocket connections accepted",
            Counter::default(),
        );
        let closed = CounterByLabel::register(
            registry,
            "switchboard_connections_closed",
            "WebSocket connections closed, by reason",
            "reason",
        );
        let frames_written = register(
            registry,
            "switchboard_frames_written",
            "WebSocket frames written to clients",
            Counter::default(),
        );
        Self {
            open,
            opened,
            closed,
            frames_written,
        }
    }
}
