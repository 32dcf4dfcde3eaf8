//! Prometheus metrics, all named `switchboard_*`.
//!
//! Label values come only from bounded sets: declared route types (anything else counts
//! as `unknown`), error codes, and fixed reason names. A client can never mint a label.
//! Handles for the hot path (per-type counters) are resolved once at start-up so
//! counting is an atomic add, not a map lookup under a lock.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::{CloseReason, ErrorCode};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabel {
    pub bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// Why an upgrade was refused; the `reason` label of `switchboard_upgrades_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    Unauthenticated,
    Origin,
    PerIpLimit,
    Capacity,
    Draining,
    BadRequest,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Origin => "origin",
            Self::PerIpLimit => "per_ip_limit",
            Self::Capacity => "capacity",
            Self::Draining => "draining",
            Self::BadRequest => "bad_request",
        }
    }
}

/// Counters for one message type, resolved once.
#[derive(Clone)]
pub struct TypeCounters {
    pub received: Counter,
    pub validation_failures: Counter,
}

pub struct Metrics {
    pub registry: Registry,
    pub connections: Gauge,
    pub connections_opened: Counter,
    connections_closed: Family<ReasonLabel, Counter>,
    upgrades_rejected: Family<ReasonLabel, Counter>,
    errors: Vec<Counter>,
    rate_limited: Family<BucketLabel, Counter>,
    dropped: Family<ReasonLabel, Counter>,
    pub frames_written: Counter,
    pub subscriptions: Gauge,
    pub topics: Gauge,
    pub delivery_latency: Histogram,
    pub fanout_recipients: Histogram,
    pub bus_connected: Gauge,
    pub bus_publish_failures: Counter,
    pub bus_subscriptions: Gauge,
    bus_messages_received: Family<SourceLabel, Counter>,
    bus_rejected: Family<ReasonLabel, Counter>,
    rpc_requests: Family<OutcomeLabel, Counter>,
    pub rpc_duration: Histogram,
    pub draining: Gauge,
    pub drained_connections: Counter,
    pub drain_duration_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    unknown: TypeCounters,
    by_type: HashMap<String, TypeCounters>,
    sent_by_type: HashMap<String, Counter>,
}

impl Metrics {
    /// `route_types`: the declared route types, each given its own label value;
    /// `sent_types`: every type the server may send (emits, replies, system frames).
    pub fn new<'a>(
        route_types: impl IntoIterator<Item = &'a str>,
        sent_types: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        let connections_opened = Counter::default();
        let connections_closed = Family::<ReasonLabel, Counter>::default();
        let upgrades_rejected = Family::<ReasonLabel, Counter>::default();
        let messages_received = Family::<TypeLabel, Counter>::default();
        let messages_sent = Family::<TypeLabel, Counter>::default();
        let validation_failures = Family::<TypeLabel, Counter>::default();
        let errors_family = Family::<CodeLabel, Counter>::default();
        let rate_limited = Family::<BucketLabel, Counter>::default();
        let dropped = Family::<ReasonLabel, Counter>::default();
        let frames_written = Counter::default();
        let subscriptions = Gauge::default();
        let topics = Gauge::default();
        // 50 µs .. ~1.6 s
        let delivery_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let fanout_recipients = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        let build_info = Family::<VersionLabel, Gauge>::default();
        let bus_connected = Gauge::default();
        let bus_publish_failures = Counter::default();
        let bus_subscriptions = Gauge::default();
        let bus_messages_received = Family::<SourceLabel, Counter>::default();
        let bus_rejected = Family::<ReasonLabel, Counter>::default();
        let rpc_requests = Family::<OutcomeLabel, Counter>::default();
        // 1 ms .. ~33 s
        let rpc_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let draining = Gauge::default();
        let drained_connections = Counter::default();
        let drain_duration_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();

