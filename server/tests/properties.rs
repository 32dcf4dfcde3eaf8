//! Property tests of what a client or a backend reaches in the server without a socket:
//! the envelope parser and encoder, close-frame answers, error clipping, token handling
//! and the topic-to-subject mapping. Generated inputs, a bounded number of cases each;
//! a panic or a broken invariant fails `cargo test`. The envelope parser also has a
//! checked-in seed corpus (`tests/corpus/envelopes`, see `switchboard_tests::corpus`),
//! replayed exactly and then mutated. (The same paths over real sockets are in
//! tests/gateway.)

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::Value;
use switchboard_server::auth::Authenticator;
use switchboard_server::bus::nats::Subjects;
use switchboard_server::protocol::{self, OutMeta, close};
use switchboard_spec::Topic;
use switchboard_tests::corpus::{self, Seed};

fn envelope_seeds() -> Vec<Seed> {
    corpus::seeds(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/envelopes"
    ))
}

/// What every input must come to: an envelope whose payload is delivered byte for byte
/// as sent, or one bounded error. Returns whether it was accepted.
fn parse_holds_its_promises(bytes: &[u8]) -> Result<bool, TestCaseError> {
    match protocol::parse_inbound(bytes) {
        Ok(m) => {
            prop_assert!(!m.message_type.is_empty());
            let frame = protocol::encode("T", OutMeta::default(), &*m.raw_payload);
            prop_assert!(serde_json::from_slice::<Value>(&frame).is_ok());
            let raw = m.raw_payload.get().as_bytes();
            prop_assert!(
                frame.windows(raw.len()).any(|w| w == raw),
                "the delivery does not carry the payload as sent"
            );
            Ok(true)
        }
        Err(bad) => {
            let frame = protocol::encode_error(
                protocol::ERROR_TYPE,
                bad.correlation_id.as_deref(),
                &bad.rejection,
            );
            prop_assert!(frame.len() < 2048, "{} bytes", frame.len());
            Ok(false)
        }
    }
}

#[test]
fn every_envelope_seed_comes_to_its_named_outcome() {
    for seed in envelope_seeds() {
        let accepted =
            parse_holds_its_promises(&seed.bytes).unwrap_or_else(|e| panic!("{}: {e}", seed.name));
        assert_eq!(accepted, seed.must_be_accepted(), "{}", seed.name);
    }
}

fn authenticator() -> (std::path::PathBuf, Authenticator) {
    let app = switchboard_spec::load(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {name: p, namespace: p}
spec:
  auth:
    anonymous: true
    jwt: {algorithms: [HS256], secretRef: {name: jwt, key: secret}}
  topics: [{pattern: "room:{id}"}]
  routes:
    - {type: J, payload: {type: object, properties: {id: {type: string}}}, subscribe: {topic: "room:{id}"}}
"#,
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("sb-props-{}-{:x}", std::process::id(), rand_id()));
    std::fs::create_dir_all(dir.join("jwt")).unwrap();
    std::fs::write(dir.join("jwt/secret"), [7u8; 32]).unwrap();
    let auth = Authenticator::load(app.jwt.as_ref(), true, &dir).unwrap();
    (dir, auth)
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_bytes_are_an_envelope_or_one_bounded_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        parse_holds_its_promises(&bytes)?;
    }

    #[test]
    fn mutated_envelope_seeds_are_an_envelope_or_one_bounded_error(bytes in corpus::mutations(&envelope_seeds())) {
        parse_holds_its_promises(&bytes)?;
    }

    #[test]
    fn json_shaped_text_is_an_envelope_or_one_error(text in r#"\{("(type|meta|payload|x)":("[^"]{0,8}"|\[[0-9,]{0,6}\]|\{[^{}]{0,10}\}|-?[0-9]{1,25}(\.[0-9]+)?(e[0-9])?|null),?){0,4}\}"#) {
        let _ = protocol::parse_inbound(text.as_bytes());
    }

    #[test]
    fn every_close_payload_gets_an_answer_an_endpoint_may_send(payload in proptest::collection::vec(any::<u8>(), 0..130)) {
        let (code, well_formed) = close::answer(&payload);
        prop_assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999), "{code}");
        if !well_formed {
            prop_assert!(code == close::PROTOCOL_ERROR || code == close::INVALID_DATA);
        }
    }

    #[test]
    fn clipped_text_is_bounded_and_a_prefix(text in "\\PC{0,600}") {
        let clipped = protocol::clip(&text);
        prop_assert!(clipped.chars().count() <= protocol::MAX_ERROR_MESSAGE_CHARS + 40);
        let kept = clipped.split("… (").next().unwrap_or_default();
        prop_assert!(text.starts_with(kept));
    }

    #[test]
    fn topics_map_to_subjects_inside_the_app_without_wildcards(topic in "[A-Za-z0-9_-]{1,10}(:[A-Za-z0-9_@|.=-]{1,10}){0,4}") {
        if let Ok(topic) = Topic::parse(&topic) {
            let subject = Subjects::new("sb", "ns", "app").topic(&topic);
            prop_assert!(subject.starts_with("sb.ns.app.t."), "{subject}");
            let tokens: Vec<&str> = subject.split('.').collect();
            prop_assert_eq!(tokens.len(), 4 + topic.segments().count(), "{}", subject);
            for t in tokens {
                prop_assert!(!t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace), "{subject}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_token_text_is_verified_or_refused_never_a_panic(token in "\\PC{0,200}", dotted in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,40}") {
        let (dir, auth) = authenticator();
        // Verification is async (a JWKS lookup may wait for a refresh); this app's
        // HMAC key never waits, so a plain runtime drives it.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for t in [token.as_str(), dotted.as_str()] {
            prop_assert!(runtime.block_on(auth.authenticate(Some(t), "anon")).is_err(), "{t}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
