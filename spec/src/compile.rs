//! The one compiler of a RealtimeApp spec.
//!
//! The server runs it at start-up and serves only what it returns; the operator runs it
//! before rolling anything out, so a spec the server would refuse is reported as
//! Degraded instead of crash-looping pods. It checks every cross-field rule, compiles
//! each JSON Schema once, parses every template and pattern, and reports *all* problems,
//! each with the path of the field at fault.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use jsonschema::Validator;
use serde_json::Value;

use crate::action::{ForwardAction, HistoryAction, PublishAction, RequestAction, RouteAction};
use crate::topic::{TemplateVar, TopicPattern, TopicTemplate};
use crate::types::{
    AppManifest, HistorySettings, JwksSettings, NatsSettings, PresenceSettings, RateLimitKey,
    RealtimeAppSpec, SecretKeyRef, TopicAccess,
};

/// Longest message `type` (docs/PROTOCOL.md §2).
pub const MAX_TYPE_LEN: usize = 128;
/// Size bounds, shared with the CRD schema (where they keep the apiserver's CEL cost
/// estimates within budget).
pub const MAX_ROUTES: usize = 128;
pub const MAX_BUCKETS: usize = 16;
pub const MAX_CHARGES_PER_ROUTE: usize = 4;
pub const MAX_BUCKET_NAME: usize = 63;
pub const MAX_TOPIC_RULES: usize = 256;
/// Default RPC deadline when a request route sets none.
pub const DEFAULT_RPC_TIMEOUT_MS: u32 = 5_000;
/// Most publications a topic keeps, and most one history answer holds.
pub const MAX_HISTORY_SIZE: u32 = 10_000;
/// A history route's `maxLimit` when absent.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
/// Longest RPC deadline a route may ask for.
pub const MAX_RPC_TIMEOUT_MS: u32 = 300_000;
/// Clock skew tolerated on token times when the spec sets none.
pub const DEFAULT_JWT_LEEWAY_SECONDS: u32 = 30;
/// Seconds between scheduled JWKS refreshes when the spec sets none: what issuers
/// commonly allow for a published key to reach every verifier before they sign with it.
pub const DEFAULT_JWKS_REFRESH_SECONDS: u32 = 300;
/// Bounds of `auth.jwt.jwks.refreshSeconds`: more often than every 5 seconds would poll
/// the issuer from every pod for nothing; less often than daily keeps a withdrawn key
/// trusted too long.
pub const MIN_JWKS_REFRESH_SECONDS: u32 = 5;
pub const MAX_JWKS_REFRESH_SECONDS: u32 = 86_400;

/// One problem in a spec, located by its field path (`spec.routes[2].publish.topic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub path: String,
    pub message: String,
    /// The `type` of the route the path is in, when it is in one: people know their
    /// routes by type, not by position, so messages name both.
    pub route_type: Option<String>,
}

impl SpecError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            route_type: None,
        }
    }

    /// The index `i` of a path in `spec.routes[i]`.
    pub fn route_index(&self) -> Option<usize> {
        let rest = self.path.strip_prefix("spec.routes[")?;
        rest[..rest.find(']')?].parse().ok()
    }

    /// Fills [`SpecError::route_type`] from the type of the route at the path's index.
    pub(crate) fn name_route(mut self, type_at: impl Fn(usize) -> Option<String>) -> Self {
        self.route_type = self.route_index().and_then(type_at);
        self
    }
}

