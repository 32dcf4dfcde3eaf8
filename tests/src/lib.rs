//! Shared harness for Switchboard's tests on real components: a control plane of real
//! binaries ([`ControlPlane`]), a real nats-server ([`NatsServer`]), a WebSocket [`Client`], a real Jaeger ([`Jaeger`]), and small helpers
//! for polling, the admin port and finding the workspace's binaries.
//!
//! The control plane and everything else that needs kube sit behind the default feature
//! `control-plane`. The server's and the load generator's tests leave it off, so their
//! examples and tests never compile kube or k8s-openapi.

// A test harness: a failed setup step must stop the test that needs it, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
#[cfg(feature = "control-plane")]
mod control_plane;
pub mod corpus;
mod http;
mod jaeger;
mod nats;
mod tls;

use std::time::Duration;

pub use client::{Client, Refused, WAIT};
#[cfg(feature = "control-plane")]
pub use control_plane::{ControlPlane, chat_app, lease_holder, run_tool, template_annotation};
pub use http::{http_get, metric};
pub use jaeger::Jaeger;
pub use nats::NatsServer;
pub use tls::{IssuedPair, TestCa};

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
