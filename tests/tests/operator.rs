//! The operator reconciling RealtimeApps on a real kube-apiserver: the objects it
//! applies, rolling on change, Degraded on an invalid spec without touching the running
//! Deployment (with an Event), recreating a deleted child, the scale subresource,
//! garbage collection of children when the app is deleted, and the history stream put
//! in place on a real nats-server before a spec rolls out, TLS Secrets checked and
//! mounted, and an Ingress rendered when asked. (No kubelet runs pods, so
//! the assertions are on objects.)

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchboard_operator::controller::{self, Context};
use switchboard_operator::resources::{CONFIG_HASH_ANNOTATION, Defaults};
use switchboard_spec::crd::RealtimeApp;
use switchboard_tests::{ControlPlane, NatsServer, chat_app, eventually, template_annotation};

fn hash(d: &Deployment) -> Option<String> {
    template_annotation(d, CONFIG_HASH_ANNOTATION)
}

fn condition(app: &RealtimeApp, type_: &str) -> Option<(String, String, String)> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The controller on `client`, until the token is cancelled.
fn run_operator(
    client: &kube::Client,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let defaults = Defaults {
        server_image: "switchboard-server:test".into(),
        otel_env: vec![],
    };
    let ctx = Arc::new(Context::new(client.clone(), defaults, "test".into()));
    let stop = tokio_util::sync::CancellationToken::new();
    let operator = tokio::spawn({
        let stop = stop.clone();
        async move { controller::run(ctx, &[], stop).await }
    });
    (stop, operator)
}

#[tokio::test]
async fn the_operator_reconciles_a_realtime_app() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;
    let apps: Api<RealtimeApp> = Api::namespaced(client.clone(), "default");

    let (stop, operator) = run_operator(&client);

    apps.create(&PostParams::default(), &chat_app()).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Objects with the right fields, owned by the app.
    let d = eventually("the Deployment", 15, || async {
        deployments.get_opt("chat").await.ok().flatten()
    })
    .await;
    let first_hash = hash(&d).expect("config hash annotation");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(
        d.metadata.owner_references.as_ref().unwrap()[0].kind,
        "RealtimeApp"
    );
    // Applied right after the Deployment, so it may not be there yet.
    let svc = eventually("the Service", 15, || async {
        services.get_opt("chat").await.ok().flatten()
    })
    .await;
    assert_eq!(
        svc.spec.as_ref().unwrap().session_affinity.as_deref(),
        Some("ClientIP")
    );
    let cm = configs.get("chat-config").await?;
    switchboard_spec::load(&cm.data.unwrap()["app.yaml"]).expect("the ConfigMap holds a valid app");

    // Status: selector, hash, endpoint, conditions (no kubelet: not ready, rolling out).
    let app = eventually("the status", 15, || async {
        apps.get("chat")
            .await
            .ok()
            .filter(|a| a.status.as_ref().is_some_and(|s| s.config_hash.is_some()))
    })
    .await;
    let status = app.status.clone().unwrap();
    assert_eq!(status.config_hash.as_deref(), Some(first_hash.as_str()));
    assert_eq!(status.selector.as_deref(), Some("switchboard.dev/app=chat"));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("ws://chat.default.svc:80/ws")
    );
    assert_eq!(condition(&app, "Degraded").unwrap().0, "False");
    assert_eq!(condition(&app, "Ready").unwrap().0, "False");

    // A spec change rolls the pods (new hash on the template).
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"limits": {"maxPayloadBytes": 4096}}})),
    )
    .await?;
    let rolled = eventually("a new config hash", 15, || async {
        deployments
            .get("chat")
            .await
            .ok()
            .and_then(|d| hash(&d))
            .filter(|h| *h != first_hash)
    })
    .await;

    // An invalid spec (valid for the CRD, refused by the compiler): Degraded, untouched.
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"limits": {"maxPayloadBytes": 64}}})),
    )
    .await?;
    let degraded = eventually("Degraded", 15, || async {
        apps.get("chat")
            .await
            .ok()
            .and_then(|a| condition(&a, "Degraded"))
            .filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(degraded.1, "InvalidSpec");
    assert!(
        degraded.2.contains("spec.limits.maxPayloadBytes"),
        "{}",
        degraded.2
    );
    // ... and says so in an Event on the app, as `kubectl describe rtapp chat` shows.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = eventually("a Warning Event for the invalid spec", 15, || async {
        events.list(&Default::default()).await.ok().and_then(|l| {
            l.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("InvalidSpec")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("chat")
            })
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("RealtimeApp")
    );
    assert!(
        event
            .note
            .as_deref()
            .is_some_and(|n| n.contains("spec.limits.maxPayloadBytes")),
        "{event:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hash(&deployments.get("chat").await?).as_deref(),
        Some(rolled.as_str()),
        "the running Deployment is untouched"
    );

    // Back to valid: Degraded clears.
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"limits": {"maxPayloadBytes": 8192}}})),
    )
    .await?;
    degraded_clears(&apps).await;

    // A deleted child comes back.
    services.delete("chat", &DeleteParams::default()).await?;
    eventually("the Service to be recreated", 15, || async {
        services
            .get_opt("chat")
            .await
            .ok()
            .flatten()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
    })
    .await;

    // A missing Secret: Degraded with the field named; nothing is rolled.
    let before = hash(&deployments.get("chat").await?);
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"auth": {"jwt": {
            "algorithms": ["HS256"], "secretRef": {"name": "chat-jwt", "key": "secret"}
        }}}})),
    )
    .await?;
    let missing = eventually("MissingSecret", 15, || async {
        apps.get("chat")
            .await
            .ok()
            .and_then(|a| condition(&a, "Degraded"))
            .filter(|c| c.1 == "MissingSecret")
    })
    .await;
    assert!(
        missing.2.contains("spec.auth.jwt.secretRef") && missing.2.contains("chat-jwt"),
        "{}",
        missing.2
    );
    assert_eq!(hash(&deployments.get("chat").await?), before);
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"auth": {"jwt": null}}})),
    )
    .await?;

    // `kubectl scale` (the scale subresource) reaches the Deployment.
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nats": {"url": "nats://nats:4222"}}})),
    )
    .await?;
    apps.patch_scale(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    eventually("3 replicas on the Deployment", 15, || async {
        deployments
            .get("chat")
            .await
            .ok()
            .filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(3))
    })
    .await;

    // More than one replica gets a PodDisruptionBudget.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    eventually("a PodDisruptionBudget", 15, || async {
        pdbs.get_opt("chat").await.ok().flatten()
    })
    .await;

    // Deleting the app garbage-collects every child (the controller manager's
    // garbage collector follows the owner references the operator set).
    cp.start_controller_manager()?;
    apps.delete("chat", &DeleteParams::background()).await?;
    eventually("the children to be collected", 90, || async {
        let left = [
            deployments.get_opt("chat").await.ok()?.is_some(),
            services.get_opt("chat").await.ok()?.is_some(),
            configs.get_opt("chat-config").await.ok()?.is_some(),
            pdbs.get_opt("chat").await.ok()?.is_some(),
        ];
        (!left.contains(&true)).then_some(())
    })
    .await;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    Ok(())
}

