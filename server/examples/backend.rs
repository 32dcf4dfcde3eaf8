//! An example backend for the example chat app (`manifests/examples/chat.yaml`).
//!
//! Backends join a Switchboard app over NATS; they never talk WebSocket. Every subject
//! of one app lives under `sb.<namespace>.<app>` (`sb` is the default
//! `spec.nats.subjectPrefix`):
//!
//! - `…rpc.<subject>`: requests from `request` routes. This backend answers
//!   `FETCH_PROFILE`, whose route sends to `profile.fetch` and expects a reply matching
//!   `replySchema` `{userId, displayName}`; the server turns it into a `PROFILE` frame.
//! - `…evt.<subject>`: fire-and-forget messages from `forward` routes. (The example chat
//!   app declares none; add `forward: {subject: ...}` to a route to see them here.)
//! - `…t.<topic segments>`: publishes into topics. A backend publishes `{"type",
//!   "payload"}` to a topic's subject and every subscriber on every replica receives
//!   it, provided the payload is valid for a route that emits that type. (Replicas
//!   hand each other client publishes on `…x.<topic segments>`, which a backend needs
//!   neither to publish nor to subscribe to: README, "Securing the bus".)
//!
//! Run it next to one or more servers sharing a NATS server:
//!
//! ```text
//! cargo run -p switchboard-server --example backend -- --nats-url nats://127.0.0.1:4222
//! ```
//!
//! Ctrl-C stops it after handing over what it has buffered.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};

// Headers the server sets on requests and forwards, and the subject layout.
use switchboard_server::bus::nats::header::{
    ORIGIN as HEADER_ORIGIN, ROLES as HEADER_ROLES, USER as HEADER_USER,
};
use switchboard_server::bus::nats::{DEFAULT_SUBJECT_PREFIX, Subjects};
use switchboard_spec::Topic;

/// Backends answering `profile.fetch` share this queue group, so each request is
/// answered by exactly one of them however many you run.
const PROFILE_QUEUE_GROUP: &str = "profiles";

/// How often the announcement goes to room:lobby.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);

/// An example backend for the Switchboard example chat app.
#[derive(Debug, Parser)]
#[command(name = "backend")]
struct Args {
    /// NATS server the Switchboard replicas use.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,

    /// The RealtimeApp's namespace (`metadata.namespace`).
    #[arg(long, default_value = "default")]
    namespace: String,

    /// The RealtimeApp's name (`metadata.name`).
    #[arg(long, default_value = "chat")]
    app: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();

    let subjects = Subjects::new(DEFAULT_SUBJECT_PREFIX, &args.namespace, &args.app);

    // The first connection must succeed; after that async-nats reconnects on its own,
    // forever by default, and restores the subscriptions below when it does.
    let client = async_nats::ConnectOptions::new()
        .name("switchboard example backend")
        .connect(&args.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;

    // (a) Requests from FETCH_PROFILE, load-balanced across the queue group.
    let rpc_subject = subjects.rpc("profile.fetch");
    let mut profiles = client
        .queue_subscribe(rpc_subject.clone(), PROFILE_QUEUE_GROUP.to_owned())
        .await
        .with_context(|| format!("cannot subscribe to {rpc_subject}"))?;

    // (b) Every forward route of the app: `>` matches one or more trailing tokens.
    let evt_subject = subjects.event(">");
    let mut events = client
        .subscribe(evt_subject.clone())
        .await
        .with_context(|| format!("cannot subscribe to {evt_subject}"))?;

    // Sends both SUBs now rather than with the next write (flush is not a server round
    // trip: a request arriving in the next instant may still find no responder).
    client.flush().await.context("cannot flush to NATS")?;
    println!(
        "answering {rpc_subject} (queue group {PROFILE_QUEUE_GROUP}), listening on {evt_subject}"
    );

    // (c) Topic room:lobby is the subject `<base>.t.room.lobby`: one token per segment.
    let lobby = Topic::parse("room:lobby").context("room:lobby is a topic")?;
    let lobby_subject = subjects.topic(&lobby);
    let mut announce =
        tokio::time::interval_at(tokio::time::Instant::now() + ANNOUNCE_EVERY, ANNOUNCE_EVERY);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announcements = 0u64;

    // Until this is first polled, Ctrl-C simply ends the process (nothing to clean up).
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            msg = profiles.next() => {
                let Some(msg) = msg else { bail!("the subscription to {rpc_subject} ended") };
                // A real backend would spawn a task per request if lookups were slow;
                // answering inline keeps the example short.
                answer_profile(&client, msg).await;
            }
            msg = events.next() => {
                let Some(msg) = msg else { bail!("the subscription to {evt_subject} ended") };
                print_event(subjects.base(), &msg);
            }
            _ = announce.tick() => {
                announcements += 1;
                announce_in_lobby(&client, &lobby_subject, announcements).await;
            }
            signal = &mut ctrl_c => {
                signal.context("cannot listen for Ctrl-C")?;
                println!("stopping");
                break;
            }
        }
    }

    // Sends whatever is still buffered (replies, announcements), unsubscribes, closes.
    client
        .drain()
        .await
        .context("cannot drain the NATS connection")?;
    Ok(())
}

