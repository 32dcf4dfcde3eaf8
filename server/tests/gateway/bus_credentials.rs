//! `spec.nats.auth` and `spec.nats.tls` against a real nats-server requiring each: a
//! token, an nkey, a `.creds` file (NATS in operator mode, its JWTs signed here), TLS
//! with a client certificate (CA and certificates made here); and
//! credentials NATS refuses, which fail the start with the field to fix. (User and
//! password: bus_security.rs.)

use std::path::Path;

use switchboard_server::{Server, ServerConfig};

use crate::harness::*;

/// A plain app whose `spec.nats` gets `access` (YAML of `auth`/`tls`).
fn app(access: &str) -> String {
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {{name: creds, namespace: tests}}
spec:
  auth: {{anonymous: true}}
  nats: {{url: "nats://replaced-by-the-test:4222", {access}}}
  topics: [{{pattern: "room:{{id}}"}}]
  routes:
    - {{type: JOIN, payload: {{type: object, properties: {{id: {{type: string}}}}}}, subscribe: {{topic: "room:{{id}}"}}}}
"#
    )
}

/// A replica that must get on the bus with the Secrets `secrets` (`name`, `key`, value).
async fn connects(yaml: &str, url: &str, secrets: &[(&str, &str, &[u8])]) {
    let s = TestServer::start_with_secrets(yaml, Some(url), "creds-0", secrets).await;
    wait_for_metric(&s, "switchboard_bus_connected", 1.0).await;
    s.stop().await;
}

/// The error `Server::bind` fails with (it must fail), with `secrets` mounted.
async fn refused(yaml: &str, url: &str, secrets: &[(&str, &str, &[u8])]) -> String {
    let dir = NatsServer::dir_for();
    for (name, key, value) in secrets {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join(key), value).unwrap();
    }
    let bound = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        app: switchboard_spec::load(yaml).unwrap(),
        secrets_dir: dir.clone(),
        instance: "refused-0".into(),
        nats_url: Some(url.to_owned()),
        demo: false,
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    match bound {
        Ok(_) => panic!("the server started with credentials NATS refuses"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_token_logs_in_and_a_wrong_one_fails_the_start_naming_the_field() {
    let nats = NatsServer::start_with_config(
        "authorization { token: $TOKEN }",
        &[("TOKEN", "the-right-token")],
    )
    .await;
    let yaml = app("auth: {tokenRef: {name: nats, key: token}}");
    // Written with `echo`: the trailing newline is no part of it.
    connects(
        &yaml,
        &nats.url(),
        &[("nats", "token", b"the-right-token\n")],
    )
    .await;
    let error = refused(&yaml, &nats.url(), &[("nats", "token", b"a-wrong-token")]).await;
    assert!(error.contains("cannot use NATS at"), "{error}");
    assert!(error.contains("spec.nats.auth"), "{error}");
    assert!(error.contains("authorization violation"), "{error}");
    // A Secret that is not mounted names its field too.
    let error = refused(&yaml, &nats.url(), &[]).await;
    assert!(error.contains("spec.nats.auth.tokenRef"), "{error}");
}

#[tokio::test]
async fn an_nkey_seed_logs_in_and_another_users_seed_is_refused() {
    let user = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    );
    let nats = NatsServer::start_with_config(&config, &[]).await;
    let yaml = app("auth: {nkeySeedRef: {name: nats, key: seed}}");
    let seed = user.seed().unwrap();
    connects(&yaml, &nats.url(), &[("nats", "seed", seed.as_bytes())]).await;
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let error = refused(&yaml, &nats.url(), &[("nats", "seed", stranger.as_bytes())]).await;
    assert!(error.contains("spec.nats.auth"), "{error}");
}

/// A CA, and PEM files it signed: the NATS server's (for 127.0.0.1) and a client's.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

impl Pki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Self {
            ca: ca.pem(),
            server: leaf(vec!["127.0.0.1".into(), "localhost".into()]),
            client: leaf(vec!["switchboard-server".into()]),
        }
    }

    /// nats-server's `tls` block, its files written into `dir`: clients must present
    /// a certificate of this CA.
    fn server_config(&self, dir: &Path) -> String {
        std::fs::write(dir.join("ca.pem"), &self.ca).unwrap();
        std::fs::write(dir.join("server.pem"), &self.server.0).unwrap();
        std::fs::write(dir.join("server-key.pem"), &self.server.1).unwrap();
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}",
            dir.join("server.pem"),
            dir.join("server-key.pem"),
            dir.join("ca.pem")
        )
    }
}

#[tokio::test]
async fn tls_with_a_client_certificate_connects_and_without_one_fails_the_start() {
    let pki = Pki::new();
    let files = NatsServer::dir_for();
    let nats = NatsServer::start_with_config(&pki.server_config(&files), &[]).await;
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let secrets: [(&str, &str, &[u8]); 3] = [
        ("nats-tls", "ca.crt", pki.ca.as_bytes()),
        ("nats-tls", "tls.crt", pki.client.0.as_bytes()),
        ("nats-tls", "tls.key", pki.client.1.as_bytes()),
    ];
    let full = app(
        "tls: {caRef: {name: nats-tls, key: ca.crt}, certRef: {name: nats-tls, key: tls.crt}, keyRef: {name: nats-tls, key: tls.key}}",
    );
    connects(&full, &url, &secrets).await;
    // A nats:// URL too: the spec requires TLS.
    connects(&full, &nats.url(), &secrets).await;

    let no_client_cert = app("tls: {caRef: {name: nats-tls, key: ca.crt}}");
    let error = refused(&no_client_cert, &url, &secrets[..1]).await;
    assert!(error.contains("spec.nats.tls"), "{error}");
    // Without the CA, the server's certificate is not trusted.
    let no_ca = app(
        "tls: {certRef: {name: nats-tls, key: tls.crt}, keyRef: {name: nats-tls, key: tls.key}}",
    );
    let error = refused(&no_ca, &url, &secrets[1..]).await;
    assert!(error.contains("spec.nats.tls"), "{error}");
    let _ = std::fs::remove_dir_all(&files);
}

/// A JWT of the NATS decentralized auth model: `claims` (with `nats.type`), issued by
/// `issuer` for `subject`, signed with the issuer's nkey (algorithm `ed25519-nkey`).
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:032X}", rand::random::<u128>()),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": "switchboard-test",
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64.encode(signature))
}

#[tokio::test]
async fn a_creds_file_logs_in_to_nats_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
        "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        serde_json::json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}),
    );
    // JetStream (the test NATS has it on) needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let config = format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {sys}: {system_jwt}, {}: {account_jwt} }}",
        account.public_key(),
        sys = system.public_key(),
    );
    let nats = NatsServer::start_with_config(&config, &[]).await;
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    let yaml = app("auth: {credsRef: {name: nats, key: user.creds}}");
    connects(
        &yaml,
        &nats.url(),
        &[("nats", "user.creds", creds.as_bytes())],
    )
    .await;
    let error = refused(&yaml, &nats.url(), &[("nats", "user.creds", b"not creds")]).await;
    assert!(error.contains("spec.nats.auth.credsRef"), "{error}");
    // A user the account did not sign is refused.
    let stranger = nkeys::KeyPair::new_user();
    let forged = creds.replace(&user.seed().unwrap(), &stranger.seed().unwrap());
    let error = refused(
        &yaml,
        &nats.url(),
        &[("nats", "user.creds", forged.as_bytes())],
    )
    .await;
    assert!(error.contains("spec.nats.auth"), "{error}");
}
