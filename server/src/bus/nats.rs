//! The NATS bus: replicas of one app share topics, and backends in any language join.
//!
//! Subjects (docs/PROTOCOL.md §8), with `P` = `<prefix>.<namespace>.<app>`:
//! - `P.t.<topic segments as tokens>`: backends' publishes into topics, every one
//!   checked against the emitting route's schema whatever its headers say;
//! - `P.x.<topic segments as tokens>`: deliveries between replicas, which backends have
//!   no reason to publish on, so NATS permissions can keep them out (README, "Securing
//!   the bus");
//! - `P.rpc.<subject>`: requests to backends (which use queue groups);
//! - `P.evt.<subject>`: fire-and-forget messages to backends;
//! - `P._inbox.>`: the replicas' reply subjects, so that what answers them (backends,
//!   JetStream) stays inside the app's server-only subjects.
//!
//! Interest-based: a replica subscribes to a topic's subject only while it has local
//! subscribers. Changes go through one manager task that re-reads the registry before
//! acting, so a subscribe racing an unsubscribe on the same topic always settles on
//! what the registry holds. A client's subscribe is acknowledged only after the
//! manager has the NATS subscription confirmed by a server round trip, so an ack means
//! "publishes from every replica reach you from now on". Publishes go through a bounded queue to one publisher task:
//! a publisher never waits on NATS, and what cannot be handed over is counted.
//! The connection uses `no_echo`, so a replica's own publishes come back only through
//! its local fan-out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use serde_json::value::RawValue;
use switchboard_spec::history_stream;
use switchboard_spec::{CompiledApp, CompiledRoute, Identity, RouteAction, Topic, TopicPattern};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::nats_access;
use super::outage::{self, OutageLog};
use super::{
    Bus, BusRejectReason, BusSource, Delivery, DrainFuture, RpcError, RpcFuture, SubscribedFuture,
};
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::protocol::{self, OutMeta};
use crate::topics::TopicRegistry;
use crate::trace::{self, SPAN_TARGET};

/// Header names on bus messages.
pub mod header {
    /// Instance that published (for logs and traces). Never trusted: whether a topic
    /// message is a replica's or a backend's follows from its subject alone.
    pub const ORIGIN: &str = "Sb-Origin";
    /// Connection that published (and, with `Sb-Exclude`, must not receive it).
    pub const CONNECTION: &str = "Sb-Connection";
    pub const EXCLUDE: &str = "Sb-Exclude";
    /// Emitted type of a replica delivery.
    pub const TYPE: &str = "Sb-Type";
    pub const USER: &str = "Sb-User";
    /// Space-separated roles of the caller.
    pub const ROLES: &str = "Sb-Roles";
}

/// Publishes waiting for the publisher task before new ones are refused and counted.
const OUTGOING_CAPACITY: usize = 8192;

pub use switchboard_spec::history_stream::DEFAULT_SUBJECT_PREFIX;

/// The subject layout of one app: the one place it is spelled, for the server and for
/// backends written in Rust (see `server/examples/`).
#[derive(Clone, Debug)]
pub struct Subjects {
    base: String,
}

impl Subjects {
    pub fn new(prefix: &str, namespace: &str, app: &str) -> Self {
        Self {
            base: format!("{prefix}.{namespace}.{app}"),
        }
    }

    /// Where backends publish into `topic`. Topic segments become subject tokens. The
    /// topic alphabet has no `.`, `*`, `>` or whitespace, so this can never form a
    /// wildcard or leave the app's prefix.
    pub fn topic(&self, topic: &Topic) -> String {
        self.under("t", topic)
    }

    /// Where replicas hand each other `topic`'s deliveries: apart from [`Subjects::topic`]
    /// so that a backend allowed to publish there cannot pose as a replica.
    pub fn replica(&self, topic: &Topic) -> String {
        self.under("x", topic)
    }

    /// Where a history topic's publications are stored (the app's JetStream stream).
    pub fn history(&self, topic: &Topic) -> String {
        self.under("s", topic)
    }

    /// Where the stream republishes them, with their sequence.
    pub fn republished(&self, topic: &Topic) -> String {
        self.under("r", topic)
    }

    /// Every topic subject a pattern covers, variables as `*` (e.g. `P.t.room.*`).
    pub fn topics_matching(&self, pattern: &TopicPattern) -> String {
        let mut s = format!("{}.t", self.base);
        for literal in pattern.literals() {
            s.push('.');
            s.push_str(literal.unwrap_or("*"));
        }
        s
    }