/// The app's Degraded condition once it is True with `reason`.
async fn degraded_with(apps: &Api<RealtimeApp>, reason: &str) -> (String, String, String) {
    eventually(&format!("Degraded: {reason}"), 20, || async {
        apps.get("chat")
            .await
            .ok()
            .and_then(|a| condition(&a, "Degraded"))
            .filter(|c| c.0 == "True" && c.1 == reason)
    })
    .await
}

/// Waits for the app's Degraded condition to be False again.
async fn degraded_clears(apps: &Api<RealtimeApp>) {
    eventually("Degraded to clear", 20, || async {
        apps.get("chat")
            .await
            .ok()
            .and_then(|a| condition(&a, "Degraded"))
            .filter(|c| c.0 == "False")
    })
    .await;
}

/// Touches the app so the operator reconciles it now (a NATS change is no watch event).
async fn nudge(apps: &Api<RealtimeApp>, value: &str) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"annotations": {"test/nudge": value}}});
    apps.patch("chat", &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_history_stream_is_in_place_before_a_spec_rolls_out() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;
    let apps: Api<RealtimeApp> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let (stop, operator) = run_operator(&client);
    let plain = NatsServer::start_without_jetstream().await;
    let nats = NatsServer::start().await;
    let js = async_nats::jetstream::new(nats.client().await);

    // The example chat app keeps history on its boards. On a NATS without JetStream
    // that cannot work: Degraded, and nothing is rolled out.
    let mut app = chat_app();
    app.spec.nats = Some(switchboard_spec::NatsSettings {
        url: plain.url(),
        ..Default::default()
    });
    apps.create(&PostParams::default(), &app).await?;
    let (_, _, message) = degraded_with(&apps, "JetStreamUnavailable").await;
    assert!(message.contains("-js"), "{message}");
    assert!(deployments.get_opt("chat").await?.is_none());

    // Another stream already holds the app's stored subjects: refused, with NATS's
    // own words, and still nothing rolled out.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SOMEONE_ELSE".into(),
        subjects: vec!["sb.default.chat.s.>".into()],
        ..Default::default()
    })
    .await?;
    let url = json!({"spec": {"nats": {"url": nats.url()}}});
    apps.patch("chat", &PatchParams::default(), &Patch::Merge(url))
        .await?;
    let (_, _, message) = degraded_with(&apps, "HistoryStreamRefused").await;
    assert!(message.contains("SB_SB_DEFAULT_CHAT"), "{message}");
    assert!(message.contains("overlap"), "{message}");
    assert!(deployments.get_opt("chat").await?.is_none());

    // Once the subjects are free, the operator creates the stream and rolls out.
    js.delete_stream("SOMEONE_ELSE").await?;
    nudge(&apps, "1").await?;
    let d = eventually("the Deployment", 20, || async {
        deployments.get_opt("chat").await.ok().flatten()
    })
    .await;
    let mut stream = js.get_stream("SB_SB_DEFAULT_CHAT").await?;
    let info = stream.info().await?;
    assert_eq!(info.config.subjects, ["sb.default.chat.s.>"]);
    assert_eq!(
        info.config.max_messages_per_subject, 100,
        "the boards' size"
    );
    degraded_clears(&apps).await;

    // A change JetStream cannot make on the running app (a byte bound far beyond
    // any storage): Degraded, the running Deployment untouched, the stream as it was.
    let huge = json!({"spec": {"nats": {"historyMaxBytes": 1u64 << 60}}});
    apps.patch("chat", &PatchParams::default(), &Patch::Merge(huge))
        .await?;
    let (_, _, message) = degraded_with(&apps, "HistoryStreamRefused").await;
    assert!(message.contains("insufficient storage"), "{message}");
    assert_eq!(hash(&deployments.get("chat").await?), hash(&d));
    assert_eq!(stream.info().await?.config.max_bytes, 256 * 1024 * 1024);

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    Ok(())
}