/// `spec.routes[3] (SEND_MESSAGE).publish.topic: …`
impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.route_type, self.path.find(']')) {
            (Some(t), Some(end)) if self.route_index().is_some() => write!(
                f,
                "{} ({t}){}: {}",
                &self.path[..=end],
                &self.path[end + 1..],
                self.message
            ),
            _ => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a spec. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A spec that passed every check, in the form the server serves from.
#[derive(Debug)]
pub struct CompiledApp {
    pub name: String,
    pub namespace: String,
    /// The declared spec, for the settings used as they are (limits, heartbeat, ...).
    pub spec: RealtimeAppSpec,
    pub routes: HashMap<String, Arc<CompiledRoute>>,
    pub topics: Vec<CompiledTopicRule>,
    /// Token buckets; routes refer to them by index.
    pub buckets: Vec<Bucket>,
    pub jwt: Option<JwtPolicy>,
    /// `spec.network.trustedProxies`, parsed.
    pub trusted_proxies: Vec<IpNet>,
}

impl CompiledApp {
    /// The first topic rule that governs `topic`, with its pattern's captures.
    pub fn topic_rule<'a, 't>(
        &'a self,
        topic: &'t crate::Topic,
    ) -> Option<(&'a CompiledTopicRule, HashMap<&'a str, &'t str>)> {
        self.topics
            .iter()
            .find_map(|rule| rule.pattern.captures(topic).map(|c| (rule, c)))
    }
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub message_type: String,
    pub validator: Option<Validator>,
    pub roles: Option<Vec<String>>,
    pub charges: Vec<Charge>,
    pub action: RouteAction,
}

/// `cost` tokens from `buckets[bucket]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    pub bucket: usize,
    pub cost: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub name: String,
    pub capacity: u32,
    pub refill_per_second: f64,
    pub key: RateLimitKey,
}

#[derive(Debug)]
pub struct CompiledTopicRule {
    pub pattern: TopicPattern,
    pub subscribe: TopicAccess,
    pub publish: TopicAccess,
    pub history: Option<HistorySettings>,
    pub presence: Option<PresenceSettings>,
}

/// JWT verification settings, checked for consistency; the server loads the keys.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtPolicy {
    /// Canonical algorithm names, e.g. `HS256`, `EdDSA`.
    pub algorithms: Vec<String>,
    pub secret_ref: Option<SecretKeyRef>,
    pub public_key_ref: Option<SecretKeyRef>,
    /// Public keys from the issuer's key set, instead of `public_key_ref`.
    pub jwks: Option<JwksPolicy>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub user_id_claim: String,
    pub roles_claim: String,
    pub leeway_seconds: u32,
}

/// Where the server fetches public keys from, and how often (`spec.auth.jwt.jwks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksPolicy {
    /// An `https://` URL, or `http://` to a loopback host ([`check_jwks_url`]).
    pub url: String,
    /// Time between scheduled refreshes.
    pub refresh: Duration,
}

/// JWS algorithms we verify, by family. `none` is deliberately absent.
const HMAC_ALGS: &[&str] = &["HS256", "HS384", "HS512"];
const RSA_ALGS: &[&str] = &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];
const EC_ALGS: &[&str] = &["ES256", "ES384"];
const ED_ALGS: &[&str] = &["EdDSA"];

/// Collects errors so that one run reports all of them.
#[derive(Default)]
struct Problems(Vec<SpecError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError::new(path, message));
    }
}

/// Checks and compiles a manifest.
pub fn compile(manifest: &AppManifest) -> Result<CompiledApp, SpecErrors> {
    let mut p = Problems::default();
    let name = manifest
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "app".to_owned());
    let namespace = manifest
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    for (field, value) in [("metadata.name", &name), ("metadata.namespace", &namespace)] {
        if !is_subject_token(value) {
            p.add(
                field,
                "must be a DNS label-like name ([A-Za-z0-9_-]+): it becomes a NATS subject token",
            );
        }
    }
    let spec = &manifest.spec;
    check_settings(spec, &mut p);
    let buckets = compile_buckets(spec, &mut p);
    let topics = compile_topics(spec, &mut p);
    let routes = compile_routes(spec, &buckets, &topics, &mut p);
    let jwt = compile_jwt(spec, &mut p);
    let trusted_proxies = compile_network(spec, &mut p);
    check_edge(spec, &mut p);
    if !p.0.is_empty() {
        let type_at = |i: usize| spec.routes.get(i).map(|r| r.message_type.clone());
        return Err(SpecErrors(
            p.0.into_iter().map(|e| e.name_route(type_at)).collect(),
        ));
    }
    Ok(CompiledApp {
        name,
        namespace,
        spec: spec.clone(),
        routes,
        topics,
        buckets,
        jwt,
        trusted_proxies,
    })
}

