//! The connection task: one socket at a time, and what happens between them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{Error, Frame, Pending, Shared, State, TokenSource, lock};

/// Closes that reconnecting cannot fix (docs/PROTOCOL.md §7).
const TERMINAL: [u16; 4] = [1002, 1007, 1008, 1009];
/// The token expired without a refresh.
const TOKEN_EXPIRED: u16 = 4401;
/// What the client closes with when its heartbeat goes unanswered.
const HEARTBEAT_LOST: u16 = 4000;
/// Connecting, and then `$ws:open`, may take this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a connection ended.
enum Ended {
    /// Closed with this code (1006 when there was no close frame).
    Closed(u16),
    /// `close()` was called.
    ByClient,
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let urls = shared.options.urls.clone();
    let mut attempt: u32 = 0;
    let mut opened_once = false;
    for connects in 0usize.. {
        if shared.closing.is_cancelled() {
            return;
        }
        let url = &urls[connects % urls.len().max(1)];
        let mut drain_delay = None;
        let ended = match open(&shared, url).await {
            Ok((socket, token)) => {
                opened_once = true;
                attempt = 0;
                shared.refresh_refused.store(false, Ordering::Relaxed);
                session(&shared, socket, token, &mut drain_delay).await
            }
            Err(_) => Ended::Closed(1006),
        };
        shared.fail_pending(
            &Error::local(
                "UNAVAILABLE",
                "the connection closed before the answer came",
                true,
            ),
            true,
        );
        let code = match ended {
            Ended::ByClient => return,
            Ended::Closed(code) => code,
        };
        let refreshable = matches!(shared.options.token, Some(TokenSource::Callback(_)))
            && !shared.refresh_refused.load(Ordering::Relaxed);
        if TERMINAL.contains(&code) || (code == TOKEN_EXPIRED && !refreshable) {
            shared.state.send_replace(State::Closed);
            shared.fail_pending(
                &Error::local("UNAVAILABLE", format!("closed with {code}"), false),
                false,
            );
            return;
        }
        if shared.closing.is_cancelled() {
            return;
        }
        shared.state.send_replace(if opened_once {
            State::Reconnecting
        } else {
            State::Connecting
        });
        let delay = drain_delay.unwrap_or_else(|| shared.options.backoff.delay(attempt));
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.closing.cancelled() => return,
        }
    }
}

async fn token(shared: &Shared) -> Result<Option<String>, String> {
    match &shared.options.token {
        None => Ok(None),
        Some(TokenSource::Static(t)) => Ok(Some(t.clone())),
        Some(TokenSource::Callback(f)) => f().await.map(Some),
    }
}

/// Connects and waits for `$ws:open`.
async fn open(shared: &Shared, url: &str) -> Result<(Socket, Option<String>), String> {
    let token = token(shared).await?;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let protocols = match &token {
        Some(t) => format!("switchboard.v1, bearer.{t}"),
        None => "switchboard.v1".to_owned(),
    };
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&protocols).map_err(|e| e.to_string())?,
    );
    let (mut socket, _) =
        tokio::time::timeout(OPEN_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
    let first = tokio::time::timeout(OPEN_TIMEOUT, socket.next())
        .await
        .map_err(|_| "no $ws:open".to_owned())?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err("the first message is not $ws:open".into());
    };
    let frame: Frame = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if frame.message_type != "$ws:open" {
        return Err(format!("the first frame is {}", frame.message_type));
    }
    *lock(&shared.info) = Some(frame.payload);
    Ok((socket, token))
}

