//! Prometheus metrics, all named `switchboard_*`.
//!
//! Label values come only from bounded sets: declared route types (anything else counts
//! as `unknown`), error codes, the app's bucket names, and fixed reason names. A client
//! can never mint a label. Every child of every such set is created at start-up, so each
//! series is exported (at 0) from the first scrape: `rate()`, alerts and the chart's
//! dashboard see it before its first event, and a missing series means a missing metric,
//! not a quiet one. Handles for the hot path are resolved then too, so counting is an
//! atomic add, not a map lookup under a lock.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use switchboard_spec::CompiledApp;

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
    /// Every reason, at the position [`RejectReason::index`] gives it.
    const ALL: [RejectReason; 6] = [
        Self::Unauthenticated,
        Self::Origin,
        Self::PerIpLimit,
        Self::Capacity,
        Self::Draining,
        Self::BadRequest,
    ];

    /// Exhaustive on purpose: a new reason does not compile until it is given a place
    /// in `ALL`, and with it a series from the start.
    fn index(self) -> usize {
        match self {
            Self::Unauthenticated => 0,
            Self::Origin => 1,
            Self::PerIpLimit => 2,
            Self::Capacity => 3,
            Self::Draining => 4,
            Self::BadRequest => 5,
        }
    }

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

/// Every close reason, at the position [`close_index`] gives it.
const CLOSE_REASONS: [CloseReason; 8] = [
    CloseReason::Client,
    CloseReason::HeartbeatTimeout,
    CloseReason::IdleTimeout,
    CloseReason::SlowConsumer,
    CloseReason::TokenExpired,
    CloseReason::TooBig,
    CloseReason::ProtocolError,
    CloseReason::Shutdown,
];

/// Exhaustive on purpose: a new `CloseReason` does not compile until it is given a
/// place in `CLOSE_REASONS`, and with it a series from the start.
fn close_index(reason: CloseReason) -> usize {
    match reason {
        CloseReason::Client => 0,
        CloseReason::HeartbeatTimeout => 1,
        CloseReason::IdleTimeout => 2,
        CloseReason::SlowConsumer => 3,
        CloseReason::TokenExpired => 4,
        CloseReason::TooBig => 5,
        CloseReason::ProtocolError => 6,
        CloseReason::Shutdown => 7,
    }
}

/// `reason` of `switchboard_dropped_deliveries_total`, as `handle.rs` passes them.
const DROP_REASONS: [&str; 3] = [
    "slow_consumer_drop_oldest",
    "slow_consumer_disconnect",
    "connection_closing",
];

/// `source` of `switchboard_bus_messages_received_total`: another replica (it stamps
/// its origin header) or a backend.
const BUS_SOURCES: [&str; 2] = ["replica", "backend"];

/// `reason` of `switchboard_bus_rejected_total`, as the NATS bus names them.
const BUS_REJECT_REASONS: [&str; 4] = ["not_json", "no_type", "unknown_type", "invalid_payload"];

/// `outcome` of `switchboard_rpc_requests_total`, as the router names them.
const RPC_OUTCOMES: [&str; 5] = ["ok", "error", "invalid_reply", "timeout", "unavailable"];

