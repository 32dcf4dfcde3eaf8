//! `switchboard-client`: a Rust client for Switchboard apps with the behaviour of the
//! TypeScript one (`clients/typescript/README.md`), per docs/PROTOCOL.md §9: it waits
//! for `$ws:open`, matches answers by correlation id, reconnects with full-jitter
//! backoff (or after `$ws:drain`'s `reconnectAfterMs`), renews subscriptions with
//! `meta.since` so nothing published meanwhile on a history topic is lost, refreshes a
//! token from a callback before it expires, and checks the path with `__heartbeat`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::Error> {
//! use switchboard_client::{Client, ClientOptions};
//! use serde_json::json;
//! let client = Client::connect(ClientOptions::new("ws://127.0.0.1:8080/ws"));
//! let mut notes = client.on("BOARD_NOTE");
//! let board = client.subscribe("OPEN_BOARD", json!({"boardId": "ops"})).await?;
//! client.request("POST_NOTE", json!({"boardId": "ops", "text": "hi"})).await?;
//! let note = notes.recv().await;
//! # let _ = (board, note); Ok(()) }
//! ```

mod backoff;
mod connection;
mod error;
mod subscription;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use error::Error;
pub use subscription::Subscription;
use subscription::SubscriptionState;

/// An envelope, as sent and received.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub message_type: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    #[serde(default)]
    pub payload: Value,
}

impl Frame {
    /// `meta.<key>`, if present.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.meta.get(key)
    }
}

/// `Connecting`: never opened yet. `Open`: `$ws:open` arrived. `Reconnecting`: lost,
/// another connection is coming. `Closed`: for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Open,
    Reconnecting,
    Closed,
}

/// A future that yields a fresh token.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where the token comes from: sent as the `bearer.<token>` subprotocol.
#[derive(Clone)]
pub enum TokenSource {
    /// The same token on every connection: after 4401 the client stays closed.
    Static(String),
    /// Asked at every connection and before expiry (`$ws:auth`).
    Callback(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

/// How the client connects and retries.
#[derive(Clone)]
pub struct ClientOptions {
    /// Tried in turn, one per connection attempt.
    pub urls: Vec<String>,
    pub token: Option<TokenSource>,
    pub backoff: Backoff,
    /// How long a request waits for its answer. Default 10 s.
    pub request_timeout: Duration,
    /// Messages held while not open; beyond it `send` fails `RESOURCE_EXHAUSTED`.
    pub max_queued: usize,
    /// With a token callback: refresh this long before the token's `exp`. Default 30 s.
    pub refresh_before_expiry: Duration,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            token: None,
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(10),
            max_queued: 1000,
            refresh_before_expiry: Duration::from_secs(30),
        }
    }
}

/// A request waiting for its answer.
struct Pending {
    answer: oneshot::Sender<Result<Frame, Error>>,
    /// Written to a socket: a close may have lost its answer.
    sent: bool,
}

/// What the handle and the connection task share.
struct Shared {
    options: ClientOptions,
    state: watch::Sender<State>,
    /// The last `$ws:open` payload.
    info: Mutex<Option<Value>>,
    /// Frames held until the connection is open: (text, correlation id).
    outbox: Mutex<VecDeque<(String, Option<String>)>>,
    /// Wakes the connection task when the outbox has something.
    wake: Notify,
    pending: Mutex<HashMap<String, Pending>>,
    subscriptions: Mutex<Vec<Arc<SubscriptionState>>>,
    listeners: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Frame>>>>,
    next_id: AtomicU64,
    closing: CancellationToken,
    /// The server refused this connection's last `$ws:auth`: its 4401 is final.
    refresh_refused: std::sync::atomic::AtomicBool,
}

/// Locks, recovering the data of a poisoned lock (a panicking holder leaves nothing
/// half-written here: every critical section is a single insert or take).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn correlation_id(&self) -> String {
        format!("r{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn fail_pending(&self, error: &Error, only_sent: bool) {
        let mut pending = lock(&self.pending);
        let ids: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.sent || !only_sent)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(p) = pending.remove(&id) {
                let _ = p.answer.send(Err(error.clone()));
            }
        }
    }
}

