//! Shared harness for Switchboard's tests on real components: a control plane of real
//! binaries ([`ControlPlane`]), a real nats-server ([`NatsServer`]), a WebSocket [`Client`], a real Jaeger ([`Jaeger`]), and small helpers
//! for polling, the admin port and finding the workspace's binaries.

mod client;
mod control_plane;
mod http;
mod jaeger;
mod nats;

use std::time::Duration;

pub use client::{Client, Refused, WAIT};
pub use control_plane::{ControlPlane, run_tool};
pub use http::{http_get, metric};
pub use jaeger::Jaeger;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
pub use nats::NatsServer;
use switchboard_spec::crd::RealtimeApp;

/// Who holds the operator's leader Lease (`switchboard-operator` in `default`), if anyone.
pub async fn lease_holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("switchboard-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// A binary of this workspace (`switchboard-server`, `switchboard-operator`), from the
/// target directory this test runs from. `hack/test-all.sh` builds them first; when
/// running one test by hand, `cargo build --bins` before it, or it would test a stale
/// binary.
pub fn cargo_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .unwrap_or_else(|| panic!("no target directory above {}", exe.display()));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` first (hack/test-all.sh does)",
        path.display()
    );
    path
}

/// An annotation of a Deployment's pod template (the operator's config hash lives there).
pub fn template_annotation(
    d: &k8s_openapi::api::apps::v1::Deployment,
    key: &str,
) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// The example chat app (`manifests/examples/chat.yaml`), as users apply it.
pub fn chat_app() -> RealtimeApp {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/chat.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Polls `probe` every 100 ms until it yields, for up to `seconds`; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, seconds: u64, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..seconds * 10 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {seconds} s waiting for {what}");
}
