//! The container images, as `docker run` runs them: built from the Dockerfile's own
//! targets by `hack/images.sh` (which `hack/test-all.sh` runs first), on the Docker
//! engine of `hack/docker.sh` (`DOCKER_HOST`). Containers use the host's network and
//! bind loopback ports only.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

use switchboard_tests::{Client, eventually, http_get};

const SERVER: &str = concat!("switchboard-server:", env!("CARGO_PKG_VERSION"));
const OPERATOR: &str = concat!("switchboard-operator:", env!("CARGO_PKG_VERSION"));

/// `docker ARGS`, on the engine the test run started. Without one the test fails,
/// saying how to get it.
fn docker(args: &[&str]) -> Output {
    assert!(
        std::env::var_os("DOCKER_HOST").is_some(),
        "DOCKER_HOST is not set: run `bash hack/images.sh` and export the DOCKER_HOST \
         `bash hack/docker.sh status` prints (hack/test-all.sh does both)"
    );
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("docker {args:?}: {e} (hack/docker.sh puts docker on the tools PATH)")
        })
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Removes the container when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[tokio::test]
async fn the_server_image_serves_the_example_app_as_nonroot_and_drains_on_docker_stop() {
    let user = docker_ok(&["image", "inspect", SERVER, "--format", "{{.Config.User}}"]);
    assert_eq!(user.trim(), "65532:65532");
    // Distroless-like: nothing to exec but the server.
    let shell = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        SERVER,
        "-c",
        "true",
    ]);
    assert!(!shell.status.success(), "the image has a shell");

    let (ws, admin) = (free_addr(), free_addr());
    let name = format!("sb-image-test-{:x}", rand::random::<u32>());
    let id = docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        SERVER,
        "--listen",
        &ws.to_string(),
        "--admin-listen",
        &admin.to_string(),
    ]);
    let container = Container(id.trim().to_owned());
    eventually("the container's /readyz", 30, || async move {
        tokio::net::TcpStream::connect(admin).await.ok()?;
        (http_get(admin, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let mut client = Client::connect(&format!("ws://{ws}/ws")).await;
    let open = client.open.clone();
    assert_eq!(open["app"], "chat", "the built-in example app: {open}");
    // The CA bundle the runtime base assembles, for JWKS and NATS TLS (`docker cp` to
    // stdout gives a tar of the file).
    let bundle = docker_ok(&[
        "cp",
        &format!("{}:/etc/ssl/certs/ca-certificates.crt", container.0),
        "-",
    ]);
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 100,
        "the image has no CA bundle"
    );

    // docker stop is kubelet's SIGTERM: the client is told to go, and the server exits 0.
    let stop = tokio::task::spawn_blocking({
        let id = container.0.clone();
        move || docker_ok(&["stop", "--time", "20", &id])
    });
    let (frames, code) = client
        .frames_until_close(std::time::Duration::from_secs(20))
        .await;
    assert!(
        frames.iter().any(|f| f["type"] == "$ws:drain"),
        "{frames:?}"
    );
    assert_eq!(code, 1001);
    stop.await.unwrap();
    let exit = docker_ok(&["inspect", &container.0, "--format", "{{.State.ExitCode}}"]);
    assert_eq!(exit.trim(), "0", "{}", docker_ok(&["logs", &container.0]));
}

#[test]
fn the_operator_image_prints_the_checked_in_crd() {
    let user = docker_ok(&["image", "inspect", OPERATOR, "--format", "{{.Config.User}}"]);
    assert_eq!(user.trim(), "65532:65532");
    let crd = docker_ok(&["run", "--rm", OPERATOR, "crd"]);
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/realtimeapp.yaml"
    ))
    .unwrap();
    assert_eq!(crd, checked_in, "the image's operator is not this tree's");
}
