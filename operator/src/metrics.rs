//! The operator's Prometheus metrics, all named `switchboard_operator_*`.
//!
//! What on-call needs of a controller: is it leading, is it reconciling, how often does
//! that fail and why, how long does it take. (Which apps are Degraded is on the apps
//! themselves: `kubectl get rtapp` and their conditions.)
//!
//! Every child of every label set is created at start-up, so each series is exported (at
//! 0) from the first scrape, and `rate()` and alerts on it work before its first event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use switchboard_ops::metrics::{CounterByLabel, register, register_build_info};

switchboard_ops::label_values! {
    /// How a reconcile ended: the `outcome` label.
    pub enum Outcome {
        /// The spec was valid and every object applied.
        Applied => "applied",
        /// The spec (or a Secret it names) is invalid; Degraded was set, nothing rolled.
        Degraded => "degraded",
        /// The API refused or failed; retried with backoff.
        Failed => "failed",
    }
}

switchboard_ops::label_values! {
    /// Why a reconcile failed: the `error` of `switchboard_operator_reconcile_failures_total`.
    pub enum FailureKind {
        /// The Kubernetes API refused or could not be reached.
        KubeApi => "kube_api",
        /// An object could not be built from the spec.
        Build => "build",
    }
}

/// The reconciler's own group: outcomes, failures and durations.
pub struct ReconcileMetrics {
    pub reconciles: CounterByLabel<Outcome>,
    pub failures: CounterByLabel<FailureKind>,
    pub duration: Histogram,
}

impl ReconcileMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let reconciles = CounterByLabel::register(
            registry,
            "switchboard_operator_reconciles",
            "Reconciles of RealtimeApps, by outcome (applied, degraded, failed)",
            "outcome",
        );
        let failures = CounterByLabel::register(
            registry,
            "switchboard_operator_reconcile_failures",
            "Reconciles that failed and will be retried, by error (kube_api, build)",
            "error",
        );
        let duration = register(
            registry,
            "switchboard_operator_reconcile_duration_seconds",
            "Time one reconcile took, API round trips included",
            Histogram::new(exponential_buckets(0.005, 2.0, 12)),
        );
        Self {
            reconciles,
            failures,
            duration,
        }
    }
}

pub struct Metrics {
    registry: Registry,
    reconcile: ReconcileMetrics,
    leader: Gauge,
    /// Set once the API server has answered: `/readyz` waits for it.
    api_reachable: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconcile = ReconcileMetrics::register(&mut registry);
        let leader = register(
            &mut registry,
            "switchboard_operator_leader",
            "1 while this replica holds the leader Lease and reconciles",
            Gauge::default(),
        );
        // Which version leads, while an upgrade of the operator rolls.
        register_build_info(
            &mut registry,
            "switchboard_operator_build_info",
            "Operator version; always 1",
            env!("CARGO_PKG_VERSION"),
        );
        Self {
            registry,
            reconcile,
            leader,
            api_reachable: AtomicBool::new(false),
        }
    }

    pub fn reconciled(&self, outcome: Outcome, took: Duration) {
        self.reconcile.reconciles.inc(outcome);
        self.reconcile.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: FailureKind) {
        self.reconcile.failures.inc(kind);
    }

    /// How many reconciles ended with `outcome`.
    pub fn reconcile_count(&self, outcome: Outcome) -> u64 {
        self.reconcile.reconciles.get(outcome)
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    pub fn set_api_reachable(&self) {
        self.api_reachable.store(true, Ordering::Release);
    }

    pub fn encode(&self) -> String {
        switchboard_ops::admin::encode_registry(&self.registry)
    }
}

/// Ready once the API server has answered; a follower is ready too (it is healthy and
/// waiting), so rolling the operator's own Deployment never stalls on leadership.
impl switchboard_ops::admin::AdminState for Metrics {
    fn readiness(&self) -> Result<(), &'static str> {
        if self.api_reachable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("the Kubernetes API has not answered yet\n")
        }
    }

    fn encode_metrics(&self) -> String {
        self.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use switchboard_tests::metric as value;

    #[test]
    fn every_series_is_exported_before_its_first_event() {
        let text = Metrics::new().encode();
        let mut series: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| {
                format!(
                    "switchboard_operator_reconciles_total{{outcome=\"{}\"}}",
                    o.as_str()
                )
            })
            .collect();
        series.extend(FailureKind::ALL.iter().map(|e| {
            format!(
                "switchboard_operator_reconcile_failures_total{{error=\"{}\"}}",
                e.as_str()
            )
        }));
        series.push("switchboard_operator_reconcile_duration_seconds_count".to_owned());
        series.push("switchboard_operator_leader".to_owned());
        for s in series {
            assert_eq!(value(&text, &s), Some(0.0), "{s} missing:\n{text}");
        }
        let build = format!(
            "switchboard_operator_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &build), Some(1.0), "{text}");
    }

    #[test]
    fn reconciles_and_failures_count_under_their_labels() {
        let m = Metrics::new();
        m.reconciled(Outcome::Degraded, Duration::from_millis(3));
        m.reconciled(Outcome::Failed, Duration::from_millis(3));
        m.failed(FailureKind::KubeApi);
        assert_eq!(m.reconcile_count(Outcome::Degraded), 1);
        assert_eq!(m.reconcile_count(Outcome::Applied), 0);
        let text = m.encode();
        for (series, n) in [
            (
                r#"switchboard_operator_reconciles_total{outcome="failed"}"#,
                1.0,
            ),
            (
                r#"switchboard_operator_reconcile_failures_total{error="kube_api"}"#,
                1.0,
            ),
            (
                r#"switchboard_operator_reconcile_failures_total{error="build"}"#,
                0.0,
            ),
            ("switchboard_operator_reconcile_duration_seconds_count", 2.0),
        ] {
            assert_eq!(value(&text, series), Some(n), "{series}:\n{text}");
        }
    }
}
