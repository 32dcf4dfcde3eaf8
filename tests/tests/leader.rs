//! Two operator replicas on one real kube-apiserver: exactly one holds the Lease and
//! reconciles; the other takes over when the leader stops (released at once) or dies
//! (after the claim expires), and a replica that is not leading never reconciles.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use switchboard_operator::controller::{self, Context};
use switchboard_operator::leader::{self, LeaderElector, LeaseConfig};
use switchboard_operator::metrics::{Metrics, Outcome};
use switchboard_operator::resources::{CONFIG_HASH_ANNOTATION, Defaults};
use switchboard_spec::crd::RealtimeApp;
use switchboard_tests::{ControlPlane, chat_app, eventually, lease_holder, template_annotation};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One operator replica running in-process with leader election on.
struct Replica {
    identity: &'static str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Replica {
    fn start(client: &kube::Client, identity: &'static str) -> Self {
        let defaults = Defaults {
            server_image: "switchboard-server:test".into(),
            otel_env: vec![],
        };
        let ctx = Arc::new(Context::new(client.clone(), defaults, identity.into()));
        let metrics = ctx.metrics.clone();
        let config = LeaseConfig {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(300),
            ..LeaseConfig::new(
                "default".into(),
                "switchboard-operator".into(),
                identity.into(),
            )
        };
        let elector = LeaderElector::new(client.clone(), config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            async move {
                leader::run(elector, &metrics, shutdown, |lost| {
                    controller::run(ctx.clone(), &[], lost)
                })
                .await;
            }
        });
        Self {
            identity,
            metrics,
            shutdown,
            task,
        }
    }

    fn reconciles(&self) -> u64 {
        [Outcome::Applied, Outcome::Degraded, Outcome::Failed]
            .into_iter()
            .map(|o| self.metrics.reconcile_count(o))
            .sum()
    }
}

async fn config_hash(deployments: &Api<Deployment>) -> Option<String> {
    template_annotation(
        &deployments.get_opt("chat").await.ok()??,
        CONFIG_HASH_ANNOTATION,
    )
}

#[tokio::test]
async fn two_operators_elect_one_leader() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let apps: Api<RealtimeApp> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    let a = Replica::start(&client, "operator-a");
    let b = Replica::start(&client, "operator-b");
    let first = eventually("a leader", 15, || async { lease_holder(&client).await }).await;
    let (leader, follower) = if first == a.identity { (a, b) } else { (b, a) };
    // Several renewal periods later it is still exactly one, the same one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lease_holder(&client).await.as_deref(),
        Some(leader.identity)
    );
    assert!(leader.metrics.is_leader());
    assert!(!follower.metrics.is_leader());

    // Only the leader reconciles.
    apps.create(&PostParams::default(), &chat_app()).await?;
    let first_hash = eventually("the Deployment", 15, || config_hash(&deployments)).await;
    eventually("the leader to count its reconcile", 15, || async {
        (leader.reconciles() > 0).then_some(())
    })
    .await;
    assert_eq!(follower.reconciles(), 0, "a follower reconciled");

    // A leader that stops releases the Lease; the follower takes over and reconciles.
    leader.shutdown.cancel();
    leader.task.await?;
    eventually("the follower to lead", 15, || async {
        (lease_holder(&client).await.as_deref() == Some(follower.identity)).then_some(())
    })
    .await;
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"limits": {"maxPayloadBytes": 4096}}})),
    )
    .await?;
    eventually("the new leader to roll the Deployment", 15, || async {
        config_hash(&deployments).await.filter(|h| *h != first_hash)
    })
    .await;
    eventually("the new leader to count its reconciles", 15, || async {
        (follower.reconciles() > 0).then_some(())
    })
    .await;
    let transitions = leases
        .get("switchboard-operator")
        .await?
        .spec
        .and_then(|s| s.lease_transitions);
    assert_eq!(transitions, Some(1));

    // A leader that dies without releasing: a new replica waits the claim out, then leads.
    follower.task.abort();
    let _ = follower.task.await;
    let c = Replica::start(&client, "operator-c");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        lease_holder(&client).await.as_deref(),
        Some(follower.identity),
        "the claim was taken before it expired"
    );
    eventually("the new replica to lead", 15, || async {
        (lease_holder(&client).await.as_deref() == Some(c.identity)).then_some(())
    })
    .await;
    c.shutdown.cancel();
    c.task.await?;
    Ok(())
}
