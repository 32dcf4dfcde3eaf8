//! `Catalog`: every message an app's connection carries, in both directions, with the
//! JSON Schema of its payload — what a client must know, read from the RealtimeApp
//! once, for the AsyncAPI document and the generated clients alike.

use serde_json::{Value, json};
use switchboard_spec::{CompiledApp, RouteSpec, TopicAction, TopicTemplate};

/// One route, as a client sees it: what to send, and what comes back.
pub struct RouteEntry {
    /// The message's `type`.
    pub message_type: String,
    /// JSON Schema of its payload (`{}`, anything, when the route declares none).
    pub payload: Value,
    /// What the route does: it decides the answer's schema.
    pub action: Action,
    /// The topic template it acts on, when it acts on one.
    pub topic: Option<String>,
    /// Index into [`Catalog::channels`] of the rule governing that topic.
    pub channel: Option<usize>,
    /// The success answer's `type` and payload schema. Sent only when the message
    /// carries a `correlationId`, except for request, history and presence routes.
    pub answer: (String, Value),
    /// `RPC_ERROR` for request routes, `ERROR` for the others.
    pub error_type: &'static str,
    /// The route as written, for the `x-switchboard-route` extension.
    pub spec: RouteSpec,
}

impl RouteEntry {
    /// `subscribe room:{roomId}`, `request`: a line for docs.
    pub fn summary(&self) -> String {
        match &self.topic {
            Some(topic) => format!("{} {topic}", self.action.as_str()),
            None => self.action.as_str().to_owned(),
        }
    }
}

/// A route's one action (docs/PROTOCOL.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Unsubscribe,
    Publish,
    Request,
    Forward,
    History,
    Presence,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::Request => "request",
            Self::Forward => "forward",
            Self::History => "history",
            Self::Presence => "presence",
        }
    }
}

/// A type the server delivers on topics: a publish route's `emit` (also what backends
/// may publish).
pub struct DeliveryEntry {
    pub message_type: String,
    /// The emitting routes' payload schema (`anyOf` when they differ).
    pub payload: Value,
    /// Indexes into [`Catalog::channels`] where it is delivered.
    pub channels: Vec<usize>,
}

/// A topic rule: where deliveries arrive.
pub struct ChannelEntry {
    /// The rule's pattern, e.g. `room:{roomId}`.
    pub pattern: String,
    /// Its variables, in order.
    pub params: Vec<String>,
    /// A name usable as a key: `topic-room-roomId`.
    pub id: String,
    /// Whether `$ws:join` / `$ws:leave` arrive on it.
    pub join_leave: bool,
}

pub struct Catalog<'a> {
    pub app: &'a CompiledApp,
    pub routes: Vec<RouteEntry>,
    pub deliveries: Vec<DeliveryEntry>,
    pub channels: Vec<ChannelEntry>,
}

impl<'a> Catalog<'a> {
    pub fn new(app: &'a CompiledApp) -> Self {
        let channels = channels(app);
        let governing = |template: &str| {
            let template = TopicTemplate::parse(template).ok()?;
            app.topics
                .iter()
                .position(|rule| rule.pattern.may_match(&template))
        };
        let mut deliveries: Vec<DeliveryEntry> = Vec::new();
        let mut routes = Vec::new();
        for spec in &app.spec.routes {
            let payload = spec.payload.clone().unwrap_or_else(|| json!({}));
            let (action, topic) = action_of(spec);
            let channel = topic.as_deref().and_then(governing);
            if let Some(publish) = &spec.publish {
                let emit = publish.emit.clone().unwrap_or(spec.message_type.clone());
                match deliveries.iter_mut().find(|d| d.message_type == emit) {
                    Some(d) => {
                        d.payload = either(&d.payload, &payload);
                        d.channels
                            .extend(channel.filter(|c| !d.channels.contains(c)));
                    }
                    None => deliveries.push(DeliveryEntry {
                        message_type: emit,
                        payload: payload.clone(),
                        channels: channel.into_iter().collect(),
                    }),
                }
            }
            routes.push(RouteEntry {
                message_type: spec.message_type.clone(),
                payload,
                action,
                topic,
                channel,
                answer: (String::new(), Value::Null),
                error_type: if spec.request.is_some() {
                    "RPC_ERROR"
                } else {
                    "ERROR"
                },
                spec: spec.clone(),
            });
        }
        // Answers last: a history answer holds the topic's deliveries.
        for route in &mut routes {
            route.answer = answer(route, &deliveries);
        }
        Self {
            app,
            routes,
            deliveries,
            channels,
        }
    }
}

/// The payload schema of what is delivered on `channel` (`anyOf` of its types).
pub fn delivered_on(deliveries: &[DeliveryEntry], channel: Option<usize>) -> Value {
    let schemas: Vec<&Value> = deliveries
        .iter()
        .filter(|d| channel.is_some_and(|c| d.channels.contains(&c)))
        .map(|d| &d.payload)
        .collect();
    match schemas.as_slice() {
        [] => json!({}),
        [one] => (*one).clone(),
        many => json!({"anyOf": many}),
    }
}