        registry.register(
            "switchboard_connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register(
            "switchboard_connections_opened",
            "WebSocket connections accepted",
            connections_opened.clone(),
        );
        registry.register(
            "switchboard_connections_closed",
            "WebSocket connections closed, by reason",
            connections_closed.clone(),
        );
        registry.register(
            "switchboard_upgrades_rejected",
            "WebSocket upgrades refused before the handshake, by reason",
            upgrades_rejected.clone(),
        );
        registry.register(
            "switchboard_messages_received",
            "Client messages received, by type (undeclared types count as unknown)",
            messages_received.clone(),
        );
        registry.register(
            "switchboard_messages_sent",
            "Frames queued to clients, by type; a delivery counts once per recipient",
            messages_sent.clone(),
        );
        registry.register(
            "switchboard_validation_failures",
            "Client messages whose payload failed the route's schema, by type",
            validation_failures.clone(),
        );
        registry.register(
            "switchboard_errors",
            "ERROR and RPC_ERROR frames sent, by code",
            errors_family.clone(),
        );
        registry.register(
            "switchboard_rate_limited",
            "Client messages refused by a token bucket, by bucket",
            rate_limited.clone(),
        );
        registry.register(
            "switchboard_dropped_deliveries",
            "Deliveries that did not reach a client, by reason",
            dropped.clone(),
        );
        registry.register(
            "switchboard_frames_written",
            "WebSocket frames written to clients",
            frames_written.clone(),
        );
        registry.register(
            "switchboard_subscriptions",
            "Topic subscriptions held by local connections",
            subscriptions.clone(),
        );
        registry.register(
            "switchboard_topics",
            "Topics with at least one local subscriber",
            topics.clone(),
        );
        registry.register(
            "switchboard_delivery_latency_seconds",
            "Time from a publish on this pod to the delivery frame's write to a subscriber's socket",
            delivery_latency.clone(),
        );
        registry.register(
            "switchboard_fanout_recipients",
            "Local recipients of one topic delivery",
            fanout_recipients.clone(),
        );
        registry.register(
            "switchboard_build_info",
            "Server version",
            build_info.clone(),
        );
        for (name, help, metric) in [
            (
                "switchboard_bus_connected",
                "1 while connected to NATS (0 without a NATS bus)",
                &bus_connected,
            ),
            (
                "switchboard_bus_subscriptions",
                "Topic subjects this pod is subscribed to on NATS",
                &bus_subscriptions,
            ),
            (
                "switchboard_draining",
                "1 while the pod drains for shutdown",
                &draining,
            ),
        ] {
            registry.register(name, help, metric.clone());
        }
        registry.register(
            "switchboard_bus_publish_failures",
            "Publishes and forwards that could not be handed to NATS (local delivery still happened)",
            bus_publish_failures.clone(),
        );
        registry.register(
            "switchboard_bus_messages_received",
            "Topic messages received from NATS, by source (replica or backend)",
            bus_messages_received.clone(),
        );
        registry.register(
            "switchboard_bus_rejected",
            "Backend publishes dropped, by reason (not_json, no_type, unknown_type, invalid_payload)",
            bus_rejected.clone(),
        );
        registry.register(
            "switchboard_rpc_requests",
            "Requests to backends, by outcome (ok, error, invalid_reply, timeout, unavailable)",
            rpc_requests.clone(),
        );
        registry.register(
            "switchboard_rpc_duration_seconds",
            "Time from sending a request to a backend to its outcome",
            rpc_duration.clone(),
        );
        registry.register(
            "switchboard_drained_connections",
            "Connections closed by a drain",
            drained_connections.clone(),
        );
        registry.register(
            "switchboard_drain_duration_seconds",
            "How long the last drain took, from the signal to the last connection closed",
            drain_duration_seconds.clone(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);

        let counters_for = |t: &str| TypeCounters {
            received: messages_received
                .get_or_create(&TypeLabel {
                    r#type: t.to_owned(),
                })
                .clone(),
            validation_failures: validation_failures
                .get_or_create(&TypeLabel {
                    r#type: t.to_owned(),
                })
                .clone(),
        };
        let by_type = route_types
            .into_iter()
            .map(|t| (t.to_owned(), counters_for(t)))
            .collect();
        let unknown = counters_for("unknown");
        let sent_by_type = sent_types
            .into_iter()
            .map(|t| {
                let c = messages_sent
                    .get_or_create(&TypeLabel {
                        r#type: t.to_owned(),
                    })
                    .clone();
                (t.to_owned(), c)
            })
            .collect();
        let errors = ErrorCode::ALL
            .iter()
            .map(|c| {
                errors_family
                    .get_or_create(&CodeLabel {
                        code: c.as_str().to_owned(),
                    })
                    .clone()
            })
            .collect();
        Self {
            registry,
            connections,
            connections_opened,
            connections_closed,
            upgrades_rejected,
            errors,
            rate_limited,
            dropped,
            frames_written,
            subscriptions,
            topics,
            delivery_latency,
            fanout_recipients,
            bus_connected,
            bus_publish_failures,
            bus_subscriptions,
            bus_messages_received,
            bus_rejected,
            rpc_requests,
            rpc_duration,
            draining,
            drained_connections,
            drain_duration_seconds,
            unknown,
            by_type,
            sent_by_type,
        }
    }

    /// Counters for a client-sent type; undeclared types share `unknown`.
    pub fn for_type(&self, message_type: &str) -> &TypeCounters {
        self.by_type.get(message_type).unwrap_or(&self.unknown)
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some(c) = self.errors.get(code.index()) {
            c.inc();
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        self.connections_closed
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.upgrades_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    pub fn rate_limited(&self, bucket: &str) {
        self.rate_limited
            .get_or_create(&BucketLabel {
                bucket: bucket.to_owned(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts frames of a type the server chose (declared at start-up; others are
    /// not counted by type, which would be a bug in the caller).
    pub fn sent(&self, message_type: &str, n: u64) {
        if let Some(c) = self.sent_by_type.get(message_type) {
            c.inc_by(n);
        }
    }

    pub fn bus_received(&self, source: &'static str) {
        self.bus_messages_received
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc();
    }

    pub fn bus_rejected(&self, reason: &'static str) {
        self.bus_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn rpc(&self, outcome: &'static str, took: std::time::Duration) {
        self.rpc_requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.rpc_duration.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
