//! The RealtimeApp CRD on a real kube-apiserver: accepted as structural, the example
//! apps stored with their JSON Schemas intact, cross-field rules enforced by the
//! apiserver's CEL, the scale subresource working.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use switchboard_spec::crd::RealtimeApp;
use switchboard_tests::{ControlPlane, chat_app};

fn example(name: &str) -> RealtimeApp {
    let mut app = chat_app();
    app.metadata.name = Some(name.to_owned());
    app
}

/// The apiserver's refusal message for creating `app`.
async fn refusal(api: &Api<RealtimeApp>, app: &RealtimeApp) -> String {
    match api.create(&PostParams::default(), app).await {
        Ok(_) => panic!("the apiserver accepted an invalid RealtimeApp"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn the_crd_is_served_and_enforces_the_spec() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;
    let apps: Api<RealtimeApp> = Api::namespaced(client.clone(), "default");

    // The example chat app round-trips with its payload schemas intact.
    apps.create(&PostParams::default(), &example("chat"))
        .await?;
    let stored = apps.get("chat").await?;
    let join = stored
        .spec
        .routes
        .iter()
        .find(|r| r.message_type == "JOIN_ROOM")
        .unwrap();
    assert_eq!(
        join.payload.as_ref().unwrap()["properties"]["roomId"]["pattern"],
        json!("^[a-z0-9-]{1,32}$")
    );
    assert_eq!(
        serde_json::to_value(&stored.spec)?,
        serde_json::to_value(example("chat").spec)?,
        "nothing is pruned or defaulted away"
    );

    let mut two_actions = example("two-actions");
    two_actions.spec.routes[0].unsubscribe = two_actions.spec.routes[1].unsubscribe.clone();
    assert!(
        refusal(&apps, &two_actions)
            .await
            .contains("exactly one action")
    );

    let mut islands = example("islands");
    islands.spec.replicas = Some(3);
    assert!(refusal(&apps, &islands).await.contains("spec.nats.url"));

    let mut unknown_bucket = example("unknown-bucket");
    unknown_bucket.spec.routes[0].rate_limit[0].bucket = "nope".into();
    assert!(refusal(&apps, &unknown_bucket).await.contains("rateLimit"));

    let mut too_costly = example("too-costly");
    too_costly.spec.routes[0].rate_limit[0].cost = 1000;
    assert!(refusal(&apps, &too_costly).await.contains("capacity"));

    // The scale subresource drives spec.replicas (as `kubectl scale` and HPAs do).
    let mut scaled = example("scaled");
    scaled.spec.nats = Some(switchboard_spec::NatsSettings {
        url: "nats://nats.nats.svc:4222".into(),
        ..Default::default()
    });
    apps.create(&PostParams::default(), &scaled).await?;
    apps.patch_scale(
        "scaled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await?;
    assert_eq!(apps.get("scaled").await?.spec.replicas, Some(5));
    assert_eq!(
        apps.get_scale("scaled")
            .await?
            .spec
            .and_then(|s| s.replicas),
        Some(5)
    );
    Ok(())
}
