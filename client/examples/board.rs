//! A terminal client of the example chat app's boards, on `switchboard-client`: prints
//! every note of a board (what it already holds, then live ones, and after a lost
//! connection the ones it missed) and posts each line typed on stdin.
//!
//! ```text
//! cargo run -p switchboard-server                                     # the example app
//! cargo run -p switchboard-client --example board -- ws://127.0.0.1:8080/ws lobby
//! ```

use anyhow::{Context, bail};
use serde_json::{Value, json};
use switchboard_client::{Client, ClientOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), board) = (args.next(), args.next().unwrap_or_else(|| "lobby".into())) else {
        bail!("usage: board <ws://host:port/ws> [board]");
    };
    let client = Client::connect(ClientOptions::new(url));
    let info = client.ready().await.context("cannot connect")?;
    eprintln!(
        "connected as {} to {}",
        info["user"]["id"], info["instance"]
    );

    let mut notes = client.on("BOARD_NOTE");
    let past = client
        .request("BOARD_HISTORY", json!({"boardId": board, "limit": 50}))
        .await?;
    let mut newest = 0;
    for p in past.payload["publications"]
        .as_array()
        .into_iter()
        .flatten()
    {
        print_note(&p["publisher"], &p["payload"]);
        newest = newest.max(p["offset"].as_u64().unwrap_or(0));
    }
    client
        .subscribe("OPEN_BOARD", json!({"boardId": board}))
        .await?;
    tokio::spawn(async move {
        while let Some(note) = notes.recv().await {
            // A note may come both in the history page and live: print it once.
            if note
                .meta("offset")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX)
                > newest
            {
                print_note(
                    note.meta("publisher").unwrap_or(&Value::Null),
                    &note.payload,
                );
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if let Err(e) = client
            .request("POST_NOTE", json!({"boardId": board, "text": text}))
            .await
        {
            eprintln!("not posted: {e}");
        }
    }
    client.close();
    Ok(())
}

fn print_note(publisher: &Value, payload: &Value) {
    println!(
        "{}: {}",
        publisher.as_str().unwrap_or("?"),
        payload["text"].as_str().unwrap_or_default()
    );
}