fn channels(app: &CompiledApp) -> Vec<ChannelEntry> {
    let mut out: Vec<ChannelEntry> = Vec::new();
    for rule in &app.topics {
        let pattern = rule.pattern.source().to_owned();
        let base: Vec<String> = pattern
            .split(':')
            .map(|s| s.trim_matches(|c| c == '{' || c == '}').to_owned())
            .collect();
        let mut id = format!("topic-{}", base.join("-"));
        if out.iter().any(|c| c.id == id) {
            id = format!("{id}-{}", out.len());
        }
        out.push(ChannelEntry {
            params: rule.pattern.vars().map(str::to_owned).collect(),
            pattern,
            id,
            join_leave: rule.presence.is_some_and(|p| p.join_leave),
        });
    }
    out
}

/// The route's action and the topic template it acts on. (The compiler has checked
/// that a route has exactly one action; a spec without one reads as a forward.)
fn action_of(spec: &RouteSpec) -> (Action, Option<String>) {
    let topic = |a: &TopicAction| Some(a.topic.clone());
    if let Some(a) = &spec.subscribe {
        (Action::Subscribe, topic(a))
    } else if let Some(a) = &spec.unsubscribe {
        (Action::Unsubscribe, topic(a))
    } else if let Some(a) = &spec.publish {
        (Action::Publish, Some(a.topic.clone()))
    } else if spec.request.is_some() {
        (Action::Request, None)
    } else if let Some(a) = &spec.history {
        (Action::History, Some(a.topic.clone()))
    } else if let Some(a) = &spec.presence {
        (Action::Presence, topic(a))
    } else {
        (Action::Forward, None)
    }
}

/// A schema either of two accept.
fn either(a: &Value, b: &Value) -> Value {
    if a == b {
        return a.clone();
    }
    let mut all: Vec<Value> = match a.get("anyOf").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![a.clone()],
    };
    if !all.contains(b) {
        all.push(b.clone());
    }
    json!({"anyOf": all})
}

/// `{"topic"}` plus the position on history topics (docs/PROTOCOL.md §3).
fn position_ack(recovery: bool) -> Value {
    let mut properties = json!({
        "topic": {"type": "string"},
        "offset": {"type": "integer", "description": "Topics with history: the position"},
        "epoch": {"type": "string", "description": "Topics with history: changes when the stored history was lost"},
    });
    if recovery {
        properties["recovered"] = json!({"type": "boolean", "description": "A subscribe with meta.since: whether every missed publication follows"});
        properties["reason"] = json!({"enum": ["epoch", "trimmed", "expired", "limit"], "description": "Why a recovery was refused"});
    }
    json!({"type": "object", "required": ["topic"], "properties": properties})
}

fn answer(route: &RouteEntry, deliveries: &[DeliveryEntry]) -> (String, Value) {
    let ack = "$ws:ack".to_owned();
    match route.action {
        Action::Subscribe => (ack, position_ack(true)),
        Action::Unsubscribe => (
            ack,
            json!({"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string"}}}),
        ),
        Action::Publish => (ack, position_ack(false)),
        Action::Forward => (ack, json!({"type": "object"})),
        Action::Request => {
            let request = route.spec.request.as_ref();
            (
                request.and_then(|r| r.reply.clone()).unwrap_or(ack),
                request
                    .and_then(|r| r.reply_schema.clone())
                    .unwrap_or_else(|| json!({})),
            )
        }
        Action::History => {
            let payload = delivered_on(deliveries, route.channel);
            (
                ack,
                json!({
                    "type": "object",
                    "required": ["topic", "offset", "epoch", "publications"],
                    "properties": {
                        "topic": {"type": "string"},
                        "offset": {"type": "integer"},
                        "epoch": {"type": "string"},
                        "publications": {"type": "array", "description": "Oldest first", "items": {
                            "type": "object",
                            "required": ["offset", "type", "payload", "timestamp"],
                            "properties": {
                                "offset": {"type": "integer"},
                                "type": {"type": "string"},
                                "payload": payload,
                                "publisher": {"type": "string"},
                                "timestamp": {"type": "integer", "description": "Unix milliseconds"},
                            },
                        }},
                    },
                }),
            )
        }
        Action::Presence => (
            ack,
            json!({
                "type": "object",
                "required": ["topic", "count", "members"],
                "properties": {
                    "topic": {"type": "string"},
                    "count": {"type": "integer", "description": "Members over every replica"},
                    "members": {"type": "array", "maxItems": 1000, "items": member()},
                    "cursor": {"type": "string", "description": "Send it back as the payload's cursor for the next page"},
                },
            }),
        ),
    }
}

