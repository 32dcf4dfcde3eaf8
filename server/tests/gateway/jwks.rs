//! JWT keys from a JWKS endpoint (`spec.auth.jwt.jwks`): a real HTTP issuer on a
//! loopback port serves the key set, rotates it and counts its requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;

/// What the issuer answers `GET /jwks` with.
#[derive(Clone)]
enum Answer {
    Keys(Vec<Jwk>),
    Status(u16),
    Body(&'static str),
}

/// A JWKS endpoint: serves `answer`, counts requests. Dropping it (or `stop`) closes
/// the listener and every connection, so the endpoint is unreachable after.
struct Issuer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (answer.clone(), requests.clone());
        let task = tokio::spawn(async move {
            // Connections end with the accept task: aborting it makes the issuer gone.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (a, r) = (a.clone(), r.clone());
                connections.spawn(async move {
                    let service = service_fn(move |_req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let answer = a.lock().unwrap().clone();
                        async move {
                            let (status, body) = match answer {
                                Answer::Keys(keys) => {
                                    (200, serde_json::to_string(&JwkSet { keys }).unwrap())
                                }
                                Answer::Status(s) => (s, "unavailable".to_owned()),
                                Answer::Body(b) => (200, b.to_owned()),
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            answer,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn serve(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// An Ed25519 signing key made for the test, and its public JWK under `kid`.
struct Signer {
    kid: String,
    key: EncodingKey,
    alg: Algorithm,
}

impl Signer {
    fn ed25519(kid: &str) -> Self {
        // PKCS#8 v1 of an Ed25519 seed (RFC 8410): a fixed prefix, then 32 random bytes.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&rand::random::<[u8; 32]>());
        Self {
            kid: kid.to_owned(),
            key: EncodingKey::from_ed_der(&der),
            alg: Algorithm::EdDSA,
        }
    }

    /// The test fixture's P-256 key.
    fn es256(kid: &str) -> Self {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let pem = std::fs::read(fixtures.join("ec-private.pem")).unwrap();
        Self {
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_pem(&pem).unwrap(),
            alg: Algorithm::ES256,
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// A token the test app accepts, signed with this key, naming `kid` (or none).
    fn token_as(&self, alg: Algorithm, kid: Option<&str>) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims("kim", 60), &self.key).unwrap()
    }

    fn token(&self) -> String {
        self.token_as(self.alg, Some(&self.kid))
    }
}

/// The test app verifying `algorithms` with keys from `issuer`.
fn app(issuer: &Issuer, algorithms: &str, refresh_seconds: u32) -> String {
    with(
        TEST_APP,
        &[
            (
                "algorithms: [HS256]",
                &format!("algorithms: [{algorithms}]"),
            ),
            (
                "secretRef: {name: jwt, key: secret}",
                &format!(
                    "jwks: {{url: \"{}\", refreshSeconds: {refresh_seconds}}}",
                    issuer.url()
                ),
            ),
        ],
    )
}

async fn ready(server: &TestServer) {
    eventually("readiness", 15, || async {
        (server.admin_get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}

async fn attempt(server: &TestServer, token: &str) -> Result<Client, Refused> {
    let url = format!("{}?access_token={token}", server.url());
    Client::connect_request(url.into_client_request().unwrap()).await
}

async fn connects(server: &TestServer, token: &str) -> Value {
    server.client_with_token(token).await.open
}

/// Refused like any invalid token: 401, UNAUTHENTICATED, and `phrase` in the message.
async fn refused(server: &TestServer, token: &str, phrase: &str) {
    match attempt(server, token).await {
        Ok(c) => panic!("expected a refusal, got a connection: {}", c.open),
        Err(r) => {
            assert_eq!(r.status, 401, "{}", r.body);
            assert!(r.body.contains("UNAUTHENTICATED"), "{}", r.body);
            assert!(r.body.contains(phrase), "{phrase:?} not in {}", r.body);
        }
    }
}

async fn requests_reach(issuer: &Issuer, n: usize, seconds: u64) {
    eventually(&format!("{n} JWKS requests"), seconds, || async {
        (issuer.requests() >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_token_signed_by_a_published_key_connects() {
    let a = Signer::ed25519("a");
    let issuer = Issuer::start(Answer::Keys(vec![a.jwk()])).await;
    let server = TestServer::start(&app(&issuer, "EdDSA", 300)).await;
    ready(&server).await;
    assert_eq!(connects(&server, &a.token()).await["user"]["id"], "kim");
    // Without a kid, the set's only key is the one.
    assert_eq!(
        connects(&server, &a.token_as(Algorithm::EdDSA, None)).await["user"]["id"],
        "kim"
    );
    // The right kid with another key's signature is a bad signature.
    let forger = Signer::ed25519("a");
    refused(&server, &forger.token(), "signature").await;
    let m = server.metrics().await;
    assert_eq!(metric(&m, "switchboard_jwks_keys"), Some(1.0), "{m}");
    server.stop().await;
}

#[tokio::test]
async fn rotation_picks_up_a_new_kid_at_once_and_drops_a_removed_key_after_a_refresh() {
    let (a, b) = (Signer::ed25519("a"), Signer::ed25519("b"));
    let issuer = Issuer::start(Answer::Keys(vec![a.jwk()])).await;
    let server = TestServer::start(&app(&issuer, "EdDSA", 5)).await;
    ready(&server).await;
    assert_eq!(issuer.requests(), 1);
    connects(&server, &a.token()).await;

    // The issuer rotates b in: its first token is verified after one fetch, not in 5 s.
    issuer.serve(Answer::Keys(vec![a.jwk(), b.jwk()]));
    let asked = Instant::now();
    connects(&server, &b.token()).await;
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(issuer.requests(), 2);
    // Both stay valid while both are published.
    connects(&server, &a.token()).await;
    connects(&server, &b.token()).await;
    // With two keys a token must say which.
    refused(&server, &a.token_as(Algorithm::EdDSA, None), "no kid").await;

    // a is withdrawn: once the scheduled refresh has it, a's tokens are refused.
    issuer.serve(Answer::Keys(vec![b.jwk()]));
    requests_reach(&issuer, 3, 15).await;
    eventually("a's key to be gone", 5, || async {
        attempt(&server, &a.token()).await.err()
    })
    .await;
    refused(&server, &a.token(), "kid").await;
    connects(&server, &b.token()).await;
    server.stop().await;
}

#[tokio::test]
async fn the_key_set_is_refreshed_on_schedule() {
    let (a, c) = (Signer::ed25519("a"), Signer::ed25519("c"));
    let issuer = Issuer::start(Answer::Keys(vec![a.jwk()])).await;
    let started = Instant::now();
    let server = TestServer::start(&app(&issuer, "EdDSA", 5)).await;
    ready(&server).await;
    // Published before the next scheduled refresh, which fetches it unasked.
    issuer.serve(Answer::Keys(vec![a.jwk(), c.jwk()]));
    requests_reach(&issuer, 2, 15).await;
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "the second fetch came after {:?}, before refreshSeconds",
        started.elapsed()
    );
    eventually("the refreshed set", 5, || async {
        (metric(&server.metrics().await, "switchboard_jwks_keys") == Some(2.0)).then_some(())
    })
    .await;
    connects(&server, &c.token()).await;
    // c was known already: no fetch on its account.
    assert_eq!(issuer.requests(), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_gap() {
    let a = Signer::ed25519("a");
    let issuer = Issuer::start(Answer::Keys(vec![a.jwk()])).await;
    let server = TestServer::start(&app(&issuer, "EdDSA", 300)).await;
    ready(&server).await;
    assert_eq!(issuer.requests(), 1);
    let started = Instant::now();
    let bogus = Signer::ed25519("bogus");
    for i in 0..50 {
        let kid = format!("bogus-{i}");
        refused(
            &server,
            &bogus.token_as(Algorithm::EdDSA, Some(&kid)),
            "kid",
        )
        .await;
    }
    // One unknown-kid fetch per 10 s (asserted only if the flood took less).
    if started.elapsed() < Duration::from_secs(10) {
        assert_eq!(issuer.requests(), 2, "the flood hammered the issuer");
    }
    assert!(issuer.requests() <= 2 + started.elapsed().as_secs() as usize / 10);
    // The good key still works and costs no fetch.
    connects(&server, &a.token()).await;
    assert!(issuer.requests() <= 2 + started.elapsed().as_secs() as usize / 10);
    server.stop().await;
}

#[tokio::test]
async fn an_algorithm_outside_the_allow_list_is_refused_even_when_its_key_is_published() {
    let (ed, ec) = (Signer::ed25519("ed"), Signer::es256("ec"));
    let issuer = Issuer::start(Answer::Keys(vec![ed.jwk(), ec.jwk()])).await;
    let server = TestServer::start(&app(&issuer, "EdDSA", 300)).await;
    ready(&server).await;
    // The ES256 key is published but this app allows EdDSA only: not usable.
    let m = server.metrics().await;
    assert_eq!(metric(&m, "switchboard_jwks_keys"), Some(1.0), "{m}");
    refused(&server, &ec.token(), "not allowed").await;
    // Nor can an EdDSA token borrow the ES256 key's kid.
    refused(&server, &ed.token_as(Algorithm::EdDSA, Some("ec")), "kid").await;
    connects(&server, &ed.token()).await;
    server.stop().await;

    // An app allowing both: a token's alg must still be its key's.
    let server = TestServer::start(&app(&issuer, "EdDSA, ES256", 300)).await;
    ready(&server).await;
    connects(&server, &ec.token()).await;
    connects(&server, &ed.token()).await;
    refused(
        &server,
        &ec.token_as(Algorithm::ES256, Some("ed")),
        "algorithm",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_broken_or_unreachable_key_set_keeps_the_last_good_one() {
    let a = Signer::ed25519("a");
    let issuer = Issuer::start(Answer::Keys(vec![a.jwk()])).await;
    let server = TestServer::start(&app(&issuer, "EdDSA", 5)).await;
    ready(&server).await;

    // Garbage, fetched for an unknown kid: that token is refused, a's still connect.
    issuer.serve(Answer::Body("<html>not a key set</html>"));
    refused(&server, &Signer::ed25519("new").token(), "kid").await;
    wait_for_metric(
        &server,
        r#"switchboard_jwks_fetch_errors_total{reason="invalid"}"#,
        1.0,
    )
    .await;
    connects(&server, &a.token()).await;

    // An error status, then no issuer at all: retried, counted, survived.
    issuer.serve(Answer::Status(500));
    eventually("a status failure", 15, || async {
        let m = server.metrics().await;
        metric(
            &m,
            r#"switchboard_jwks_fetch_errors_total{reason="status"}"#,
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    issuer.stop();
    eventually("an unreachable failure", 20, || async {
        let m = server.metrics().await;
        metric(
            &m,
            r#"switchboard_jwks_fetch_errors_total{reason="unreachable"}"#,
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    connects(&server, &a.token()).await;
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    let m = server.metrics().await;
    assert_eq!(metric(&m, "switchboard_jwks_keys"), Some(1.0), "{m}");
    server.stop().await;
}

#[tokio::test]
async fn readiness_waits_for_the_first_key_set() {
    let a = Signer::ed25519("a");
    let issuer = Issuer::start(Answer::Status(503)).await;
    let server = TestServer::start(&app(&issuer, "EdDSA", 300)).await;
    requests_reach(&issuer, 1, 10).await;
    let (status, body) = server.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("JWKS"), "{body}");
    assert_eq!(server.admin_get("/healthz").await.0, 200);
    refused(&server, &a.token(), "key set").await;

    issuer.serve(Answer::Keys(vec![a.jwk()]));
    ready(&server).await;
    connects(&server, &a.token()).await;
    server.stop().await;
}
