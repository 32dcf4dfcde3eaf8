//! The `fanout` scenario: N subscribers join one room, one publisher sends into it at a
//! fixed rate, and every subscriber counts what it receives.
//!
//! Each published message carries a marker `sblg<run>-<seq>-<ns>` in its text: the run
//! id (8 random hex digits), a sequence number, and the send time in nanoseconds of this
//! process's monotonic clock. Subscribers live in the same process, so a delivery's
//! latency is simply "now" minus that timestamp. A subscriber does not parse the JSON of
//! deliveries: it finds the marker with a precompiled substring search and reads the two
//! numbers after it. Frames without the marker are counted (ERROR frames by code), never
//! taken for deliveries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::bail;
use fastwebsockets::{Frame, OpCode, Payload};
use memchr::memmem;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::hist::Histogram;
use crate::ws::{self, Target, Ws};

/// Longest publishing window.
pub const MAX_DURATION_S: f64 = 300.0;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// WebSocket URL(s), comma-separated. Subscribers are spread over them round-robin;
    /// the publisher uses the first. Only loopback hosts, unless --allow-remote.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub url: Vec<String>,
    /// Allow URLs whose host is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages per second the publisher sends (0: as fast as its socket takes them).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds to publish for, at most 300 [default: 10, or 300 with --messages].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many messages (or at --duration, whichever comes first).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Room id, substituted for `{room}` in the payload templates.
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Message type subscribers send to join; each waits for its `$ws:ack`.
    #[arg(long, default_value = "JOIN_ROOM")]
    pub join_type: String,
    /// Payload of the join message (JSON; `{room}` is replaced).
    #[arg(long, default_value = r#"{"roomId":"{room}"}"#)]
    pub join_payload: String,
    /// Message type the publisher sends.
    #[arg(long, default_value = "SEND_MESSAGE")]
    pub publish_type: String,
    /// Payload of a published message (JSON; `{room}` is replaced, and `{marker}`,
    /// which must appear once inside a JSON string, becomes the message's marker).
    #[arg(long, default_value = r#"{"roomId":"{room}","text":"{marker}"}"#)]
    pub publish_payload: String,
    /// The publisher joins the room too (for apps whose topic requires it, like the
    /// example chat app). Its own deliveries are not counted.
    #[arg(long)]
    pub publisher_joins: bool,
    /// Pad each marker with `x` up to this many bytes, to test bigger messages.
    #[arg(long, default_value_t = 0)]
    pub marker_bytes: usize,
    /// Connections opening at the same time.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take to connect and join.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait after the last publish for deliveries still on their way.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Fraction of expected deliveries that may be missing before the exit code is 1.
    #[arg(long, default_value_t = 0.0)]
    pub max_loss: f64,
}

/// Why a run could not start: bad arguments (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on this process's monotonic clock.
fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What the publisher sends, split around the marker, and what subscribers look for.
struct Plan {
    join_frame: (String, String),
    publish_head: Vec<u8>,
    publish_tail: Vec<u8>,
    needle: Vec<u8>,
    marker_bytes: usize,
}

