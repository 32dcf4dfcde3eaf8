//! The `switchboard-operator` binary as a user runs it beside a cluster: admin port
//! (`/healthz`, `/readyz`, `/metrics`), leader election on a Lease released on SIGTERM,
//! usage errors for bad flags.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, PostParams};
use switchboard_spec::crd::RealtimeApp;
use switchboard_tests::{ControlPlane, chat_app, eventually, http_get, lease_holder, metric};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-operator");

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

#[tokio::test]
async fn the_binary_leads_reconciles_reports_and_releases_on_sigterm() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;
    let admin = free_addr();
    let mut child = Command::new(BIN)
        .args(["run", "--leader-elect", "--lease-duration-seconds", "3"])
        .arg("--admin-listen")
        .arg(admin.to_string())
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("POD_NAME", "operator-0")
        .env("POD_NAMESPACE", "default")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;

    // Live at once; ready once the API answered.
    eventually("/healthz", 15, || async {
        tokio::net::TcpStream::connect(admin).await.ok()
    })
    .await;
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    eventually("/readyz", 15, || async {
        (http_get(admin, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    // It takes the Lease and reconciles what is applied.
    let holder = eventually("the Lease", 15, || lease_holder(&client)).await;
    assert_eq!(holder, "operator-0");
    Api::<RealtimeApp>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &chat_app())
        .await?;
    let text = eventually("an applied reconcile in /metrics", 15, || async {
        let (_, text) = http_get(admin, "/metrics").await;
        metric(
            &text,
            "switchboard_operator_reconciles_total{outcome=\"applied\"}",
        )
        .is_some_and(|n| n >= 1.0)
        .then_some(text)
    })
    .await;
    assert_eq!(metric(&text, "switchboard_operator_leader"), Some(1.0));
    assert!(text.contains("switchboard_operator_reconcile_duration_seconds_bucket"));

    // SIGTERM: a clean exit that hands the Lease back.
    let pid = child.id().expect("running").to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    assert!(status.success(), "{status}");
    assert_eq!(lease_holder(&client).await, None);
    Ok(())
}

#[tokio::test]
async fn bad_flags_are_refused_with_the_valid_range() {
    let out = Command::new(BIN)
        .args(["run", "--lease-duration-seconds", "1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--lease-duration-seconds"), "{stderr}");
    assert!(stderr.contains("3..=300"), "{stderr}");
}
