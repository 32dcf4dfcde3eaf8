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

mod plan;
mod publisher;
mod report;
mod subscriber;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use memchr::memmem;
use tokio::sync::{Semaphore, mpsc};

use crate::hist::Histogram;
use crate::ws;
use plan::{Plan, now_ns};
use publisher::publish;
use report::{ConnectJoin, Delivery, Latency, UrlDeliveries, UrlLatency, ms, round};
use subscriber::{Events, Shared, SubscriberTask, connect_and_join, lock, spawn_subscriber};

pub use report::Report;

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

/// Runs the scenario; returns the report (whose `ok` says whether it passed).
pub async fn run(a: Args) -> anyhow::Result<Report> {
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

    let mut report = Report {
        scenario: "fanout",
        run,
        urls: targets.iter().map(|t| t.url.clone()).collect(),
        subscribers: a.subscribers,
        connected: joined,
        connect_join: ConnectJoin {
            total_s: round(connect_total.as_secs_f64(), 3),
            p50_ms: ms(connect_us.quantile(0.5)),
            p99_ms: ms(connect_us.quantile(0.99)),
            max_ms: ms(connect_us.max()),
            errors: failed,
        },
        target_rate: a.rate,
        target_duration_s: duration.as_secs_f64(),
        ok: false,
        delivery: None,
        error: None,
    };
    if let Some(first) = connect_errors.keys().next() {
        for t in &tasks {
            t.handle.abort();
        }
        report.error = Some(format!(
            "{failed} of {} subscribers could not connect and join; first: {first}",
            a.subscribers
        ));
        return Ok(report);
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
    report.ok = ok;
    report.delivery = Some(Delivery {
        messages_published: published.sent,
        publish_s: round(publish_s, 3),
        publish_rate: round(
            if publish_s > 0.0 {
                published.sent.saturating_sub(1) as f64 / publish_s
            } else {
                0.0
            },
            1,
        ),
        publisher_max_lag_ms: round(published.max_lag.as_secs_f64() * 1e3, 3),
        deliveries_expected: expected,
        deliveries_received: got,
        loss,
        drained,
        elapsed_s: round(elapsed.as_secs_f64(), 3),
        delivered_per_s: round(
            if elapsed.is_zero() {
                0.0
            } else {
                got as f64 / elapsed.as_secs_f64()
            },
            1,
        ),
        latency_ms: Latency::of(&latency),
        out_of_order,
        other_frames,
        error_frames: events.error_frames.load(Ordering::Relaxed),
        error_codes: lock(&events.by_code).clone(),
        closed: lock(&events.closes).clone(),
        by_url: by_url
            .iter()
            .zip(&targets)
            .map(|(h, t)| UrlDeliveries {
                url: t.url.clone(),
                deliveries: h.count(),
                latency_ms: UrlLatency::of(h),
            })
            .collect(),
    });
    report.error = if let Some(e) = &published.error {
        Some(e.clone())
    } else if published.sent == 0 {
        Some("nothing was published".to_owned())
    } else if !ok {
        Some(format!(
            "{missing} of {expected} deliveries missing (loss {loss:.6} > --max-loss {})",
            a.max_loss
        ))
    } else {
        None
    };
    Ok(report)
}
