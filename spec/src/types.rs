//! The `RealtimeApp` spec as users write it (README.md, "RealtimeApp spec").
//!
//! These types are the *declared* form: they mirror the YAML field by field so that
//! `kubectl apply` and `switchboard-server --app FILE` read the same document. Nothing
//! here is checked beyond its shape; [`crate::compile()`] turns a spec into the checked,
//! ready-to-serve form and is the only place rules across fields live.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A whole `RealtimeApp` document, as found in a manifest file.
///
/// The server only needs `.metadata.name`, `.metadata.namespace` and `.spec`; the rest
/// (`status`, labels, ...) is accepted and ignored so the exact file given to `kubectl
/// apply` also runs locally.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppManifest {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ManifestMetadata,
    pub spec: RealtimeAppSpec,
}

/// The part of Kubernetes object metadata the server uses: the app's identity, which
/// names its NATS subjects and shows up in `$ws:open`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ManifestMetadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `spec` of a RealtimeApp.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[cfg_attr(feature = "crd", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "crd",
    kube(
        group = "switchboard.dev",
        version = "v1alpha1",
        kind = "RealtimeApp",
        plural = "realtimeapps",
        shortname = "rtapp",
        namespaced,
        status = "crate::crd::RealtimeAppStatus",
        scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
        printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
        printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
        printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.replicas) || self.replicas <= 1 || has(self.nats)",
     "message": "more than one replica needs spec.nats.url: without a bus each replica would be its own island"},
    {"rule": "!has(self.autoscaling) || self.autoscaling.maxReplicas <= 1 || has(self.nats)",
     "message": "autoscaling beyond one replica needs spec.nats.url"},
    {"rule": "self.routes.all(r, !has(r.rateLimit) || r.rateLimit.all(c, self.rateLimits.exists(b, b.name == c.bucket && (!has(c.cost) || c.cost <= b.capacity))))",
     "message": "every rateLimit entry names a bucket of spec.rateLimits and costs at most its capacity"}
]))]
pub struct RealtimeAppSpec {
    /// Number of server pods. Ignored while `autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Server image; the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pod-level scheduling and resource settings, passed through to the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSettings>,
    /// Horizontal autoscaling; when set, the operator owns an HPA instead of `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// The bus between replicas. Absent: an in-process bus, which only makes sense with
    /// one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSettings>,
    /// The Service in front of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSettings>,
    /// Browser origins allowed to open a WebSocket. Absent: any origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    /// What stands between clients and the pods (proxies, load balancers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSettings>,
    /// TLS on the WebSocket listener (`wss://` straight to the pods). Absent: plain
    /// `ws://`, with TLS, if any, ended at an Ingress or load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// An Ingress the operator renders in front of the Service (README, "TLS and
    /// ingress"). Absent: none; bring your own Ingress or Gateway API route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSettings>,
    #[serde(default)]
    pub auth: AuthSettings,
    /// permessage-deflate (RFC 7692) for clients that offer it (README, "Compression").
    #[serde(default)]
    pub compression: CompressionSettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub heartbeat: Heartbeat,
    #[serde(default)]
    pub drain: DrainSettings,
    /// Named token buckets that routes draw from.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Who may subscribe to and publish on which topics.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub topics: Vec<TopicRule>,
    /// The message types clients may send, each with exactly one action.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub routes: Vec<RouteSpec>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSettings {
    /// Container resources (requests/limits), as in a Kubernetes container spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub resources: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes tolerations, passed through unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::free_form_list")]
    pub tolerations: Vec<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_utilization_percentage: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsSettings {
    /// e.g. `nats://nats.nats.svc:4222`.
    pub url: String,
    /// First token of every subject this app uses; `sb` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// Byte bound of the app's JetStream history stream (topics with `history`);
    /// 256 MiB when absent. The oldest publications go first when it is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_bytes: Option<u64>,
    /// How the replicas log in to NATS, so that NATS permissions can tell them from
    /// backends (README, "Securing the bus"); anonymous when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuth>,
    /// TLS towards NATS: required when present (also for a `nats://` URL), with the
    /// system's roots unless `caRef` names the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,
}

/// One way of logging in to NATS: `user` with `passwordRef`, or `tokenRef`, or
/// `nkeySeedRef`, or `credsRef` (exactly one). Secrets are read from
/// `<secrets-dir>/<name>/<key>`, as the operator mounts them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsAuth {
    /// User name; with `passwordRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's password (a trailing newline is not part of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_ref: Option<SecretKeyRef>,
    /// A token (`authorization { token: ... }` in nats-server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ref: Option<SecretKeyRef>,
    /// An nkey seed (`SU...`), whose public key nats-server lists as a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_ref: Option<SecretKeyRef>,
    /// A `.creds` file (user JWT and seed), for NATS in operator mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_ref: Option<SecretKeyRef>,
}