/// One logical connection that outlives sockets. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Starts connecting (on the current tokio runtime) and returns at once.
    pub fn connect(options: ClientOptions) -> Self {
        let shared = Arc::new(Shared {
            options,
            state: watch::Sender::new(State::Connecting),
            info: Mutex::new(None),
            outbox: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(Vec::new()),
            listeners: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closing: CancellationToken::new(),
            refresh_refused: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(connection::run(shared.clone()));
        Self { shared }
    }

    pub fn state(&self) -> State {
        *self.shared.state.borrow()
    }

    /// Every state change, as it happens.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// Resolves with the `$ws:open` payload once open; fails once closed.
    pub async fn ready(&self) -> Result<Value, Error> {
        let mut states = self.watch_state();
        loop {
            match *states.borrow_and_update() {
                State::Open => {
                    if let Some(info) = lock(&self.shared.info).clone() {
                        return Ok(info);
                    }
                }
                State::Closed => {
                    return Err(Error::local("UNAVAILABLE", "the client is closed", false));
                }
                State::Connecting | State::Reconnecting => {}
            }
            if states.changed().await.is_err() {
                return Err(Error::local("UNAVAILABLE", "the client is gone", false));
            }
        }
    }

    /// Every frame of `type` from now on (deliveries, `$ws:join`, ...).
    pub fn on(&self, message_type: &str) -> mpsc::UnboundedReceiver<Frame> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.shared.listeners)
            .entry(message_type.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Sends without waiting for an answer; held while not open.
    pub fn send(&self, message_type: &str, payload: Value) -> Result<(), Error> {
        let frame = Frame {
            message_type: message_type.to_owned(),
            meta: Map::new(),
            payload,
        };
        self.enqueue(&frame, None)
    }

    /// Sends with a correlation id; resolves with the answer frame, or its error.
    pub async fn request(&self, message_type: &str, payload: Value) -> Result<Frame, Error> {
        let timeout = self.shared.options.request_timeout;
        let mut frame = Frame {
            message_type: message_type.to_owned(),
            meta: Map::new(),
            payload,
        };
        self.call(&mut frame, timeout).await
    }

    /// Subscribes with the app's route `type` and renews the subscription after every
    /// reconnect, with `meta.since` once a position is known.
    pub async fn subscribe(
        &self,
        message_type: &str,
        payload: Value,
    ) -> Result<Subscription, Error> {
        let state = Arc::new(SubscriptionState::new(message_type, payload));
        let mut frame = state.frame();
        let ack = self
            .call(&mut frame, self.shared.options.request_timeout)
            .await?;
        state.acked(&ack.payload);
        lock(&self.shared.subscriptions).push(state.clone());
        Ok(Subscription::new(state))
    }

    /// Stops renewing `subscription` (send the app's unsubscribe route yourself).
    pub fn forget(&self, subscription: &Subscription) {
        lock(&self.shared.subscriptions).retain(|s| !Arc::ptr_eq(s, subscription.state()));
    }

    /// Closes for good; pending requests fail `CANCELLED`.
    pub fn close(&self) {
        self.shared.closing.cancel();
        self.shared.state.send_replace(State::Closed);
        self.shared.fail_pending(
            &Error::local("CANCELLED", "the client was closed", false),
            false,
        );
    }

    async fn call(&self, frame: &mut Frame, timeout: Duration) -> Result<Frame, Error> {
        let id = self.shared.correlation_id();
        frame
            .meta
            .insert("correlationId".into(), Value::String(id.clone()));
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(
            id.clone(),
            Pending {
                answer: tx,
                sent: false,
            },
        );
        if let Err(e) = self.enqueue(frame, Some(id.clone())) {
            lock(&self.shared.pending).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::local("CANCELLED", "the client was closed", false)),
            Err(_) => {
                lock(&self.shared.pending).remove(&id);
                Err(Error::local(
                    "DEADLINE_EXCEEDED",
                    format!("no answer to {} within {timeout:?}", frame.message_type),
                    true,
                ))
            }
        }
    }

    fn enqueue(&self, frame: &Frame, id: Option<String>) -> Result<(), Error> {
        if self.state() == State::Closed {
            return Err(Error::local("UNAVAILABLE", "the client is closed", false));
        }
        let text = serde_json::to_string(frame)
            .map_err(|e| Error::local("INVALID_ARGUMENT", e.to_string(), false))?;
        let mut outbox = lock(&self.shared.outbox);
        if outbox.len() >= self.shared.options.max_queued {
            return Err(Error::local(
                "RESOURCE_EXHAUSTED",
                "too many messages held while not open",
                true,
            ));
        }
        outbox.push_back((text, id));
        drop(outbox);
        self.shared.wake.notify_one();
        Ok(())
    }
}
