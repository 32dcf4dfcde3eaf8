//! Public keys from the issuer's JSON Web Key Set (`spec.auth.jwt.jwks`): the cached
//! key set verification reads, and the one task that refreshes it (README, "Keys from a
//! JWKS endpoint").
//!
//! Only the refresher fetches. It fetches at start, every `refreshSeconds`, and when a
//! token names a `kid` the set does not hold, so a key the issuer just rotated in works
//! at once. Those unknown-`kid` fetches are rate-limited ([`UNKNOWN_KID_REFRESH_GAP`]):
//! a flood of tokens with made-up `kid`s costs the issuer one request per gap, not one
//! per token. A failed fetch keeps the last good set (an issuer outage must not log
//! everyone out), is logged with the URL and reason and counted in
//! `switchboard_jwks_fetch_errors_total`, and is retried with a doubling delay.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper::header::ACCEPT;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchboard_ops::metrics::{CounterByLabel, register};
use switchboard_spec::JwksPolicy;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::auth::AuthError;
use crate::metrics::Metrics;

/// At most one fetch per this long is triggered by tokens with an unknown `kid`
/// (scheduled refreshes come on top).
pub const UNKNOWN_KID_REFRESH_GAP: Duration = Duration::from_secs(10);
/// A fetch (connect, TLS, headers and body) that takes longer has failed: a token
/// waiting on it is an upgrade or `$ws:auth` waiting.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted. Real ones are a few KiB; this bounds what a broken or
/// hostile endpoint can make each pod buffer.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The first retry after a failed fetch; each further failure doubles it, up to the
/// refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

switchboard_ops::label_values! {
    /// Why a key set fetch failed: `switchboard_jwks_fetch_errors_total{reason}`.
    pub enum FetchFailure {
        /// No HTTP response: DNS, connect or TLS failed.
        Unreachable => "unreachable",
        /// No complete response within the fetch timeout (5 s).
        Timeout => "timeout",
        /// The endpoint answered with a status other than 2xx.
        Status => "status",
        /// The body is larger than the 256 KiB cap.
        TooLarge => "too_large",
        /// The body is not a JSON Web Key Set.
        Invalid => "invalid",
        /// A key set, but no key in it this app may use (type, `use` or `alg`).
        NoUsableKey => "no_usable_key",
    }
}

/// How the key set's refreshes fare.
pub struct JwksMetrics {
    pub fetch_errors: CounterByLabel<FetchFailure>,
    /// Usable keys in the set verification uses now.
    pub keys: Gauge,
}

impl JwksMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            fetch_errors: CounterByLabel::register(
                registry,
                "switchboard_jwks_fetch_errors",
                "JWKS fetches that failed, by reason; the last good key set stays in use",
                "reason",
            ),
            keys: register(
                registry,
                "switchboard_jwks_keys",
                "Usable keys in the current JWKS key set",
                Gauge::default(),
            ),
        }
    }
}

/// The key set could not be prepared at start-up.
#[derive(Debug, thiserror::Error)]
pub enum JwksSetupError {
    #[error("spec.auth.jwt.jwks.url {url:?} is not a usable URL: {message}")]
    Url { url: String, message: String },
    #[error(
        "spec.auth.jwt.jwks.url is https but no CA certificates could be loaded from this system: {0}"
    )]
    Roots(std::io::Error),
}

/// One key of the set that this app may verify with.
struct Key {
    kid: Option<String>,
    /// The key's `alg` (or the one its curve implies); `None`: any allowed algorithm of
    /// its family (an RSA key without `alg` serves RS* and PS*).
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// A fetched key set, as verification reads it.
#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    /// A set has been fetched at least once: readiness waits for it.
    loaded: bool,
}

/// What a lookup found.
enum Lookup {
    Found(DecodingKey),
    /// The set holds no key for the token: a fresh set might.
    Missing(&'static str),
    /// The token's key is there but not for its algorithm: no refresh changes that.
    Refused(&'static str),
}

impl KeySet {
    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        if !self.loaded {
            return Lookup::Missing("no key set has been loaded yet from spec.auth.jwt.jwks.url");
        }
        let key = match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) => k,
                None => return Lookup::Missing("the token's kid is not in the key set"),
            },
            // Without a kid only an unambiguous set can say which key signed it.
            None => match self.keys.as_slice() {
                [only] => only,
                _ => {
                    return Lookup::Missing(
                        "the token has no kid and the key set holds more than one key",
                    );
                }
            },
        };
        if key.family != alg.family() || key.alg.is_some_and(|a| a != alg) {
            return Lookup::Refused("the token's algorithm is not its key's");
        }
        Lookup::Found(key.key.clone())
    }
}