#[tokio::test]
async fn tls_pods_and_an_ingress_follow_the_spec() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;
    let apps: Api<RealtimeApp> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let (stop, operator) = run_operator(&client);

    // TLS from a Secret that is not there yet: Degraded, the field named, no rollout.
    let mut app = chat_app();
    app.spec.tls = Some(switchboard_spec::TlsSettings {
        secret_ref: switchboard_spec::SecretRef {
            name: "chat-tls".into(),
        },
        min_version: None,
    });
    apps.create(&PostParams::default(), &app).await?;
    let (_, _, message) = degraded_with(&apps, "MissingSecret").await;
    assert!(
        message.contains("spec.tls.secretRef") && message.contains("tls.crt"),
        "{message}"
    );
    assert!(deployments.get_opt("chat").await?.is_none());

    // The kubernetes.io/tls Secret cert-manager would write: mounted, endpoint wss://.
    let pair = switchboard_tests::TestCa::new("test CA").issue(&["chat.default.svc"]);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "chat-tls"},
                "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem},
            }))?,
        )
        .await?;
    nudge(&apps, "tls").await?;
    degraded_clears(&apps).await;
    let d = deployments.get("chat").await?;
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert!(
        pod.volumes.unwrap_or_default().iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("chat-tls"))
    );
    let endpoint = eventually("a wss:// endpoint", 15, || async {
        apps.get("chat")
            .await
            .ok()
            .and_then(|a| a.status?.endpoint)
            .filter(|e| e.starts_with("wss://"))
    })
    .await;
    assert_eq!(endpoint, "wss://chat.default.svc:80/ws");

    // An Ingress when asked (accepted by the API server's own validation), gone when not.
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ingress": {
            "host": "chat.example.com", "className": "nginx", "tlsSecretName": "chat-public"
        }}})),
    )
    .await?;
    let ingress = eventually("the Ingress", 15, || async {
        ingresses.get_opt("chat").await.ok().flatten()
    })
    .await;
    let annotations = ingress.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/backend-protocol")
            .map(String::as_str),
        Some("HTTPS")
    );
    assert_eq!(
        ingress.metadata.owner_references.unwrap()[0].kind,
        "RealtimeApp"
    );
    eventually("the Ingress's endpoint", 15, || async {
        apps.get("chat")
            .await
            .ok()
            .and_then(|a| a.status?.endpoint)
            .filter(|e| e == "wss://chat.example.com/ws")
    })
    .await;
    apps.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ingress": null}})),
    )
    .await?;
    eventually("the Ingress to go", 15, || async {
        ingresses.get_opt("chat").await.ok().filter(|i| i.is_none())
    })
    .await;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    Ok(())
}