/// Serves one open socket until it ends.
async fn session(
    shared: &Arc<Shared>,
    mut socket: Socket,
    mut token: Option<String>,
    drain_delay: &mut Option<Duration>,
) -> Ended {
    let info = lock(&shared.info).clone().unwrap_or(Value::Null);
    let interval = Duration::from_millis(info["heartbeat"]["intervalMs"].as_u64().unwrap_or(0));
    let timeout = Duration::from_millis(info["heartbeat"]["timeoutMs"].as_u64().unwrap_or(0));

    // Renew subscriptions before anything held is sent.
    let subscriptions = lock(&shared.subscriptions).clone();
    for s in subscriptions {
        let id = shared.correlation_id();
        let mut frame = s.frame();
        frame
            .meta
            .insert("correlationId".into(), Value::String(id.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&shared.pending).insert(
            id,
            Pending {
                answer: tx,
                sent: true,
            },
        );
        tokio::spawn(async move {
            if let Ok(Ok(ack)) = rx.await {
                s.acked(&ack.payload);
            }
        });
        if write(&mut socket, &frame).await.is_err() {
            return Ended::Closed(1006);
        }
    }
    if shared.closing.is_cancelled() {
        return Ended::ByClient;
    }
    shared.state.send_replace(State::Open);

    let mut heartbeat = tokio::time::interval(if interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        interval
    });
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    let refresh_at = refresh_deadline(shared, token.as_deref());
    let refresh = tokio::time::sleep_until(refresh_at.into());
    tokio::pin!(refresh);
    let mut refreshing = false;
    loop {
        if flush(shared, &mut socket).await.is_err() {
            return Ended::Closed(1006);
        }
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    if let Ok(frame) = serde_json::from_str::<Frame>(&text) {
                        if frame.message_type == "$ws:drain" {
                            *drain_delay = frame.payload["reconnectAfterMs"].as_u64().map(Duration::from_millis);
                        }
                        dispatch(shared, frame);
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    return Ended::Closed(close.map_or(1005, |c| u16::from(c.code)));
                }
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(_)) | None => return Ended::Closed(1006),
            },
            () = shared.wake.notified() => {}
            _ = heartbeat.tick(), if !interval.is_zero() => {
                if last_heard.elapsed() > interval + timeout {
                    let _ = socket.close(Some(CloseFrame { code: CloseCode::from(HEARTBEAT_LOST), reason: "heartbeat lost".into() })).await;
                    return Ended::Closed(HEARTBEAT_LOST);
                }
                let beat = Frame { message_type: "__heartbeat".into(), meta: Default::default(), payload: json!({}) };
                if write(&mut socket, &beat).await.is_err() {
                    return Ended::Closed(1006);
                }
            }
            () = &mut refresh, if !refreshing => {
                refreshing = true;
                if let Ok(Some(fresh)) = token_fresh(shared).await {
                    let id = shared.correlation_id();
                    let frame = Frame {
                        message_type: "$ws:auth".into(),
                        meta: [("correlationId".to_owned(), Value::String(id.clone()))].into_iter().collect(),
                        payload: json!({"token": fresh}),
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    lock(&shared.pending).insert(id, Pending { answer: tx, sent: true });
                    let watcher = shared.clone();
                    tokio::spawn(async move {
                        // Refused by the server: the 4401 at expiry will be final.
                        if let Ok(Err(e)) = rx.await
                            && (e.code == "UNAUTHENTICATED" || e.code == "PERMISSION_DENIED")
                        {
                            watcher.refresh_refused.store(true, Ordering::Relaxed);
                        }
                    });
                    if write(&mut socket, &frame).await.is_err() {
                        return Ended::Closed(1006);
                    }
                    token = Some(fresh);
                    refresh.as_mut().reset(refresh_deadline(shared, token.as_deref()).into());
                    refreshing = false;
                }
                // A callback that fails is not asked again on this connection: the
                // server closes it with 4401 at expiry, and the reconnect asks anew.
            }
            () = shared.closing.cancelled() => {
                let _ = socket.close(Some(CloseFrame { code: CloseCode::Normal, reason: "closed by the client".into() })).await;
                return Ended::ByClient;
            }
        }
    }
}

/// A fresh token from the callback (none for a fixed token).
async fn token_fresh(shared: &Shared) -> Result<Option<String>, String> {
    match &shared.options.token {
        Some(TokenSource::Callback(f)) => f().await.map(Some),
        _ => Ok(None),
    }
}

/// When to refresh `token`: `refresh_before_expiry` before its `exp`; far away when
/// there is nothing to refresh.
fn refresh_deadline(shared: &Shared, token: Option<&str>) -> Instant {
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    if !matches!(shared.options.token, Some(TokenSource::Callback(_))) {
        return far;
    }
    let Some(exp) = token.and_then(expiry_unix_secs) else {
        return far;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(exp).saturating_sub(now);
    Instant::now() + left.saturating_sub(shared.options.refresh_before_expiry)
}

/// A JWT's `exp`, if it has one.
fn expiry_unix_secs(token: &str) -> Option<u64> {
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_u64()
}

async fn write(socket: &mut Socket, frame: &Frame) -> Result<(), tungstenite::Error> {
    let text = serde_json::to_string(frame).unwrap_or_default();
    socket.send(Message::text(text)).await
}

/// Sends what is held, marking requests as sent.
async fn flush(shared: &Shared, socket: &mut Socket) -> Result<(), tungstenite::Error> {
    loop {
        let next = lock(&shared.outbox).pop_front();
        let Some((text, id)) = next else {
            return Ok(());
        };
        if let Some(id) = &id
            && let Some(p) = lock(&shared.pending).get_mut(id)
        {
            p.sent = true;
        }
        socket.send(Message::text(text)).await?;
    }
}

/// An answer to its request, a delivery to its subscriptions' positions and listeners.
fn dispatch(shared: &Shared, frame: Frame) {
    if let Some(topic) = frame.meta("topic").and_then(Value::as_str) {
        for s in lock(&shared.subscriptions).iter() {
            if s.topic().as_deref() == Some(topic) {
                s.delivered(&frame);
            }
        }
    }
    if let Some(id) = frame.meta("correlationId").and_then(Value::as_str)
        && let Some(pending) = lock(&shared.pending).remove(id)
    {
        let answer = if frame.message_type == "ERROR" || frame.message_type == "RPC_ERROR" {
            Err(Error::from_payload(&frame.payload))
        } else {
            Ok(frame)
        };
        let _ = pending.answer.send(answer);
        return;
    }
    let mut listeners = lock(&shared.listeners);
    if let Some(list) = listeners.get_mut(&frame.message_type) {
        list.retain(|tx| tx.send(frame.clone()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_expiry_is_read_from_its_claims() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"a","exp":1700000000}"#);
        assert_eq!(
            expiry_unix_secs(&format!("h.{claims}.s")),
            Some(1_700_000_000)
        );
        assert_eq!(expiry_unix_secs("not a token"), None);
    }
}
