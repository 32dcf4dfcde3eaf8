//! Integration tests of the RealtimeApp compiler: every rule `compile()` (and
//! `parse_manifest`) enforces is fed a small manifest that breaks exactly that rule,
//! and the test asserts the path of the field at fault and a key phrase of the message.
//!
//! Each case starts from [`BASE`], a minimal valid manifest, and changes it with
//! [`edit`] (replace one exact piece of text) or [`with_spec`] / [`with_route`] (add
//! lines), so the manifest under test differs from a valid one in one place only.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use switchboard_spec::{
    ACK_TYPE, CompiledApp, PublishAction, RequestAction, RouteAction, SpecError, SpecErrors,
    TopicTemplate, load, parse_manifest,
};

/// The smallest manifest that compiles: anonymous connections, one topic rule and one
/// subscribe route with a payload schema. `routes` is the last key of `spec`, so
/// [`with_route`] can append routes to it.
const BASE: &str = r#"apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata:
  name: chat
spec:
  auth:
    anonymous: true
  topics:
    - pattern: "room:{roomId}"
  routes:
    - type: JOIN_ROOM
      payload:
        type: object
        required: [roomId]
        properties:
          roomId: {type: string}
      subscribe: {topic: "room:{roomId}"}
"#;

/// [`BASE`] with `from` (which must occur exactly once) replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    edit_in(BASE, from, to)
}

fn edit_in(yaml: &str, from: &str, to: &str) -> String {
    assert_eq!(
        yaml.matches(from).count(),
        1,
        "test bug: {from:?} must occur exactly once in\n{yaml}"
    );
    yaml.replacen(from, to, 1)
}

/// [`BASE`] with `lines` (YAML at the indentation of `spec`'s keys, i.e. none) added
/// at the start of `spec`.
fn with_spec(lines: &str) -> String {
    with_spec_in(BASE, lines)
}

fn with_spec_in(yaml: &str, lines: &str) -> String {
    edit_in(yaml, "spec:\n", &format!("spec:\n{}", indent(lines, 2)))
}

/// [`BASE`] with one more route (YAML of a mapping, unindented, without the `- `).
fn with_route(route: &str) -> String {
    with_route_in(BASE, route)
}

