//! Authentication at upgrade, token refresh with `$ws:auth`, expiry, and Origin checks.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;

fn request(
    url: &str,
    headers: &[(&'static str, &str)],
) -> tokio_tungstenite::tungstenite::http::Request<()> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    req
}

async fn refused(url: &str, headers: &[(&'static str, &str)]) -> Refused {
    match Client::connect_request(request(url, headers)).await {
        Ok(c) => panic!("expected a refusal, got a connection: {}", c.open),
        Err(r) => r,
    }
}

const TOKEN_ONLY: &str = "anonymous: true\n    jwt:";

#[tokio::test]
async fn tokens_are_read_from_query_header_and_subprotocol() {
    let server = TestServer::start(TEST_APP).await;
    let token = hs256(claims("alice", 60));

    let c = server.client_with_token(&token).await;
    assert_eq!(c.open["user"]["id"], "alice");
    assert_eq!(c.open["user"]["anonymous"], false);

    let bearer = format!("Bearer {token}");
    let c = Client::connect_request(request(&server.url(), &[("authorization", &bearer)]))
        .await
        .unwrap();
    assert_eq!(c.open["user"]["id"], "alice");

    // Browsers offer the token as a subprotocol; the server must pick one they offered.
    let offer = format!("switchboard.v1, bearer.{token}");
    let c = Client::connect_request(request(
        &server.url(),
        &[("sec-websocket-protocol", &offer)],
    ))
    .await
    .unwrap();
    assert_eq!(c.open["user"]["id"], "alice");
    assert_eq!(c.headers["sec-websocket-protocol"], "switchboard.v1");
    server.stop().await;
}

#[tokio::test]
async fn without_anonymous_access_a_token_is_required() {
    let server = TestServer::start(&with(
        TEST_APP,
        &[(TOKEN_ONLY, "anonymous: false\n    jwt:")],
    ))
    .await;
    let r = refused(&server.url(), &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("UNAUTHENTICATED"), "{}", r.body);
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchboard_upgrades_rejected_total{reason="unauthenticated"}"#
        ),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_even_where_anonymous_is_allowed() {
    let server = TestServer::start(TEST_APP).await;
    let mut expired = claims("alice", 0);
    expired["exp"] = json!(now() - 10);
    let mut wrong_issuer = claims("alice", 60);
    wrong_issuer["iss"] = json!("https://evil.test");
    let mut wrong_audience = claims("alice", 60);
    wrong_audience["aud"] = json!("other-app");
    let mut no_exp = claims("alice", 60);
    no_exp.as_object_mut().unwrap().remove("exp");
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims("alice", 60),
        &EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap();
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", 60),
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    // {"alg":"none"} with valid claims and no signature.
    let alg_none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64url(&claims("alice", 60).to_string())
    );
    let cases = [
        ("expired", hs256(expired), "expired"),
        ("wrong issuer", hs256(wrong_issuer), "issuer"),
        ("wrong audience", hs256(wrong_audience), "audience"),
        ("no exp", hs256(no_exp), "exp"),
        ("algorithm outside the allow-list", hs512, "algorithm"),
        ("wrong key", wrong_key, "signature"),
        ("alg none", alg_none, "token"),
        ("garbage", "not.a.token".to_owned(), "token"),
    ];
    for (what, token, phrase) in cases {
        let r = refused(&format!("{}?access_token={token}", server.url()), &[]).await;
        assert_eq!(r.status, 401, "{what}");
        assert!(r.body.contains(phrase), "{what}: {}", r.body);
        assert!(
            !r.body.contains(&token),
            "{what}: the token must not be echoed"
        );
    }
    server.stop().await;
}

fn base64url(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn public_key_algorithms_verify_with_the_mounted_key() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (alg, name, public, private) in [
        (
            "EdDSA",
            Algorithm::EdDSA,
            "ed25519-public.pem",
            "ed25519-private.pem",
        ),
        ("ES256", Algorithm::ES256, "ec-public.pem", "ec-private.pem"),
    ] {
        let app = with(
            TEST_APP,
            &[
                ("algorithms: [HS256]", &format!("algorithms: [{alg}]")),
                (
                    "secretRef: {name: jwt, key: secret}",
                    &format!("publicKeyRef: {{name: keys, key: {public}}}"),
                ),
            ],
        );
        let server = TestServer::start(&app).await;
        let pem = std::fs::read(fixtures.join(private)).unwrap();
        let key = match name {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let token = jsonwebtoken::encode(&Header::new(name), &claims("kim", 60), &key).unwrap();
        let c = server.client_with_token(&token).await;
        assert_eq!(c.open["user"]["id"], "kim", "{alg}");
        // An HMAC token is refused by a public-key-only app.
        let r = refused(
            &format!("{}?access_token={}", server.url(), hs256(claims("kim", 60))),
            &[],
        )
        .await;
        assert_eq!(r.status, 401, "{alg}");
        server.stop().await;
    }
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_with_4401() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client_with_token(&hs256(claims("eve", 2))).await;
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, 4401);
    wait_for_metric(
        &server,
        r#"switchboard_connections_closed_total{reason="token_expired"}"#,
        1.0,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_connection_open() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client_with_token(&hs256(claims("eve", 2))).await;

    let e = c.call("$ws:auth", "bad", json!({"token": "garbage"})).await;
    assert_error(&e, "ERROR", "UNAUTHENTICATED", Some("bad"));
    let e = c
        .call(
            "$ws:auth",
            "other",
            json!({"token": hs256(claims("mallory", 60))}),
        )
        .await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("other"));
    let e = c.call("$ws:auth", "none", json!({})).await;
    assert_error(&e, "ERROR", "INVALID_ARGUMENT", Some("none"));

    let ack = c
        .call(
            "$ws:auth",
            "fresh",
            json!({"token": hs256(claims("eve", 60))}),
        )
        .await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    assert!(ack["payload"]["expiresAt"].as_u64().unwrap() > now() * 1000 + 50_000);
    c.expect_silence(Duration::from_secs(3)).await;
    c.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn upgrades_from_origins_not_on_the_list_get_403() {
    let app = with(
        TEST_APP,
        &[(
            "  auth:\n",
            "  allowedOrigins: [\"https://chat.example.com\"]\n  auth:\n",
        )],
    );
    let server = TestServer::start(&app).await;
    let r = refused(&server.url(), &[("origin", "https://evil.example.com")]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("PERMISSION_DENIED"), "{}", r.body);
    Client::connect_request(request(
        &server.url(),
        &[("origin", "https://chat.example.com")],
    ))
    .await
    .unwrap();
    // Non-browser clients send no Origin; the check protects browsers only.
    server.client().await;
    server.stop().await;
}

#[tokio::test]
async fn an_app_may_allow_an_hmac_and_a_public_key_algorithm_at_once() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let app = with(
        TEST_APP,
        &[
            ("algorithms: [HS256]", "algorithms: [HS256, ES256]"),
            (
                "secretRef: {name: jwt, key: secret}",
                "secretRef: {name: jwt, key: secret}\n      publicKeyRef: {name: keys, key: ec-public.pem}",
            ),
        ],
    );
    let server = TestServer::start(&app).await;
    let pem = std::fs::read(fixtures.join("ec-private.pem")).unwrap();
    let es256 = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims("kim", 60),
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    let c = server.client_with_token(&es256).await;
    assert_eq!(c.open["user"]["id"], "kim");
    let c = server.client_with_token(&hs256(claims("lee", 60))).await;
    assert_eq!(c.open["user"]["id"], "lee");
    // An algorithm of neither family is still refused.
    let ed = std::fs::read(fixtures.join("ed25519-private.pem")).unwrap();
    let eddsa = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims("kim", 60),
        &EncodingKey::from_ed_pem(&ed).unwrap(),
    )
    .unwrap();
    let r = refused(&format!("{}?access_token={eddsa}", server.url()), &[]).await;
    assert_eq!(r.status, 401);
    server.stop().await;
}

#[tokio::test]
async fn only_switchboard_v1_is_ever_selected_and_never_the_token() {
    let server = TestServer::start(TEST_APP).await;
    let token = hs256(claims("alice", 60));
    let offer = |protocols: &str| {
        let mut h: Vec<String> = UPGRADE_HEADERS.iter().map(|s| s.to_string()).collect();
        h.push(format!("Sec-WebSocket-Protocol: {protocols}"));
        h
    };
    for (offered, selected) in [
        ("evil.v9".to_owned(), None),
        (format!("bearer.{token}"), None),
        (format!("evil.v9, bearer.{token}"), None),
        (
            format!("bearer.{token}, switchboard.v1"),
            Some("switchboard.v1"),
        ),
    ] {
        let headers = offer(&offered);
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let head = raw_handshake(server.ws, &refs).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{offered}: {head}");
        let chosen = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("sec-websocket-protocol:")
                .map(|v| v.trim().to_owned())
        });
        assert_eq!(chosen.as_deref(), selected, "{offered}: {head}");
        assert!(!head.contains(&token), "the token is echoed: {head}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_refresh_that_drops_a_role_ends_the_subscriptions_it_allowed() {
    let server = TestServer::start(TEST_APP).await;
    let admin = |ttl| {
        let mut c = claims("ada", ttl);
        c["roles"] = json!(["admin"]);
        c
    };
    let mut c = server.client_with_token(&hs256(admin(60))).await;
    c.call("STAFF_JOIN", "s", json!({"team": "ops"})).await;
    c.call("FOLLOW", "f", json!({"feedId": "news"})).await;
    let m = server.metrics().await;
    assert_eq!(metric(&m, "switchboard_subscriptions"), Some(2.0), "{m}");

    // The same user, no longer an admin: staff:ops ends, feed:news stays.
    c.send(json!({"type": "$ws:auth", "meta": {"correlationId": "r"}, "payload": {"token": hs256(claims("ada", 60))}}))
        .await;
    let ended = c.recv().await;
    assert_eq!(ended["type"], "$ws:unsubscribed", "{ended}");
    assert_eq!(ended["payload"]["topic"], "staff:ops");
    assert_eq!(ended["payload"]["code"], "PERMISSION_DENIED");
    let ack = c.recv().await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    let m = server.metrics().await;
    assert_eq!(metric(&m, "switchboard_subscriptions"), Some(1.0), "{m}");
    // Joining again is refused like any first join without the role.
    let e = c.call("STAFF_JOIN", "s2", json!({"team": "ops"})).await;
    assert_error(&e, "ERROR", "PERMISSION_DENIED", Some("s2"));
    c.assert_alive().await;
    server.stop().await;
}

#[tokio::test]
async fn failed_refreshes_are_spaced_and_the_sixth_in_a_row_closes_with_1008() {
    let server = TestServer::start(TEST_APP).await;
    let mut c = server.client_with_token(&hs256(claims("eve", 60))).await;
    for i in 0..4 {
        let e = c
            .call("$ws:auth", &format!("f{i}"), json!({"token": "garbage"}))
            .await;
        assert_error(&e, "ERROR", "UNAUTHENTICATED", Some(&format!("f{i}")));
    }
    // Past four, one a second: this one is not even verified.
    let e = c
        .call("$ws:auth", "fast", json!({"token": "garbage"}))
        .await;
    assert_error(&e, "ERROR", "RESOURCE_EXHAUSTED", Some("fast"));
    assert!(
        e["payload"]["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms <= 1001),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = c.call("$ws:auth", "f4", json!({"token": "garbage"})).await;
    assert_error(&e, "ERROR", "UNAUTHENTICATED", Some("f4"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send(json!({"type": "$ws:auth", "meta": {"correlationId": "f5"}, "payload": {"token": "garbage"}}))
        .await;
    let (frames, code) = c.frames_until_close(Duration::from_secs(5)).await;
    assert_eq!(code, 1008, "{frames:?}");
    wait_for_metric(
        &server,
        r#"switchboard_connections_closed_total{reason="refresh_failures"}"#,
        1.0,
    )
    .await;
    server.stop().await;
}
