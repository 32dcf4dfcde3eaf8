//! Who is connecting: JWT verification at upgrade and on `$ws:auth` refreshes.
//!
//! Keys are read once at start-up from `<secrets-dir>/<name>/<key>` (where the operator
//! mounts each referenced Secret), or public keys come from the issuer's key set
//! (`spec.auth.jwt.jwks`, see [`crate::jwks`]), chosen by the token's `kid`. The
//! algorithm allow-list is checked against the
//! token's header before any key is chosen, and `none` can never be configured.
//! Tokens are never logged: errors describe the token, not repeat it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use switchboard_spec::{Identity, JwtPolicy, SecretKeyRef};

use crate::jwks::{Jwks, JwksSetupError};

/// Role every connection that presented a valid token has, besides its token's roles.
pub const USER_ROLE: &str = "user";
/// The only role of tokenless connections (when `auth.anonymous` allows them).
pub const ANONYMOUS_ROLE: &str = "anonymous";

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub identity: Identity,
    /// When the token stops being valid (its `exp` plus leeway); `None` for anonymous.
    pub expires_at: Option<SystemTime>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "a token is required (access_token query parameter, Authorization: Bearer, or subprotocol bearer.<token>)"
    )]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A secret or key that could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(
        "cannot read {field} from {path}: {source} (is the Secret mounted under --secrets-dir?)"
    )]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{field} at {path} is {len} bytes, shorter than {algorithm} needs: {min} bytes (RFC 7518 section 3.2: 32 for HS256, 48 for HS384, 64 for HS512)"
    )]
    ShortHmacKey {
        field: &'static str,
        path: PathBuf,
        algorithm: &'static str,
        len: usize,
        min: usize,
    },
    #[error("{field} at {path} is not a usable key for {family}: {message}")]
    Key {
        field: &'static str,
        path: PathBuf,
        family: &'static str,
        message: String,
    },
    #[error(transparent)]
    Jwks(#[from] JwksSetupError),
}

pub struct Authenticator {
    anonymous: bool,
    jwt: Option<JwtVerifier>,
}

struct JwtVerifier {
    policy: JwtPolicy,
    /// One validation per key family the app allows, each listing only that family's
    /// algorithms: jsonwebtoken refuses a validation whose algorithms span families, so
    /// an app allowing both HS256 and RS256 is served by choosing on the header's `alg`.
    validations: Vec<Validation>,
    hmac: Option<DecodingKey>,
    public: Option<DecodingKey>,
    /// Public keys from the issuer's key set, when the app names one instead of `public`.
    jwks: Option<Arc<Jwks>>,
}

impl Authenticator {
    pub fn load(
        policy: Option<&JwtPolicy>,
        anonymous: bool,
        secrets_dir: &Path,
    ) -> Result<Self, AuthSetupError> {
        let jwt = policy
            .map(|p| JwtVerifier::load(p, secrets_dir))
            .transpose()?;
        Ok(Self { anonymous, jwt })
    }

    /// The app's key set, for the server to run its refresher and readiness to wait for.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwt.as_ref().and_then(|v| v.jwks.as_ref())
    }

    /// Verifies the token presented at upgrade, or admits an anonymous caller when the
    /// app allows it and no token was presented.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        anonymous_user_id: &str,
    ) -> Result<Authenticated, AuthError> {
        match token {
            None if self.anonymous => Ok(Authenticated {
                identity: Identity {
                    user_id: anonymous_user_id.to_owned(),
                    roles: vec![ANONYMOUS_ROLE.to_owned()],
                    claims: Map::new(),
                    anonymous: true,
                },
                expires_at: None,
            }),
            None => Err(AuthError::Missing),
            Some(token) => self.verify(token).await,
        }
    }

    /// Verifies a token (at upgrade, or a refresh sent with `$ws:auth`). Waits only
    /// when the key set must be refreshed for the token's `kid` (see [`crate::jwks`]).
    pub async fn verify(&self, token: &str) -> Result<Authenticated, AuthError> {
        match &self.jwt {
            Some(v) => v.verify(token).await,
            None => Err(AuthError::Invalid(
                "this app accepts no tokens (spec.auth.jwt is not set)".into(),
            )),
        }
    }
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "EdDSA",
    }
}

fn read_secret(
    dir: &Path,
    r: &SecretKeyRef,
    field: &'static str,
) -> Result<(PathBuf, Vec<u8>), AuthSetupError> {
    let path = dir.join(&r.name).join(&r.key);
    std::fs::read(&path)
        .map(|bytes| (path.clone(), bytes))
        .map_err(|source| AuthSetupError::Read {
            field,
            path,
            source,
        })
}