/// A presence member, also the payload of `$ws:join` / `$ws:leave`.
pub fn member() -> Value {
    json!({
        "type": "object",
        "required": ["connectionId", "userId"],
        "properties": {"connectionId": {"type": "string"}, "userId": {"type": "string"}},
    })
}

/// Which way a system frame goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

/// A frame every app has (docs/PROTOCOL.md §4, §5).
pub struct SystemMessage {
    pub message_type: &'static str,
    pub direction: Direction,
    pub summary: &'static str,
    pub payload: Value,
}

/// The error payload of `ERROR` and `RPC_ERROR` (docs/PROTOCOL.md §4).
pub fn error_payload() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message", "retryable"],
        "properties": {
            "code": {"enum": [
                "UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "FAILED_PRECONDITION",
                "NOT_FOUND", "ALREADY_EXISTS", "CANCELLED", "ABORTED", "UNIMPLEMENTED",
                "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL",
            ]},
            "message": {"type": "string", "description": "For people; do not parse it"},
            "retryable": {"type": "boolean", "description": "Whether the same message may succeed later"},
            "retryAfterMs": {"type": "integer", "description": "Rate-limit refusals: the wait until the charge would succeed"},
            "details": {"type": "object"},
        },
    })
}

/// Every system frame, in the protocol's order.
pub fn system_messages() -> Vec<SystemMessage> {
    use Direction::{ToClient, ToServer};
    let object = |required: &[&str], properties: Value| json!({"type": "object", "required": required, "properties": properties});
    vec![
        SystemMessage {
            message_type: "$ws:open",
            direction: ToClient,
            summary: "Always the first frame: who the connection is and its limits",
            payload: object(
                &[
                    "connectionId",
                    "instance",
                    "app",
                    "protocol",
                    "user",
                    "heartbeat",
                    "limits",
                ],
                json!({
                    "connectionId": {"type": "string", "description": "Unique across replicas"},
                    "instance": {"type": "string"},
                    "app": {"type": "string"},
                    "protocol": {"const": "switchboard.v1"},
                    "user": object(&["id", "roles", "anonymous"], json!({
                        "id": {"type": "string"},
                        "roles": {"type": "array", "items": {"type": "string"}},
                        "anonymous": {"type": "boolean"},
                    })),
                    "heartbeat": object(&["intervalMs", "timeoutMs"], json!({
                        "intervalMs": {"type": "integer"}, "timeoutMs": {"type": "integer"},
                    })),
                    "limits": object(&["maxPayloadBytes", "maxSubscriptions", "outboundQueueMessages", "idleTimeoutMs"], json!({
                        "maxPayloadBytes": {"type": "integer"},
                        "maxSubscriptions": {"type": "integer"},
                        "outboundQueueMessages": {"type": "integer"},
                        "idleTimeoutMs": {"type": "integer"},
                    })),
                }),
            ),
        },
        SystemMessage {
            message_type: "ERROR",
            direction: ToClient,
            summary: "A refused message (one per refusal)",
            payload: error_payload(),
        },
        SystemMessage {
            message_type: "RPC_ERROR",
            direction: ToClient,
            summary: "A refused or failed request route",
            payload: error_payload(),
        },
        SystemMessage {
            message_type: "$ws:auth",
            direction: ToServer,
            summary: "A fresh token for the same user, before the current one expires",
            payload: object(&["token"], json!({"token": {"type": "string"}})),
        },
        SystemMessage {
            message_type: "$ws:unsubscribed",
            direction: ToClient,
            summary: "The server ended a subscription (a refreshed token no longer allows it)",
            payload: object(
                &["topic", "code", "message"],
                json!({
                    "topic": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"},
                }),
            ),
        },
        SystemMessage {
            message_type: "__heartbeat",
            direction: ToServer,
            summary: "Application-level ping, always answered __heartbeat_ack",
            payload: json!({}),
        },
        SystemMessage {
            message_type: "__heartbeat_ack",
            direction: ToClient,
            summary: "The answer to __heartbeat",
            payload: json!({"type": "object"}),
        },
        SystemMessage {
            message_type: "$ws:join",
            direction: ToClient,
            summary: "A user joined a presence topic with joinLeave (meta.topic)",
            payload: member(),
        },
        SystemMessage {
            message_type: "$ws:leave",
            direction: ToClient,
            summary: "A user left a presence topic with joinLeave (meta.topic)",
            payload: member(),
        },
        SystemMessage {
            message_type: "$ws:drain",
            direction: ToClient,
            summary: "The server is shutting down: reconnect after reconnectAfterMs",
            payload: object(
                &["reason", "reconnectAfterMs"],
                json!({
                    "reason": {"const": "shutdown"}, "reconnectAfterMs": {"type": "integer"},
                }),
            ),
        },
    ]
}