/// Certificates for TLS towards NATS, each a PEM file in a Secret.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsTls {
    /// The CA that signed the NATS server's certificate, when not a public one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<SecretKeyRef>,
    /// A client certificate, for a NATS server that verifies clients; with `keyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_ref: Option<SecretKeyRef>,
    /// The client certificate's private key; with `certRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ref: Option<SecretKeyRef>,
}

impl NatsSettings {
    /// Every Secret key the bus reads, with its field's name under `spec.nats`: for the
    /// server to read, the operator to mount, and `compile()` to check.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        let auth = self.auth.as_ref();
        let tls = self.tls.as_ref();
        [
            (
                "auth.passwordRef",
                auth.and_then(|a| a.password_ref.as_ref()),
            ),
            ("auth.tokenRef", auth.and_then(|a| a.token_ref.as_ref())),
            (
                "auth.nkeySeedRef",
                auth.and_then(|a| a.nkey_seed_ref.as_ref()),
            ),
            ("auth.credsRef", auth.and_then(|a| a.creds_ref.as_ref())),
            ("tls.caRef", tls.and_then(|t| t.ca_ref.as_ref())),
            ("tls.certRef", tls.and_then(|t| t.cert_ref.as_ref())),
            ("tls.keyRef", tls.and_then(|t| t.key_ref.as_ref())),
        ]
        .into_iter()
        .filter_map(|(field, r)| Some((field, r?)))
        .collect()
    }
}

/// Where a client's address comes from when proxies stand in front of the pods
/// (README, "Behind proxies").
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSettings {
    /// Peers (CIDRs, or single addresses) whose `X-Forwarded-For` / `Forwarded`
    /// headers are believed: the client is the rightmost hop not in this list. From
    /// any other peer those headers are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub trusted_proxies: Vec<String>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header, as cloud load
    /// balancers send it; its source address is the client's when the peer is a
    /// trusted proxy. Needs `trustedProxies`.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// TLS served by the pods themselves (README, "TLS and ingress").
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSettings {
    /// A `kubernetes.io/tls` Secret: the chain in `tls.crt`, the private key in
    /// `tls.key`, read from `<secrets-dir>/<name>/`. The files are re-read when they
    /// change (cert-manager renews in place), with no restart.
    pub secret_ref: SecretRef,
    /// Oldest protocol version offered; `"1.2"` when absent (`"1.3"` to refuse 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
}

/// A whole Kubernetes Secret, mounted at `<secrets-dir>/<name>/`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub name: String,
}