impl Lookup {
    /// The answer to give now, or (`Err`) what is missing, which a fresh set may hold.
    fn settled(self) -> Result<Result<DecodingKey, AuthError>, &'static str> {
        match self {
            Self::Found(key) => Ok(Ok(key)),
            Self::Refused(why) => Ok(Err(AuthError::Invalid(why.into()))),
            Self::Missing(why) => Err(why),
        }
    }
}

/// Whether unknown-`kid` lookups may ask for a fetch: at most one per
/// [`UNKNOWN_KID_REFRESH_GAP`], and lookups while one is under way wait for it.
#[derive(Debug)]
struct OnDemand {
    /// When a lookup last asked for a fetch.
    last: Option<Instant>,
    /// A fetch a lookup may wait for has not finished. True at start: the first fetch.
    pending: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// A fetch is under way: wait for it.
    Wait,
    /// Start a fetch and wait for it.
    Fetch,
    /// One was asked for less than the gap ago: answer with the set as it is.
    Refuse,
}

impl OnDemand {
    fn ask(&mut self, now: Instant) -> Ask {
        if self.pending {
            Ask::Wait
        } else if self
            .last
            .is_none_or(|last| now.duration_since(last) >= UNKNOWN_KID_REFRESH_GAP)
        {
            self.last = Some(now);
            self.pending = true;
            Ask::Fetch
        } else {
            Ask::Refuse
        }
    }
}

/// The delay before retrying after `failures` failed fetches in a row: 1 s, doubling,
/// never longer than the refresh interval.
fn retry_delay(failures: u32, refresh: Duration) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(refresh)
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The app's key set and what keeps it fresh.
pub struct Jwks {
    url: Uri,
    refresh: Duration,
    /// The app's allowed public-key algorithms: a key for any other is not usable.
    allowed: Vec<Algorithm>,
    client: HttpClient,
    /// The current set; every finished fetch (good or not) sends, which is what
    /// waiting lookups wake on.
    current: watch::Sender<Arc<KeySet>>,
    on_demand: Mutex<OnDemand>,
    /// Wakes the refresher for a lookup's fetch.
    wake: Notify,
}