fn with_route_in(yaml: &str, route: &str) -> String {
    format!(
        "{yaml}{}",
        indent(&format!("- {}", indent(route, 2).trim_start()), 4)
    )
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

fn compiles(yaml: &str) -> CompiledApp {
    match load(yaml) {
        Ok(app) => app,
        Err(e) => panic!("expected the manifest to compile, got: {e}\n--- manifest ---\n{yaml}"),
    }
}

fn errors(yaml: &str) -> Vec<SpecError> {
    match load(yaml) {
        Ok(_) => panic!("expected the manifest to be refused\n--- manifest ---\n{yaml}"),
        Err(SpecErrors(errs)) => {
            assert!(!errs.is_empty(), "SpecErrors must never be empty");
            errs
        }
    }
}

/// Among the reported problems there is one at `path` whose message contains `phrase`.
#[track_caller]
fn assert_has(errs: &[SpecError], path: &str, phrase: &str) {
    assert!(
        errs.iter()
            .any(|e| e.path == path && e.message.contains(phrase)),
        "expected an error at {path:?} mentioning {phrase:?}, got:\n{}",
        render(errs)
    );
}

/// The manifest is refused with exactly one problem, at `path`, mentioning `phrase`.
#[track_caller]
fn assert_only(yaml: &str, path: &str, phrase: &str) {
    let errs = errors(yaml);
    assert_has(&errs, path, phrase);
    assert_eq!(
        errs.len(),
        1,
        "expected only the error at {path:?}, got:\n{}",
        render(&errs)
    );
}

fn render(errs: &[SpecError]) -> String {
    errs.iter().map(|e| format!("  {e}\n")).collect()
}

// ---------------------------------------------------------------------------------
// The baseline

#[test]
fn base_manifest_compiles_with_defaults() {
    let app = compiles(BASE);
    assert_eq!(app.name, "chat");
    assert_eq!(app.namespace, "default");
    assert!(app.jwt.is_none());
    assert!(app.buckets.is_empty());
    assert_eq!(app.topics.len(), 1);
    assert_eq!(app.topics[0].pattern.source(), "room:{roomId}");
    assert_eq!(app.routes.len(), 1);
    let join = &app.routes["JOIN_ROOM"];
    assert_eq!(join.message_type, "JOIN_ROOM");
    assert!(join.validator.is_some());
    assert!(join.roles.is_none());
    assert!(join.charges.is_empty());
    assert!(matches!(&join.action, RouteAction::Subscribe(t) if t.source() == "room:{roomId}"));
    let v = join.validator.as_ref().unwrap();
    assert!(v.is_valid(&serde_json::json!({"roomId": "lobby"})));
    assert!(!v.is_valid(&serde_json::json!({})));
}

#[test]
fn test_helpers_build_the_manifests_they_claim_to() {
    // The helpers are the foundation of every other test: check they produce YAML that
    // means what it says.
    let m = parse_manifest(&with_spec(
        "replicas: 1\nallowedOrigins: [\"https://a.example\"]",
    ))
    .unwrap();
    assert_eq!(m.spec.replicas, Some(1));
    assert_eq!(m.spec.routes.len(), 1);
    let m = parse_manifest(&with_route("type: PING\nforward: {subject: ping}")).unwrap();
    assert_eq!(m.spec.routes.len(), 2);
    assert_eq!(m.spec.routes[1].message_type, "PING");
    assert_eq!(m.spec.routes[1].forward.as_ref().unwrap().subject, "ping");
    assert!(m.spec.auth.anonymous);
}

// ---------------------------------------------------------------------------------
// Shape: parse_manifest

#[test]
fn unknown_route_field_names_its_path() {
    let yaml = edit(
        r#"subscribe: {topic: "room:{roomId}"}"#,
        r#"topc: "room:{roomId}""#,
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    // serde_path_to_error names the offending key itself, under its parent.
    assert_eq!(errs[0].path, "spec.routes[0].topc");
    assert!(
        errs[0].message.contains("unknown field `topc`"),
        "{}",
        errs[0].message
    );
    assert!(
        errs[0].message.contains("subscribe"),
        "lists the expected fields: {}",
        errs[0].message
    );
}

#[test]
fn unknown_nested_field_names_its_path() {
    let yaml = edit(
        r#"subscribe: {topic: "room:{roomId}"}"#,
        r#"publish: {topc: "room:{roomId}"}"#,
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert_eq!(errs[0].path, "spec.routes[0].publish.topc");
    assert!(
        errs[0].message.contains("unknown field `topc`"),
        "{}",
        errs[0].message
    );
}

#[test]
fn unknown_spec_field_names_its_path() {
    let errs = errors(&with_spec("replica: 2"));
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert_eq!(errs[0].path, "spec.replica");
    assert!(
        errs[0].message.contains("unknown field `replica`"),
        "{}",
        errs[0].message
    );
}

#[test]
fn wrong_field_type_names_its_path() {
    let errs = errors(&with_spec("limits: {maxPayloadBytes: lots}"));
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert_eq!(errs[0].path, "spec.limits.maxPayloadBytes");
    assert!(
        errs[0].message.contains("invalid type"),
        "{}",
        errs[0].message
    );
}

#[test]
fn missing_spec_is_reported_on_the_document() {
    let yaml = "apiVersion: switchboard.dev/v1alpha1\nkind: RealtimeApp\nmetadata: {name: chat}\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert_eq!(errs[0].path, "(document)");
    assert!(errs[0].message.contains("spec"), "{}", errs[0].message);
}

#[test]
fn wrong_kind_is_refused() {
    assert_only(
        &edit("kind: RealtimeApp", "kind: Deployment"),
        "kind",
        "expected RealtimeApp",
    );
}

#[test]
fn missing_kind_and_extra_metadata_are_accepted() {
    // The same file runs locally and under kubectl: labels, status etc. are ignored.
    let yaml = edit("kind: RealtimeApp\n", "");
    compiles(&yaml);
    let yaml = edit(
        "  name: chat\n",
        "  name: chat\n  namespace: team-a\n  labels: {app: chat}\n",
    );
    let app = compiles(&format!("{yaml}status:\n  readyReplicas: 1\n"));
    assert_eq!(app.namespace, "team-a");
}

#[test]
fn not_yaml_is_refused() {
    assert_only("spec: {auth: [unclosed\n", "(document)", "not valid YAML");
    assert_only(
        "spec:\n  auth: {anonymous: true\n  routes: ]\n",
        "(document)",
        "not valid YAML",
    );
}

// ---------------------------------------------------------------------------------
// Routes and their actions

#[test]
fn route_without_an_action_is_refused() {
    let yaml = edit("      subscribe: {topic: \"room:{roomId}\"}\n", "");
    assert_only(&yaml, "spec.routes[0]", "exactly one action");
    assert_only(&yaml, "spec.routes[0]", "found 0");
}

#[test]
fn route_with_two_actions_is_refused() {
    let yaml = edit(
        r#"subscribe: {topic: "room:{roomId}"}"#,
        "subscribe: {topic: \"room:{roomId}\"}\n      unsubscribe: {topic: \"room:{roomId}\"}",
    );
    assert_only(&yaml, "spec.routes[0]", "exactly one action");
    assert_only(&yaml, "spec.routes[0]", "found 2");
}

#[test]
fn duplicate_route_type_is_refused() {
    let yaml = with_route("type: JOIN_ROOM\nforward: {subject: joins}");
    assert_only(&yaml, "spec.routes[1].type", "declared twice");
}

#[test]
fn duplicate_route_type_is_refused_even_when_the_first_is_broken() {
    // All problems at once: fixing routes[0] must not reveal a new error in routes[1].
    let yaml = edit("      subscribe: {topic: \"room:{roomId}\"}\n", "");
    let yaml = with_route_in(&yaml, "type: JOIN_ROOM\nforward: {subject: joins}");
    let errs = errors(&yaml);
    assert_has(&errs, "spec.routes[0]", "exactly one action");
    assert_has(&errs, "spec.routes[1].type", "declared twice");
}

#[test]
fn reserved_type_names_are_refused() {
    for ty in ["$ws:x", "$anything", "__x", "ERROR", "RPC_ERROR"] {
        let yaml = edit("type: JOIN_ROOM", &format!("type: {ty:?}"));
        assert_only(&yaml, "spec.routes[0].type", "reserved for the protocol");
    }
    // Near misses are ordinary names.
    for ty in ["_x", "ERRORS", "error", "x$"] {
        let yaml = edit("type: JOIN_ROOM", &format!("type: {ty:?}"));
        assert!(compiles(&yaml).routes.contains_key(ty), "{ty}");
    }
}

#[test]
fn malformed_type_names_are_refused() {
    assert_only(
        &edit("type: JOIN_ROOM", "type: \"\""),
        "spec.routes[0].type",
        "1 to 128 characters",
    );
    let long = "A".repeat(129);
    assert_only(
        &edit("type: JOIN_ROOM", &format!("type: {long}")),
        "spec.routes[0].type",
        "1 to 128",
    );
    compiles(&edit(
        "type: JOIN_ROOM",
        &format!("type: {}", "A".repeat(128)),
    ));
    assert_only(
        &edit("type: JOIN_ROOM", "type: \"JOIN ROOM\""),
        "spec.routes[0].type",
        "whitespace",
    );
}

#[test]
fn reserved_emit_and_reply_types_are_refused() {
    let yaml = edit(
        r#"subscribe: {topic: "room:{roomId}"}"#,
        r#"publish: {topic: "room:{roomId}", emit: "$ws:message"}"#,
    );
    assert_only(
        &yaml,
        "spec.routes[0].publish.emit",
        "reserved for the protocol",
    );
    let yaml = with_route("type: ASK\nrequest: {subject: ask, reply: ERROR}");
    assert_only(
        &yaml,
        "spec.routes[1].request.reply",
        "reserved for the protocol",
    );
}

#[test]
fn payload_schema_that_does_not_compile_is_refused() {
    let yaml = edit("type: object", "type: 42");
    assert_only(&yaml, "spec.routes[0].payload", "not a valid JSON Schema");
    let yaml = edit("required: [roomId]", "required: 7");
    assert_only(&yaml, "spec.routes[0].payload", "not a valid JSON Schema");
}

#[test]
fn reply_schema_that_does_not_compile_is_refused() {
    let yaml = with_route("type: ASK\nrequest: {subject: ask, replySchema: {type: nonsense}}");
    assert_only(
        &yaml,
        "spec.routes[1].request.replySchema",
        "not a valid JSON Schema",
    );
}

#[test]
fn template_field_must_be_a_payload_property() {
    let yaml = edit(
        r#"subscribe: {topic: "room:{roomId}"}"#,
        r#"subscribe: {topic: "room:{room}"}"#,
    );
    assert_only(
        &yaml,
        "spec.routes[0].subscribe.topic",
        "{room} is not a property",
    );
    // A field named in `required` but not in `properties` is not enough.
    let yaml = edit("roomId: {type: string}", "other: {type: string}");
    assert_only(
        &yaml,
        "spec.routes[0].subscribe.topic",
        "{roomId} is not a property",
    );
    // A route without a payload schema declares no fields at all.
    let yaml = with_route("type: LEAVE_ROOM\nunsubscribe: {topic: \"room:{roomId}\"}");
    assert_only(
        &yaml,
        "spec.routes[1].unsubscribe.topic",
        "{roomId} is not a property",
    );
    let yaml = with_route("type: SAY\npublish: {topic: \"room:{roomId}\"}");
    assert_only(
        &yaml,
        "spec.routes[1].publish.topic",
        "{roomId} is not a property",
    );
}

#[test]
fn identity_variables_need_no_payload_property() {
    let yaml = edit(
        "    - pattern: \"room:{roomId}\"\n",
        "    - pattern: \"room:{roomId}\"\n    - pattern: \"user:{userId}\"\n",
    );
    let yaml = with_route_in(
        &yaml,
        "type: WATCH_INBOX\nsubscribe: {topic: \"user:{user.id}\"}",
    );
    let yaml = with_route_in(
        &yaml,
        "type: WATCH_ORG\nsubscribe: {topic: \"user:{claims.org}\"}",
    );
    let app = compiles(&yaml);
    assert!(
        matches!(&app.routes["WATCH_INBOX"].action, RouteAction::Subscribe(t) if t.source() == "user:{user.id}")
    );
}

#[test]
fn template_matching_no_topic_rule_is_refused() {
    for topic in ["lobby:{roomId}", "room:{roomId}:extra", "room"] {
        let yaml = edit(
            r#"subscribe: {topic: "room:{roomId}"}"#,
            &format!("subscribe: {{topic: {topic:?}}}"),
        );
        assert_only(
            &yaml,
            "spec.routes[0].subscribe.topic",
            "matches no pattern in spec.topics",
        );
    }
    // A literal where the pattern has a variable is governed by the rule.
    let yaml = edit(
        r#"subscribe: {topic: "room:{roomId}"}"#,
        r#"subscribe: {topic: "room:lobby"}"#,
    );
    compiles(&yaml);
}

#[test]
fn bad_template_syntax_is_refused() {
    for (topic, phrase) in [
        ("room:{roomId", "unclosed"),
        ("room::{roomId}", "empty segment"),
        ("room.{roomId}", "not allowed in a topic"),
        ("room:*", "not allowed in a topic"),
        ("room:{a b}", "not a template variable"),
        ("", "may not be empty"),
    ] {
        let yaml = edit(
            r#"subscribe: {topic: "room:{roomId}"}"#,
            &format!("subscribe: {{topic: {topic:?}}}"),
        );
        assert_only(&yaml, "spec.routes[0].subscribe.topic", phrase);
    }
}

#[test]
fn bad_topic_pattern_is_refused() {
    let yaml = edit(
        r#"- pattern: "room:{roomId}""#,
        r#"- pattern: "room:x{roomId}""#,
    );
    let errs = errors(&yaml);
    assert_has(
        &errs,
        "spec.topics[0].pattern",
        "a variable takes a whole segment",
    );
    let yaml = edit(
        r#"- pattern: "room:{roomId}""#,
        r#"- pattern: "room:{roomId}:{roomId}""#,
    );
    assert_has(&errors(&yaml), "spec.topics[0].pattern", "appears twice");
}

#[test]
fn owner_must_be_a_pattern_variable() {
    let yaml = edit(
        r#"- pattern: "room:{roomId}""#,
        "- pattern: \"room:{roomId}\"\n      subscribe: {owner: userId}",
    );
    assert_only(
        &yaml,
        "spec.topics[0].subscribe.owner",
        "not a variable of pattern",
    );
    let yaml = edit(
        r#"- pattern: "room:{roomId}""#,
        "- pattern: \"room:{roomId}\"\n      publish: {owner: room}",
    );
    assert_only(&yaml, "spec.topics[0].publish.owner", "\"room\"");
    let yaml = edit(
        r#"- pattern: "room:{roomId}""#,
        "- pattern: \"room:{roomId}\"\n      subscribe: {owner: roomId}",
    );
    let app = compiles(&yaml);
    assert_eq!(app.topics[0].subscribe.owner.as_deref(), Some("roomId"));
}

#[test]
fn require_subscribed_only_applies_to_publish() {
    let yaml = edit(
        r#"- pattern: "room:{roomId}""#,
        "- pattern: \"room:{roomId}\"\n      subscribe: {requireSubscribed: true}",
    );
    assert_only(
        &yaml,
        "spec.topics[0].subscribe.requireSubscribed",
        "only applies to publish",
    );
}

// ---------------------------------------------------------------------------------
// Rate limits

/// [`BASE`] with one bucket `chat` of capacity 5 and `JOIN_ROOM` charging it `charge`.
fn charged(charge: &str) -> String {
    let yaml = with_spec("rateLimits:\n  - {name: chat, capacity: 5, refillPerSecond: 1}");
    edit_in(
        &yaml,
        "      subscribe:",
        &format!("      rateLimit: [{charge}]\n      subscribe:"),
    )
}

#[test]
fn charges_compile_to_bucket_indices() {
    let app = compiles(&charged("{bucket: chat}"));
    assert_eq!(app.buckets.len(), 1);
    assert_eq!(app.buckets[0].name, "chat");
    assert_eq!(app.buckets[0].capacity, 5);
    let charges = &app.routes["JOIN_ROOM"].charges;
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (charges[0].bucket, charges[0].cost),
        (0, 1),
        "cost defaults to 1"
    );
    compiles(&charged("{bucket: chat, cost: 5}"));
}

#[test]
fn unknown_bucket_is_refused() {
    assert_only(
        &charged("{bucket: nope, cost: 1}"),
        "spec.routes[0].rateLimit[0].bucket",
        "no spec.rateLimits entry is named \"nope\"",
    );
}

#[test]
fn cost_zero_is_refused() {
    assert_only(
        &charged("{bucket: chat, cost: 0}"),
        "spec.routes[0].rateLimit[0].cost",
        "between 1 and the bucket's capacity (5)",
    );
}

#[test]
fn cost_above_capacity_is_refused() {
    assert_only(
        &charged("{bucket: chat}, {bucket: chat, cost: 6}"),
        "spec.routes[0].rateLimit[1].cost",
        "between 1 and the bucket's capacity (5)",
    );
}

#[test]
fn duplicate_bucket_name_is_refused() {
    let yaml = with_spec(
        "rateLimits:\n  - {name: chat, capacity: 5, refillPerSecond: 1}\n  - {name: chat, capacity: 9, refillPerSecond: 2}",
    );
    assert_only(&yaml, "spec.rateLimits[1].name", "used twice");
    let yaml = with_spec("rateLimits:\n  - {name: \"\", capacity: 5, refillPerSecond: 1}");
    assert_only(&yaml, "spec.rateLimits[0].name", "empty");
}

#[test]
fn bucket_capacity_zero_is_refused() {
    let yaml = with_spec("rateLimits:\n  - {name: chat, capacity: 0, refillPerSecond: 1}");
    assert_only(&yaml, "spec.rateLimits[0].capacity", "at least 1");
}

#[test]
fn bucket_refill_must_be_positive() {
    for refill in ["0", "-1", "-0.5", ".nan", ".inf"] {
        let yaml = with_spec(&format!(
            "rateLimits:\n  - {{name: chat, capacity: 5, refillPerSecond: {refill}}}"
        ));
        let errs = match parse_manifest(&yaml) {
            // A YAML parser may refuse non-finite numbers on its own; that is fine too.
            Err(_) if refill.starts_with('.') => continue,
            _ => errors(&yaml),
        };
        assert_has(
            &errs,
            "spec.rateLimits[0].refillPerSecond",
            "positive number",
        );
        assert_eq!(errs.len(), 1, "{refill}: {}", render(&errs));
    }
    compiles(&with_spec(
        "rateLimits:\n  - {name: chat, capacity: 5, refillPerSecond: 0.1}",
    ));
}

// ---------------------------------------------------------------------------------
// Auth

/// [`BASE`] with `auth.jwt` set to `jwt` (a flow mapping).
fn jwt(jwt: &str) -> String {
    edit(
        "    anonymous: true\n",
        &format!("    anonymous: false\n    jwt: {jwt}\n"),
    )
}

#[test]
fn jwt_policy_compiles_with_defaults() {
    let app = compiles(&jwt(
        "{algorithms: [HS256, HS512], secretRef: {name: chat-jwt, key: secret}}",
    ));
    let policy = app.jwt.expect("jwt policy");
    assert_eq!(policy.algorithms, ["HS256", "HS512"]);
    assert_eq!(policy.secret_ref.as_ref().unwrap().name, "chat-jwt");
    assert_eq!(policy.secret_ref.as_ref().unwrap().key, "secret");
    assert!(policy.public_key_ref.is_none());
    assert_eq!(policy.user_id_claim, "sub");
    assert_eq!(policy.roles_claim, "roles");
    assert_eq!(policy.leeway_seconds, 30);
    // One public-key family (RS and PS share RSA keys) plus HMAC is fine.
    compiles(&jwt(
        "{algorithms: [RS256, PS512, HS256], publicKeyRef: {name: k, key: pem}, secretRef: {name: s, key: k}}",
    ));
    compiles(&jwt(
        "{algorithms: [EdDSA], publicKeyRef: {name: k, key: pem}}",
    ));
}

#[test]
fn jwt_algorithm_none_is_refused() {
    for none in ["none", "None", "NONE"] {
        let yaml = jwt(&format!(
            "{{algorithms: [{none}], secretRef: {{name: s, key: k}}}}"
        ));
        assert_only(&yaml, "spec.auth.jwt.algorithms[0]", "never accepted");
    }
    let yaml = jwt("{algorithms: [HS256, none], secretRef: {name: s, key: k}}");
    assert_only(&yaml, "spec.auth.jwt.algorithms[1]", "never accepted");
}

#[test]
fn jwt_unknown_algorithm_is_refused() {
    for alg in ["HS999", "hs256", "RSA"] {
        let yaml = jwt(&format!(
            "{{algorithms: [HS256, {alg}], secretRef: {{name: s, key: k}}}}"
        ));
        assert_only(&yaml, "spec.auth.jwt.algorithms[1]", "unknown algorithm");
    }
}

#[test]
fn jwt_needs_at_least_one_algorithm() {
    let yaml = jwt("{algorithms: [], secretRef: {name: s, key: k}}");
    assert_only(&yaml, "spec.auth.jwt.algorithms", "at least one algorithm");
}

#[test]
fn hmac_without_secret_ref_is_refused() {
    assert_only(
        &jwt("{algorithms: [HS256]}"),
        "spec.auth.jwt.secretRef",
        "need secretRef",
    );
    // A public key does not stand in for the HMAC secret.
    let yaml = jwt("{algorithms: [HS256], publicKeyRef: {name: k, key: pem}}");
    assert_only(&yaml, "spec.auth.jwt.secretRef", "need secretRef");
}

#[test]
fn rsa_without_public_key_ref_is_refused() {
    assert_only(
        &jwt("{algorithms: [RS256]}"),
        "spec.auth.jwt.publicKeyRef",
        "need publicKeyRef",
    );
    let yaml = jwt("{algorithms: [RS256], secretRef: {name: s, key: k}}");
    assert_only(&yaml, "spec.auth.jwt.publicKeyRef", "need publicKeyRef");
}

#[test]
fn mixing_public_key_families_is_refused() {
    let yaml = jwt("{algorithms: [RS256, ES256], publicKeyRef: {name: k, key: pem}}");
    assert_only(&yaml, "spec.auth.jwt.algorithms", "one family");
    let yaml = jwt("{algorithms: [ES256, EdDSA], publicKeyRef: {name: k, key: pem}}");
    assert_only(&yaml, "spec.auth.jwt.algorithms", "one family");
}

#[test]
fn jwks_is_an_alternative_to_a_mounted_public_key() {
    let app = compiles(&jwt(
        "{algorithms: [RS256, ES256, EdDSA], jwks: {url: \"https://auth.example.com/.well-known/jwks.json\"}}",
    ));
    let jwks = app.jwt.unwrap().jwks.expect("jwks policy");
    assert_eq!(jwks.url, "https://auth.example.com/.well-known/jwks.json");
    assert_eq!(jwks.refresh, std::time::Duration::from_secs(300));
    // HS* tokens keep their mounted secret beside the key set.
    let app = compiles(&jwt(
        "{algorithms: [HS256, EdDSA], secretRef: {name: s, key: k}, jwks: {url: \"http://127.0.0.1:8080/jwks\", refreshSeconds: 5}}",
    ));
    assert_eq!(
        app.jwt.unwrap().jwks.unwrap().refresh,
        std::time::Duration::from_secs(5)
    );
}

#[test]
fn jwks_urls_must_be_https_unless_loopback() {
    for url in [
        "http://auth.example.com/jwks",
        "ftp://auth.example.com/jwks",
        "/jwks",
    ] {
        let yaml = jwt(&format!("{{algorithms: [RS256], jwks: {{url: {url:?}}}}}"));
        assert_only(&yaml, "spec.auth.jwt.jwks.url", "");
    }
    let yaml = jwt("{algorithms: [RS256], jwks: {url: \"http://auth.example.com/jwks\"}}");
    assert_only(&yaml, "spec.auth.jwt.jwks.url", "loopback");
}

#[test]
fn jwks_refresh_seconds_are_bounded() {
    for (seconds, ok) in [
        (4, false),
        (5, true),
        (86400, true),
        (86401, false),
        (0, false),
    ] {
        let yaml = jwt(&format!(
            "{{algorithms: [ES256], jwks: {{url: \"https://a.test/jwks\", refreshSeconds: {seconds}}}}}"
        ));
        if ok {
            compiles(&yaml);
        } else {
            assert_only(
                &yaml,
                "spec.auth.jwt.jwks.refreshSeconds",
                "between 5 and 86400",
            );
        }
    }
}

#[test]
fn jwks_with_a_mounted_public_key_or_only_hmac_is_refused() {
    let yaml = jwt(
        "{algorithms: [RS256], publicKeyRef: {name: k, key: pem}, jwks: {url: \"https://a.test/jwks\"}}",
    );
    assert_only(&yaml, "spec.auth.jwt.jwks", "not both");
    let yaml = jwt(
        "{algorithms: [HS256], secretRef: {name: s, key: k}, jwks: {url: \"https://a.test/jwks\"}}",
    );
    assert_only(&yaml, "spec.auth.jwt.jwks", "public keys");
}

#[test]
fn secret_ref_must_be_plain_names() {
    for (name, key) in [
        ("a/b", "k"),
        ("s", "../k"),
        ("..", "k"),
        ("s", "a\\b"),
        ("", "k"),
    ] {
        let yaml = jwt(&format!(
            "{{algorithms: [HS256], secretRef: {{name: {name:?}, key: {key:?}}}}}"
        ));
        assert_only(&yaml, "spec.auth.jwt.secretRef", "plain names");
    }
    let yaml = jwt("{algorithms: [ES256], publicKeyRef: {name: keys/ec, key: pem}}");
    assert_only(&yaml, "spec.auth.jwt.publicKeyRef", "plain names");
}

#[test]
fn no_way_to_connect_is_refused() {
    assert_only(
        &edit("anonymous: true", "anonymous: false"),
        "spec.auth",
        "no way to connect",
    );
    // Absent auth means anonymous: false and no jwt.
    assert_only(
        &edit("  auth:\n    anonymous: true\n", ""),
        "spec.auth",
        "no way to connect",
    );
    // JWT alone is a way to connect; so are both.
    compiles(&jwt("{algorithms: [HS256], secretRef: {name: s, key: k}}"));
    compiles(&edit(
        "    anonymous: true\n",
        "    anonymous: true\n    jwt: {algorithms: [HS256], secretRef: {name: s, key: k}}\n",
    ));
}

// ---------------------------------------------------------------------------------
// Deployment settings

#[test]
fn several_replicas_need_nats() {
    assert_only(
        &with_spec("replicas: 2"),
        "spec.replicas",
        "needs spec.nats.url",
    );
    compiles(&with_spec("replicas: 1"));
    compiles(&with_spec(
        "replicas: 3\nnats: {url: \"nats://nats.nats.svc:4222\"}",
    ));
    assert_only(
        &with_spec("replicas: -1"),
        "spec.replicas",
        "must not be negative",
    );
}

#[test]
fn autoscaling_is_checked() {
    assert_only(
        &with_spec("autoscaling: {maxReplicas: 4}"),
        "spec.autoscaling",
        "more than one replica needs spec.nats.url",
    );
    assert_only(
        &with_spec("nats: {url: \"nats://n:4222\"}\nautoscaling: {minReplicas: 5, maxReplicas: 4}"),
        "spec.autoscaling",
        "minReplicas <= maxReplicas",
    );
    compiles(&with_spec(
        "nats: {url: \"nats://n:4222\"}\nautoscaling: {minReplicas: 2, maxReplicas: 4}",
    ));
}

#[test]
fn bad_nats_url_is_refused() {
    for url in ["http://nats:4222", "nats.nats.svc:4222", ""] {
        let yaml = with_spec(&format!("nats: {{url: {url:?}}}"));
        assert_only(&yaml, "spec.nats.url", "must start with nats:// or tls://");
    }
    compiles(&with_spec("nats: {url: \"tls://nats.example.com:4222\"}"));
}

#[test]
fn nats_credentials_name_one_way_to_log_in() {
    let nats = |rest: &str| with_spec(&format!("nats: {{url: \"nats://n:4222\", {rest}}}"));
    let r = |name: &str| format!("{{name: s-{name}, key: k}}");
    for ok in [
        format!("auth: {{user: sb, passwordRef: {}}}", r("p")),
        format!("auth: {{tokenRef: {}}}", r("t")),
        format!("auth: {{nkeySeedRef: {}}}", r("n")),
        format!("auth: {{credsRef: {}}}", r("c")),
        "tls: {}".to_owned(),
        format!(
            "tls: {{caRef: {}, certRef: {}, keyRef: {}}}",
            r("ca"),
            r("c"),
            r("c")
        ),
    ] {
        compiles(&nats(&ok));
    }
    assert_only(
        &nats("auth: {}"),
        "spec.nats.auth",
        "names no way to log in",
    );
    assert_only(
        &nats(&format!(
            "auth: {{tokenRef: {}, nkeySeedRef: {}}}",
            r("t"),
            r("n")
        )),
        "spec.nats.auth",
        "more than one way",
    );
    assert_only(
        &nats("auth: {user: sb}"),
        "spec.nats.auth.passwordRef",
        "go together",
    );
    assert_only(
        &nats(&format!("auth: {{passwordRef: {}}}", r("p"))),
        "spec.nats.auth.passwordRef",
        "go together",
    );
    assert_only(
        &nats(&format!("tls: {{certRef: {}}}", r("c"))),
        "spec.nats.tls.keyRef",
        "go together",
    );
    assert_only(
        &nats("auth: {tokenRef: {name: \"../x\", key: k}}"),
        "spec.nats.auth.tokenRef",
        "plain names",
    );
}

#[test]
fn bad_subject_prefix_is_refused() {
    let yaml = with_spec("nats: {url: \"nats://n:4222\", subjectPrefix: \"sb.*\"}");
    assert_only(&yaml, "spec.nats.subjectPrefix", "dot-separated tokens");
    compiles(&with_spec(
        "nats: {url: \"nats://n:4222\", subjectPrefix: sb.prod}",
    ));
}

#[test]
fn allowed_origin_with_trailing_slash_is_refused() {
    let yaml =
        with_spec("allowedOrigins: [\"https://chat.example.com\", \"https://chat.example.com/\"]");
    assert_only(&yaml, "spec.allowedOrigins[1]", "no path or trailing '/'");
    let yaml = with_spec("allowedOrigins: [\"chat.example.com\"]");
    assert_only(&yaml, "spec.allowedOrigins[0]", "must be an origin");
    compiles(&with_spec(
        "allowedOrigins: [\"https://chat.example.com\", \"http://localhost:8080\"]",
    ));
}

#[test]
fn allowed_origin_with_a_path_is_refused() {
    // A browser's Origin header never carries a path, so such an entry could never
    // match; the compiler's own message promises "no path".
    let yaml = with_spec("allowedOrigins: [\"https://chat.example.com/app\"]");
    assert_only(&yaml, "spec.allowedOrigins[0]", "no path");
}

#[test]
fn tiny_max_payload_is_refused() {
    assert_only(
        &with_spec("limits: {maxPayloadBytes: 127}"),
        "spec.limits.maxPayloadBytes",
        "at least 128",
    );
    compiles(&with_spec("limits: {maxPayloadBytes: 128}"));
}

#[test]
fn zero_limits_are_refused() {
    for field in [
        "maxConnections",
        "maxConnectionsPerIp",
        "maxSubscriptionsPerConnection",
        "outboundQueueMessages",
        "handshakeTimeoutSeconds",
    ] {
        let yaml = with_spec(&format!("limits: {{{field}: 0}}"));
        assert_only(&yaml, &format!("spec.limits.{field}"), "at least 1");
    }
    // 0 means "never" for the idle timeout.
    compiles(&with_spec("limits: {idleTimeoutSeconds: 0}"));
}

#[test]
fn heartbeat_timeout_needed_while_pinging() {
    let yaml = with_spec("heartbeat: {intervalSeconds: 25, timeoutSeconds: 0}");
    assert_only(&yaml, "spec.heartbeat.timeoutSeconds", "while pings are on");
    compiles(&with_spec(
        "heartbeat: {intervalSeconds: 0, timeoutSeconds: 0}",
    ));
}

#[test]
fn request_timeout_bounds() {
    let yaml = with_route("type: ASK\nrequest: {subject: ask, timeoutMs: 0}");
    assert_only(
        &yaml,
        "spec.routes[1].request.timeoutMs",
        "between 1 and 300000",
    );
    let yaml = with_route("type: ASK\nrequest: {subject: ask, timeoutMs: 300001}");
    assert_only(
        &yaml,
        "spec.routes[1].request.timeoutMs",
        "between 1 and 300000",
    );
    let app = compiles(&with_route(
        "type: ASK\nrequest: {subject: ask, timeoutMs: 300000}",
    ));
    assert!(matches!(&app.routes["ASK"].action,
        RouteAction::Request(r) if r.timeout == Duration::from_millis(300_000)));
}

#[test]
fn subjects_with_wildcards_are_refused() {
    for subject in ["profile.*", "profile.>", "*", "a..b", ".a", "a b", ""] {
        let yaml = with_route(&format!("type: ASK\nrequest: {{subject: {subject:?}}}"));
        assert_only(&yaml, "spec.routes[1].request.subject", "no wildcards");
        let yaml = with_route(&format!("type: TELL\nforward: {{subject: {subject:?}}}"));
        assert_only(&yaml, "spec.routes[1].forward.subject", "no wildcards");
    }
}

#[test]
fn metadata_name_must_be_a_subject_token() {
    assert_only(
        &edit("name: chat", "name: chat.v2"),
        "metadata.name",
        "DNS label-like",
    );
    assert_only(
        &edit("name: chat", "name: \"c*\""),
        "metadata.name",
        "DNS label-like",
    );
    let yaml = edit("  name: chat\n", "  name: chat\n  namespace: a.b\n");
    assert_only(&yaml, "metadata.namespace", "DNS label-like");
    // Without a name the app is called "app".
    assert_eq!(compiles(&edit("metadata:\n  name: chat\n", "")).name, "app");
}

// ---------------------------------------------------------------------------------
// All problems at once

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = r#"apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata:
  name: chat.v2
spec:
  replicas: 2
  allowedOrigins: ["https://chat.example.com/"]
  limits: {maxPayloadBytes: 64}
  auth:
    anonymous: false
    jwt: {algorithms: [none, HS256]}
  rateLimits:
    - {name: chat, capacity: 0, refillPerSecond: 0}
  topics:
    - pattern: "room:{roomId}"
      subscribe: {owner: userId}
  routes:
    - type: JOIN_ROOM
      payload: {type: object, properties: {roomId: {type: string}}}
      rateLimit: [{bucket: nope}]
      subscribe: {topic: "room:{room}"}
    - type: JOIN_ROOM
      forward: {subject: "join.*"}
    - type: "$ws:x"
    - type: ASK
      request: {subject: ask, timeoutMs: 0}
"#;
    let errs = errors(yaml);
    let expected = [
        ("metadata.name", "DNS label-like"),
        ("spec.replicas", "needs spec.nats.url"),
        ("spec.allowedOrigins[0]", "trailing '/'"),
        ("spec.limits.maxPayloadBytes", "at least 128"),
        ("spec.auth.jwt.algorithms[0]", "never accepted"),
        ("spec.auth.jwt.secretRef", "need secretRef"),
        ("spec.rateLimits[0].capacity", "at least 1"),
        ("spec.rateLimits[0].refillPerSecond", "positive number"),
        (
            "spec.topics[0].subscribe.owner",
            "not a variable of pattern",
        ),
        ("spec.routes[0].rateLimit[0].bucket", "nope"),
        ("spec.routes[0].subscribe.topic", "{room} is not a property"),
        ("spec.routes[1].type", "declared twice"),
        ("spec.routes[1].forward.subject", "no wildcards"),
        ("spec.routes[2].type", "reserved for the protocol"),
        ("spec.routes[2]", "found 0"),
        ("spec.routes[3].request.timeoutMs", "between 1 and 300000"),
    ];
    for (path, phrase) in expected {
        assert_has(&errs, path, phrase);
    }
    assert_eq!(
        errs.len(),
        expected.len(),
        "unexpected extra errors:\n{}",
        render(&errs)
    );
    // The Display form lists them all, each with its path.
    let shown = SpecErrors(errs).to_string();
    assert!(
        shown.contains("spec.replicas: more than one replica"),
        "{shown}"
    );
    assert_eq!(shown.matches("; ").count(), expected.len() - 1, "{shown}");
}

// ---------------------------------------------------------------------------------
// A valid manifest with every kind of action

const EVERY_ACTION: &str = r#"apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {name: chat, namespace: prod}
spec:
  replicas: 2
  nats: {url: "nats://nats.nats.svc:4222"}
  allowedOrigins: ["https://chat.example.com"]
  auth:
    anonymous: true
    jwt:
      algorithms: [HS256]
      secretRef: {name: chat-jwt, key: secret}
      issuer: https://auth.example.com
      audience: chat
      userIdClaim: uid
      rolesClaim: groups
      leewaySeconds: 5
  rateLimits:
    - {name: chat, capacity: 30, refillPerSecond: 10, key: user}
    - {name: joins, capacity: 10, refillPerSecond: 0.5}
  topics:
    - pattern: "room:{roomId}"
      subscribe: {roles: [user, anonymous]}
      publish: {roles: [user], requireSubscribed: true}
    - pattern: "user:{userId}"
      subscribe: {owner: userId}
  routes:
    - type: JOIN_ROOM
      payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}
      rateLimit: [{bucket: joins}, {bucket: chat, cost: 2}]
      subscribe: {topic: "room:{roomId}"}
    - type: LEAVE_ROOM
      payload: {type: object, required: [roomId], properties: {roomId: {type: string}}}
      unsubscribe: {topic: "room:{roomId}"}
    - type: SEND_MESSAGE
      roles: [user]
      payload:
        type: object
        required: [roomId, text]
        properties: {roomId: {type: string}, text: {type: string}}
      publish: {topic: "room:{roomId}", emit: ROOM_MESSAGE, excludeSelf: true}
    - type: TYPING
      payload: {type: object, properties: {roomId: {type: string}}}
      publish: {topic: "room:{roomId}"}
    - type: FETCH_PROFILE
      payload: {type: object, properties: {userId: {type: string}}}
      request:
        subject: profile.fetch
        timeoutMs: 3000
        reply: PROFILE
        replySchema: {type: object, required: [name]}
    - type: PING_BACKEND
      request: {subject: ping}
    - type: NOTE
      forward: {subject: notes.new}
    - type: WATCH_INBOX
      subscribe: {topic: "user:{user.id}"}