/// `spec.network`: each trusted proxy a CIDR or a single address.
fn compile_network(spec: &RealtimeAppSpec, p: &mut Problems) -> Vec<IpNet> {
    let Some(network) = &spec.network else {
        return Vec::new();
    };
    let mut nets = Vec::new();
    for (i, text) in network.trusted_proxies.iter().enumerate() {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => p.add(
                format!("spec.network.trustedProxies[{i}]"),
                format!("{text:?} is not a CIDR or an address (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)"),
            ),
        }
    }
    if network.proxy_protocol && network.trusted_proxies.is_empty() {
        p.add(
            "spec.network.proxyProtocol",
            "needs spec.network.trustedProxies: the load balancers' addresses (0.0.0.0/0 and ::/0 to believe every peer)",
        );
    }
    nets
}

/// `spec.tls` and `spec.ingress`: names that become mount paths and Kubernetes object
/// references, so a typo is caught here rather than as a pod that never starts.
fn check_edge(spec: &RealtimeAppSpec, p: &mut Problems) {
    if let Some(tls) = &spec.tls
        && !is_dns_subdomain(&tls.secret_ref.name)
    {
        p.add(
            "spec.tls.secretRef.name",
            "must be a Secret name (lowercase letters, digits, '-' and '.')",
        );
    }
    let Some(ingress) = &spec.ingress else {
        return;
    };
    if !is_dns_subdomain(ingress.host.strip_prefix("*.").unwrap_or(&ingress.host)) {
        p.add(
            "spec.ingress.host",
            format!(
                "{:?} is not a host name (e.g. chat.example.com or *.example.com)",
                ingress.host
            ),
        );
    }
    if let Some(secret) = &ingress.tls_secret_name
        && !is_dns_subdomain(secret)
    {
        p.add(
            "spec.ingress.tlsSecretName",
            "must be a Secret name (lowercase letters, digits, '-' and '.')",
        );
    }
}

/// A Kubernetes object name (RFC 1123 subdomain), which is also a safe path segment.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn check_settings(spec: &RealtimeAppSpec, p: &mut Problems) {
    for (field, len, max) in [
        ("spec.routes", spec.routes.len(), MAX_ROUTES),
        ("spec.rateLimits", spec.rate_limits.len(), MAX_BUCKETS),
        ("spec.topics", spec.topics.len(), MAX_TOPIC_RULES),
    ] {
        if len > max {
            p.add(field, format!("at most {max} entries"));
        }
    }
    for (i, r) in spec.routes.iter().enumerate() {
        if r.rate_limit.len() > MAX_CHARGES_PER_ROUTE {
            p.add(
                format!("spec.routes[{i}].rateLimit"),
                format!("at most {MAX_CHARGES_PER_ROUTE} entries"),
            );
        }
    }
    let l = &spec.limits;
    if l.max_payload_bytes < 128 {
        p.add("spec.limits.maxPayloadBytes", "must be at least 128");
    }
    for (field, v) in [
        ("maxConnections", l.max_connections),
        ("maxConnectionsPerIp", l.max_connections_per_ip),
        (
            "maxSubscriptionsPerConnection",
            l.max_subscriptions_per_connection,
        ),
        ("outboundQueueMessages", l.outbound_queue_messages),
        ("handshakeTimeoutSeconds", l.handshake_timeout_seconds),
    ] {
        if v == 0 {
            p.add(format!("spec.limits.{field}"), "must be at least 1");
        }
    }
    if spec.heartbeat.interval_seconds > 0 && spec.heartbeat.timeout_seconds == 0 {
        p.add(
            "spec.heartbeat.timeoutSeconds",
            "must be at least 1 while pings are on",
        );
    }
    if let Some(replicas) = spec.replicas {
        if replicas < 0 {
            p.add("spec.replicas", "must not be negative");
        }
        if replicas > 1 && spec.nats.is_none() {
            p.add(
                "spec.replicas",
                "more than one replica needs spec.nats.url: without a bus each replica would be its own island",
            );
        }
    }
    if let Some(a) = &spec.autoscaling {
        if a.max_replicas < 1 || a.min_replicas.is_some_and(|m| m < 1 || m > a.max_replicas) {
            p.add("spec.autoscaling", "needs 1 <= minReplicas <= maxReplicas");
        }
        if a.max_replicas > 1 && spec.nats.is_none() {
            p.add(
                "spec.autoscaling",
                "more than one replica needs spec.nats.url",
            );
        }
    }
    if let Some(nats) = &spec.nats {
        if !(nats.url.starts_with("nats://") || nats.url.starts_with("tls://")) {
            p.add("spec.nats.url", "must start with nats:// or tls://");
        }
        if let Some(prefix) = &nats.subject_prefix
            && !prefix.split('.').all(is_subject_token)
        {
            p.add(
                "spec.nats.subjectPrefix",
                "must be dot-separated tokens of [A-Za-z0-9_-]",
            );
        }
        check_nats_access(nats, p);
    }
    if let Some(origins) = &spec.allowed_origins {
        for (i, o) in origins.iter().enumerate() {
            // What a browser sends: scheme://host[:port], nothing after the authority.
            let authority = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            let valid = authority.is_some_and(|a| {
                !a.is_empty() && !a.contains(['/', '?', '#', '@', ' ']) && !a.starts_with(':')
            });
            if !valid {
                p.add(
                    format!("spec.allowedOrigins[{i}]"),
                    "must be an origin like https://chat.example.com (scheme and host, no path or trailing '/')",
                );
            }
        }
    }
}