/// A TLS protocol version. Nothing older than 1.2 exists here: rustls never spoke it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// An Ingress rendered and owned by the operator, routing `host` to the app's Service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressSettings {
    /// The public host name clients connect to.
    pub host: String,
    /// `ingressClassName`; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A `kubernetes.io/tls` Secret for `host`, for the ingress controller to end TLS
    /// with (e.g. one cert-manager keeps). Absent: the Ingress serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Added to the Ingress, over the operator's WebSocket defaults (ingress-nginx
    /// read/send timeouts of an hour, and HTTPS to the pods when `spec.tls` is set).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// How long a client IP sticks to one pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_timeout_seconds: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSettings {
    /// Tokenless connections are let in with the role `anonymous`. A token that is
    /// present but invalid is still refused: a bad token is a bug worth surfacing.
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtSettings {
    /// Allow-list of JWS algorithms (`HS256`, `RS256`, `ES256`, `EdDSA`, ...). `none` is
    /// never accepted.
    pub algorithms: Vec<String>,
    /// HMAC secret, for the `HS*` algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// PEM public key, for the `RS*`, `PS*`, `ES*` and `EdDSA` algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_ref: Option<SecretKeyRef>,
    /// The issuer's published public keys, instead of `publicKeyRef`: keys rotate at
    /// the issuer without a Secret to update (README, "Keys from a JWKS endpoint").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claim holding the user id; `sub` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id_claim: Option<String>,
    /// Claim holding the roles (an array of strings, or one string); `roles` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`; 30 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_seconds: Option<u32>,
}

/// Where the public keys of the `RS*`, `PS*`, `ES*` and `EdDSA` algorithms are fetched
/// from, and how often: a JSON Web Key Set (RFC 7517 section 5) served by the issuer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksSettings {
    /// `https://` URL of the key set; plain `http://` only to a loopback host (a local
    /// issuer or a sidecar), since keys fetched in the clear could be replaced.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Seconds between scheduled refreshes (5 to 86400); 300 when absent. A token with
    /// an unknown `kid` also triggers a refresh, at most one per 10 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 86400))]
    pub refresh_seconds: Option<u32>,
}

/// A key of a Kubernetes Secret. Read from `<secrets-dir>/<name>/<key>`, where the
/// operator mounts each referenced Secret, so local runs and pods read it the same way.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Largest inbound message, in bytes of the whole frame; larger closes with 1009.
    pub max_payload_bytes: u32,
    /// Open WebSockets per pod; the next upgrade gets HTTP 503.
    pub max_connections: u32,
    /// Open WebSockets per client IP per pod; the next upgrade gets HTTP 429.
    pub max_connections_per_ip: u32,
    pub max_subscriptions_per_connection: u32,
    /// Frames waiting to be written to one client before `slowConsumer` applies.
    pub outbound_queue_messages: u32,
    pub slow_consumer: SlowConsumerPolicy,
    /// Close with 4003 after this long without an application message; 0: never.
    pub idle_timeout_seconds: u32,
    /// Time from TCP accept to a complete upgrade request.
    pub handshake_timeout_seconds: u32,
    /// Most publications one recovering subscribe replays; more missed and the ack says
    /// `recovered: false, reason: limit`.
    pub max_recovery_publications: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 65_536,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_subscriptions_per_connection: 100,
            outbound_queue_messages: 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            idle_timeout_seconds: 0,
            handshake_timeout_seconds: 10,
            max_recovery_publications: 1000,
        }
    }
}

/// What happens when a client does not read fast enough to keep its queue bounded.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SlowConsumerPolicy {
    /// Close with 4008: the client reconnects and resynchronises.
    #[default]
    Disconnect,
    /// Drop the oldest queued delivery and count it: for feeds where only the latest matters.
    DropOldest,
}

/// permessage-deflate, negotiated per connection with the clients that offer it.
/// Frames the server sends are compressed with `server_no_context_takeover`, so a
/// publication is compressed once and the same bytes go to every recipient that
/// negotiated it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CompressionSettings {
    /// Accept a client's `permessage-deflate` offer. Off: no offer is accepted and
    /// every frame goes out as it is.
    pub enabled: bool,
    /// Frames the server sends shorter than this go out uncompressed: below about a
    /// kilobyte deflate saves little and costs CPU on both ends. Inbound frames are
    /// inflated whatever their size; the client chooses what it compresses.
    #[schemars(range(max = 16_777_216))]
    pub threshold_bytes: u32,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold_bytes: 1024,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Heartbeat {
    /// Seconds between server pings; 0 turns pings off.
    pub interval_seconds: u32,
    /// Seconds to wait for the pong before closing with 4001.
    pub timeout_seconds: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval_seconds: 25,
            timeout_seconds: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DrainSettings {
    pub grace_period_seconds: u32,
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            grace_period_seconds: 30,
        }
    }
}