/// The shortest HMAC key each allowed HMAC algorithm may use: a key shorter than the
/// hash output weakens it (RFC 7518 §3.2), so such a Secret is refused at start-up and
/// by `--check` rather than served with. The largest allowed algorithm's size applies,
/// as the one key verifies them all.
fn check_hmac_len(
    algorithms: &[Algorithm],
    field: &'static str,
    path: PathBuf,
    len: usize,
) -> Result<(), AuthSetupError> {
    let needed = algorithms
        .iter()
        .filter_map(|a| match a {
            Algorithm::HS256 => Some(("HS256", 32)),
            Algorithm::HS384 => Some(("HS384", 48)),
            Algorithm::HS512 => Some(("HS512", 64)),
            _ => None,
        })
        .max_by_key(|(_, min)| *min);
    match needed {
        Some((algorithm, min)) if len < min => Err(AuthSetupError::ShortHmacKey {
            field,
            path,
            algorithm,
            len,
            min,
        }),
        _ => Ok(()),
    }
}

impl JwtVerifier {
    fn load(policy: &JwtPolicy, dir: &Path) -> Result<Self, AuthSetupError> {
        // The compiler accepted only names jsonwebtoken knows; skip none silently here.
        let algorithms: Vec<Algorithm> = policy
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .collect();
        let hmac = match &policy.secret_ref {
            Some(r)
                if algorithms
                    .iter()
                    .any(|a| a.family() == AlgorithmFamily::Hmac) =>
            {
                let field = "spec.auth.jwt.secretRef";
                let (path, secret) = read_secret(dir, r, field)?;
                check_hmac_len(&algorithms, field, path, secret.len())?;
                Some(DecodingKey::from_secret(&secret))
            }
            _ => None,
        };
        let public_family = algorithms
            .iter()
            .map(|a| a.family())
            .find(|f| *f != AlgorithmFamily::Hmac);
        let public = match (&policy.public_key_ref, public_family) {
            (Some(r), Some(family)) => {
                let field = "spec.auth.jwt.publicKeyRef";
                let (path, pem) = read_secret(dir, r, field)?;
                let key = match family {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                    AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                    // `public_family` excludes HMAC; a secret is never read as a PEM key.
                    AlgorithmFamily::Hmac => {
                        Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into())
                    }
                };
                Some(key.map_err(|e| AuthSetupError::Key {
                    field,
                    path,
                    family: family_name(family),
                    message: e.to_string(),
                })?)
            }
            _ => None,
        };
        let jwks = policy
            .jwks
            .as_ref()
            .map(|p| Jwks::new(p, &algorithms).map(Arc::new))
            .transpose()?;
        let mut validation = Validation::new(algorithms.first().copied().unwrap_or_default());
        validation.leeway = u64::from(policy.leeway_seconds);
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &policy.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &policy.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut validations: Vec<Validation> = Vec::new();
        for alg in &algorithms {
            match validations
                .iter_mut()
                .find(|v| v.algorithms.first().map(|a| a.family()) == Some(alg.family()))
            {
                Some(v) => v.algorithms.push(*alg),
                None => {
                    let mut v = validation.clone();
                    v.algorithms = vec![*alg];
                    validations.push(v);
                }
            }
        }
        Ok(Self {
            policy: policy.clone(),
            validations,
            hmac,
            public,
            jwks,
        })
    }

    async fn verify(&self, token: &str) -> Result<Authenticated, AuthError> {
        let invalid = |m: &str| AuthError::Invalid(m.to_owned());
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(describe(&e)))?;
        let Some(validation) = self
            .validations
            .iter()
            .find(|v| v.algorithms.contains(&header.alg))
        else {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not allowed (spec.auth.jwt.algorithms)",
                header.alg
            )));
        };
        let from_set;
        let key = match (header.alg.family(), &self.jwks) {
            (AlgorithmFamily::Hmac, _) => self.hmac.as_ref(),
            (_, Some(jwks)) => {
                from_set = jwks.key_for(header.kid.as_deref(), header.alg).await?;
                Some(&from_set)
            }
            (_, None) => self.public.as_ref(),
        }
        .ok_or_else(|| invalid("no key is configured for the token's algorithm"))?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| AuthError::Invalid(describe(&e)))?;
        let claims = data.claims;
        let user_id = match claims.get(&self.policy.user_id_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(AuthError::Invalid(format!(
                    "the token has no usable {:?} claim for the user id",
                    self.policy.user_id_claim
                )));
            }
        };
        let mut roles = vec![USER_ROLE.to_owned()];
        match claims.get(&self.policy.roles_claim) {
            Some(Value::Array(items)) => {
                roles.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            Some(Value::String(s)) => roles.extend(s.split_whitespace().map(str::to_owned)),
            _ => {}
        }
        // Duplicates anywhere in the list (not only adjacent ones) go; the first
        // occurrence keeps its place, so `user` stays first.
        let mut seen = std::collections::HashSet::new();
        roles.retain(|r| seen.insert(r.clone()));
        let expires_at = Some(expiry(claims.get("exp"), validation.leeway)?);
        Ok(Authenticated {
            identity: Identity {
                user_id,
                roles,
                claims,
                anonymous: false,
            },
            expires_at,
        })
    }
}