impl Jwks {
    pub fn new(policy: &JwksPolicy, allowed: &[Algorithm]) -> Result<Self, JwksSetupError> {
        let url: Uri = policy
            .url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| JwksSetupError::Url {
                url: policy.url.clone(),
                message: e.to_string(),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if url.scheme_str() == Some("https") {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(JwksSetupError::Roots)?
        } else {
            // Plain http to a loopback host (compile() allows nothing else): no
            // certificate is ever checked, so no roots are needed.
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| JwksSetupError::Url {
                    url: policy.url.clone(),
                    message: e.to_string(),
                })?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(config)
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Self {
            url,
            refresh: policy.refresh,
            allowed: allowed
                .iter()
                .copied()
                .filter(|a| a.family() != AlgorithmFamily::Hmac)
                .collect(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            current: watch::Sender::new(Arc::new(KeySet::default())),
            on_demand: Mutex::new(OnDemand {
                last: None,
                pending: true,
            }),
            wake: Notify::new(),
        })
    }

    /// Whether a key set has been loaded: until then the pod is not ready.
    pub fn is_loaded(&self) -> bool {
        self.current.borrow().loaded
    }

    /// The key that verifies a token with this header's `kid` and `alg`. When the set
    /// holds none, waits for a fetch (one under way, or a new one if the rate limit
    /// allows) and looks again; still none is [`AuthError::Invalid`].
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, AuthError> {
        if let Ok(answer) = self.current.borrow().lookup(kid, alg).settled() {
            return answer;
        }
        // Looked at again under the lock fetches end under, so the set seen here and
        // whether a fetch is under way agree.
        let mut fresh = {
            let mut on_demand = self
                .on_demand
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut fresh = self.current.subscribe();
            let missing = match fresh.borrow_and_update().lookup(kid, alg).settled() {
                Ok(answer) => return answer,
                Err(missing) => missing,
            };
            match on_demand.ask(Instant::now()) {
                Ask::Refuse => return Err(AuthError::Invalid(missing.into())),
                Ask::Fetch => self.wake.notify_one(),
                Ask::Wait => {}
            }
            fresh
        };
        // Bounded like the fetch itself, in case the refresher is not running.
        let _ = tokio::time::timeout(FETCH_TIMEOUT + FIRST_RETRY, fresh.changed()).await;
        let answer = fresh.borrow().lookup(kid, alg).settled();
        answer.unwrap_or_else(|missing| Err(AuthError::Invalid(missing.into())))
    }

    /// Fetches at start, on schedule, and when a lookup asks; runs until aborted
    /// (the server aborts it at shutdown).
    pub async fn refresh_loop(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut failures = 0u32;
        loop {
            let fetched = self.fetch().await;
            let wait = match fetched {
                Ok(keys) => {
                    failures = 0;
                    metrics.jwks.keys.set(keys.len() as i64);
                    self.replace(keys);
                    self.refresh
                }
                Err((reason, message)) => {
                    failures = failures.saturating_add(1);
                    metrics.jwks.fetch_errors.inc(reason);
                    let kept = self.current.borrow().keys.len();
                    let retry = retry_delay(failures, self.refresh);
                    warn!(
                        url = %self.url, reason = reason.as_str(), error = %message,
                        keys_kept = kept, retry_in_ms = retry.as_millis() as u64,
                        "cannot refresh the JWKS key set; keeping the last good one"
                    );
                    self.finish(|_| {});
                    retry
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Installs a fetched set, logging when its key ids change.
    fn replace(&self, keys: Vec<Key>) {
        let kids = |set: &KeySet| -> Vec<String> {
            set.keys
                .iter()
                .map(|k| k.kid.clone().unwrap_or_default())
                .collect()
        };
        let before = kids(&self.current.borrow());
        let set = KeySet { keys, loaded: true };
        let after = kids(&set);
        if before == after {
            debug!(url = %self.url, keys = after.len(), "JWKS key set refreshed");
        } else {
            info!(url = %self.url, kids = ?after, "JWKS key set loaded");
        }
        self.finish(|current| *current = Arc::new(set));
    }

    /// Ends a fetch: updates the set and wakes its waiters, under the same lock as
    /// lookups decide whether to wait, so none waits for a fetch that already ended.
    fn finish(&self, update: impl FnOnce(&mut Arc<KeySet>)) {
        let mut on_demand = self
            .on_demand
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        on_demand.pending = false;
        self.current.send_modify(update);
    }

    async fn fetch(&self) -> Result<Vec<Key>, (FetchFailure, String)> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| {
                (
                    FetchFailure::Timeout,
                    format!("no complete response within {FETCH_TIMEOUT:?}"),
                )
            })??;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| {
            (
                FetchFailure::Invalid,
                format!("not a JSON Web Key Set: {e}"),
            )
        })?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for jwk in &set.keys {
            match usable(jwk, &self.allowed) {
                Ok(key) => keys.push(key),
                Err(why) => {
                    let kid = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
                    debug!(url = %self.url, kid, why, "JWKS key not usable");
                    skipped.push(format!("{kid}: {why}"));
                }
            }
        }
        if keys.is_empty() {
            return Err((
                FetchFailure::NoUsableKey,
                format!(
                    "{} keys, none usable with spec.auth.jwt.algorithms ({})",
                    set.keys.len(),
                    skipped.join("; ")
                ),
            ));
        }
        Ok(keys)
    }

    async fn get(&self) -> Result<Bytes, (FetchFailure, String)> {
        let request = hyper::Request::get(self.url.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .body(Empty::new())
            .map_err(|e| (FetchFailure::Unreachable, e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| (FetchFailure::Unreachable, format!("{e:#}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err((FetchFailure::Status, format!("HTTP {status}")));
        }
        Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    (
                        FetchFailure::TooLarge,
                        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    (FetchFailure::Unreachable, format!("reading the body: {e}"))
                }
            })
    }
}

/// The key a JWK gives this app, or why it gives none. Symmetric (`oct`) keys are never
/// taken from a key set: HS* secrets come from `secretRef` only, and a secret served
/// over HTTP would be one no longer.
fn usable(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Key, &'static str> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("a key for encryption (use: enc)");
    }
    let (family, implied) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return Err("an unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            (AlgorithmFamily::Ed, Some(Algorithm::EdDSA))
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("an unsupported curve"),
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (HS* secrets come from secretRef only)");
        }
        _ => return Err("an unsupported key type"),
    };
    let alg = match jwk.common.key_algorithm {
        Some(declared) => {
            let alg = Algorithm::try_from(declared).map_err(|_| "an unsupported alg")?;
            if alg.family() != family || implied.is_some_and(|i| i != alg) {
                return Err("an alg that does not fit its key type");
            }
            Some(alg)
        }
        None => implied,
    };
    let allowed_here = match alg {
        Some(alg) => allowed.contains(&alg),
        None => allowed.iter().any(|a| a.family() == family),
    };
    if !allowed_here {
        return Err("an algorithm spec.auth.jwt.algorithms does not allow");
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "not a valid key")?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_kid_fetches_are_one_per_gap_and_lookups_wait_for_one_under_way() {
        let start = Instant::now();
        let mut d = OnDemand {
            last: None,
            pending: true,
        };
        // The first fetch is under way at start.
        assert_eq!(d.ask(start), Ask::Wait);
        d.pending = false;
        assert_eq!(d.ask(start), Ask::Fetch);
        // While that fetch runs, others wait for it rather than start one.
        assert_eq!(d.ask(start), Ask::Wait);
        d.pending = false;
        for later in [
            Duration::ZERO,
            Duration::from_secs(1),
            UNKNOWN_KID_REFRESH_GAP - Duration::from_millis(1),
        ] {
            assert_eq!(d.ask(start + later), Ask::Refuse, "{later:?}");
        }
        assert_eq!(d.ask(start + UNKNOWN_KID_REFRESH_GAP), Ask::Fetch);
    }

    #[test]
    fn retries_double_from_a_second_up_to_the_refresh_interval() {
        let refresh = Duration::from_secs(300);
        let delays: Vec<u64> = (1..=11)
            .map(|n| retry_delay(n, refresh).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(u32::MAX, refresh), refresh);
        assert_eq!(
            retry_delay(3, Duration::from_secs(5)),
            Duration::from_secs(4)
        );
    }

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    /// A valid Ed25519 public key (RFC 8037 appendix A.2).
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    #[test]
    fn keys_are_usable_only_for_allowed_algorithms_of_their_type() {
        let ed = [Algorithm::EdDSA];
        let key = usable(
            &jwk(json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "a"})),
            &ed,
        )
        .unwrap();
        assert_eq!(
            (key.alg, key.kid.as_deref()),
            (Some(Algorithm::EdDSA), Some("a"))
        );
        for (value, allowed, why) in [
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X}),
                &[Algorithm::ES256][..],
                "does not allow",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "alg": "ES256"}),
                &ed[..],
                "does not fit",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "use": "enc"}),
                &ed[..],
                "encryption",
            ),
            (
                json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}),
                &[Algorithm::HS256][..],
                "symmetric",
            ),
            (
                json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "RS256"}),
                &[Algorithm::PS256][..],
                "does not allow",
            ),
            (json!({"kty": "XYZ"}), &ed[..], "unsupported key type"),
        ] {
            match usable(&jwk(value.clone()), allowed) {
                Err(e) => assert!(e.contains(why), "{value}: {e}"),
                Ok(_) => panic!("{value} was usable with {allowed:?}"),
            }
        }
        // An RSA key without alg serves every allowed RSA algorithm.
        let rsa = usable(
            &jwk(json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})),
            &[Algorithm::PS256],
        )
        .unwrap();
        assert_eq!((rsa.alg, rsa.family), (None, AlgorithmFamily::Rsa));
    }

    #[test]
    fn lookups_pick_by_kid_and_without_one_only_from_a_single_key_set() {
        let key = |kid: &str| {
            usable(
                &jwk(json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": kid})),
                &[Algorithm::EdDSA],
            )
            .unwrap()
        };
        let one = KeySet {
            keys: vec![key("a")],
            loaded: true,
        };
        let two = KeySet {
            keys: vec![key("a"), key("b")],
            loaded: true,
        };
        let found = |l: Lookup| matches!(l, Lookup::Found(_));
        assert!(found(one.lookup(Some("a"), Algorithm::EdDSA)));
        assert!(found(one.lookup(None, Algorithm::EdDSA)));
        assert!(found(two.lookup(Some("b"), Algorithm::EdDSA)));
        assert!(
            matches!(two.lookup(None, Algorithm::EdDSA), Lookup::Missing(m) if m.contains("no kid"))
        );
        assert!(matches!(
            two.lookup(Some("c"), Algorithm::EdDSA),
            Lookup::Missing(_)
        ));
        assert!(matches!(
            one.lookup(Some("a"), Algorithm::ES256),
            Lookup::Refused(_)
        ));
        assert!(
            matches!(KeySet::default().lookup(Some("a"), Algorithm::EdDSA), Lookup::Missing(m) if m.contains("loaded"))
        );
    }
}