/// `spec.nats.auth` names one way of logging in, `spec.nats.tls` a whole client
/// certificate, and every Secret key is a plain name.
fn check_nats_access(nats: &NatsSettings, p: &mut Problems) {
    if let Some(auth) = &nats.auth {
        let ways = [
            auth.user.is_some() || auth.password_ref.is_some(),
            auth.token_ref.is_some(),
            auth.nkey_seed_ref.is_some(),
            auth.creds_ref.is_some(),
        ];
        match ways.iter().filter(|w| **w).count() {
            0 => p.add(
                "spec.nats.auth",
                "names no way to log in: set user and passwordRef, tokenRef, nkeySeedRef or credsRef",
            ),
            1 => {}
            _ => p.add(
                "spec.nats.auth",
                "names more than one way to log in: set only one of user and passwordRef, tokenRef, nkeySeedRef, credsRef",
            ),
        }
        if auth.user.is_some() != auth.password_ref.is_some() {
            p.add(
                "spec.nats.auth.passwordRef",
                "user and passwordRef go together",
            );
        }
        if auth.user.as_deref().is_some_and(str::is_empty) {
            p.add("spec.nats.auth.user", "must not be empty");
        }
    }
    if let Some(tls) = &nats.tls
        && tls.cert_ref.is_some() != tls.key_ref.is_some()
    {
        p.add(
            "spec.nats.tls.keyRef",
            "certRef and keyRef go together: a client certificate needs its key",
        );
    }
    for (field, r) in nats.secret_refs() {
        if !is_path_component(&r.name) || !is_path_component(&r.key) {
            p.add(
                format!("spec.nats.{field}"),
                "name and key must be plain names (no '/' or '..')",
            );
        }
    }
}

fn compile_buckets(spec: &RealtimeAppSpec, p: &mut Problems) -> Vec<Bucket> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, b) in spec.rate_limits.iter().enumerate() {
        let path = format!("spec.rateLimits[{i}]");
        if b.name.is_empty() || b.name.len() > MAX_BUCKET_NAME || !seen.insert(b.name.as_str()) {
            p.add(
                format!("{path}.name"),
                format!(
                    "{:?} is empty, longer than {MAX_BUCKET_NAME} characters, or used twice",
                    b.name
                ),
            );
        }
        if b.capacity == 0 {
            p.add(format!("{path}.capacity"), "must be at least 1");
        }
        if !(b.refill_per_second.is_finite() && b.refill_per_second > 0.0) {
            p.add(
                format!("{path}.refillPerSecond"),
                "must be a positive number",
            );
        }
        out.push(Bucket {
            name: b.name.clone(),
            capacity: b.capacity,
            refill_per_second: b.refill_per_second,
            key: b.key,
        });
    }
    out
}

