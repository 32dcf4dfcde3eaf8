//! Prometheus metrics, all named `switchboard_*`: one group per subsystem, each declared
//! and registered by the module it measures, gathered here into one registry.
//!
//! Label values come only from bounded sets (see `switchboard_ops::metrics`): declared
//! route types (anything else counts as `unknown`), error codes, the app's bucket names,
//! and fixed reason names. A client can never mint a label, and every series is exported
//! (at 0) from the first scrape.

use prometheus_client::registry::Registry;
use switchboard_spec::{CompiledApp, RouteAction};

use crate::actions::request::RpcMetrics;
use crate::bus::BusMetrics;
use crate::connection::ConnectionMetrics;
use crate::deflate::DeflateMetrics;
use crate::drain::DrainMetrics;
use crate::gateway::GatewayMetrics;
use crate::handle::OutboundMetrics;
use crate::history::HistoryMetrics;
use crate::jwks::JwksMetrics;
use crate::protocol;
use crate::ratelimit::RateLimitMetrics;
use crate::router::MessageMetrics;
use crate::tls::TlsMetrics;
use crate::topics::TopicMetrics;

pub struct Metrics {
    registry: Registry,
    pub gateway: GatewayMetrics,
    pub connections: ConnectionMetrics,
    pub messages: MessageMetrics,
    pub rate_limits: RateLimitMetrics,
    pub outbound: OutboundMetrics,
    pub topics: TopicMetrics,
    pub bus: BusMetrics,
    pub rpc: RpcMetrics,
    pub drain: DrainMetrics,
    pub history: HistoryMetrics,
    pub tls: TlsMetrics,
    pub jwks: JwksMetrics,
    pub deflate: DeflateMetrics,
}

