//! The operator's Prometheus metrics, all named `switchboard_operator_*`.
//!
//! What on-call needs of a controller: is it leading, is it reconciling, how often does
//! that fail and why, how long does it take. (Which apps are Degraded is on the apps
//! themselves: `kubectl get rtapp` and their conditions.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a reconcile ended: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The spec was valid and every object applied.
    Applied,
    /// The spec (or a Secret it names) is invalid; Degraded was set, nothing rolled.
    Degraded,
    /// The API refused or failed; retried with backoff.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabel, Counter>,
    failures: Family<ErrorLabel, Counter>,
    duration: Histogram,
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
        let reconciles = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "switchboard_operator_reconciles",
            "Reconciles of RealtimeApps, by outcome (applied, degraded, failed)",
            reconciles.clone(),
        );
        let failures = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "switchboard_operator_reconcile_failures",
            "Reconciles that failed and will be retried, by error (kube_api, build)",
            failures.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "switchboard_operator_reconcile_duration_seconds",
            "Time one reconcile took, API round trips included",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "switchboard_operator_leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            api_reachable: AtomicBool::new(false),
        }
    }

    pub fn reconciled(&self, outcome: Outcome, took: Duration) {
        self.reconciles
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, error: &'static str) {
        self.failures.get_or_create(&ErrorLabel { error }).inc();
    }

    /// How many reconciles ended with `outcome`.
    pub fn reconcile_count(&self, outcome: Outcome) -> u64 {
        self.reconciles
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .get()
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
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
