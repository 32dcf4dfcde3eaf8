//! The backend of the example RPC app (`manifests/examples/rpc.yaml`, app `quotes`).
//!
//! A `request` route sends the client's payload, already checked against the route's
//! schema, as JSON to `<prefix>.<namespace>.<app>.rpc.<subject>`. The backend answers
//! on the NATS reply subject with either of two bodies:
//!
//! - a value matching the route's `replySchema`, which the client receives as the
//!   route's `reply` type (`QUOTE`, `SYMBOLS`) with its `correlationId`;
//! - `{"error": {"code", "message"}}`, which the client receives as `RPC_ERROR` with
//!   that code.
//!
//! The prices are made up. Run it beside one or more servers of the app that share
//! a NATS server:
//!
//! ```text
//! cargo run -p switchboard-server -- --app manifests/examples/rpc.yaml --nats-url nats://127.0.0.1:4222
//! cargo run -p switchboard-server --example quotes -- --nats-url nats://127.0.0.1:4222
//! ```
//!
//! For the chat app's backend, which also receives forwards and publishes into
//! topics, see `backend.rs`.

use anyhow::{Context, Result, bail};
use async_nats::{Client, Message};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard_server::bus::nats::{DEFAULT_SUBJECT_PREFIX, Subjects, header};

/// Every instance of this backend joins this queue group, so each request is answered
/// exactly once however many instances run.
const QUEUE_GROUP: &str = "quotes";

/// The made-up market: symbol and price in USD.
const PRICES: &[(&str, f64)] = &[
    ("ACME", 123.45),
    ("GLOBEX", 88.10),
    ("INITECH", 12.5),
    ("UMBRELLA", 301.0),
];

/// The backend of the Switchboard example RPC app.
#[derive(Debug, Parser)]
#[command(name = "quotes")]
struct Args {
    /// NATS server the Switchboard replicas use.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,

    /// The RealtimeApp's namespace (`metadata.namespace`).
    #[arg(long, default_value = "default")]
    namespace: String,

    /// The RealtimeApp's name (`metadata.name`).
    #[arg(long, default_value = "quotes")]
    app: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let subjects = Subjects::new(DEFAULT_SUBJECT_PREFIX, &args.namespace, &args.app);

    // After this first connection, async-nats reconnects by itself and restores the
    // subscriptions below.
    let client = async_nats::ConnectOptions::new()
        .name("switchboard example quotes backend")
        .connect(&args.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;

    let get_subject = subjects.rpc("quotes.get");
    let mut gets = client
        .queue_subscribe(get_subject.clone(), QUEUE_GROUP.to_owned())
        .await
        .with_context(|| format!("cannot subscribe to {get_subject}"))?;
    let list_subject = subjects.rpc("quotes.symbols");
    let mut lists = client
        .queue_subscribe(list_subject.clone(), QUEUE_GROUP.to_owned())
        .await
        .with_context(|| format!("cannot subscribe to {list_subject}"))?;
    // Sends both SUBs now rather than with the next write (flush is not a server round
    // trip: a request arriving in the next instant may still find no responder).
    client.flush().await.context("cannot flush to NATS")?;
    println!("answering {get_subject} and {list_subject} (queue group {QUEUE_GROUP})");

    // Until this is first polled, Ctrl-C simply ends the process.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        // The answers are computed in memory, so they are sent inline. A backend with
        // slow lookups would spawn a task per request instead.
        tokio::select! {
            msg = gets.next() => {
                let Some(msg) = msg else { bail!("the subscription to {get_subject} ended") };
                reply(&client, &msg, quote(&msg.payload)).await;
            }
            msg = lists.next() => {
                let Some(msg) = msg else { bail!("the subscription to {list_subject} ended") };
                let symbols: Vec<&str> = PRICES.iter().map(|(s, _)| *s).collect();
                reply(&client, &msg, json!({"symbols": symbols})).await;
            }
            signal = &mut ctrl_c => {
                signal.context("cannot listen for Ctrl-C")?;
                println!("stopping");
                break;
            }
        }
    }

    // Hands over replies still buffered, then unsubscribes and closes.
    client
        .drain()
        .await
        .context("cannot drain the NATS connection")?;
    Ok(())
}

/// The answer to one `GET_QUOTE`. The server checked the payload against the route's
/// schema, but a backend must not trust that anything else on NATS did.
fn quote(body: &[u8]) -> Value {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(symbol) = request.get("symbol").and_then(Value::as_str) else {
        return json!({"error": {"code": "INVALID_ARGUMENT", "message": "symbol is required"}});
    };
    match PRICES.iter().find(|(s, _)| *s == symbol) {
        Some((_, price)) => json!({"symbol": symbol, "price": price, "currency": "USD"}),
        None => {
            json!({"error": {"code": "NOT_FOUND", "message": format!("no quote for {symbol}")}})
        }
    }
}

/// Sends `answer` to the request's reply subject. Without one, the requester is not
/// waiting, so there is no one to answer.
async fn reply(client: &Client, msg: &Message, answer: Value) {
    let Some(reply_to) = msg.reply.clone() else {
        eprintln!("a request on {} has no reply subject: ignored", msg.subject);
        return;
    };
    let user = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(header::USER))
        .map_or("-", |v| v.as_str());
    println!("{} from user {user}: {answer}", msg.subject);
    if let Err(e) = client.publish(reply_to, answer.to_string().into()).await {
        eprintln!("cannot send the reply to {}: {e}", msg.subject);
    }
}
