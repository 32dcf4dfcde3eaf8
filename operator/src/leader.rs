//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! both reconcile.
//!
//! The algorithm is client-go's: the leader renews the Lease every `retry_period`; a
//! candidate takes it over only when the record has not changed for `lease_duration`
//! *as measured by the candidate's own clock* (so clock skew between nodes does not
//! matter), and every write carries the `resourceVersion` it read, so of two
//! candidates racing for an expired Lease exactly one wins (the other gets 409). A
//! leader that cannot renew within `renew_deadline` stops reconciling before its Lease
//! can expire for others. On shutdown the leader releases the Lease so a successor
//! takes over at once instead of waiting out the duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Where the Lease lives and how long a leader's claim lasts.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity, written as the Lease's holder (the pod name).
    pub identity: String,
    /// How long a claim holds without renewal before a candidate may take over.
    pub lease_duration: Duration,
    /// How long the leader keeps reconciling while renewals fail; must be shorter than
    /// `lease_duration` so it stops before anyone else can start.
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s / 10 s / 2 s.
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's view of the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last holder/renewTime seen and when this replica first saw it: expiry is
    /// judged on this local instant, never on the timestamps other nodes wrote.
    observed: Option<(Option<String>, Option<Timestamp>, Instant)>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Takes or renews the Lease. `Ok(true)`: this replica leads until the next call.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let duration_secs = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(h, r, _)| *h != holder || *r != renewed);
        if changed {
            self.observed = Some((holder.clone(), renewed, Instant::now()));
        }
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        let claim = spec
            .lease_duration_seconds
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, _, seen)| seen.elapsed() > claim);
        if !mine && !expired {
            return Ok(false);
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + if mine { 0 } else { 1 }),
            ..spec
        });
        // `lease` carries the resourceVersion just read: a racing write makes this 409.
        conflict_is_false(
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Gives the Lease up (if still ours) so a successor need not wait it out.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.config.name, "released leadership"),
            Err(e) => warn!(error = %e, "cannot release the lease; a successor waits it out"),
        }
    }
}

fn conflict_is_false<T>(result: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `lead` whenever this replica holds the Lease, until `shutdown` is cancelled.
///
/// `lead` gets a token that is cancelled when leadership is lost (or on shutdown) and
/// must return once it is; a replica that loses the Lease goes back to being a
/// candidate rather than exiting, so it can lead again later.
pub async fn run<F, Fut>(
    mut elector: LeaderElector,
    metrics: &Metrics,
    shutdown: CancellationToken,
    mut lead: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let retry = elector.config.retry_period;
    loop {
        // Candidate: retry until the Lease is ours.
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => metrics.set_api_reachable(),
                Err(e) => warn!(error = %e, "leader election: cannot read or write the lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        }
        metrics.set_api_reachable();
        info!(identity = %elector.config.identity, lease = %elector.config.name, "became leader");
        metrics.set_leader(true);

        // Leader: renew while `lead` runs; stop it when renewal fails for too long.
        let lost = shutdown.child_token();
        let renew = async {
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    () = lost.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                match elector.try_acquire_or_renew().await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => {
                        warn!("leadership taken over by another replica");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot renew the lease");
                        if renewed.elapsed() >= elector.config.renew_deadline {
                            warn!("renew deadline passed; stepping down");
                            break;
                        }
                    }
                }
            }
            lost.cancel();
        };
        tokio::join!(lead(lost.clone()), renew);
        metrics.set_leader(false);
        if shutdown.is_cancelled() {
            elector.release().await;
            return;
        }
    }
}