fn compile_topics(spec: &RealtimeAppSpec, p: &mut Problems) -> Vec<CompiledTopicRule> {
    let mut out = Vec::new();
    for (i, rule) in spec.topics.iter().enumerate() {
        let path = format!("spec.topics[{i}]");
        let pattern = match TopicPattern::parse(&rule.pattern) {
            Ok(pattern) => pattern,
            Err(e) => {
                p.add(format!("{path}.pattern"), e);
                continue;
            }
        };
        for (which, access) in [("subscribe", &rule.subscribe), ("publish", &rule.publish)] {
            if let Some(owner) = access.as_ref().and_then(|a| a.owner.as_deref())
                && !pattern.has_var(owner)
            {
                p.add(
                    format!("{path}.{which}.owner"),
                    format!(
                        "names {owner:?}, which is not a variable of pattern {:?}",
                        rule.pattern
                    ),
                );
            }
        }
        if rule
            .subscribe
            .as_ref()
            .is_some_and(|a| a.require_subscribed)
        {
            p.add(
                format!("{path}.subscribe.requireSubscribed"),
                "only applies to publish",
            );
        }
        if let Some(h) = &rule.history {
            if !(1..=MAX_HISTORY_SIZE).contains(&h.size) {
                p.add(
                    format!("{path}.history.size"),
                    format!("must be between 1 and {MAX_HISTORY_SIZE}"),
                );
            }
            if h.ttl_seconds == 0 {
                p.add(format!("{path}.history.ttlSeconds"), "must be more than 0");
            }
        }
        out.push(CompiledTopicRule {
            pattern,
            subscribe: rule.subscribe.clone().unwrap_or_default(),
            publish: rule.publish.clone().unwrap_or_default(),
            history: rule.history,
            presence: rule.presence,
        });
    }
    out
}

fn compile_routes(
    spec: &RealtimeAppSpec,
    buckets: &[Bucket],
    topics: &[CompiledTopicRule],
    p: &mut Problems,
) -> HashMap<String, Arc<CompiledRoute>> {
    let mut routes = HashMap::new();
    // Separate from `routes`, which only holds routes that compiled: a duplicate of a
    // broken route is reported in the same run.
    let mut seen = HashSet::new();
    for (i, route) in spec.routes.iter().enumerate() {
        let path = format!("spec.routes[{i}]");
        let ty = &route.message_type;
        if let Err(e) = check_type_name(ty) {
            p.add(format!("{path}.type"), e);
        }
        if !seen.insert(ty.as_str()) {
            p.add(format!("{path}.type"), format!("{ty:?} is declared twice"));
        }
        let validator = route.payload.as_ref().and_then(|schema| {
            compile_schema(schema)
                .map_err(|e| p.add(format!("{path}.payload"), e))
                .ok()
        });
        let charges = route
            .rate_limit
            .iter()
            .enumerate()
            .filter_map(|(j, c)| {
                let cpath = format!("{path}.rateLimit[{j}]");
                let Some(idx) = buckets.iter().position(|b| b.name == c.bucket) else {
                    p.add(
                        format!("{cpath}.bucket"),
                        format!("no spec.rateLimits entry is named {:?}", c.bucket),
                    );
                    return None;
                };
                if c.cost == 0 || c.cost > buckets[idx].capacity {
                    p.add(
                        format!("{cpath}.cost"),
                        format!(
                            "must be between 1 and the bucket's capacity ({})",
                            buckets[idx].capacity
                        ),
                    );
                }
                Some(Charge {
                    bucket: idx,
                    cost: c.cost,
                })
            })
            .collect();
        let action = compile_action(route, &path, topics, p);
        if let Some(action) = action {
            routes.insert(
                ty.clone(),
                Arc::new(CompiledRoute {
                    message_type: ty.clone(),
                    validator,
                    roles: route.roles.clone(),
                    charges,
                    action,
                }),
            );
        }
    }
    routes
}