"#;

#[test]
fn every_action_kind_compiles() {
    let app = compiles(EVERY_ACTION);
    assert_eq!(
        (app.name.as_str(), app.namespace.as_str()),
        ("chat", "prod")
    );
    assert_eq!(app.routes.len(), 8);
    assert_eq!(app.spec.replicas, Some(2));

    let join = &app.routes["JOIN_ROOM"];
    assert!(matches!(&join.action, RouteAction::Subscribe(t) if t.source() == "room:{roomId}"));
    let charges: Vec<_> = join
        .charges
        .iter()
        .map(|c| (app.buckets[c.bucket].name.as_str(), c.cost))
        .collect();
    assert_eq!(charges, [("joins", 1), ("chat", 2)]);

    assert!(matches!(&app.routes["LEAVE_ROOM"].action,
        RouteAction::Unsubscribe(t) if t.source() == "room:{roomId}"));

    let send = &app.routes["SEND_MESSAGE"];
    assert_eq!(send.roles.as_deref(), Some(&["user".to_owned()][..]));
    match &send.action {
        RouteAction::Publish(PublishAction {
            topic,
            emit,
            exclude_self,
        }) => {
            assert_eq!(topic.source(), "room:{roomId}");
            assert_eq!(emit, "ROOM_MESSAGE");
            assert!(*exclude_self);
        }
        other => panic!("SEND_MESSAGE: {other:?}"),
    }

    match &app.routes["TYPING"].action {
        RouteAction::Publish(PublishAction {
            emit, exclude_self, ..
        }) => {
            assert_eq!(emit, "TYPING", "emit defaults to the route's type");
            assert!(!*exclude_self, "excludeSelf defaults to false");
        }
        other => panic!("TYPING: {other:?}"),
    }

    match &app.routes["FETCH_PROFILE"].action {
        RouteAction::Request(request) => {
            let RequestAction {
                subject,
                timeout,
                reply,
                reply_validator,
            } = &**request;
            assert_eq!(subject, "profile.fetch");
            assert_eq!(*timeout, Duration::from_millis(3000));
            assert_eq!(reply, "PROFILE");
            let v = reply_validator.as_ref().expect("replySchema compiled");
            assert!(v.is_valid(&serde_json::json!({"name": "Alice"})));
            assert!(!v.is_valid(&serde_json::json!({})));
        }
        other => panic!("FETCH_PROFILE: {other:?}"),
    }

    let ping = &app.routes["PING_BACKEND"];
    assert!(ping.validator.is_none(), "no payload schema: any payload");
    match &ping.action {
        RouteAction::Request(request) => {
            let RequestAction {
                subject,
                timeout,
                reply,
                reply_validator,
            } = &**request;
            assert_eq!(subject, "ping");
            assert_eq!(*timeout, Duration::from_millis(5000), "default RPC timeout");
            assert_eq!(reply, "$ws:ack");
            assert_eq!(reply, ACK_TYPE);
            assert!(reply_validator.is_none());
        }
        other => panic!("PING_BACKEND: {other:?}"),
    }

    assert!(
        matches!(&app.routes["NOTE"].action, RouteAction::Forward(f) if f.subject == "notes.new")
    );
    assert!(matches!(&app.routes["WATCH_INBOX"].action,
        RouteAction::Subscribe(t) if t.source() == "user:{user.id}"));

    assert_eq!(app.buckets.len(), 2);
    assert_eq!(app.buckets[0].key, switchboard_spec::RateLimitKey::User);
    assert_eq!(
        app.buckets[1].key,
        switchboard_spec::RateLimitKey::Connection,
        "key defaults to connection"
    );
    assert_eq!(app.buckets[1].refill_per_second, 0.5);

    assert_eq!(app.topics.len(), 2);
    assert!(app.topics[0].publish.require_subscribed);
    assert!(
        app.topics[1].publish.roles.is_none(),
        "absent publish rule: anyone"
    );

    let jwt = app.jwt.as_ref().expect("jwt");
    assert_eq!(jwt.issuer.as_deref(), Some("https://auth.example.com"));
    assert_eq!(jwt.audience.as_deref(), Some("chat"));
    assert_eq!(jwt.user_id_claim, "uid");
    assert_eq!(jwt.roles_claim, "groups");
    assert_eq!(jwt.leeway_seconds, 5);
}