impl Plan {
    fn new(a: &Args, run: &str) -> anyhow::Result<Self> {
        let type_json = |t: &str| serde_json::to_string(t).expect("a string serializes");
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

    fn join_text(&self, correlation_id: &str) -> Vec<u8> {
        let (head, tail) = &self.join_frame;
        format!("{head}{correlation_id}{tail}").into_bytes()
    }

    /// Writes message `seq`, stamped now, into `buf`.
    fn message(&self, buf: &mut Vec<u8>, seq: u64) {
        use std::io::Write;
        buf.clear();
        buf.extend_from_slice(&self.publish_head);
        let start = buf.len();
        buf.extend_from_slice(&self.needle);
        write!(buf, "{seq}-{}", now_ns()).expect("writing to a Vec");
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
fn parse_marker(rest: &[u8]) -> Option<(u64, u64)> {
    let (seq, n) = number(rest)?;
    if rest.get(n) != Some(&b'-') {
        return None;
    }
    let (ts, _) = number(&rest[n + 1..])?;
    Some((seq, ts))
}

/// Whether a server frame is an error (`ERROR` or `RPC_ERROR`); the server writes
/// `type` first, so only the head is searched.
fn is_error(text: &[u8]) -> bool {
    let head = &text[..text.len().min(48)];
    memmem::find(head, br#""type":"ERROR""#).is_some()
        || memmem::find(head, br#""type":"RPC_ERROR""#).is_some()
}

/// The `code` of an error frame.
fn error_code(text: &[u8]) -> String {
    const KEY: &[u8] = br#""code":""#;
    memmem::find(text, KEY)
        .and_then(|i| {
            let rest = &text[i + KEY.len()..];
            let end = memchr::memchr(b'"', rest)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Counters every connection adds to; touched only on errors and closes.
#[derive(Default)]
struct Events {
    error_frames: AtomicU64,
    by_code: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
}

impl Events {
    fn error_frame(&self, text: &[u8]) {
        self.error_frames.fetch_add(1, Ordering::Relaxed);
        *lock(&self.by_code).entry(error_code(text)).or_default() += 1;
    }

    fn closed(&self, why: String) {
        *lock(&self.closes).entry(why).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One subscriber's tallies. The lock is only ever taken by its own task, except when
/// the run ends.
#[derive(Default)]
struct Tally {
    latency_us: Histogram,
    last_ns: u64,
    next_seq: u64,
    out_of_order: u64,
    other_frames: u64,
}

#[derive(Default)]
struct Subscriber {
    delivered: AtomicU64,
    tally: Mutex<Tally>,
}

struct Shared {
    finder: memmem::Finder<'static>,
    events: Events,
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

fn close_reason(frame: &Frame<'_>) -> String {
    match frame.payload.len() {
        0 | 1 => "close".to_owned(),
        _ => format!(
            "close {}",
            u16::from_be_bytes([frame.payload[0], frame.payload[1]])
        ),
    }
}

/// Connects, reads `$ws:open`, and joins (waiting for the ack) when `join` is set.
async fn connect_and_join(
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

struct SubscriberTask {
    sub: Arc<Subscriber>,
    handle: JoinHandle<()>,
}

fn spawn_subscriber(
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
            let _permit = gate.acquire().await.expect("the gate is never closed");
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

/// What the publisher did.
struct Published {
    sent: u64,
    first_ns: u64,
    elapsed: Duration,
    max_lag: Duration,
    error: Option<String>,
}

/// Sends messages on schedule over `ws`'s write half, while a reader task answers
/// pings (through the writer), counts error frames and ignores deliveries.
async fn publish(
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

/// The soft limit on open files, from /proc (Linux); None elsewhere.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn secs(v: f64, what: &str, max: f64) -> anyhow::Result<Duration> {
    if !(v > 0.0 && v <= max) {
        return Err(usage(format!("{what} must be above 0 and at most {max}")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Runs the scenario; returns the report and whether it passed.
pub async fn run(a: Args) -> anyhow::Result<(Value, bool)> {
    now_ns();
    if a.subscribers == 0 {
        return Err(usage("--subscribers must be at least 1"));
    }
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        return Err(usage("--rate must be 0 (unpaced) or a positive number"));
    }
    if !(0.0..=1.0).contains(&a.max_loss) {
        return Err(usage("--max-loss is a fraction between 0 and 1"));
    }
    if a.connect_concurrency == 0 {
        return Err(usage("--connect-concurrency must be at least 1"));
    }
    let duration = secs(
        a.duration.unwrap_or(if a.messages.is_some() {
            MAX_DURATION_S
        } else {
            10.0
        }),
        "--duration",
        MAX_DURATION_S,
    )?;
    let connect_timeout = secs(a.connect_timeout, "--connect-timeout", 300.0)?;
    let drain_timeout = secs(a.drain_timeout, "--drain-timeout", 300.0)?;
    let max_messages = a.messages.unwrap_or(u64::MAX);
    if let Some(limit) = open_files_limit() {
        let needed = a.subscribers as u64 + 64;
        if needed > limit {
            return Err(usage(format!(
                "{} subscribers need about {needed} open files, but the limit is {limit}: \
                 raise it (`ulimit -n {needed}`) or use fewer subscribers",
                a.subscribers
            )));
        }
    }
    let mut targets = Vec::new();
    for url in a.url.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        targets.push(
            ws::resolve(url, a.allow_remote)
                .await
                .map_err(|e| usage(format!("{e:#}")))?,
        );
    }
    if targets.is_empty() {
        return Err(usage("--url is empty"));
    }
    let run = format!("{:08x}", rand::random::<u32>());
    let plan = Plan::new(&a, &run)?;
    let needle: &'static [u8] = Box::leak(plan.needle.clone().into_boxed_slice());
    let shared = Arc::new(Shared {
        finder: memmem::Finder::new(needle),
        events: Events::default(),
    });

    // 1. Subscribers connect and join.
    let gate = Arc::new(Semaphore::new(a.connect_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let connecting = Instant::now();
    let tasks: Vec<SubscriberTask> = (0..a.subscribers)
        .map(|i| {
            spawn_subscriber(
                i,
                targets[i % targets.len()].clone(),
                Some(plan.join_text(&format!("j{i}"))),
                shared.clone(),
                gate.clone(),
                connect_timeout,
                ready_tx.clone(),
            )
        })
        .collect();
    drop(ready_tx);
    let mut connect_us = Histogram::default();
    let mut connect_errors = BTreeMap::<String, u64>::new();
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(took) => connect_us.record(took.as_micros() as u64),
            Err(e) => *connect_errors.entry(e).or_default() += 1,
        }
    }
    let connect_total = connecting.elapsed();
    let joined = connect_us.count();
    let failed: u64 = connect_errors.values().sum();

    let mut report = json!({
        "scenario": "fanout",
        "run": run,
        "urls": targets.iter().map(|t| t.url.as_str()).collect::<Vec<_>>(),
        "subscribers": a.subscribers,
        "connected": joined,
        "connect_join": {
            "total_s": round(connect_total.as_secs_f64(), 3),
            "p50_ms": ms(connect_us.quantile(0.5)),
            "p99_ms": ms(connect_us.quantile(0.99)),
            "max_ms": ms(connect_us.max()),
            "errors": failed,
        },
        "target_rate": a.rate,
        "target_duration_s": duration.as_secs_f64(),
    });
    if failed > 0 {
        for t in &tasks {
            t.handle.abort();
        }
        let (first, _) = connect_errors.iter().next().expect("failed > 0");
        report["ok"] = json!(false);
        report["error"] = json!(format!(
            "{failed} of {} subscribers could not connect and join; first: {first}",
            a.subscribers
        ));
        return Ok((report, false));
    }

    // 2. The publisher connects (joining if asked) and sends.
    let publisher = targets[0].clone();
    let join = a.publisher_joins.then(|| plan.join_text("p"));
    let ws = match tokio::time::timeout(connect_timeout, connect_and_join(&publisher, join, "p"))
        .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return Err(e.context("the publisher could not connect")),
        Err(_) => bail!("the publisher could not connect within {connect_timeout:?}"),
    };
    let published = publish(ws, &plan, shared.clone(), a.rate, duration, max_messages).await;

    // 3. Wait for the deliveries still on their way.
    let expected = published.sent * joined;
    let received = || -> u64 {
        tasks
            .iter()
            .map(|t| t.sub.delivered.load(Ordering::Relaxed))
            .sum()
    };
    let drain_deadline = Instant::now() + drain_timeout;
    while received() < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = received() >= expected;
    for t in &tasks {
        t.handle.abort();
    }

    let mut latency = Histogram::default();
    // Subscriber i is on URL i % n: with several URLs (replicas), each gets its own.
    let mut by_url = vec![Histogram::default(); if targets.len() > 1 { targets.len() } else { 0 }];
    let (mut last_ns, mut out_of_order, mut other_frames, mut got) = (0, 0, 0, 0);
    for (i, t) in tasks.iter().enumerate() {
        let tally = lock(&t.sub.tally);
        latency.merge(&tally.latency_us);
        if let Some(h) = by_url.get_mut(i % targets.len()) {
            h.merge(&tally.latency_us);
        }
        last_ns = last_ns.max(tally.last_ns);
        out_of_order += tally.out_of_order;
        other_frames += tally.other_frames;
        got += t.sub.delivered.load(Ordering::Relaxed);
    }
    let elapsed = if got > 0 {
        Duration::from_nanos(last_ns.saturating_sub(published.first_ns))
    } else {
        Duration::ZERO
    };
    let missing = expected.saturating_sub(got);
    let loss = if expected == 0 {
        0.0
    } else {
        missing as f64 / expected as f64
    };
    let events = &shared.events;
    let ok = loss <= a.max_loss && published.error.is_none() && published.sent > 0;
    let publish_s = published.elapsed.as_secs_f64();
    report["ok"] = json!(ok);
    report["messages_published"] = json!(published.sent);
    report["publish_s"] = json!(round(publish_s, 3));
    // From the first send to the last: sent - 1 intervals.
    report["publish_rate"] = json!(round(
        if publish_s > 0.0 {
            published.sent.saturating_sub(1) as f64 / publish_s
        } else {
            0.0
        },
        1
    ));
    report["publisher_max_lag_ms"] = json!(round(published.max_lag.as_secs_f64() * 1e3, 3));
    report["deliveries_expected"] = json!(expected);
    report["deliveries_received"] = json!(got);
    report["loss"] = json!(loss);
    report["drained"] = json!(drained);
    report["elapsed_s"] = json!(round(elapsed.as_secs_f64(), 3));
    report["delivered_per_s"] = json!(round(
        if elapsed.is_zero() {
            0.0
        } else {
            got as f64 / elapsed.as_secs_f64()
        },
        1
    ));
    report["latency_ms"] = json!({
        "p50": ms(latency.quantile(0.50)),
        "p90": ms(latency.quantile(0.90)),
        "p99": ms(latency.quantile(0.99)),
        "p999": ms(latency.quantile(0.999)),
        "max": ms(latency.max()),
        "mean": round(latency.mean() / 1e3, 3),
    });
    report["out_of_order"] = json!(out_of_order);
    report["other_frames"] = json!(other_frames);
    report["error_frames"] = json!(events.error_frames.load(Ordering::Relaxed));
    report["error_codes"] = json!(*lock(&events.by_code));
    report["closed"] = json!(*lock(&events.closes));
    if !by_url.is_empty() {
        report["by_url"] = by_url
            .iter()
            .zip(&targets)
            .map(|(h, t)| {
                json!({
                    "url": t.url,
                    "deliveries": h.count(),
                    "latency_ms": {
                        "p50": ms(h.quantile(0.50)),
                        "p99": ms(h.quantile(0.99)),
                        "max": ms(h.max()),
                        "mean": round(h.mean() / 1e3, 3),
                    },
                })
            })
            .collect();
    }
    if let Some(e) = &published.error {
        report["error"] = json!(e);
    } else if published.sent == 0 {
        report["error"] = json!("nothing was published");
    } else if !ok {
        report["error"] = json!(format!(
            "{missing} of {expected} deliveries missing (loss {loss:.6} > --max-loss {})",
            a.max_loss
        ));
    }
    Ok((report, ok))
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1e3, 3)
}

/// The report for people, several lines.
pub fn summary(r: &Value) -> String {
    let mut s = format!(
        "fanout run {}: {} of {} subscribers joined via {} in {} s (connect+join p50 {} ms, p99 {} ms, max {} ms)\n",
        r["run"].as_str().unwrap_or_default(),
        r["connected"],
        r["subscribers"],
        r["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        r["connect_join"]["total_s"],
        r["connect_join"]["p50_ms"],
        r["connect_join"]["p99_ms"],
        r["connect_join"]["max_ms"],
    );
    if r.get("messages_published").is_some() {
        s += &format!(
            "published {} messages in {} s ({}/s, target {}/s, publisher max lag {} ms)\n\
             deliveries {} of {} expected (loss {}), {} delivered/s over {} s{}\n\
             latency ms: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}\n\
             ERROR frames {} {}, closed {}, out of order {}, other frames {}\n",
            r["messages_published"],
            r["publish_s"],
            r["publish_rate"],
            r["target_rate"],
            r["publisher_max_lag_ms"],
            r["deliveries_received"],
            r["deliveries_expected"],
            r["loss"],
            r["delivered_per_s"],
            r["elapsed_s"],
            if r["drained"] == true {
                ""
            } else {
                " (drain timed out)"
            },
            r["latency_ms"]["p50"],
            r["latency_ms"]["p90"],
            r["latency_ms"]["p99"],
            r["latency_ms"]["p999"],
            r["latency_ms"]["max"],
            r["latency_ms"]["mean"],
            r["error_frames"],
            r["error_codes"],
            r["closed"],
            r["out_of_order"],
            r["other_frames"],
        );
    }
    for u in r["by_url"].as_array().into_iter().flatten() {
        s += &format!(
            "  via {}: {} deliveries, latency ms p50 {}  p99 {}  max {}  mean {}\n",
            u["url"].as_str().unwrap_or_default(),
            u["deliveries"],
            u["latency_ms"]["p50"],
            u["latency_ms"]["p99"],
            u["latency_ms"]["max"],
            u["latency_ms"]["mean"],
        );
    }
    if let Some(e) = r.get("error") {
        s += &format!("FAILED: {}\n", e.as_str().unwrap_or_default());
    } else {
        s += "ok\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