fn compile_action(
    route: &crate::types::RouteSpec,
    path: &str,
    topics: &[CompiledTopicRule],
    p: &mut Problems,
) -> Option<RouteAction> {
    let declared = [
        route.subscribe.is_some(),
        route.unsubscribe.is_some(),
        route.publish.is_some(),
        route.request.is_some(),
        route.forward.is_some(),
        route.history.is_some(),
        route.presence.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if declared != 1 {
        p.add(
            path,
            format!(
                "a route has exactly one action of subscribe, unsubscribe, publish, request, forward, history, presence (found {declared})"
            ),
        );
        return None;
    }
    let mut template = |action: &str, source: &str| -> Option<TopicTemplate> {
        let tpath = format!("{path}.{action}.topic");
        let template = TopicTemplate::parse(source)
            .map_err(|e| p.add(&tpath, e))
            .ok()?;
        for var in template.vars() {
            if let TemplateVar::Payload(field) = var
                && !schema_declares(route.payload.as_ref(), field)
            {
                p.add(
                    &tpath,
                    format!("{{{field}}} is not a property of the route's payload schema (spec.routes[].payload.properties)"),
                );
            }
        }
        if !topics.iter().any(|t| t.pattern.may_match(&template)) {
            p.add(
                &tpath,
                format!(
                    "topic {source:?} matches no pattern in spec.topics: add a rule that governs it"
                ),
            );
        }
        Some(template)
    };
    if let Some(a) = &route.subscribe {
        return template("subscribe", &a.topic).map(RouteAction::Subscribe);
    }
    if let Some(a) = &route.unsubscribe {
        return template("unsubscribe", &a.topic).map(RouteAction::Unsubscribe);
    }
    if let Some(a) = &route.history {
        let topic = template("history", &a.topic)?;
        if !topics
            .iter()
            .any(|t| t.history.is_some() && t.pattern.may_match(&topic))
        {
            p.add(
                format!("{path}.history.topic"),
                format!(
                    "no rule of spec.topics that may govern {:?} declares history",
                    a.topic
                ),
            );
        }
        let max_limit = a.max_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if !(1..=MAX_HISTORY_SIZE).contains(&max_limit) {
            p.add(
                format!("{path}.history.maxLimit"),
                format!("must be between 1 and {MAX_HISTORY_SIZE}"),
            );
        }
        return Some(RouteAction::History(HistoryAction { topic, max_limit }));
    }
    if let Some(a) = &route.presence {
        let topic = template("presence", &a.topic)?;
        if !topics
            .iter()
            .any(|t| t.presence.is_some() && t.pattern.may_match(&topic))
        {
            p.add(
                format!("{path}.presence.topic"),
                format!(
                    "no rule of spec.topics that may govern {:?} declares presence",
                    a.topic
                ),
            );
        }
        return Some(RouteAction::Presence(topic));
    }
    if let Some(a) = &route.publish {
        let topic = template("publish", &a.topic)?;
        let emit = a.emit.clone().unwrap_or_else(|| route.message_type.clone());
        if let Err(e) = check_type_name(&emit) {
            p.add(format!("{path}.publish.emit"), e);
        }
        return Some(RouteAction::Publish(PublishAction {
            topic,
            emit,
            exclude_self: a.exclude_self,
        }));
    }
    if let Some(a) = &route.request {
        let timeout_ms = a.timeout_ms.unwrap_or(DEFAULT_RPC_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_RPC_TIMEOUT_MS {
            p.add(
                format!("{path}.request.timeoutMs"),
                format!("must be between 1 and {MAX_RPC_TIMEOUT_MS}"),
            );
        }
        check_subject(&a.subject, &format!("{path}.request.subject"), p);
        let reply = a
            .reply
            .clone()
            .unwrap_or_else(|| crate::ACK_TYPE.to_owned());
        if a.reply.is_some()
            && let Err(e) = check_type_name(&reply)
        {
            p.add(format!("{path}.request.reply"), e);
        }
        let reply_validator = a.reply_schema.as_ref().and_then(|schema| {
            compile_schema(schema)
                .map_err(|e| p.add(format!("{path}.request.replySchema"), e))
                .ok()
        });
        return Some(RouteAction::Request(Arc::new(RequestAction {
            subject: a.subject.clone(),
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            reply,
            reply_validator,
        })));
    }
    let forward = route.forward.as_ref()?;
    check_subject(&forward.subject, &format!("{path}.forward.subject"), p);
    Some(RouteAction::Forward(ForwardAction {
        subject: forward.subject.clone(),
    }))
}

fn compile_jwt(spec: &RealtimeAppSpec, p: &mut Problems) -> Option<JwtPolicy> {
    let Some(jwt) = &spec.auth.jwt else {
        if !spec.auth.anonymous {
            p.add(
                "spec.auth",
                "no way to connect: set auth.anonymous: true, auth.jwt, or both",
            );
        }
        return None;
    };
    let path = "spec.auth.jwt";
    if jwt.algorithms.is_empty() {
        p.add(format!("{path}.algorithms"), "list at least one algorithm");
    }
    let mut families = HashSet::new();
    for (i, alg) in jwt.algorithms.iter().enumerate() {
        let family = [
            ("hmac", HMAC_ALGS),
            ("rsa", RSA_ALGS),
            ("ec", EC_ALGS),
            ("ed", ED_ALGS),
        ]
        .into_iter()
        .find(|(_, algs)| algs.contains(&alg.as_str()))
        .map(|(f, _)| f);
        match family {
            Some(f) => {
                families.insert(f);
            }
            None if alg.eq_ignore_ascii_case("none") => {
                p.add(format!("{path}.algorithms[{i}]"), "\"none\" is never accepted: unsigned tokens prove nothing")
            }
            None => p.add(
                format!("{path}.algorithms[{i}]"),
                format!("unknown algorithm {alg:?} (use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"),
            ),
        }
    }
    if families.contains("hmac") && jwt.secret_ref.is_none() {
        p.add(format!("{path}.secretRef"), "HS* algorithms need secretRef");
    }
    let public: Vec<_> = families.iter().filter(|f| **f != "hmac").collect();
    if !public.is_empty() && jwt.public_key_ref.is_none() && jwt.jwks.is_none() {
        p.add(
            format!("{path}.publicKeyRef"),
            "RS*/PS*/ES*/EdDSA algorithms need publicKeyRef or jwks",
        );
    }
    let jwks = jwt
        .jwks
        .as_ref()
        .map(|jwks| compile_jwks(jwks, jwt.public_key_ref.is_some(), public.is_empty(), p));
    // A key set holds keys of any type, each named by its `kid`; one PEM holds one.
    if public.len() > 1 && jwt.public_key_ref.is_some() {
        p.add(
            format!("{path}.algorithms"),
            "one publicKeyRef holds one key type: list algorithms of one family (RS/PS, ES or EdDSA)",
        );
    }
    for (name, r) in [
        ("secretRef", &jwt.secret_ref),
        ("publicKeyRef", &jwt.public_key_ref),
    ] {
        if let Some(r) = r
            && (!is_path_component(&r.name) || !is_path_component(&r.key))
        {
            p.add(
                format!("{path}.{name}"),
                "name and key must be plain names (no '/' or '..')",
            );
        }
    }
    Some(JwtPolicy {
        algorithms: jwt.algorithms.clone(),
        secret_ref: jwt.secret_ref.clone(),
        public_key_ref: jwt.public_key_ref.clone(),
        jwks,
        issuer: jwt.issuer.clone(),
        audience: jwt.audience.clone(),
        user_id_claim: jwt
            .user_id_claim
            .clone()
            .unwrap_or_else(|| "sub".to_owned()),
        roles_claim: jwt
            .roles_claim
            .clone()
            .unwrap_or_else(|| "roles".to_owned()),
        leeway_seconds: jwt.leeway_seconds.unwrap_or(DEFAULT_JWT_LEEWAY_SECONDS),
    })
}

/// Checks `spec.auth.jwt.jwks`. With `publicKeyRef` too it is refused: which of the two
/// verifies a token would depend on its `kid`, and a PEM left behind after moving to
/// the key set would go on verifying tokens the issuer no longer vouches for.
fn compile_jwks(
    jwks: &JwksSettings,
    has_public_key_ref: bool,
    only_hmac: bool,
    p: &mut Problems,
) -> JwksPolicy {
    let path = "spec.auth.jwt.jwks";
    if has_public_key_ref {
        p.add(
            path,
            "set jwks or publicKeyRef, not both: each is where the public keys come from",
        );
    }
    if only_hmac {
        p.add(
            path,
            "a key set serves public keys: list an RS*/PS*/ES*/EdDSA algorithm in spec.auth.jwt.algorithms (HS* keys come from secretRef only)",
        );
    }
    if let Err(e) = check_jwks_url(&jwks.url) {
        p.add(format!("{path}.url"), e);
    }
    let refresh = jwks.refresh_seconds.unwrap_or(DEFAULT_JWKS_REFRESH_SECONDS);
    if !(MIN_JWKS_REFRESH_SECONDS..=MAX_JWKS_REFRESH_SECONDS).contains(&refresh) {
        p.add(
            format!("{path}.refreshSeconds"),
            format!("must be between {MIN_JWKS_REFRESH_SECONDS} and {MAX_JWKS_REFRESH_SECONDS}"),
        );
    }
    JwksPolicy {
        url: jwks.url.clone(),
        refresh: Duration::from_secs(u64::from(refresh)),
    }
}

/// A key set URL must be `https://`, so keys cannot be swapped on the way, or plain
/// `http://` to a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`), where nothing
/// crosses a network: a test issuer or a sidecar. Credentials in the URL are refused,
/// as they would end up in logs.
pub fn check_jwks_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| {
        format!("not a URL ({e}): use https://issuer.example.com/.well-known/jwks.json")
    })?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err("must be an absolute URL: https://<host>/<path>".into());
    };
    if authority.as_str().contains('@') {
        return Err("must not carry credentials (user@host)".into());
    }
    let host = authority.host();
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "plain http:// is only allowed to a loopback host (localhost, 127.0.0.1, [::1]), not {host:?}: use https://"
        )),
        other => Err(format!("scheme {other:?} is not supported: use https://")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn compile_schema(schema: &Value) -> Result<Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// Does the payload schema declare `field` as a top-level property?
fn schema_declares(schema: Option<&Value>, field: &str) -> bool {
    schema
        .and_then(|s| s.get("properties"))
        .and_then(|props| props.get(field))
        .is_some()
}

/// Client-visible types: 1..128 printable characters, not one of the reserved names.
fn check_type_name(ty: &str) -> Result<(), String> {
    if ty.is_empty() || ty.chars().count() > MAX_TYPE_LEN {
        return Err(format!("a type is 1 to {MAX_TYPE_LEN} characters"));
    }
    if ty.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a type may not contain whitespace or control characters".into());
    }
    if ty.starts_with('$')
        || ty.starts_with("__")
        || ty == crate::ERROR_TYPE
        || ty == crate::RPC_ERROR_TYPE
    {
        return Err(format!("{ty:?} is reserved for the protocol"));
    }
    Ok(())
}