#[test]
fn compiled_templates_render_like_parsed_ones() {
    // What the compiler keeps is the template as written, ready to render.
    let app = compiles(EVERY_ACTION);
    let RouteAction::Publish(PublishAction { topic, .. }) = &app.routes["SEND_MESSAGE"].action
    else {
        panic!("publish");
    };
    let identity = switchboard_spec::Identity {
        user_id: "alice".into(),
        roles: vec!["user".into()],
        claims: Default::default(),
        anonymous: false,
    };
    let payload = serde_json::json!({"roomId": "lobby", "text": "hi"});
    let rendered = topic.render(&payload, &identity).unwrap();
    assert_eq!(rendered.as_str(), "room:lobby");
    let direct = TopicTemplate::parse("room:{roomId}").unwrap();
    assert_eq!(direct.render(&payload, &identity).unwrap(), rendered);
    let (rule, captures) = app.topic_rule(&rendered).expect("governed");
    assert_eq!(rule.pattern.source(), "room:{roomId}");
    assert_eq!(captures["roomId"], "lobby");
}

#[test]
fn list_sizes_are_bounded_like_the_crd() {
    let buckets: String = (0..17)
        .map(|i| format!("  - {{name: b{i}, capacity: 5, refillPerSecond: 1}}\n"))
        .collect();
    assert_has(
        &errors(&with_spec(&format!("rateLimits:\n{buckets}"))),
        "spec.rateLimits",
        "at most 16",
    );

    let charges = "type: PING\nrateLimit: [{bucket: b0}, {bucket: b0}, {bucket: b0}, {bucket: b0}, {bucket: b0}]\nforward: {subject: ping}";
    let yaml = with_spec_in(
        &with_route(charges),
        "rateLimits:\n  - {name: b0, capacity: 5, refillPerSecond: 1}\n",
    );
    assert_has(&errors(&yaml), "spec.routes[1].rateLimit", "at most 4");

    let long = "x".repeat(64);
    let yaml = with_spec(&format!(
        "rateLimits:\n  - {{name: {long}, capacity: 5, refillPerSecond: 1}}\n"
    ));
    assert_has(&errors(&yaml), "spec.rateLimits[0].name", "longer than 63");
}