/// Reads a header the server set; absent headers read as "-".
fn header<'m>(msg: &'m Message, name: &str) -> &'m str {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map_or("-", |v| v.as_str())
}

/// Answers one `profile.fetch` request.
///
/// The request body is the client's `FETCH_PROFILE` payload, already validated against
/// the route's schema. The reply is either a payload matching the route's `replySchema`
/// (the client gets `PROFILE`) or `{"error": {"code", "message"}}` (the client gets
/// `RPC_ERROR` with that code; the code must be one of the protocol's error codes, else
/// the client sees `INTERNAL`).
async fn answer_profile(client: &Client, msg: Message) {
    let Some(reply_to) = msg.reply.clone() else {
        eprintln!("profile.fetch without a reply subject: ignored");
        return;
    };
    println!(
        "profile.fetch from user {} (roles {:?}) via replica {}",
        header(&msg, HEADER_USER),
        header(&msg, HEADER_ROLES),
        header(&msg, HEADER_ORIGIN),
    );
    let request: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
    let answer = match request.get("userId").and_then(Value::as_str) {
        None => json!({"error": {"code": "INVALID_ARGUMENT", "message": "userId is required"}}),
        Some("nobody") => json!({"error": {
            "code": "NOT_FOUND",
            "message": "there is no user \"nobody\"",
        }}),
        Some(user_id) => json!({
            "userId": user_id,
            "displayName": display_name(user_id),
        }),
    };
    let body = Bytes::from(answer.to_string());
    if let Err(e) = client.publish(reply_to, body).await {
        eprintln!("cannot send the profile reply: {e}");
    }
}

/// A made-up display name; a real backend would look the user up.
fn display_name(user_id: &str) -> String {
    let mut chars = user_id.chars();
    match chars.next() {
        Some(first) => format!("User {}{}", first.to_uppercase(), chars.as_str()),
        None => "Unnamed user".to_owned(),
    }
}

/// Prints one message of a `forward` route. The body is the client's payload.
fn print_event(base: &str, msg: &Message) {
    let subject = msg.subject.as_str();
    let name = subject
        .strip_prefix(base)
        .and_then(|s| s.strip_prefix(".evt."))
        .unwrap_or(subject);
    println!(
        "event {name} from user {} (roles {:?}) via replica {}: {}",
        header(msg, HEADER_USER),
        header(msg, HEADER_ROLES),
        header(msg, HEADER_ORIGIN),
        String::from_utf8_lossy(&msg.payload),
    );
}

/// Publishes a `ROOM_MESSAGE` into topic room:lobby.
///
/// Each replica with subscribers to room:lobby receives it, checks the payload against
/// the schema of a route that emits `ROOM_MESSAGE` (here SEND_MESSAGE: `{roomId, text}`,
/// no other fields) and delivers it with `meta.topic` set. A publish that fails the
/// check is dropped and counted in `switchboard_bus_rejected_total{reason}`. Replicas
/// without subscribers to the topic are not subscribed to its subject, so a publish
/// nobody listens to costs nothing.
async fn announce_in_lobby(client: &Client, subject: &str, n: u64) {
    let envelope = json!({
        "type": "ROOM_MESSAGE",
        "payload": {
            "roomId": "lobby",
            "text": format!("Announcement #{n} from the example backend: be kind."),
        },
    });
    // Optional: `Sb-User` becomes the delivery's `meta.publisher`. Every message on
    // this subject is checked, whatever other headers it carries.
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_USER, "system");
    let body = Bytes::from(envelope.to_string());
    match client
        .publish_with_headers(subject.to_owned(), headers, body)
        .await
    {
        Ok(()) => println!("announced #{n} on {subject}"),
        Err(e) => eprintln!("cannot announce on {subject}: {e}"),
    }
}