fn check_subject(subject: &str, path: &str, p: &mut Problems) {
    if subject.is_empty() || !subject.split('.').all(is_subject_token) {
        p.add(
            path,
            "must be dot-separated tokens of [A-Za-z0-9_-] (no wildcards)",
        );
    }
}

fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_path_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_urls_are_https_or_http_to_loopback_only() {
        for ok in [
            "https://issuer.example.com/.well-known/jwks.json",
            "https://10.0.0.1:8443/keys",
            "http://127.0.0.1:8080/jwks",
            "http://127.1.2.3/jwks",
            "http://localhost/jwks",
            "http://LOCALHOST:9000/jwks",
            "http://[::1]:8080/jwks",
        ] {
            assert_eq!(check_jwks_url(ok), Ok(()), "{ok}");
        }
        for (bad, phrase) in [
            ("http://issuer.example.com/jwks", "loopback"),
            ("http://10.0.0.1/jwks", "loopback"),
            ("http://localhost.evil.com/jwks", "loopback"),
            ("http://[::2]/jwks", "loopback"),
            ("ftp://issuer.example.com/jwks", "scheme"),
            ("https://user:pw@issuer.example.com/jwks", "credentials"),
            ("/jwks", "absolute"),
            ("issuer.example.com/jwks", "URL"),
            ("https://exa mple.com/", "not a URL"),
            ("", "not a URL"),
        ] {
            match check_jwks_url(bad) {
                Err(e) => assert!(e.contains(phrase), "{bad}: {e}"),
                Ok(()) => panic!("{bad} was accepted"),
            }
        }
    }
}