    /// The topic a topic subject names (the inverse of [`Subjects::topic`]).
    pub fn topic_of(&self, subject: &str) -> Option<Topic> {
        let tokens = subject.strip_prefix(&self.base)?.strip_prefix(".t.")?;
        Topic::parse(&tokens.replace('.', ":")).ok()
    }

    fn under(&self, kind: &str, topic: &Topic) -> String {
        let mut s = String::with_capacity(self.base.len() + 3 + topic.as_str().len());
        s.push_str(&self.base);
        s.push('.');
        s.push_str(kind);
        for segment in topic.segments() {
            s.push('.');
            s.push_str(segment);
        }
        s
    }

    pub fn rpc(&self, subject: &str) -> String {
        format!("{}.rpc.{subject}", self.base)
    }

    pub fn event(&self, subject: &str) -> String {
        format!("{}.evt.{subject}", self.base)
    }

    /// Presence between replicas (`crate::presence_nats`).
    pub fn presence(&self) -> String {
        format!("{}.presence", self.base)
    }

    /// The replicas' inbox prefix: answers to their requests (backends' replies,
    /// JetStream's acks and reads) come back under the app's own subjects, which only
    /// servers may subscribe to, instead of the shared `_INBOX.>`.
    pub fn inbox_prefix(&self) -> String {
        format!("{}._inbox", self.base)
    }

    /// `<prefix>.<namespace>.<app>`, under which every subject of the app lives.
    pub fn base(&self) -> &str {
        &self.base
    }
}

struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// A NATS client and whether it has connected at least once.
pub struct NatsConnection {
    client: async_nats::Client,
    /// Set by the first `Connected` event; a replica is ready only from then on.
    connected_once: Arc<AtomicBool>,
}

/// A request to the interest manager: re-check `topic`, then (if asked) report back
/// once its subscription is in place.
struct Interest {
    topic: Topic,
    confirmed: Option<oneshot::Sender<()>>,
}

pub struct NatsBus {
    client: async_nats::Client,
    connected_once: Arc<AtomicBool>,
    registry: Arc<TopicRegistry>,
    metrics: Arc<Metrics>,
    subjects: Subjects,
    instance: Arc<str>,
    outgoing: mpsc::Sender<Outgoing>,
    /// Topics whose interest may have changed; the manager re-checks each.
    interest: mpsc::UnboundedSender<Interest>,
}

/// Connects to NATS for `app`, with the credentials and TLS of `spec.nats` (read from
/// `secrets_dir`). Returns once NATS has accepted them or cannot be reached: the first
/// connection is retried in the background (a pod must come up while NATS is briefly
/// away), as are reconnects; credentials NATS refuses are an error.
pub async fn connect(
    url: &str,
    app: &CompiledApp,
    secrets_dir: &std::path::Path,
    instance: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<NatsConnection> {
    let settings = app.spec.nats.as_ref();
    nats_access::probe(settings, secrets_dir, url).await?;
    let connected = metrics.bus.connected.clone();
    let connected_once = Arc::new(AtomicBool::new(false));
    let first = connected_once.clone();
    let outage = Arc::new(Mutex::new(OutageLog::default()));
    let url_for_log: Arc<str> = Arc::from(url);
    let client = nats_access::options(settings, secrets_dir)?
        .name(format!("switchboard-server {instance}"))
        .custom_inbox_prefix(NatsBus::subjects_of(app).inbox_prefix())
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2000))
        })
        .event_callback(move |event| {
            let (connected, first) = (connected.clone(), first.clone());
            let (outage, url) = (outage.clone(), url_for_log.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        let failed = outage.lock().ok().and_then(|mut o| o.connected());
                        info!(url = %url, failed_attempts = failed.unwrap_or(0), "connected to NATS");
                        connected.set(1);
                        first.store(true, Ordering::Release);
                    }
                    async_nats::Event::Disconnected => {
                        warn!(url = %url, "disconnected from NATS; local delivery goes on, reconnecting");
                        connected.set(0);
                    }
                    async_nats::Event::ClientError(async_nats::ClientError::Other(error)) => {
                        let due = outage.lock().ok().and_then(|mut o| o.failed());
                        match due {
                            Some(1) => {
                                let address = outage::first_address(&url);
                                let cause = outage::probe(&address).await.unwrap_or_else(|| {
                                    "TCP connects: the NATS handshake fails (TLS, credentials, or not a NATS server?)".to_owned()
                                });
                                warn!(url = %url, %error, %cause, "cannot connect to NATS; retrying every 2 s at most, local delivery goes on");
                            }
                            Some(n) => {
                                warn!(url = %url, %error, failed_attempts = n, "NATS still unreachable; retrying");
                            }
                            None => {}
                        }
                    }
                    other => debug!(event = %other, "NATS event"),
                }
            }
        })
        .connect(url)
        .await?;
    Ok(NatsConnection {
        client,
        connected_once,
    })
}

