//! `DrainPlan`: how a pod hands its clients over when told to stop.
//!
//! Every client first gets `$ws:drain` with a `reconnectAfterMs` that matches when its
//! own connection will close, plus jitter. Connections then close with 1001 in batches
//! spread over 2 ms per connection (at most half the grace period), so the remaining
//! pods see a ramp of at most ~500 reconnects a second instead of a storm. A connection closes only after its in-flight
//! requests have their replies queued, and after its queue has flushed (the close goes
//! behind what is queued). The whole drain ends before the grace period does, leaving
//! time to hand buffered publishes to NATS and exit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use switchboard_ops::metrics::register;
use tracing::info;

use crate::handle::ConnectionHandle;
use crate::protocol::{self, CloseReason};
use crate::state::AppState;
use switchboard_ops::shutdown::Shutdown;

/// At most this many close batches, however many connections there are.
const MAX_BATCHES: usize = 20;
/// Batches are at least this far apart.
const MIN_BATCH_GAP: Duration = Duration::from_millis(100);
/// Time budgeted per connection: the other pods see at most 500 reconnects a second
/// from one draining pod, and a pod with few clients drains at once.
const PER_CONNECTION: Duration = Duration::from_millis(2);
/// No client is told to reconnect sooner than this after its own close: the Service
/// needs a moment to stop routing to this pod, and a reconnect landing here is refused.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq)]
pub struct DrainPlan {
    /// Closes happen within `[0, spread)` from the start of the drain.
    pub spread: Duration,
    pub batches: usize,
    /// When the drain gives up waiting and aborts what is left.
    pub deadline: Duration,
}

impl DrainPlan {
    pub fn new(grace: Duration, connections: usize) -> Self {
        let spread = (grace / 2).min(PER_CONNECTION * connections as u32);
        let by_gap = (spread.as_millis() / MIN_BATCH_GAP.as_millis()).max(1) as usize;
        let batches = connections.clamp(1, MAX_BATCHES).min(by_gap);
        // Keep a tenth of the grace (at most 2 s) for the NATS drain and exit.
        let margin = (grace / 10).min(Duration::from_secs(2));
        Self {
            spread,
            batches,
            deadline: grace.saturating_sub(margin),
        }
    }

    /// Which batch the `index`-th of `total` connections closes in.
    pub fn batch_of(&self, index: usize, total: usize) -> usize {
        index * self.batches / total.max(1)
    }

    /// When batch `b` closes, from the start of the drain.
    pub fn close_at(&self, b: usize) -> Duration {
        self.spread * b as u32 / self.batches as u32
    }

