//! Client addresses behind proxies (`spec.network.trustedProxies`): the per-IP
//! connection limit counts whom a trusted proxy forwards for, and a header sent by an
//! untrusted peer (a client spoofing it) is ignored.

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;

/// The test app allowing one connection per address, believing `trusted`.
fn app(trusted: &str) -> String {
    with(
        TEST_APP,
        &[
            (
                "maxSubscriptionsPerConnection: 3",
                "maxSubscriptionsPerConnection: 3\n    maxConnectionsPerIp: 1",
            ),
            (
                "  heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}",
                &format!(
                    "  heartbeat: {{intervalSeconds: 25, timeoutSeconds: 10}}\n  network: {{trustedProxies: [\"{trusted}\"]}}"
                ),
            ),
        ],
    )
}

async fn connect_for(server: &TestServer, header: &str, value: &str) -> Result<Client, u16> {
    let mut req = server.url().into_client_request().unwrap();
    req.headers_mut().insert(
        tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    Client::connect_request(req).await.map_err(|r| r.status)
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    // The test's connections come from 127.0.0.1: here, the proxy.
    let server = TestServer::start(&app("127.0.0.1/32")).await;
    let _alice = connect_for(&server, "x-forwarded-for", "203.0.113.1")
        .await
        .unwrap();
    let _bob = connect_for(&server, "forwarded", "for=\"[2001:db8::2]:5000\"")
        .await
        .unwrap();
    // The client itself may send a header; the proxy appends the real hop to it.
    let _carol = connect_for(&server, "x-forwarded-for", "203.0.113.1, 198.51.100.3")
        .await
        .unwrap();
    assert_eq!(
        connect_for(&server, "x-forwarded-for", "203.0.113.1")
            .await
            .err(),
        Some(429),
        "a second connection for alice's address"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_forwarded_header_from_an_untrusted_peer_is_ignored() {
    // Only 10.0.0.0/8 is trusted; 127.0.0.1 is a client and its headers are its own.
    let server = TestServer::start(&app("10.0.0.0/8")).await;
    let _first = connect_for(&server, "x-forwarded-for", "203.0.113.1")
        .await
        .unwrap();
    assert_eq!(
        connect_for(&server, "x-forwarded-for", "203.0.113.2")
            .await
            .err(),
        Some(429),
        "a spoofed header does not buy another address"
    );
    server.stop().await;
}