impl NatsConnection {
    /// The client, shared with the history store.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }
}

impl NatsBus {
    /// The app's subject layout.
    pub fn subjects_of(app: &CompiledApp) -> Subjects {
        Subjects {
            base: history_stream::subject_base(app),
        }
    }

    /// Starts the bus's tasks on the current runtime.
    pub fn start(
        connection: NatsConnection,
        app: &CompiledApp,
        registry: Arc<TopicRegistry>,
        metrics: Arc<Metrics>,
        instance: Arc<str>,
    ) -> Arc<Self> {
        let subjects = Self::subjects_of(app);
        let client = connection.client;
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_CAPACITY);
        let (interest, interest_rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_loop(client.clone(), outgoing_rx, metrics.clone()));
        let inbound = Arc::new(Inbound {
            registry: registry.clone(),
            metrics: metrics.clone(),
            max_replica_frame: app.spec.limits.max_payload_bytes as usize + ENVELOPE_ALLOWANCE,
            backends: BackendCheck::new(app),
        });
        tokio::spawn(interest_loop(
            client.clone(),
            subjects.clone(),
            registry.clone(),
            inbound,
            interest_rx,
        ));
        Arc::new(Self {
            client,
            connected_once: connection.connected_once,
            registry,
            metrics,
            subjects,
            instance,
            outgoing,
            interest,
        })
    }

    fn identity_headers(&self, identity: &Identity) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, &*self.instance);
        h.insert(header::USER, identity.user_id.as_str());
        h.insert(header::ROLES, identity.roles.join(" ").as_str());
        h
    }

    fn enqueue(&self, out: Outgoing) -> Result<(), RpcError> {
        self.outgoing.try_send(out).map_err(|_| {
            self.metrics.bus.publish_failures.inc();
            RpcError::Unavailable("the bus is backed up".into())
        })
    }
}

impl Bus for NatsBus {
    fn publish(&self, delivery: Delivery) {
        self.registry.fan_out(&delivery);
        let span = tracing::info_span!(target: SPAN_TARGET, "bus.publish", topic = %delivery.topic);
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, &*self.instance);
        headers.insert(header::TYPE, &*delivery.message_type);
        if let Some(exclude) = &delivery.exclude {
            headers.insert(header::EXCLUDE, &**exclude);
        }
        insert_trace_context(&mut headers, &span);
        let _ = self.enqueue(Outgoing {
            subject: self.subjects.replica(&delivery.topic),
            headers,
            payload: delivery.frame,
        });
    }

    fn topic_active(&self, topic: &Topic) -> Option<SubscribedFuture> {
        let topic = topic.clone();
        // Disconnected, a confirmation would wait for the reconnect: local delivery
        // goes on meanwhile and the subscription follows on reconnect.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            let _ = self.interest.send(Interest {
                topic,
                confirmed: None,
            });
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.interest.send(Interest {
            topic,
            confirmed: Some(tx),
        });
        Some(Box::pin(async move {
            let _ = rx.await;
        }))
    }

    fn topic_inactive(&self, topic: &Topic) {
        let _ = self.interest.send(Interest {
            topic: topic.clone(),
            confirmed: None,
        });
    }

    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        identity: &Identity,
        timeout: Duration,
    ) -> RpcFuture {
        let client = self.client.clone();
        let subject = self.subjects.rpc(subject);
        let mut headers = self.identity_headers(identity);
        // The caller's `rpc.request` span: the backend's spans continue it.
        insert_trace_context(&mut headers, &tracing::Span::current());
        Box::pin(async move {
            let request = async_nats::Request::new()
                .payload(payload)
                .headers(headers)
                .timeout(Some(timeout));
            // The client's own timeout covers an answered subject; this one also covers
            // a request stuck while NATS is away.
            match tokio::time::timeout(timeout, client.send_request(subject, request)).await {
                Err(_) => Err(RpcError::Timeout(timeout)),
                Ok(Ok(reply)) => Ok(reply.payload),
                Ok(Err(e)) => Err(match e.kind() {
                    async_nats::RequestErrorKind::TimedOut => RpcError::Timeout(timeout),
                    async_nats::RequestErrorKind::NoResponders => RpcError::NoResponders,
                    _ => RpcError::Unavailable(e.to_string()),
                }),
            }
        })
    }

    fn forward(&self, subject: &str, payload: Bytes, identity: &Identity) -> Result<(), RpcError> {
        self.enqueue(Outgoing {
            subject: self.subjects.event(subject),
            headers: self.identity_headers(identity),
            payload,
        })
    }

    fn drain(&self) -> DrainFuture {
        let client = self.client.clone();
        Box::pin(async move {
            // Sends what is still buffered, then unsubscribes and closes.
            if let Err(e) = client.drain().await {
                debug!(error = %e, "NATS drain");
            }
        })
    }

    fn is_ready(&self) -> bool {
        self.connected_once.load(Ordering::Acquire)
    }
}

