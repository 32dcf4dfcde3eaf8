//! The `recovery` scenario: how long a client takes to get back what it missed.
//!
//! Each round, a subscriber joins a room on a topic with history, notes the position
//! from its ack and leaves; a publisher then publishes `--missed` messages, each
//! acknowledged (so all are stored); a new connection (on `--recover-url`, another
//! replica if you like) subscribes with `meta.since` and is timed from its TCP connect
//! to the last missed delivery. The app must keep at least `--missed` publications and
//! allow replaying them (`history.size`, `limits.maxRecoveryPublications`).

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fastwebsockets::{Frame, OpCode, Payload};
use serde::Serialize;
use serde_json::{Value, json};

use crate::ws::{self, Target, Ws};

#[derive(clap::Args)]
pub struct Args {
    /// Where the subscriber joins and the publisher publishes.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Where the subscriber recovers [default: --url].
    #[arg(long)]
    pub recover_url: Option<String>,
    /// Allow URLs whose host is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Publications missed per round.
    #[arg(long, default_value_t = 1000)]
    pub missed: usize,
    /// Rounds (each in its own room).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[arg(long, default_value = "JOIN_ROOM")]
    pub join_type: String,
    #[arg(long, default_value = "SEND_MESSAGE")]
    pub publish_type: String,
    /// The type deliveries arrive as.
    #[arg(long, default_value = "ROOM_MESSAGE")]
    pub delivery_type: String,
}

/// One JSON line on stdout: each round's time, and the median.
#[derive(Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub url: String,
    pub recover_url: String,
    pub missed: usize,
    /// Connect + subscribe + the whole replay, per round, in ms.
    pub rounds_ms: Vec<f64>,
    pub median_ms: f64,
    /// Replayed publications per second at the median.
    pub per_second: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "recovery of {} missed publications ({} -> {}): median {:.1} ms ({:.0}/s); rounds {:?} ms",
            self.missed,
            self.url,
            self.recover_url,
            self.median_ms,
            self.per_second,
            self.rounds_ms
        )
    }
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let target = ws::resolve(&args.url, args.allow_remote).await?;
    let recover_url = args.recover_url.clone().unwrap_or_else(|| args.url.clone());
    let recover_target = ws::resolve(&recover_url, args.allow_remote).await?;
    let mut rounds_ms = Vec::new();
    let run_id = format!("{:08x}", rand::random::<u32>());
    for round in 0..args.rounds {
        let room = format!("recovery-{run_id}-{round}");
        let elapsed = one_round(&args, &target, &recover_target, &room).await?;
        rounds_ms.push((elapsed.as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
    }
    let mut sorted = rounds_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    Ok(Report {
        scenario: "recovery",
        url: args.url,
        recover_url,
        missed: args.missed,
        per_second: if median_ms > 0.0 {
            args.missed as f64 / (median_ms / 1000.0)
        } else {
            0.0
        },
        rounds_ms,
        median_ms,
    })
}

async fn one_round(
    args: &Args,
    target: &Target,
    recover_target: &Target,
    room: &str,
) -> anyhow::Result<Duration> {
    let mut sub = open(target).await?;
    let ack = call(&mut sub, &args.join_type, json!({"roomId": room}), None).await?;
    let (offset, epoch) = position(&ack)?;
    drop(sub);

    let mut publisher = open(target).await?;
    for n in 0..args.missed {
        send(
            &mut publisher,
            json!({"type": args.publish_type, "meta": {"correlationId": format!("p{n}")}, "payload": {"roomId": room, "text": format!("m{n}")}}),
        )
        .await?;
    }
    let mut acked = 0;
    while acked < args.missed {
        let frame = next_text(&mut publisher).await?;
        if frame["type"] == "$ws:ack" {
            acked += 1;
        } else if frame["type"] == "ERROR" {
            bail!("a publish was refused: {frame}");
        }
    }

    let started = Instant::now();
    let mut back = open(recover_target).await?;
    let ack = call(
        &mut back,
        &args.join_type,
        json!({"roomId": room}),
        Some(json!({"offset": offset, "epoch": epoch})),
    )
    .await?;
    if ack["payload"]["recovered"] != true {
        bail!(
            "not recovered: {ack} (does the app keep {} publications?)",
            args.missed
        );
    }
    let mut replayed = 0;
    while replayed < args.missed {
        if next_text(&mut back).await?["type"] == args.delivery_type.as_str() {
            replayed += 1;
        }
    }
    Ok(started.elapsed())
}

/// Connects and reads past `$ws:open`.
pub(crate) async fn open(target: &Target) -> anyhow::Result<Ws> {
    let mut ws = ws::connect(target).await?;
    let open = next_text(&mut ws).await?;
    if open["type"] != "$ws:open" {
        bail!("the first frame is not $ws:open: {open}");
    }
    Ok(ws)
}

pub(crate) async fn send(ws: &mut Ws, frame: Value) -> anyhow::Result<()> {
    ws.write_frame(Frame::text(Payload::Owned(frame.to_string().into_bytes())))
        .await
        .context("write")
}

/// Sends a subscribe (with `since` when recovering) and returns its ack.
async fn call(
    ws: &mut Ws,
    message_type: &str,
    payload: Value,
    since: Option<Value>,
) -> anyhow::Result<Value> {
    let mut meta = json!({"correlationId": "join"});
    if let Some(since) = since {
        meta["since"] = since;
    }
    send(
        ws,
        json!({"type": message_type, "meta": meta, "payload": payload}),
    )
    .await?;
    loop {
        let frame = next_text(ws).await?;
        if frame["meta"]["correlationId"] == "join" {
            if frame["type"] != "$ws:ack" {
                bail!("subscribe refused: {frame}");
            }
            return Ok(frame);
        }
    }
}

fn position(ack: &Value) -> anyhow::Result<(u64, String)> {
    let offset = ack["payload"]["offset"]
        .as_u64()
        .with_context(|| format!("the ack has no offset (is the topic's history on?): {ack}"))?;
    let epoch = ack["payload"]["epoch"]
        .as_str()
        .with_context(|| format!("the ack has no epoch: {ack}"))?;
    Ok((offset, epoch.to_owned()))
}

/// The next text frame, parsed; a close or 30 s of silence is an error.
pub(crate) async fn next_text(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.read_frame())
            .await
            .context("no frame within 30 s")??;
        match frame.opcode {
            OpCode::Text => {
                return serde_json::from_slice(&frame.payload).context("a frame that is not JSON");
            }
            OpCode::Close => bail!("the server closed the connection"),
            _ => {}
        }
    }
}
