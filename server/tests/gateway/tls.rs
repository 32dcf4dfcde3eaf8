//! TLS on the listener (`spec.tls.secretRef`): `wss://` with a certificate from a test
//! CA, plain `ws://` refused, the minimum version enforced, and a renewed certificate
//! served to new connections without a restart while open ones carry on.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use switchboard_tests::{Client, IssuedPair, TestCa};
use tokio_tungstenite::Connector;

use crate::harness::*;

const SECRET: &str = "chat-tls";

fn app(min_version: Option<&str>) -> String {
    let min = min_version.map_or(String::new(), |v| format!(", minVersion: \"{v}\""));
    with(
        TEST_APP,
        &[(
            "  heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}",
            &format!(
                "  heartbeat: {{intervalSeconds: 25, timeoutSeconds: 10}}\n  tls: {{secretRef: {{name: {SECRET}}}{min}}}"
            ),
        )],
    )
}

/// A server with `pair` mounted the way kubelet mounts a Secret (see [`rotate`]).
async fn start(yaml: &str, pair: &IssuedPair) -> TestServer {
    let server = TestServer::start_with_secrets(
        yaml,
        None,
        "test-0",
        &[
            (SECRET, "tls.crt", pair.cert_pem.as_bytes()),
            (SECRET, "tls.key", pair.key_pem.as_bytes()),
        ],
    )
    .await;
    // The same bytes behind kubelet's links: nothing for the server to reload.
    rotate(&server, pair, "v1");
    server
}

fn wss(server: &TestServer) -> String {
    format!("wss://{}/ws", server.ws)
}

/// Whether a `wss://` upgrade with `tls` completes (the handshake and the 101).
async fn handshake_ok(server: &TestServer, tls: std::sync::Arc<rustls::ClientConfig>) -> bool {
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        wss(server),
        None,
        false,
        Some(Connector::Rustls(tls)),
    );
    matches!(
        tokio::time::timeout(Duration::from_secs(5), connecting).await,
        Ok(Ok(_))
    )
}

/// Replaces the Secret's files the way kubelet does: the new pair in a fresh
/// directory, then one rename of the `..data` link the key files point through, so a
/// reader never sees a new certificate with an old key.
fn rotate(server: &TestServer, pair: &IssuedPair, version: &str) {
    let dir = server.secret_path(SECRET, "");
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(data.join("tls.key"), &pair.key_pem).unwrap();
    let link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(Path::new(&format!("..{version}")), &link).unwrap();
    std::fs::rename(&link, dir.join("..data")).unwrap();
    for key in ["tls.crt", "tls.key"] {
        let path = dir.join(key);
        if !path.is_symlink() {
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink(Path::new("..data").join(key), &path).unwrap();
        }
    }
}

#[tokio::test]
async fn wss_clients_are_served_and_plain_ws_is_not() {
    let ca = TestCa::new("test CA");
    let server = start(&app(None), &ca.issue(&["127.0.0.1"])).await;
    let mut alice = Client::connect_tls(&wss(&server), ca.client_config(&[])).await;
    let mut bob = Client::connect_tls(&wss(&server), ca.client_config(&[])).await;
    alice.call("JOIN", "a", json!({"roomId": "lobby"})).await;
    bob.call("JOIN", "b", json!({"roomId": "lobby"})).await;
    alice
        .tell("SAY", json!({"roomId": "lobby", "text": "over TLS"}))
        .await;
    assert_eq!(bob.recv().await["payload"]["text"], "over TLS");

    // A client speaking plain WebSocket to a TLS port gets no upgrade.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(server.url()),
    )
    .await;
    assert!(
        matches!(plain, Ok(Err(_))),
        "plain ws:// must fail: {plain:?}"
    );
    // A client that does not trust the issuer refuses the server.
    assert!(!handshake_ok(&server, TestCa::new("other CA").client_config(&[])).await);
    wait_for_metric(
        &server,
        "switchboard_upgrades_rejected_total{reason=\"tls_handshake\"}",
        2.0,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let ca = TestCa::new("test CA");
    let pair = ca.issue(&["127.0.0.1"]);
    let tls12 = || ca.client_config(&[&rustls::version::TLS12]);
    let default = start(&app(None), &pair).await;
    assert!(
        handshake_ok(&default, tls12()).await,
        "1.2 is offered by default"
    );
    default.stop().await;
    let strict = start(&app(Some("1.3")), &pair).await;
    assert!(
        !handshake_ok(&strict, tls12()).await,
        "minVersion 1.3 refuses 1.2"
    );
    assert!(handshake_ok(&strict, ca.client_config(&[&rustls::version::TLS13])).await);
    strict.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let server = start(&app(None), &old_ca.issue(&["127.0.0.1"])).await;
    let mut open = Client::connect_tls(&wss(&server), old_ca.client_config(&[])).await;
    open.call("JOIN", "j", json!({"roomId": "r"})).await;
    assert!(!handshake_ok(&server, new_ca.client_config(&[])).await);

    rotate(&server, &new_ca.issue(&["127.0.0.1"]), "v2");
    wait_for_metric(
        &server,
        "switchboard_tls_reloads_total{result=\"loaded\"}",
        1.0,
    )
    .await;
    assert!(handshake_ok(&server, new_ca.client_config(&[])).await);
    assert!(!handshake_ok(&server, old_ca.client_config(&[])).await);
    // The connection opened before the renewal is untouched by it.
    open.tell("SAY", json!({"roomId": "r", "text": "still here"}))
        .await;
    assert_eq!(open.recv().await["payload"]["text"], "still here");

    // A renewal that is not a pair (a key of another certificate) is not served: the
    // last good certificate stays.
    let broken = IssuedPair {
        cert_pem: new_ca.issue(&["127.0.0.1"]).cert_pem,
        key_pem: new_ca.issue(&["127.0.0.1"]).key_pem,
    };
    rotate(&server, &broken, "v3");
    wait_for_metric(
        &server,
        "switchboard_tls_reloads_total{result=\"failed\"}",
        1.0,
    )
    .await;
    assert!(handshake_ok(&server, new_ca.client_config(&[])).await);
    server.stop().await;
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_stops_the_start_with_the_file_named() {
    let ca = TestCa::new("test CA");
    let (one, other) = (ca.issue(&["127.0.0.1"]), ca.issue(&["127.0.0.1"]));
    let secrets = std::env::temp_dir().join(format!("sb-tls-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(secrets.join(SECRET)).unwrap();
    std::fs::create_dir_all(secrets.join("jwt")).unwrap();
    std::fs::write(secrets.join("jwt/secret"), JWT_SECRET).unwrap();
    std::fs::write(secrets.join(SECRET).join("tls.crt"), &one.cert_pem).unwrap();
    std::fs::write(secrets.join(SECRET).join("tls.key"), &other.key_pem).unwrap();
    let err = switchboard_server::Server::bind(switchboard_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        app: switchboard_spec::load(&app(None)).unwrap(),
        secrets_dir: secrets.clone(),
        instance: "test-0".into(),
        nats_url: None,
        demo: false,
    })
    .await
    .err()
    .unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("spec.tls.secretRef"), "{text}");
    assert!(text.contains("chat-tls/tls.key"), "{text}");
    std::fs::remove_dir_all(&secrets).unwrap();
}