impl Metrics {
    /// Every group, with a series for each of the app's route types, emitted and reply
    /// types, and buckets.
    pub fn new(app: &CompiledApp) -> Self {
        let mut registry = Registry::default();
        switchboard_ops::metrics::register_build_info(
            &mut registry,
            "switchboard_build_info",
            "Server version",
            env!("CARGO_PKG_VERSION"),
        );
        Self {
            gateway: GatewayMetrics::register(&mut registry),
            connections: ConnectionMetrics::register(&mut registry, app),
            messages: MessageMetrics::register(
                &mut registry,
                app.routes.keys().map(String::as_str),
            ),
            rate_limits: RateLimitMetrics::register(&mut registry, &app.buckets),
            outbound: OutboundMetrics::register(&mut registry, sent_types(app)),
            topics: TopicMetrics::register(&mut registry),
            bus: BusMetrics::register(&mut registry),
            rpc: RpcMetrics::register(&mut registry),
            drain: DrainMetrics::register(&mut registry),
            history: HistoryMetrics::register(&mut registry),
            tls: TlsMetrics::register(&mut registry),
            jwks: JwksMetrics::register(&mut registry),
            deflate: DeflateMetrics::register(&mut registry),
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        switchboard_ops::admin::encode_registry(&self.registry)
    }
}

/// Every type the server can send to this app's clients: system frames, errors, acks,
/// and each route's emitted or reply type.
fn sent_types(app: &CompiledApp) -> Vec<&str> {
    let mut types = vec![
        protocol::OPEN_TYPE,
        protocol::DRAIN_TYPE,
        protocol::UNSUBSCRIBED_TYPE,
        protocol::ACK_TYPE,
        protocol::ERROR_TYPE,
        protocol::RPC_ERROR_TYPE,
        protocol::HEARTBEAT_ACK_TYPE,
        protocol::JOIN_TYPE,
        protocol::LEAVE_TYPE,
    ];
    for route in app.routes.values() {
        match &route.action {
            RouteAction::Publish(publish) => types.push(&publish.emit),
            RouteAction::Request(request) => types.push(&request.reply),
            RouteAction::Subscribe(_)
            | RouteAction::Unsubscribe(_)
            | RouteAction::Forward(_)
            | RouteAction::History(_)
            | RouteAction::Presence(_) => {}
        }
    }
    types.sort_unstable();
    types.dedup();
    types
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchboard_ops::metrics::LabelValue;
    use switchboard_tests::metric as value;

    use super::*;
    use crate::actions::request::RpcOutcome;
    use crate::bus::{BusRejectReason, BusSource};
    use crate::config::EXAMPLE_APP;
    use crate::gateway::RejectReason;
    use crate::handle::DropReason;
    use crate::protocol::{CloseReason, ErrorCode};

    fn example() -> CompiledApp {
        switchboard_spec::load(EXAMPLE_APP).expect("the example app compiles")
    }

    /// `name{label="v"}` for every value of `L`.
    fn every<L: LabelValue>(name: &str, label: &str) -> Vec<String> {
        L::ALL
            .iter()
            .map(|v| format!("{name}{{{label}=\"{}\"}}", v.as_str()))
            .collect()
    }

    #[test]
    fn every_bounded_series_is_exported_at_zero_before_its_first_event() {
        let app = example();
        let text = Metrics::new(&app).encode();
        let mut series = Vec::new();
        series.extend(every::<CloseReason>(
            "switchboard_connections_closed_total",
            "reason",
        ));
        series.extend(every::<RejectReason>(
            "switchboard_upgrades_rejected_total",
            "reason",
        ));
        series.extend(every::<ErrorCode>("switchboard_errors_total", "code"));
        series.extend(every::<DropReason>(
            "switchboard_dropped_deliveries_total",
            "reason",
        ));
        series.extend(every::<BusSource>(
            "switchboard_bus_messages_received_total",
            "source",
        ));
        series.extend(every::<BusRejectReason>(
            "switchboard_bus_rejected_total",
            "reason",
        ));
        series.extend(every::<RpcOutcome>(
            "switchboard_rpc_requests_total",
            "outcome",
        ));
        series.extend(every::<crate::jwks::FetchFailure>(
            "switchboard_jwks_fetch_errors_total",
            "reason",
        ));
        series.push("switchboard_jwks_keys".to_owned());
        series.extend(every::<crate::deflate::Stage>(
            "switchboard_deflate_bytes_total",
            "stage",
        ));
        for counter in [
            "switchboard_deflate_compressions_total",
            "switchboard_deflate_frames_written_total",
            "switchboard_deflate_inflated_messages_total",
        ] {
            series.push(counter.to_owned());
        }
        for t in app.routes.keys().map(String::as_str).chain(["unknown"]) {
            series.push(format!(
                "switchboard_messages_received_total{{type=\"{t}\"}}"
            ));
            series.push(format!(
                "switchboard_validation_failures_total{{type=\"{t}\"}}"
            ));
        }
        for t in sent_types(&app) {
            series.push(format!("switchboard_messages_sent_total{{type=\"{t}\"}}"));
        }
        assert!(!app.buckets.is_empty());
        for b in &app.buckets {
            series.push(format!(
                "switchboard_rate_limited_total{{bucket=\"{}\"}}",
                b.name
            ));
        }
        for s in series {
            assert_eq!(value(&text, &s), Some(0.0), "{s} missing:\n{text}");
        }
        assert_eq!(
            value(&text, "switchboard_connections_max"),
            Some(f64::from(app.spec.limits.max_connections))
        );
        let build = format!(
            "switchboard_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &build), Some(1.0), "{text}");
    }

    #[test]
    fn sent_types_cover_system_frames_and_every_emitted_and_reply_type() {
        let app = example();
        let types = sent_types(&app);
        for t in [
            protocol::OPEN_TYPE,
            protocol::ERROR_TYPE,
            protocol::ACK_TYPE,
        ] {
            assert!(types.contains(&t), "{t}: {types:?}");
        }
        for route in app.routes.values() {
            if let RouteAction::Publish(p) = &route.action {
                assert!(types.contains(&p.emit.as_str()), "{}: {types:?}", p.emit);
            }
        }
    }

    #[test]
    fn each_event_counts_under_its_own_label() {
        let app = example();
        let m = Metrics::new(&app);
        m.connections.closed.inc(CloseReason::SlowConsumer);
        m.gateway.rejected.inc(RejectReason::PerIpLimit);
        m.outbound
            .dropped
            .inc_by(DropReason::SlowConsumerDropOldest, 3);
        m.bus.received.inc(BusSource::Backend);
        m.bus.rejected.inc(BusRejectReason::UnknownType);
        m.rpc.requests.inc(RpcOutcome::Timeout);
        m.rpc
            .duration
            .observe(Duration::from_millis(5).as_secs_f64());
        m.messages.received("NO_SUCH_TYPE");
        let bucket = &app.buckets[0].name;
        m.rate_limits.refused(&crate::ratelimit::Limited {
            bucket: bucket.clone(),
            bucket_index: 0,
            retry_after_ms: 1,
        });
        let text = m.encode();
        let limited = format!("switchboard_rate_limited_total{{bucket=\"{bucket}\"}}");
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
            (
                r#"switchboard_messages_received_total{type="unknown"}"#,
                1.0,
            ),
            (limited.as_str(), 1.0),
        ] {
            assert_eq!(value(&text, series), Some(n), "{series}:\n{text}");
        }
    }
}
