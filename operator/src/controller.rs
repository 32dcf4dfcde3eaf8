//! Reconcile and error policy: one RealtimeApp in, its owned objects and status out.
//!
//! Order matters: the spec is compiled (with the server's own compiler), its Secrets
//! checked and its history stream put in place *before* anything is applied, so an
//! invalid spec sets Degraded and leaves the running Deployment exactly as it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use switchboard_spec::crd::{RealtimeApp, RealtimeAppStatus};
use switchboard_spec::{AppManifest, ManifestMetadata, history_stream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::RetryBackoff;
use crate::jetstream::HistoryStreams;
use crate::metrics::{FailureKind, Metrics, Outcome};
use crate::resources::{Defaults, Plan};

/// The one field manager of every object this operator applies.
pub const MANAGER: &str = "switchboard-operator";
/// How often a healthy app is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building objects: {0}")]
    Build(#[from] anyhow::Error),
}

impl Error {
    /// The `error` label of `switchboard_operator_reconcile_failures_total`.
    fn kind(&self) -> FailureKind {
        match self {
            Self::Kube(_) => FailureKind::KubeApi,
            Self::Build(_) => FailureKind::Build,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub recorder: Recorder,
    /// Shared with the admin listener (`/metrics`, `/readyz`) and leader election.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per app, for exponential backoff.
    pub failures: RetryBackoff<ObjectRef<RealtimeApp>>,
    /// NATS connections for the apps' history streams.
    pub history_streams: HistoryStreams,
}

impl Context {
    pub fn new(client: Client, defaults: Defaults, instance: String) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            defaults,
            metrics: Arc::new(Metrics::new()),
            failures: RetryBackoff::default(),
            history_streams: HistoryStreams::default(),
        }
    }
}

/// Runs the controller until `shutdown` is cancelled: over the whole cluster when
/// `namespaces` is empty, else one watch per listed namespace (so RBAC can be Roles in
/// those namespaces instead of a ClusterRole).
pub async fn run(ctx: Arc<Context>, namespaces: &[String], shutdown: CancellationToken) {
    if namespaces.is_empty() {
        run_scope(ctx, None, shutdown).await;
    } else {
        futures_util::future::join_all(
            namespaces
                .iter()
                .map(|ns| run_scope(ctx.clone(), Some(ns), shutdown.clone())),
        )
        .await;
    }
}

/// Every API a controller watches, for one namespace or all.
fn api<K: Owned>(client: &Client, namespace: Option<&str>) -> Api<K> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_scope(ctx: Arc<Context>, namespace: Option<&str>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let config = watcher::Config::default();
    Controller::new(api::<RealtimeApp>(&client, namespace), config.clone())
        .owns(api::<Deployment>(&client, namespace), config.clone())
        .owns(api::<Service>(&client, namespace), config.clone())
        .owns(api::<ConfigMap>(&client, namespace), config.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, namespace),
            config.clone(),
        )
        .owns(
            api::<HorizontalPodAutoscaler>(&client, namespace),
            config.clone(),
        )
        .owns(api::<Ingress>(&client, namespace), config)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// One reconcile, measured: its outcome and duration go to the metrics and its span.
#[tracing::instrument(skip_all, fields(
    app = %app.name_any(),
    namespace = app.namespace().as_deref().unwrap_or("default"),
    generation = app.metadata.generation,
    outcome = tracing::field::Empty,
    otel.status_code = tracing::field::Empty,
    otel.status_message = tracing::field::Empty,
))]
pub async fn reconcile(app: Arc<RealtimeApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let key = ObjectRef::from_obj(app.as_ref());
    let result = reconcile_app(app, &ctx).await;
    let outcome = match &result {
        Ok((outcome, _)) => {
            ctx.failures.succeeded(&key);
            *outcome
        }
        Err(e) => {
            ctx.metrics.failed(e.kind());
            let span = tracing::Span::current();
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_message", e.to_string());
            Outcome::Failed
        }
    };
    tracing::Span::current().record("outcome", outcome.as_str());
    ctx.metrics.reconciled(outcome, started.elapsed());
    result.map(|(_, action)| action)
}