/// A named token bucket.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Burst size: the most tokens the bucket holds.
    pub capacity: u32,
    /// Sustained rate: tokens added per second.
    pub refill_per_second: f64,
    /// Whose bucket it is.
    #[serde(default)]
    pub key: RateLimitKey,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitKey {
    /// One bucket per WebSocket.
    #[default]
    Connection,
    /// One bucket per user id, shared by all of the user's connections on a pod.
    User,
    /// One bucket per client IP on a pod.
    Ip,
}

/// Access rules for topics whose name matches `pattern`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicRule {
    /// Segments joined by `:`; a segment is a literal or a `{variable}`, e.g. `room:{roomId}`.
    pub pattern: String,
    /// Absent: any connection may subscribe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<TopicAccess>,
    /// Absent: any connection may publish (through a route that publishes here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<TopicAccess>,
    /// Keep the topic's recent publications: deliveries then carry `meta.offset` and
    /// `meta.epoch`, a subscribe may recover what it missed (`meta.since`), and
    /// `history` routes can read them (docs/RECOVERY.md). Absent: no history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySettings>,
    /// Track who is subscribed: `presence` routes answer the members. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceSettings>,
}

/// How much of a topic's past is kept.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistorySettings {
    /// Publications kept per topic (1 to 10000); older ones are trimmed.
    #[schemars(range(min = 1, max = 10000))]
    pub size: u32,
    /// Seconds a publication is kept (more than 0).
    #[schemars(range(min = 1))]
    pub ttl_seconds: u32,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresenceSettings {
    /// Send `$ws:join` and `$ws:leave` to the topic's subscribers as users come and go.
    #[serde(default)]
    pub join_leave: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicAccess {
    /// The caller needs at least one of these roles. Absent: any role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Name of a pattern variable that must equal the caller's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Publishing requires being subscribed to the topic (publish rules only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_subscribed: bool,
}

/// One message type a client may send.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.subscribe), has(self.unsubscribe), has(self.publish), has(self.request), has(self.forward), has(self.history), has(self.presence)].filter(x, x).size() == 1",
     "message": "a route has exactly one action of subscribe, unsubscribe, publish, request, forward, history, presence"}
]))]
pub struct RouteSpec {
    #[serde(rename = "type")]
    pub message_type: String,
    /// JSON Schema of `payload`. Absent: any payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub payload: Option<Value>,
    /// The caller needs at least one of these roles. Absent: any role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Buckets charged, all or none, before the action runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub rate_limit: Vec<BucketCost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<TopicAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<TopicAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardAction>,
    /// Answer the topic's recent publications (the topic's rule declares `history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryAction>,
    /// Answer the topic's members (the topic's rule declares `presence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<TopicAction>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BucketCost {
    #[schemars(length(min = 1, max = 63))]
    pub bucket: String,
    #[serde(default = "one")]
    pub cost: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicAction {
    /// Topic template, e.g. `room:{roomId}` or `user:{user.id}`.
    pub topic: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishAction {
    pub topic: String,
    /// Type of the frame subscribers receive; the route's own type when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<String>,
    /// Do not deliver to the publishing connection itself.
    #[serde(default)]
    pub exclude_self: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAction {
    /// NATS subject (dot-separated tokens) that backends answer on.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Type of the reply frame; `$ws:ack` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// JSON Schema the backend's reply payload must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub reply_schema: Option<Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryAction {
    /// Topic template, e.g. `room:{roomId}`.
    pub topic: String,
    /// Most publications one answer holds (a request's `limit` is capped to it); 100
    /// when absent, at most 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_limit: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardAction {
    /// NATS subject (dot-separated tokens) the message is published to, fire-and-forget.
    pub subject: String,
}