/// The children of a counter family whose label values are a fixed list, all created
/// at start-up and found by value without the family's lock.
struct FixedCounters<L> {
    family: Family<L, Counter>,
    children: Vec<(&'static str, Counter)>,
    label: fn(&str) -> L,
}

impl<L> FixedCounters<L>
where
    L: Clone + std::hash::Hash + Eq + Send + Sync + std::fmt::Debug + EncodeLabelSet + 'static,
{
    fn new(family: &Family<L, Counter>, values: &[&'static str], label: fn(&str) -> L) -> Self {
        let children = values
            .iter()
            .map(|v| (*v, family.get_or_create(&label(v)).clone()))
            .collect();
        Self {
            family: family.clone(),
            children,
            label,
        }
    }

    fn inc_by(&self, value: &str, n: u64) {
        match self.children.iter().find(|(v, _)| *v == value) {
            Some((_, c)) => {
                c.inc_by(n);
            }
            None => {
                // A caller passed a value missing from the list above: tests (debug
                // builds) stop here so the list gets it; a release build still counts it.
                debug_assert!(false, "{value} is not a listed label value");
                self.family.get_or_create(&(self.label)(value)).inc_by(n);
            }
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
    /// By `close_index`.
    connections_closed: Vec<Counter>,
    /// By `RejectReason::index`.
    upgrades_rejected: Vec<Counter>,
    errors: Vec<Counter>,
    rate_limited: Family<BucketLabel, Counter>,
    dropped: FixedCounters<ReasonLabel>,
    pub frames_written: Counter,
    pub subscriptions: Gauge,
    pub topics: Gauge,
    pub delivery_latency: Histogram,
    pub fanout_recipients: Histogram,
    pub bus_connected: Gauge,
    pub bus_publish_failures: Counter,
    pub bus_subscriptions: Gauge,
    bus_messages_received: FixedCounters<SourceLabel>,
    bus_rejected: FixedCounters<ReasonLabel>,
    rpc_requests: FixedCounters<OutcomeLabel>,
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
        let reason = |r: &str| ReasonLabel {
            reason: r.to_owned(),
        };
        let connections_closed = CLOSE_REASONS
            .iter()
            .map(|r| {
                connections_closed
                    .get_or_create(&reason(r.as_str()))
                    .clone()
            })
            .collect();
        let upgrades_rejected = RejectReason::ALL
            .iter()
            .map(|r| upgrades_rejected.get_or_create(&reason(r.as_str())).clone())
            .collect();
        let dropped = FixedCounters::new(&dropped, &DROP_REASONS, reason);
        let bus_messages_received =
            FixedCounters::new(&bus_messages_received, &BUS_SOURCES, |s| SourceLabel {
                source: s.to_owned(),
            });
        let bus_rejected = FixedCounters::new(&bus_rejected, &BUS_REJECT_REASONS, reason);
        let rpc_requests = FixedCounters::new(&rpc_requests, &RPC_OUTCOMES, |o| OutcomeLabel {
            outcome: o.to_owned(),
        });
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

    /// What only the app knows, for `state::metrics_for` to add right after `new`: a
    /// `switchboard_rate_limited_total` series for each of its buckets, and its
    /// per-pod connection limit.
    pub fn with_app(mut self, app: &CompiledApp) -> Self {
        for bucket in &app.buckets {
            // Created at 0; the returned read guard is not needed.
            let _ = self.rate_limited.get_or_create(&BucketLabel {
                bucket: bucket.name.clone(),
            });
        }
        // On-call's headroom: `switchboard_connections` over this. Upgrades refused for
        // `capacity` only show once it is gone, and the limit lives in the app's spec,
        // which Prometheus cannot see otherwise.
        let connections_max: Gauge = Gauge::default();
        connections_max.set(i64::from(app.spec.limits.max_connections));
        self.registry.register(
            "switchboard_connections_max",
            "Open WebSocket connections this pod accepts (the app's limits.maxConnections)",
            connections_max,
        );
        self
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
        if let Some(c) = self.connections_closed.get(close_index(reason)) {
            c.inc();
        }
    }

    pub fn rejected(&self, reason: RejectReason) {
        if let Some(c) = self.upgrades_rejected.get(reason.index()) {
            c.inc();
        }
    }

    pub fn rate_limited(&self, bucket: &str) {
        self.rate_limited
            .get_or_create(&BucketLabel {
                bucket: bucket.to_owned(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: &'static str, n: u64) {
        self.dropped.inc_by(reason, n);
    }

    /// Counts frames of a type the server chose (declared at start-up; others are
    /// not counted by type, which would be a bug in the caller).
    pub fn sent(&self, message_type: &str, n: u64) {
        if let Some(c) = self.sent_by_type.get(message_type) {
            c.inc_by(n);
        }
    }

    pub fn bus_received(&self, source: &'static str) {
        self.bus_messages_received.inc_by(source, 1);
    }

    pub fn bus_rejected(&self, reason: &'static str) {
        self.bus_rejected.inc_by(reason, 1);
    }

    pub fn rpc(&self, outcome: &'static str, took: std::time::Duration) {
        self.rpc_requests.inc_by(outcome, 1);
        self.rpc_duration.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        switchboard_ops::admin::encode_registry(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EXAMPLE_APP;

    use switchboard_tests::metric as value;

    #[test]
    fn every_bounded_series_is_exported_at_zero_before_its_first_event() {
        let text = Metrics::new(["SAY"], ["SAID"]).encode();
        let mut series = Vec::new();
        for r in CLOSE_REASONS {
            series.push(format!(
                "switchboard_connections_closed_total{{reason=\"{}\"}}",
                r.as_str()
            ));
        }
        for r in RejectReason::ALL {
            series.push(format!(
                "switchboard_upgrades_rejected_total{{reason=\"{}\"}}",
                r.as_str()
            ));
        }
        for c in ErrorCode::ALL {
            series.push(format!(
                "switchboard_errors_total{{code=\"{}\"}}",
                c.as_str()
            ));
        }
        for r in DROP_REASONS {
            series.push(format!(
                "switchboard_dropped_deliveries_total{{reason=\"{r}\"}}"
            ));
        }
        for s in BUS_SOURCES {
            series.push(format!(
                "switchboard_bus_messages_received_total{{source=\"{s}\"}}"
            ));
        }
        for r in BUS_REJECT_REASONS {
            series.push(format!("switchboard_bus_rejected_total{{reason=\"{r}\"}}"));
        }
        for o in RPC_OUTCOMES {
            series.push(format!("switchboard_rpc_requests_total{{outcome=\"{o}\"}}"));
        }
        for t in ["SAY", "unknown"] {
            series.push(format!(
                "switchboard_messages_received_total{{type=\"{t}\"}}"
            ));
            series.push(format!(
                "switchboard_validation_failures_total{{type=\"{t}\"}}"
            ));
        }
        series.push(r#"switchboard_messages_sent_total{type="SAID"}"#.to_owned());
        for s in series {
            assert_eq!(value(&text, &s), Some(0.0), "{s} missing:\n{text}");
        }
    }

    #[test]
    fn the_app_adds_a_series_per_bucket_and_its_connection_limit() {
        let app = switchboard_spec::load(EXAMPLE_APP).expect("the example app compiles");
        let text = Metrics::new(["SAY"], ["SAID"]).with_app(&app).encode();
        assert!(!app.buckets.is_empty());
        for b in &app.buckets {
            let s = format!("switchboard_rate_limited_total{{bucket=\"{}\"}}", b.name);
            assert_eq!(value(&text, &s), Some(0.0), "{s} missing:\n{text}");
        }
        assert_eq!(
            value(&text, "switchboard_connections_max"),
            Some(f64::from(app.spec.limits.max_connections))
        );
    }

    #[test]
    fn each_event_counts_under_its_own_label() {
        let m = Metrics::new(["SAY"], ["SAID"]);
        m.closed(CloseReason::SlowConsumer);
        m.rejected(RejectReason::PerIpLimit);
        m.dropped("slow_consumer_drop_oldest", 3);
        m.bus_received("backend");
        m.bus_rejected("unknown_type");
        m.rpc("timeout", std::time::Duration::from_millis(5));
        m.rate_limited("burst");
        let text = m.encode();
        for (series, n) in [
            (
                r#"switchboard_connections_closed_total{reason="slow_consumer"}"#,
                1.0,
            ),
            (
                r#"switchboard_connections_closed_total{reason="client"}"#,
                0.0,
            ),
            (
                r#"switchboard_upgrades_rejected_total{reason="per_ip_limit"}"#,
                1.0,
            ),
            (
                r#"switchboard_dropped_deliveries_total{reason="slow_consumer_drop_oldest"}"#,
                3.0,
            ),
            (
                r#"switchboard_bus_messages_received_total{source="backend"}"#,
                1.0,
            ),
            (
                r#"switchboard_bus_rejected_total{reason="unknown_type"}"#,
                1.0,
            ),
            (r#"switchboard_rpc_requests_total{outcome="timeout"}"#, 1.0),
            (r#"switchboard_rpc_requests_total{outcome="ok"}"#, 0.0),
            ("switchboard_rpc_duration_seconds_count", 1.0),
            (r#"switchboard_rate_limited_total{bucket="burst"}"#, 1.0),
        ] {
            assert_eq!(value(&text, series), Some(n), "{series}:\n{text}");
        }
    }

    #[test]
    fn the_enum_lists_agree_with_their_indexes() {
        for (i, r) in CLOSE_REASONS.into_iter().enumerate() {
            assert_eq!(close_index(r), i, "{r:?}");
        }
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }
}