async fn publish_loop(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
) {
    while let Some(out) = rx.recv().await {
        if let Err(e) = client
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
        {
            metrics.bus.publish_failures.inc();
            debug!(error = %e, "bus publish failed");
        }
    }
}

/// Subscribes to `topic`'s backend and replica subjects; both or neither.
async fn subscribe_topic(
    client: &async_nats::Client,
    subjects: &Subjects,
    topic: &Topic,
) -> Result<(Subscriber, Subscriber), async_nats::SubscribeError> {
    let backends = client.subscribe(subjects.topic(topic)).await?;
    let replicas = client.subscribe(subjects.replica(topic)).await?;
    Ok((backends, replicas))
}

/// Keeps exactly the topic subscriptions the registry needs.
async fn interest_loop(
    client: async_nats::Client,
    subjects: Subjects,
    registry: Arc<TopicRegistry>,
    inbound: Arc<Inbound>,
    mut rx: mpsc::UnboundedReceiver<Interest>,
) {
    let mut active: HashMap<Topic, JoinHandle<()>> = HashMap::new();
    while let Some(Interest { topic, confirmed }) = rx.recv().await {
        let wanted = registry.subscriber_count(&topic) > 0;
        match (wanted, active.contains_key(&topic)) {
            (true, false) => match subscribe_topic(&client, &subjects, &topic).await {
                Ok((backends, replicas)) => {
                    // The server must have the SUBs before we count them as active (and
                    // confirm them): publishes from other replicas reach us from then on.
                    round_trip(&client).await;
                    let task = tokio::spawn(read_topic(
                        topic.clone(),
                        backends,
                        replicas,
                        inbound.clone(),
                    ));
                    active.insert(topic, task);
                }
                Err(e) => warn!(%topic, error = %e, "cannot subscribe on NATS"),
            },
            (false, true) => {
                // Dropping the subscriber (with its task) unsubscribes.
                if let Some(task) = active.remove(&topic) {
                    task.abort();
                }
            }
            _ => {}
        }
        inbound.metrics.bus.subscriptions.set(active.len() as i64);
        // Requests are handled in order, so this follows the SUB (and its round trip)
        // of whichever request made the topic active.
        if let Some(tx) = confirmed {
            let _ = tx.send(());
        }
    }
}

/// How long the interest manager waits for the server's answer to its round trip.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the server has processed everything this client sent before. The server
/// handles one connection's operations in order, so its answer to a request sent now
/// comes after it registered earlier SUBs. (`Client::flush` only writes our buffer to
/// the socket.) The request goes to a fresh inbox nobody listens on: the answer is the
/// server's own "no responders". Nothing quicker exists with `no_echo` (an echo to
/// ourselves never comes back) and without a public PING in async-nats, so a client of
/// the same account subscribed to a wildcard covering the inbox (a `>` tap) is a
/// responder that never answers: each round trip then waits out its timeout, and a
/// topic's first subscribe is acked up to 2 s late (README, "Securing the bus").
pub(crate) async fn round_trip(client: &async_nats::Client) {
    let request = async_nats::Request::new().timeout(Some(ROUND_TRIP_TIMEOUT));
    match client.send_request(client.new_inbox(), request).await {
        Ok(_) => {}
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
        Err(e) => debug!(error = %e, "NATS round trip"),
    }
}

