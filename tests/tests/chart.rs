//! The Helm chart: lint clean, values checked by its schema, the `kubectl apply` bundle
//! (`manifests/install.yaml`) rendered from it without drift, and install / upgrade /
//! uninstall on a real kube-apiserver leaving nothing of the operator behind.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams};
use switchboard_tests::{ControlPlane, run_tool};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/switchboard");
const BUNDLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/install.yaml");

/// What `kubectl apply -f manifests/install.yaml` users get: the chart rendered with
/// its defaults into `switchboard-system`, CRD included, and that namespace itself.
async fn render_bundle() -> anyhow::Result<String> {
    let rendered = run_tool(
        "helm",
        &[
            "template",
            "switchboard",
            CHART,
            "--namespace",
            "switchboard-system",
            "--include-crds",
        ],
    )
    .await?;
    Ok(format!(
        "# Switchboard's operator and the RealtimeApp CRD, for `kubectl apply -f`.\n\
         # Generated from charts/switchboard with its default values; do not edit:\n\
         #   bash hack/generate.sh\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: switchboard-system\n{rendered}"
    ))
}

#[tokio::test]
async fn the_chart_lints_and_the_install_bundle_is_current() -> anyhow::Result<()> {
    run_tool("helm", &["lint", "--strict", CHART]).await?;
    let bundle = render_bundle().await?;
    if std::env::var_os("SWITCHBOARD_UPDATE_GENERATED").is_some() {
        std::fs::write(BUNDLE, &bundle)?;
    }
    let checked_in = std::fs::read_to_string(BUNDLE).unwrap_or_default();
    assert!(
        checked_in == bundle,
        "manifests/install.yaml is stale: run `bash hack/generate.sh`"
    );
    Ok(())
}

#[tokio::test]
async fn bad_values_fail_at_install_with_the_field_named() {
    for (set, field) in [
        ("replicas=two", "/replicas"),
        ("imag.tag=x", "imag"),
        ("logFormat=xml", "/logFormat"),
        (
            "leaderElection.leaseDurationSeconds=1",
            "/leaderElection/leaseDurationSeconds",
        ),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
    ] {
        let err = run_tool("helm", &["template", "sb", CHART, "--set", set])
            .await
            .expect_err(set)
            .to_string();
        assert!(err.contains(field), "--set {set}: {err}");
    }
}

#[tokio::test]
async fn a_pod_monitor_scrapes_the_app_pods_when_asked() -> anyhow::Result<()> {
    let off = run_tool("helm", &["template", "sb", CHART]).await?;
    assert!(!off.contains("kind: PodMonitor"));
    let on = run_tool(
        "helm",
        &[
            "template",
            "sb",
            CHART,
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "watchNamespaces={shop}",
        ],
    )
    .await?;
    let monitor = on
        .split("\n---")
        .find(|doc| doc.contains("kind: PodMonitor"))
        .expect("a PodMonitor");
    // The labels the operator puts on every server pod, and the admin port's name.
    for line in [
        "app.kubernetes.io/name: switchboard-server",
        "app.kubernetes.io/managed-by: switchboard-operator",
        "- shop",
        "port: admin",
    ] {
        assert!(monitor.contains(line), "{line} missing:\n{monitor}");
    }
    Ok(())
}

/// Objects the release made, by its instance label.
async fn released<K>(client: &kube::Client) -> anyhow::Result<usize>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let lp = ListParams::default().labels("app.kubernetes.io/instance=switchboard");
    Ok(api.list(&lp).await?.items.len())
}

async fn operator_objects(client: &kube::Client) -> anyhow::Result<[usize; 7]> {
    Ok([
        released::<Deployment>(client).await?,
        released::<ServiceAccount>(client).await?,
        released::<Service>(client).await?,
        released::<ClusterRole>(client).await?,
        released::<ClusterRoleBinding>(client).await?,
        released::<Role>(client).await?,
        released::<RoleBinding>(client).await?,
    ])
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let install = [
        "install",
        "switchboard",
        CHART,
        "--namespace",
        "switchboard-system",
        "--create-namespace",
    ];
    cp.helm(&install).await?;
    // One operator, cluster-wide: a ClusterRole, no leader Lease Role.
    assert_eq!(operator_objects(&client).await?, [1, 1, 1, 1, 1, 0, 0]);
    cp.kubectl(&["get", "crd", "realtimeapps.switchboard.dev"])
        .await?;
    // The apiserver accepts every object of the kubectl bundle too.
    cp.kubectl(&["apply", "--dry-run=server", "-f", BUNDLE])
        .await?;

    // Two replicas, two namespaces: leader election on, Roles instead of a ClusterRole.
    cp.helm(&[
        "upgrade",
        "switchboard",
        CHART,
        "--namespace",
        "switchboard-system",
        "--set",
        "replicas=2",
        "--set",
        "watchNamespaces={default,kube-public}",
    ])
    .await?;
    assert_eq!(operator_objects(&client).await?, [1, 1, 1, 0, 0, 3, 3]);
    let deployment = Api::<Deployment>::namespaced(client.clone(), "switchboard-system")
        .get("switchboard-operator")
        .await?;
    let args = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    for arg in [
        "--leader-elect",
        "--lease-name=switchboard-operator",
        "--watch-namespace=default",
        "--watch-namespace=kube-public",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} missing from {args:?}");
    }

    cp.helm(&[
        "uninstall",
        "switchboard",
        "--namespace",
        "switchboard-system",
        "--wait",
    ])
    .await?;
    assert_eq!(operator_objects(&client).await?, [0; 7]);
    // Helm keeps CRDs (and so every RealtimeApp) on uninstall, by design.
    cp.kubectl(&["get", "crd", "realtimeapps.switchboard.dev"])
        .await?;
    Ok(())
}