/// Latest `exp` accepted: the last second of the year 9999. Later values are no real
/// token's, and refusing them keeps `exp + leeway` far from overflowing `SystemTime`.
pub const MAX_EXP: u64 = 253_402_300_799;

/// When a token stops being valid: `exp` plus leeway. `exp` must be an integer number
/// of seconds (RFC 7519 allows a fraction, but a float `exp` would otherwise never end
/// the connection) no later than [`MAX_EXP`]; anything else is refused with 401, so every
/// admitted token has an expiry the connection enforces.
fn expiry(exp: Option<&Value>, leeway: u64) -> Result<SystemTime, AuthError> {
    let exp = exp
        .and_then(Value::as_u64)
        .ok_or_else(|| AuthError::Invalid("exp must be an integer number of seconds".into()))?;
    if exp > MAX_EXP {
        return Err(AuthError::Invalid(format!(
            "exp {exp} is beyond the year 9999"
        )));
    }
    exp.checked_add(leeway)
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .ok_or_else(|| AuthError::Invalid("exp plus leeway is out of range".into()))
}

/// A client-facing description of a verification failure (never the token itself).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "algorithm not allowed".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::MissingRequiredClaim(c) => format!("missing required claim {c:?}"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed token".into(),
        _ => "token rejected".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn policy(algs: &[&str]) -> JwtPolicy {
        JwtPolicy {
            algorithms: algs.iter().map(|s| s.to_string()).collect(),
            secret_ref: Some(SecretKeyRef {
                name: "jwt".into(),
                key: "secret".into(),
            }),
            public_key_ref: None,
            jwks: None,
            issuer: Some("https://auth.test".into()),
            audience: Some("chat".into()),
            user_id_claim: "sub".into(),
            roles_claim: "roles".into(),
            leeway_seconds: 5,
        }
    }

    fn setup(algs: &[&str]) -> (tempdir::Dir, Authenticator) {
        let dir = tempdir::Dir::new();
        std::fs::create_dir_all(dir.0.join("jwt")).unwrap();
        std::fs::write(dir.0.join("jwt/secret"), KEY).unwrap();
        let auth = Authenticator::load(Some(&policy(algs)), false, &dir.0).unwrap();
        (dir, auth)
    }

    /// 64 bytes: long enough for every HMAC algorithm (RFC 7518 §3.2).
    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn token(alg: Algorithm, claims: Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(KEY)).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn good_claims() -> Value {
        json!({"sub": "alice", "roles": ["admin"], "iss": "https://auth.test", "aud": "chat", "exp": now() + 60})
    }

    #[tokio::test]
    async fn accepts_a_valid_token_with_roles_and_expiry() {
        let (_d, auth) = setup(&["HS256"]);
        let a = auth
            .authenticate(Some(&token(Algorithm::HS256, good_claims())), "anon")
            .await
            .unwrap();
        assert_eq!(a.identity.user_id, "alice");
        assert_eq!(a.identity.roles, vec!["user", "admin"]);
        assert!(a.expires_at.unwrap() > SystemTime::now() + Duration::from_secs(60));
    }

    #[tokio::test]
    async fn roles_listed_twice_anywhere_are_kept_once() {
        let (_d, auth) = setup(&["HS256"]);
        let mut c = good_claims();
        c["roles"] = json!(["admin", "user", "admin", "ops", "user"]);
        let a = auth.verify(&token(Algorithm::HS256, c)).await.unwrap();
        assert_eq!(a.identity.roles, vec!["user", "admin", "ops"]);
    }

    #[tokio::test]
    async fn absurd_or_fractional_expiries_are_refused_not_admitted_forever() {
        let (_d, auth) = setup(&["HS256"]);
        for exp in [
            json!(1u64 << 63),
            json!(1u64 << 62),
            json!(u64::MAX),
            json!(MAX_EXP + 1),
            json!(now() as f64 + 2.5),
            json!(format!("{}.0", now() + 60).parse::<f64>().unwrap()),
        ] {
            let mut c = good_claims();
            c["exp"] = exp.clone();
            // Must be refused (or, were jsonwebtoken to refuse it first, still refused):
            // never admitted without an expiry, never a panic.
            assert!(
                matches!(
                    auth.verify(&token(Algorithm::HS256, c)).await,
                    Err(AuthError::Invalid(_))
                ),
                "exp {exp} was admitted"
            );
        }
        let mut c = good_claims();
        c["exp"] = json!(MAX_EXP);
        let a = auth.verify(&token(Algorithm::HS256, c)).await.unwrap();
        assert!(a.expires_at.is_some());
    }

    #[tokio::test]
    async fn rejects_wrong_alg_expired_issuer_audience_and_missing_token() {
        let (_d, auth) = setup(&["HS256"]);
        let hs512 = token(Algorithm::HS512, good_claims());
        assert!(
            matches!(auth.verify(&hs512).await, Err(AuthError::Invalid(m)) if m.contains("not allowed"))
        );
        let mut c = good_claims();
        c["exp"] = json!(now() - 60);
        assert!(
            matches!(auth.verify(&token(Algorithm::HS256, c)).await, Err(AuthError::Invalid(m)) if m == "the token has expired")
        );
        let mut c = good_claims();
        c["iss"] = json!("https://evil.test");
        assert!(auth.verify(&token(Algorithm::HS256, c)).await.is_err());
        let mut c = good_claims();
        c["aud"] = json!("other");
        assert!(auth.verify(&token(Algorithm::HS256, c)).await.is_err());
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(auth.verify(&token(Algorithm::HS256, c)).await.is_err());
        assert!(matches!(
            auth.authenticate(None, "anon").await,
            Err(AuthError::Missing)
        ));
    }

    #[tokio::test]
    async fn rejects_alg_none_and_garbage() {
        let (_d, auth) = setup(&["HS256"]);
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (no signature)
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(auth.verify(none).await.is_err());
        assert!(auth.verify("not-a-token").await.is_err());
    }

    #[tokio::test]
    async fn tokens_never_appear_in_errors() {
        let (_d, auth) = setup(&["HS256"]);
        let mut c = good_claims();
        c["exp"] = json!(now() - 60);
        let t = token(Algorithm::HS256, c);
        let msg = auth.verify(&t).await.unwrap_err().to_string();
        assert!(!msg.contains(&t) && !msg.contains(t.split('.').nth(1).unwrap()));
    }

    #[test]
    fn missing_secret_names_the_field_and_path() {
        let Err(err) =
            Authenticator::load(Some(&policy(&["HS256"])), false, Path::new("/nonexistent"))
        else {
            panic!("loading must fail without the secret");
        };
        let msg = err.to_string();
        assert!(
            msg.contains("spec.auth.jwt.secretRef") && msg.contains("/nonexistent/jwt/secret"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_hmac_keys_shorter_than_the_algorithm() {
        for (algs, len, ok) in [
            (&["HS256"][..], 31, false),
            (&["HS256"][..], 32, true),
            (&["HS384"][..], 47, false),
            (&["HS256", "HS512"][..], 48, false),
            (&["HS512"][..], 64, true),
        ] {
            let dir = tempdir::Dir::new();
            std::fs::create_dir_all(dir.0.join("jwt")).unwrap();
            std::fs::write(dir.0.join("jwt/secret"), vec![b'k'; len]).unwrap();
            match Authenticator::load(Some(&policy(algs)), false, &dir.0) {
                Ok(_) => assert!(ok, "{algs:?} with {len} bytes must be refused"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(!ok, "{algs:?} with {len} bytes: {msg}");
                    assert!(
                        msg.contains("spec.auth.jwt.secretRef")
                            && msg.contains("jwt/secret")
                            && msg.contains(&format!("is {len} bytes")),
                        "{msg}"
                    );
                }
            }
        }
    }

    /// A scratch directory removed on drop (no extra crate for one test helper).
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "sb-auth-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