#[test]
fn messages_name_the_route_by_its_type_as_well_as_its_index() {
    let yaml = with_route("type: SEND_MESSAGE\npublish: {topic: \"nowhere:x\"}");
    let errs = errors(&yaml);
    assert_has(&errs, "spec.routes[1].publish.topic", "matches no pattern");
    let shown = render(&errs);
    assert!(
        shown.contains("spec.routes[1] (SEND_MESSAGE).publish.topic: "),
        "{shown}"
    );
    // Shape errors too, found before the spec is compiled.
    let yaml = with_route("type: SEND_MESSAGE\npublish: {topc: x}");
    let errs = errors(&yaml);
    assert_eq!(errs[0].route_type.as_deref(), Some("SEND_MESSAGE"));
    assert!(render(&errs).contains("spec.routes[1] (SEND_MESSAGE).publish.topc: "));
    // Outside the routes, nothing is added.
    let errs = errors(&edit(
        "  auth:\n    anonymous: true\n",
        "  auth:\n    anonymous: 3\n",
    ));
    assert_eq!(errs[0].route_type, None);
    assert!(
        render(&errs).starts_with("  spec.auth.anonymous: "),
        "{}",
        render(&errs)
    );
}

#[test]
fn shape_errors_are_in_yaml_words_not_rust_type_names() {
    let errs = errors(&edit(
        "  auth:\n    anonymous: true\n",
        "  auth:\n    anonymous: true\n  limits:\n    maxConnections: ten\n",
    ));
    let shown = render(&errs);
    assert_has(
        &errs,
        "spec.limits.maxConnections",
        "expected a whole number from 0 to 4294967295",
    );
    assert!(!shown.contains("u32"), "{shown}");
    let errs = errors(&edit(
        "  topics:\n    - pattern: \"room:{roomId}\"\n",
        "  topics: {pattern: x}\n",
    ));
    assert_has(
        &errs,
        "spec.topics",
        "invalid type: an object, expected a list",
    );
}

