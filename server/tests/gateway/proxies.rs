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

/// The test app with the PROXY protocol on, believing `trusted`.
fn proxied_app(trusted: &str) -> String {
    app(trusted).replace(
        "network: {trustedProxies:",
        "network: {proxyProtocol: true, trustedProxies:",
    )
}

/// Connects, sends `header` first, then the upgrade; the WebSocket, or the HTTP status
/// (0 when the connection was closed before any answer).
async fn connect_proxied(
    server: &TestServer,
    header: &[u8],
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, u16> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(server.ws).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let req = server.url().into_client_request().unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(_) => Err(0),
    }
}

fn v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_when_the_balancer_is_trusted() {
    let server = TestServer::start(&proxied_app("127.0.0.1/32")).await;
    let _a = connect_proxied(&server, b"PROXY TCP4 203.0.113.1 127.0.0.1 40000 8080\r\n")
        .await
        .unwrap();
    let _b = connect_proxied(&server, &v2([198, 51, 100, 2], 40001))
        .await
        .unwrap();
    assert_eq!(
        connect_proxied(&server, &v2([203, 0, 113, 1], 40002))
            .await
            .err(),
        Some(429),
        "v1 and v2 name the same client"
    );
    // A balancer health check (v2 LOCAL) is the balancer's own connection.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let _health = connect_proxied(&server, &local).await.unwrap();
    // Without a header the connection is closed before HTTP.
    assert_eq!(connect_proxied(&server, b"").await.err(), Some(0));
    server.stop().await;
}

#[tokio::test]
async fn a_proxy_protocol_header_from_an_untrusted_peer_is_ignored() {
    let server = TestServer::start(&proxied_app("10.0.0.0/8")).await;
    let _a = connect_proxied(&server, b"PROXY TCP4 203.0.113.1 127.0.0.1 40000 8080\r\n")
        .await
        .unwrap();
    assert_eq!(
        connect_proxied(&server, b"PROXY TCP4 203.0.113.2 127.0.0.1 40001 8080\r\n")
            .await
            .err(),
        Some(429),
        "both are 127.0.0.1's"
    );
    server.stop().await;
}