/// The fields the bus reads of a topic message, borrowed from it: its type, and its
/// payload as written (kept byte for byte for the delivery).
#[derive(serde::Deserialize)]
struct BusEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    message_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

impl<'a> BusEnvelope<'a> {
    /// One pass over `body`: not JSON at all is `not_json`; JSON of another shape (not
    /// an object, a `type` that is not a string) is `no_type`.
    fn read(body: &'a [u8]) -> Result<Self, BusRejectReason> {
        serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => BusRejectReason::NoType,
            _ => BusRejectReason::NotJson,
        })
    }
}

/// Dropped bus messages logged per second at most; a flood is summarized by the next
/// line, and every one is counted in `switchboard_bus_rejected_total`.
static REJECTION_LOG: LogBudget = LogBudget::new(10);

/// Counts a dropped bus message and logs it within [`REJECTION_LOG`]'s budget.
pub(crate) fn note_rejection(
    metrics: &Metrics,
    topic: &Topic,
    reason: BusRejectReason,
    what: &'static str,
) {
    metrics.bus.rejected.inc(reason);
    if let Some(suppressed) = REJECTION_LOG.admit(Instant::now()) {
        warn!(%topic, reason = reason.as_str(), suppressed_since_last = suppressed, "{what}");
    }
}

/// Room for the envelope around a delivery's payload: type, topic, publisher, timestamp.
const ENVELOPE_ALLOWANCE: usize = 4096;

/// What to do with messages arriving on topic subjects.
struct Inbound {
    registry: Arc<TopicRegistry>,
    metrics: Arc<Metrics>,
    /// Largest replica frame forwarded to clients: a delivery is the publishing
    /// message's payload (at most `limits.maxPayloadBytes`) plus an envelope.
    max_replica_frame: usize,
    backends: BackendCheck,
}

/// What a backend may publish into a topic: a `{"type", "payload"}` of a type some
/// route emits, whose payload satisfies the payload schema of at least one route
/// emitting it (exactly the frames clients could have caused themselves).
pub(crate) struct BackendCheck {
    /// Emitted type → the routes that emit it.
    emitters: HashMap<String, Vec<Arc<CompiledRoute>>>,
}

impl BackendCheck {
    pub(crate) fn new(app: &CompiledApp) -> Self {
        let mut emitters: HashMap<String, Vec<Arc<CompiledRoute>>> = HashMap::new();
        for route in app.routes.values() {
            if let RouteAction::Publish(publish) = &route.action {
                emitters
                    .entry(publish.emit.clone())
                    .or_default()
                    .push(route.clone());
            }
        }
        Self { emitters }
    }

    fn emits(&self, message_type: &str) -> bool {
        self.emitters.contains_key(message_type)
    }

    /// The publish's type and its frame for clients on `topic` (published by `user`,
    /// when the backend named one), if it may reach them: a known emitted type with a
    /// payload some emitting route's schema accepts.
    pub(crate) fn frame(
        &self,
        topic: &Topic,
        body: &[u8],
        user: Option<&str>,
    ) -> Result<(Arc<str>, Bytes), BusRejectReason> {
        let envelope = BusEnvelope::read(body)?;
        let message_type = envelope
            .message_type
            .as_deref()
            .ok_or(BusRejectReason::NoType)?;
        let raw_payload = envelope.payload.unwrap_or(RawValue::NULL);
        let payload: Value =
            serde_json::from_str(raw_payload.get()).map_err(|_| BusRejectReason::NotJson)?;
        let routes = self
            .emitters
            .get(message_type)
            .ok_or(BusRejectReason::UnknownType)?;
        if !routes
            .iter()
            .any(|r| r.validator.as_ref().is_none_or(|v| v.is_valid(&payload)))
        {
            return Err(BusRejectReason::InvalidPayload);
        }
        let frame = protocol::encode(
            message_type,
            OutMeta {
                topic: Some(topic.as_str()),
                publisher: user,
                timestamp: protocol::now_ms(),
                ..OutMeta::default()
            },
            raw_payload,
        );
        Ok((Arc::from(message_type), frame))
    }
}

/// Reads a topic's two subjects; which one a message came on says who sent it.
async fn read_topic(
    topic: Topic,
    backends: Subscriber,
    replicas: Subscriber,
    inbound: Arc<Inbound>,
) {
    let mut both = futures_util::stream::select(
        backends.map(|msg| (BusSource::Backend, msg)),
        replicas.map(|msg| (BusSource::Replica, msg)),
    );
    while let Some((source, msg)) = both.next().await {
        inbound.handle(&topic, source, msg);
    }
}