#[test]
fn trusted_proxies_are_cidrs_or_addresses_and_the_proxy_protocol_needs_them() {
    let app = compiles(&with_spec(
        "network: {trustedProxies: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"]}",
    ));
    assert_eq!(app.trusted_proxies.len(), 3);
    assert!(app.trusted_proxies[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
    let errs = errors(&with_spec(
        "network: {trustedProxies: [10.0.0.0/8, ten-dot-oh]}",
    ));
    assert_has(&errs, "spec.network.trustedProxies[1]", "not a CIDR");
    let errs = errors(&with_spec("network: {proxyProtocol: true}"));
    assert_has(
        &errs,
        "spec.network.proxyProtocol",
        "needs spec.network.trustedProxies",
    );
}

#[test]
fn tls_and_ingress_name_real_secrets_and_hosts() {
    let app = compiles(&with_spec(
        "tls: {secretRef: {name: chat-tls}, minVersion: \"1.3\"}\ningress: {host: chat.example.com, tlsSecretName: chat-public-tls}",
    ));
    assert_eq!(
        app.spec.tls.as_ref().and_then(|t| t.min_version),
        Some(switchboard_spec::TlsVersion::Tls13)
    );
    compiles(&with_spec("ingress: {host: \"*.example.com\"}"));
    let errs = errors(&with_spec(
        "tls: {secretRef: {name: ../etc}}\ningress: {host: \"chat example\", tlsSecretName: Chat_TLS}",
    ));
    assert_has(&errs, "spec.tls.secretRef.name", "must be a Secret name");
    assert_has(&errs, "spec.ingress.host", "not a host name");
    assert_has(&errs, "spec.ingress.tlsSecretName", "must be a Secret name");
    let errs = errors(&with_spec(
        "tls: {secretRef: {name: x}, minVersion: \"1.1\"}",
    ));
    assert_has(&errs, "spec.tls.minVersion", "unknown variant");
}
