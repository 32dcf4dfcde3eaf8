//! The bus between replicas, behind one trait.
//!
//! The router publishes through [`Bus`] and never knows whether the other subscribers
//! are on this pod or another one. [`local::LocalBus`] serves one replica in-process;
//! a NATS implementation carries the same [`Delivery`] bytes across replicas.

pub mod local;
pub mod nats;
mod nats_access;
mod outage;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchboard_ops::metrics::{CounterByLabel, register};
use switchboard_spec::{Identity, Topic};

/// One topic delivery, encoded once. Every recipient gets these same bytes.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub topic: Topic,
    /// The emitted type, for metrics (the type is also inside `frame`).
    pub message_type: Arc<str>,
    /// The complete frame as clients receive it.
    pub frame: Bytes,
    /// Connection id that must not receive it (`excludeSelf`).
    pub exclude: Option<Arc<str>>,
    pub published_at: Instant,
}

/// Why a request to a backend failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("no bus is configured: request routes need spec.nats")]
    NoBus,
    #[error("no backend is answering on this subject")]
    NoResponders,
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

pub type RpcFuture = Pin<Box<dyn Future<Output = Result<Bytes, RpcError>> + Send>>;
pub type DrainFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Resolves once publishes to a topic from other replicas reach this pod.
pub type SubscribedFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Bus: Send + Sync {
    /// Delivers to local subscribers and to every other replica that has subscribers.
    fn publish(&self, delivery: Delivery);
    /// A local connection subscribed to `topic`. `None`: other replicas' publishes
    /// reach it already; else the future resolves once they do (the NATS subscription
    /// is confirmed), so the client's ack never promises more than is true.
    fn topic_active(&self, topic: &Topic) -> Option<SubscribedFuture>;
    /// This pod lost its last local subscriber of `topic`.
    fn topic_inactive(&self, topic: &Topic);
    /// Sends a request to the backends answering `subject` and awaits one reply.
    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        identity: &Identity,
        timeout: Duration,
    ) -> RpcFuture;
    /// Publishes to the backends listening on `subject`, fire-and-forget.
    fn forward(&self, subject: &str, payload: Bytes, identity: &Identity) -> Result<(), RpcError>;
    /// Hands over everything still buffered and disconnects (at shutdown).
    fn drain(&self) -> DrainFuture;
    /// Whether the bus has been usable at least once since start: a replica is not
    /// ready for clients before it can fan out to other replicas.
    fn is_ready(&self) -> bool;
}

switchboard_ops::label_values! {
    /// Who published a topic message that arrived over NATS: the `source` of
    /// `switchboard_bus_messages_received_total`.
    pub enum BusSource {
        /// Another replica, on the replica subject of the topic.
        Replica => "replica",
        /// Anyone on the topic's backend subject, checked as a backend publish.
        Backend => "backend",
    }
}

switchboard_ops::label_values! {
    /// Why a message from NATS was dropped: the `reason` of `switchboard_bus_rejected_total`.
    /// A backend's publish, or a frame claiming to be a replica's (those fail as
    /// `not_json`, `unknown_type` or `too_large`).
    pub enum BusRejectReason {
        NotJson => "not_json",
        NoType => "no_type",
        /// No route of the app emits that type.
        UnknownType => "unknown_type",
        /// The payload fails the schema of every route emitting that type.
        InvalidPayload => "invalid_payload",
        /// A frame claiming to come from a replica is larger than any delivery can be.
        TooLarge => "too_large",
        /// A backend publish into a history topic that JetStream did not store.
        NotStored => "not_stored",
    }
}

/// The bus's health and traffic. Registered with or without NATS, so dashboards and
/// alerts see the same series on every pod.
pub struct BusMetrics {
    pub connected: Gauge,
    pub publish_failures: Counter,
    pub subscriptions: Gauge,
    pub received: CounterByLabel<BusSource>,
    pub rejected: CounterByLabel<BusRejectReason>,
}

impl BusMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let connected = register(
            registry,
            "switchboard_bus_connected",
            "1 while connected to NATS (0 without a NATS bus)",
            Gauge::default(),
        );
        let subscriptions = register(
            registry,
            "switchboard_bus_subscriptions",
            "Topic subjects this pod is subscribed to on NATS",
            Gauge::default(),
        );
        let publish_failures = register(
            registry,
            "switchboard_bus_publish_failures",
            "Publishes and forwards that could not be handed to NATS (local delivery still happened)",
            Counter::default(),
        );
        let received = CounterByLabel::register(
            registry,
            "switchboard_bus_messages_received",
            "Topic messages received from NATS, by source (replica or backend)",
            "source",
        );
        let rejected = CounterByLabel::register(
            registry,
            "switchboard_bus_rejected",
            "Backend publishes and replica frames dropped, by reason (not_json, no_type, unknown_type, invalid_payload, too_large, not_stored)",
            "reason",
        );
        Self {
            connected,
            publish_failures,
            subscriptions,
            received,
            rejected,
        }
    }
}