/// Puts `span`'s W3C trace context into NATS headers (nothing when tracing is off).
fn insert_trace_context(headers: &mut HeaderMap, span: &tracing::Span) {
    if let Some((traceparent, tracestate)) = trace::context_of(span) {
        headers.insert(trace::TRACEPARENT, traceparent.as_str());
        if let Some(state) = tracestate {
            headers.insert(trace::TRACESTATE, state.as_str());
        }
    }
}

impl Inbound {
    /// `source` is the subject's kind: on a backend subject, `Sb-Origin` means nothing
    /// and every message is checked as a backend publish.
    fn handle(&self, topic: &Topic, source: BusSource, msg: async_nats::Message) {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let replica = source == BusSource::Replica;
        let origin = if replica {
            header(header::ORIGIN)
        } else {
            None
        };
        // A root here unless the publisher (replica or backend) sent its context.
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            parent: None,
            "bus.receive",
            topic = %topic,
            source = if replica { "replica" } else { "backend" },
            origin = origin.as_deref().unwrap_or(""),
        );
        if !span.is_disabled() {
            trace::continue_from(
                &span,
                header(trace::TRACEPARENT).as_deref(),
                header(trace::TRACESTATE).as_deref(),
            );
        }
        let _entered = span.enter();
        self.metrics.bus.received.inc(source);
        let delivery = if replica {
            let message_type = header(header::TYPE).unwrap_or_default();
            if let Err(reason) = self.check_replica_frame(&msg.payload, &message_type) {
                self.reject(topic, reason, "dropped a replica frame");
                return;
            }
            Delivery {
                topic: topic.clone(),
                message_type: Arc::from(message_type),
                frame: msg.payload,
                exclude: header(header::EXCLUDE).map(Arc::from),
                published_at: Instant::now(),
            }
        } else {
            match self.backend_delivery(topic, &msg.payload, header(header::USER)) {
                Ok(d) => d,
                Err(reason) => {
                    self.reject(topic, reason, "dropped a backend publish");
                    return;
                }
            }
        };
        self.registry.fan_out(&delivery);
    }

    /// Counts a dropped message and logs it within [`REJECTION_LOG`]'s budget.
    fn reject(&self, topic: &Topic, reason: BusRejectReason, what: &'static str) {
        note_rejection(&self.metrics, topic, reason, what);
    }

    /// Where NATS permissions do not keep others off the replica subjects
    /// (docs/PROTOCOL.md §8), anything can publish there, so a replica frame is
    /// forwarded only if it is what a replica sends: a JSON
    /// envelope (hence UTF-8) of a type some route emits, as its header says, and no
    /// larger than a delivery can be.
    fn check_replica_frame(&self, frame: &[u8], message_type: &str) -> Result<(), BusRejectReason> {
        if frame.len() > self.max_replica_frame {
            return Err(BusRejectReason::TooLarge);
        }
        let envelope = BusEnvelope::read(frame)?;
        if envelope.message_type.as_deref() != Some(message_type)
            || !self.backends.emits(message_type)
        {
            return Err(BusRejectReason::UnknownType);
        }
        Ok(())
    }

    /// A backend's `{"type", "payload"}`, checked against the route that emits `type`.
    fn backend_delivery(
        &self,
        topic: &Topic,
        body: &[u8],
        user: Option<String>,
    ) -> Result<Delivery, BusRejectReason> {
        let (message_type, frame) = self.backends.frame(topic, body, user.as_deref())?;
        Ok(Delivery {
            topic: topic.clone(),
            message_type,
            frame,
            exclude: None,
            published_at: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_subject_tokens_under_the_app_prefix() {
        let s = Subjects::new("sb", "prod", "chat");
        assert_eq!(
            s.topic(&Topic::parse("room:42").unwrap()),
            "sb.prod.chat.t.room.42"
        );
        assert_eq!(
            s.replica(&Topic::parse("room:42").unwrap()),
            "sb.prod.chat.x.room.42"
        );
        assert_eq!(s.presence(), "sb.prod.chat.presence");
        assert_eq!(s.inbox_prefix(), "sb.prod.chat._inbox");
        assert_eq!(s.rpc("profile.fetch"), "sb.prod.chat.rpc.profile.fetch");
        assert_eq!(s.event("typing"), "sb.prod.chat.evt.typing");
    }
}