async fn reconcile_app(app: Arc<RealtimeApp>, ctx: &Context) -> Result<(Outcome, Action), Error> {
    let namespace = app.namespace().unwrap_or_else(|| "default".into());
    let name = app.name_any();
    let apps: Api<RealtimeApp> = Api::namespaced(ctx.client.clone(), &namespace);
    let previous = app.status.clone().unwrap_or_default();

    // 1. The server's own compiler decides whether the spec can run.
    let manifest = AppManifest {
        api_version: None,
        kind: None,
        metadata: ManifestMetadata {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
        },
        spec: app.spec.clone(),
    };
    let compiled = match switchboard_spec::compile(&manifest) {
        Ok(compiled) => compiled,
        Err(errors) => {
            degrade(
                ctx,
                &app,
                &apps,
                &previous,
                "InvalidSpec",
                &errors.to_string(),
            )
            .await?;
            return Ok((Outcome::Degraded, Action::requeue(RESYNC)));
        }
    };
    let plan = Plan::new(&app, &ctx.defaults)?;

    // 2. Every referenced Secret key must exist, or pods would crash-loop.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for (field, r) in plan.secret_keys() {
        let present = secrets
            .get_opt(&r.name)
            .await?
            .is_some_and(|s| s.data.is_some_and(|d| d.contains_key(&r.key)));
        if !present {
            let message = format!(
                "{field}: Secret {:?} with key {:?} not found in namespace {namespace}",
                r.name, r.key
            );
            degrade(ctx, &app, &apps, &previous, "MissingSecret", &message).await?;
            return Ok((Outcome::Degraded, Action::requeue(Duration::from_secs(30))));
        }
    }

    // 3. The history stream, where history topics live on NATS: a stream JetStream
    //    refuses would leave every new pod unready.
    if let (Some(nats), Some(config)) = (&app.spec.nats, history_stream::config(&compiled))
        && let Err(problem) = ctx.history_streams.ensure(nats, config).await
    {
        degrade(
            ctx,
            &app,
            &apps,
            &previous,
            problem.reason(),
            &problem.to_string(),
        )
        .await?;
        return Ok((Outcome::Degraded, Action::requeue(Duration::from_secs(30))));
    }

    // 4. Apply what is wanted; delete what no longer is.
    apply(
        &ctx.client,
        &namespace,
        &plan.config_map_name(),
        &plan.config_map()?,
    )
    .await?;
    apply(&ctx.client, &namespace, &name, &plan.deployment()?).await?;
    apply(&ctx.client, &namespace, &name, &plan.service()?).await?;
    apply_or_delete(
        &ctx.client,
        &namespace,
        &name,
        plan.pod_disruption_budget()?,
    )
    .await?;
    apply_or_delete(&ctx.client, &namespace, &name, plan.autoscaler()?).await?;
    apply_or_delete(&ctx.client, &namespace, &name, plan.ingress()?).await?;

    // 5. Report what the Deployment reports.
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&name)
        .await?;
    let d = deployment
        .as_ref()
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let desired = deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let (ready, updated) = (
        d.ready_replicas.unwrap_or(0),
        d.updated_replicas.unwrap_or(0),
    );
    let generation = app.metadata.generation;
    let rolled_out = updated >= desired && ready >= desired && d.replicas.unwrap_or(0) == updated;
    let conditions = vec![
        condition(
            &previous,
            generation,
            "Ready",
            ready >= desired && desired > 0,
            "Available",
            &format!("{ready}/{desired} replicas ready"),
        ),
        condition(
            &previous,
            generation,
            "Progressing",
            !rolled_out,
            if rolled_out {
                "RolledOut"
            } else {
                "RollingOut"
            },
            &format!("{updated}/{desired} replicas updated"),
        ),
        condition(
            &previous,
            generation,
            "Degraded",
            false,
            "Reconciled",
            "the spec is valid and applied",
        ),
    ];
    let status = RealtimeAppStatus {
        observed_generation: generation,
        replicas: d.replicas.unwrap_or(0),
        ready_replicas: ready,
        updated_replicas: updated,
        selector: Some(plan.selector()),
        config_hash: Some(plan.config_hash.clone()),
        endpoint: Some(plan.endpoint()),
        conditions,
    };
    if previous
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.status == "True")
    {
        publish(
            ctx,
            &app,
            EventType::Normal,
            "Recovered",
            "the spec is valid again and applied",
        )
        .await;
    }
    patch_status(&apps, &name, &status).await?;
    Ok((Outcome::Applied, Action::requeue(RESYNC)))
}

/// Retries failed reconciles with exponential backoff per app: 1 s, 2 s, ... 5 min.
pub fn error_policy(app: Arc<RealtimeApp>, error: &Error, ctx: Arc<Context>) -> Action {
    let (attempts, delay) = ctx
        .failures
        .failed(ObjectRef::from_obj(app.as_ref()), Instant::now());
    warn!(app = %app.name_any(), %error, attempts, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Sets Degraded (keeping the rest of the status, so the running app's readiness still
/// shows) and records an Event.
async fn degrade(
    ctx: &Context,
    app: &RealtimeApp,
    apps: &Api<RealtimeApp>,
    previous: &RealtimeAppStatus,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    info!(reason, message, "degraded");
    let generation = app.metadata.generation;
    let mut status = previous.clone();
    status.observed_generation = generation;
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != "Degraded")
        .cloned()
        .collect();
    conditions.push(condition(
        previous, generation, "Degraded", true, reason, message,
    ));
    status.conditions = conditions;
    let already = previous
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.status == "True" && c.message == message);
    if !already {
        publish(ctx, app, EventType::Warning, reason, message).await;
    }
    patch_status(apps, &app.name_any(), &status).await
}

async fn publish(ctx: &Context, app: &RealtimeApp, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &app.object_ref(&())).await {
        warn!(error = %e, "cannot record an event");
    }
}

/// A condition whose `lastTransitionTime` moves only when its status does.
fn condition(
    previous: &RealtimeAppStatus,
    generation: Option<i64>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

async fn patch_status(
    apps: &Api<RealtimeApp>,
    name: &str,
    status: &RealtimeAppStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "RealtimeApp",
        "status": status,
    });
    apps.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// A namespaced object kind the operator applies for an app.
pub trait Owned:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Owned for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// Server-side apply with the operator's one field manager.
#[tracing::instrument(skip_all, fields(kind = K::kind(&()).as_ref(), name = name))]
async fn apply<K>(client: &Client, namespace: &str, name: &str, object: &K) -> Result<(), Error>
where
    K: Owned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// Applies `object`, or deletes the one of that name when it is no longer wanted.
#[tracing::instrument(skip_all, fields(kind = K::kind(&()).as_ref(), name = name, wanted = object.is_some()))]
async fn apply_or_delete<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    object: Option<K>,
) -> Result<(), Error>
where
    K: Owned,
{
    match object {
        Some(o) => apply(client, namespace, name, &o).await,
        None => {
            let api: Api<K> = Api::namespaced(client.clone(), namespace);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}
