//! The `deflate` scenario: what permessage-deflate costs and saves per delivery.
//!
//! Two runs against the same server, one after the other: `--subscribers` clients join
//! a room, without offering `permessage-deflate` and then offering it; one publisher
//! sends `--messages` chat messages of about `--text-bytes` of words at `--rate`. Each
//! run reports the bytes on the wire per delivery (frame headers included) and, with
//! `--server-pid`, the server's CPU time per delivery (utime + stime from
//! `/proc/<pid>/stat`). The app must enable `spec.compression` (bench/apps/fanout.yaml
//! does). Subscribers count frames without inflating them: the load generator's CPU is
//! not what is measured, and the server's tests check what the frames hold.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::seq::IndexedRandom;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::recovery::{next_text, open, send};
use crate::ws::{self, Target};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Allow URLs whose host is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    #[arg(long, default_value_t = 200)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Length of each message's text, in bytes of words.
    #[arg(long, default_value_t = 1000)]
    pub text_bytes: usize,
    /// The server's process id, to read its CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// One run's figures.
#[derive(Serialize)]
pub struct Run {
    /// Whether the subscribers offered permessage-deflate (and the server accepted).
    pub deflate: bool,
    pub deliveries: usize,
    pub expected: usize,
    pub wire_bytes_per_delivery: f64,
    /// Server CPU per delivery, in µs; `None` without `--server-pid`.
    pub server_cpu_us_per_delivery: Option<f64>,
    pub seconds: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub url: String,
    pub subscribers: usize,
    pub messages: usize,
    pub rate: u32,
    pub text_bytes: usize,
    pub runs: Vec<Run>,
    /// Every expected delivery arrived in both runs.
    pub ok: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "deflate: {} subscribers, {} messages of {} bytes at {}/s",
            self.subscribers, self.messages, self.text_bytes, self.rate
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "  deflate {:5}: {}/{} deliveries, {:.0} wire bytes each, server CPU {} µs each, {:.1} s",
                r.deflate,
                r.deliveries,
                r.expected,
                r.wire_bytes_per_delivery,
                r.server_cpu_us_per_delivery
                    .map_or_else(|| "?".to_owned(), |c| format!("{c:.2}")),
                r.seconds
            )?;
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let target = ws::resolve(&args.url, args.allow_remote).await?;
    let mut runs = Vec::new();
    for deflate in [false, true] {
        runs.push(one_run(&args, &target, deflate).await?);
    }
    Ok(Report {
        scenario: "deflate",
        url: args.url,
        subscribers: args.subscribers,
        messages: args.messages,
        rate: args.rate,
        text_bytes: args.text_bytes,
        ok: runs.iter().all(|r| r.deliveries == r.expected),
        runs,
    })
}

async fn one_run(args: &Args, target: &Target, deflate: bool) -> anyhow::Result<Run> {
    let room = format!("deflate-{:08x}", rand::random::<u32>());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.subscribers);
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        let (target, room, ready) = (target.clone(), room.clone(), ready_tx.clone());
        let expected = args.messages;
        subscribers.push(tokio::spawn(async move {
            subscriber(&target, &room, deflate, expected, ready).await
        }));
    }
    drop(ready_tx);
    for _ in 0..args.subscribers {
        ready_rx
            .recv()
            .await
            .context("a subscriber failed before joining")?;
    }
    let mut publisher = open(target).await?;
    let texts = texts(args.messages.min(64), args.text_bytes);
    let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    for n in 0..args.messages {
        tick.tick().await;
        send(
            &mut publisher,
            json!({"type": "SEND_MESSAGE", "payload": {"roomId": room, "text": texts[n % texts.len()]}}),
        )
        .await?;
    }
    let (mut deliveries, mut bytes) = (0, 0u64);
    for s in subscribers {
        let (d, b) = s.await.context("a subscriber panicked")??;
        deliveries += d;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, args.server_pid) {
        (Some(before), Some(pid)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    // Nothing but deliveries should reach the publisher; an ERROR would show here.
    if let Ok(Ok(frame)) =
        tokio::time::timeout(Duration::from_millis(10), next_text(&mut publisher)).await
    {
        bail!("the publisher was answered: {frame}");
    }
    let per = |v: f64| {
        if deliveries > 0 {
            v / deliveries as f64
        } else {
            0.0
        }
    };
    Ok(Run {
        deflate,
        deliveries,
        expected: args.messages * args.subscribers,
        wire_bytes_per_delivery: (per(bytes as f64) * 10.0).round() / 10.0,
        server_cpu_us_per_delivery: cpu.map(|c| (per(c * 1e6) * 100.0).round() / 100.0),
        seconds: (seconds * 10.0).round() / 10.0,
    })
}

/// Chat-like texts: words drawn at random from a small vocabulary, as compressible as
/// prose, not as a repeated string.
fn texts(n: usize, len: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "meeting",
        "moved",
        "to",
        "three",
        "o'clock",
        "please",
        "bring",
        "your",
        "notes",
        "and",
        "the",
        "draft",
        "we",
        "discussed",
        "yesterday",
        "about",
        "release",
        "plan",
        "for",
        "next",
        "week",
        "I",
        "think",
        "customers",
        "will",
        "like",
        "new",
        "dashboard",
        "but",
        "latency",
        "numbers",
        "need",
        "another",
        "look",
        "before",
        "ship",
        "it",
        "can",
        "someone",
        "check",
        "staging",
        "logs",
        "thanks",
        "everyone",
    ];
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let mut text = String::with_capacity(len + 16);
            while text.len() < len {
                text.push_str(WORDS.choose(&mut rng).copied().unwrap_or("word"));
                text.push(' ');
            }
            text.truncate(len);
            text
        })
        .collect()
}

