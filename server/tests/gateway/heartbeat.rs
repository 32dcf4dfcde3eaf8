//! Server pings, pong timeouts (4001) and idle timeouts (4003).

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn fast_heartbeat() -> String {
    with(
        TEST_APP,
        &[(
            "heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}",
            "heartbeat: {intervalSeconds: 1, timeoutSeconds: 1}",
        )],
    )
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_4001() {
    let server = TestServer::start(&fast_heartbeat()).await;
    let mut c = server.client().await;
    // Not reading means not answering the server's pings.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(c.expect_close(Duration::from_secs(3)).await, 4001);
    wait_for_metric(
        &server,
        r#"switchboard_connections_closed_total{reason="heartbeat_timeout"}"#,
        1.0,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let server = TestServer::start(&fast_heartbeat()).await;
    let mut c = server.client().await;
    // Reading answers pings (tungstenite replies automatically).
    c.expect_silence(Duration::from_millis(3500)).await;
    c.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_with_4003_and_messages_keep_them_alive() {
    let app = with(
        TEST_APP,
        &[(
            "handshakeTimeoutSeconds: 2",
            "handshakeTimeoutSeconds: 2\n    idleTimeoutSeconds: 1",
        )],
    );
    let server = TestServer::start(&app).await;
    let mut busy = server.client().await;
    let mut idle = server.client().await;
    for i in 0..5 {
        let ack = busy
            .call("JOIN", &format!("j{i}"), json!({"roomId": "r"}))
            .await;
        assert_eq!(ack["type"], "$ws:ack");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(idle.expect_close(Duration::from_secs(1)).await, 4003);
    busy.call("LEAVE", "l", json!({"roomId": "r"})).await;
    server.stop().await;
}
