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
    /// Every outcome, at the position [`Outcome::index`] gives it.
    const ALL: [Outcome; 3] = [Self::Applied, Self::Degraded, Self::Failed];

    /// Exhaustive on purpose: a new outcome does not compile until it is given a place
    /// in `ALL`, and with it a series from the start.
    fn index(self) -> usize {
        match self {
            Self::Applied => 0,
            Self::Degraded => 1,
            Self::Failed => 2,
        }
    }

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The `error` of `switchboard_operator_reconcile_failures_total`, as the controller's
/// errors name their kind.
const FAILURE_ERRORS: [&str; 2] = ["kube_api", "build"];

pub struct Metrics {
    registry: Registry,
    /// By `Outcome::index`.
    reconciles: Vec<Counter>,
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
        let reconciles_family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "switchboard_operator_reconciles",
            "Reconciles of RealtimeApps, by outcome (applied, degraded, failed)",
            reconciles_family.clone(),
        );
        let reconciles = Outcome::ALL
            .iter()
            .map(|o| {
                reconciles_family
                    .get_or_create(&OutcomeLabel {
                        outcome: o.as_str(),
                    })
                    .clone()
            })
            .collect();
        let failures = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "switchboard_operator_reconcile_failures",
            "Reconciles that failed and will be retried, by error (kube_api, build)",
            failures.clone(),
        );
        for error in FAILURE_ERRORS {
            // Created at 0; the returned read guard is not needed.
            let _ = failures.get_or_create(&ErrorLabel { error });
        }
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
        // Which version leads, while an upgrade of the operator rolls: the server has
        // `switchboard_build_info`, the operator had nothing to tell its pods apart.
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "switchboard_operator_build_info",
            "Operator version; always 1",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
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
        if let Some(c) = self.reconciles.get(outcome.index()) {
            c.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, error: &'static str) {
        // A kind missing from FAILURE_ERRORS would have no series until its first
        // failure: tests (debug builds) stop here so the list gets it.
        debug_assert!(
            FAILURE_ERRORS.contains(&error),
            "{error} is not in FAILURE_ERRORS"
        );
        self.failures.get_or_create(&ErrorLabel { error }).inc();
    }

    /// How many reconciles ended with `outcome`.
    pub fn reconcile_count(&self, outcome: Outcome) -> u64 {
        self.reconciles.get(outcome.index()).map_or(0, Counter::get)
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
        series.extend(
            FAILURE_ERRORS
                .iter()
                .map(|e| format!("switchboard_operator_reconcile_failures_total{{error=\"{e}\"}}")),
        );
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
        m.failed("kube_api");
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

    #[test]
    fn the_outcome_list_agrees_with_its_index() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
    }
}