/// The process's CPU time so far (user + system), from `/proc/<pid>/stat` in clock
/// ticks of 1/100 s (Linux's USER_HZ).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("--server-pid {pid}: cannot read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// One subscriber on a hand-written socket: joins, signals `ready`, then counts the
/// data frames and their bytes until `expected` deliveries have arrived (or 60 s).
async fn subscriber(
    target: &Target,
    room: &str,
    deflate: bool,
    expected: usize,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<(usize, u64)> {
    let tcp = TcpStream::connect(&target.addrs[..]).await?;
    tcp.set_nodelay(true)?;
    let mut io = BufReader::new(tcp);
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    io.get_mut()
        .write_all(target.upgrade_request(offer).as_bytes())
        .await?;
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if io.read_line(&mut head).await? == 0 {
            bail!("the server closed during the upgrade");
        }
    }
    if !head.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {head}");
    }
    if deflate != head.to_ascii_lowercase().contains("permessage-deflate") {
        bail!("permessage-deflate not negotiated as asked (is spec.compression on?): {head}");
    }
    let mut payload = Vec::new();
    read_frame(&mut io, &mut payload).await?; // $ws:open
    let join =
        json!({"type": "JOIN_ROOM", "meta": {"correlationId": "j"}, "payload": {"roomId": room}});
    let join = join.to_string();
    // A masked frame with an all-zero mask: the payload goes as it is.
    let mut frame = vec![0x81];
    match u8::try_from(join.len()) {
        Ok(n) if n < 126 => frame.push(0x80 | n),
        _ => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(join.len())?.to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(join.as_bytes());
    io.get_mut().write_all(&frame).await?;
    let (_, _) = read_frame(&mut io, &mut payload).await?;
    if !payload.windows(7).any(|w| w == b"$ws:ack") {
        bail!("join refused: {}", String::from_utf8_lossy(&payload));
    }
    ready.send(()).await.context("the run ended")?;
    let (mut deliveries, mut bytes) = (0, 0u64);
    let counting = async {
        while deliveries < expected {
            let (opcode, wire) = read_frame(&mut io, &mut payload).await?;
            if opcode == 1 {
                deliveries += 1;
                bytes += wire;
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(60), counting).await {
        Ok(r) => r?,
        Err(_) => eprintln!("a subscriber stopped waiting at {deliveries}/{expected}"),
    }
    Ok((deliveries, bytes))
}

/// Reads one server frame into `payload`: its opcode, and its bytes on the wire.
async fn read_frame(
    io: &mut BufReader<TcpStream>,
    payload: &mut Vec<u8>,
) -> anyhow::Result<(u8, u64)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head)
        .await
        .context("the server closed")?;
    let (len, extra) = match head[1] & 0x7f {
        126 => (u64::from(io.read_u16().await?), 2),
        127 => (io.read_u64().await?, 8),
        n => (u64::from(n), 0),
    };
    payload.resize(usize::try_from(len)?, 0);
    io.read_exact(payload).await?;
    Ok((head[0] & 0x0f, 2 + extra + len))
}