    /// What a client in batch `b` is told: reconnect at least `MIN_RECONNECT_DELAY`
    /// after its close, jittered within one more batch gap so the batch does not come
    /// back at once.
    pub fn reconnect_after(&self, b: usize, jitter: f64) -> Duration {
        let gap = (self.spread / self.batches as u32).max(MIN_BATCH_GAP);
        self.close_at(b) + MIN_RECONNECT_DELAY + gap.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Drains every connection (see the module doc). Returns early on `shutdown.now`.
pub async fn drain(state: &Arc<AppState>, shutdown: &Shutdown) {
    let started = Instant::now();
    state.metrics.drain.draining.set(1);
    let grace = Duration::from_secs(u64::from(state.app.spec.drain.grace_period_seconds));
    let handles: Vec<Arc<ConnectionHandle>> = state
        .connections
        .iter()
        .map(|e| e.value().clone())
        .collect();
    let plan = DrainPlan::new(grace, handles.len());
    info!(
        connections = handles.len(),
        batches = plan.batches,
        spread_ms = plan.spread.as_millis() as u64,
        deadline_ms = plan.deadline.as_millis() as u64,
        "draining"
    );

    for (i, handle) in handles.iter().enumerate() {
        let after = plan.reconnect_after(plan.batch_of(i, handles.len()), rand::random::<f64>());
        handle.reply(
            protocol::DRAIN_TYPE,
            None,
            &json!({"reason": "shutdown", "reconnectAfterMs": after.as_millis() as u64}),
        );
    }

    let deadline = tokio::time::Instant::from_std(started + plan.deadline);
    let closing = async {
        let mut i = 0;
        for b in 0..plan.batches {
            tokio::time::sleep_until(tokio::time::Instant::from_std(started + plan.close_at(b)))
                .await;
            while i < handles.len() && plan.batch_of(i, handles.len()) == b {
                let handle = handles[i].clone();
                let state = state.clone();
                state.tasks.clone().spawn(async move {
                    let _ = tokio::time::timeout_at(deadline, handle.rpcs_done()).await;
                    if handle
                        .queue
                        .close(protocol::close::GOING_AWAY, CloseReason::Shutdown)
                    {
                        state.metrics.drain.drained_connections.inc();
                    }
                });
                i += 1;
            }
        }
        // A connection that finished its upgrade as the drain began is not in the plan:
        // it closes with the last batch. (Planned ones close in their own tasks, after
        // their requests are answered.)
        let planned: HashSet<&str> = handles.iter().map(|h| &*h.id).collect();
        for entry in state.connections.iter() {
            let unplanned = !planned.contains(&**entry.key());
            if unplanned
                && entry
                    .value()
                    .queue
                    .close(protocol::close::GOING_AWAY, CloseReason::Shutdown)
            {
                state.metrics.drain.drained_connections.inc();
            }
        }
        state.tasks.close();
        state.tasks.wait().await;
    };
    tokio::select! {
        () = closing => {}
        () = tokio::time::sleep_until(deadline) => {}
        () = shutdown.now.cancelled() => {}
    }
    state
        .metrics
        .drain
        .duration_seconds
        .set(started.elapsed().as_secs_f64());
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
}

/// Whether a pod is draining, how many connections a drain closed, how long it took.
pub struct DrainMetrics {
    pub draining: Gauge,
    pub drained_connections: Counter,
    pub duration_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl DrainMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let draining = register(
            registry,
            "switchboard_draining",
            "1 while the pod drains for shutdown",
            Gauge::default(),
        );
        let drained_connections = register(
            registry,
            "switchboard_drained_connections",
            "Connections closed by a drain",
            Counter::default(),
        );
        let duration_seconds = register(
            registry,
            "switchboard_drain_duration_seconds",
            "How long the last drain took, from the signal to the last connection closed",
            Gauge::<f64, std::sync::atomic::AtomicU64>::default(),
        );
        Self {
            draining,
            drained_connections,
            duration_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_spread_by_connection_count_within_half_the_grace() {
        let p = DrainPlan::new(Duration::from_secs(30), 5000);
        assert_eq!(p.spread, Duration::from_secs(10));
        assert_eq!(p.batches, MAX_BATCHES);
        assert_eq!(p.deadline, Duration::from_secs(28));
        assert_eq!(p.batch_of(0, 5000), 0);
        assert_eq!(p.batch_of(4999, 5000), 19);
        assert_eq!(p.close_at(19), Duration::from_millis(9500));
        // Reconnects follow the close by at least the minimum delay and stay within one
        // batch gap of that.
        let earliest = p.close_at(19) + MIN_RECONNECT_DELAY;
        assert_eq!(p.reconnect_after(19, 0.0), earliest);
        let r = p.reconnect_after(19, 1.0);
        assert!(r >= earliest && r <= earliest + Duration::from_millis(500));
        // Many more connections than the grace allows: capped at half the grace.
        assert_eq!(
            DrainPlan::new(Duration::from_secs(30), 100_000).spread,
            Duration::from_secs(15)
        );
    }

    #[test]
    fn few_connections_or_a_short_grace_mean_few_batches() {
        let few = DrainPlan::new(Duration::from_secs(30), 3);
        assert_eq!((few.batches, few.spread), (1, Duration::from_millis(6)));
        assert_eq!(DrainPlan::new(Duration::from_secs(30), 300).batches, 6);
        assert_eq!(DrainPlan::new(Duration::from_millis(400), 500).batches, 2);
        let p = DrainPlan::new(Duration::ZERO, 5);
        assert_eq!(
            (p.batches, p.spread, p.deadline),
            (1, Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(p.batch_of(4, 5), 0);
    }
}
