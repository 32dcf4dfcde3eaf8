//! The app as an AsyncAPI 3.0 document (README, "Clients"), described from the
//! server's side: the routes are operations it receives on the connection's channel,
//! and each answers with a reply; deliveries are operations it sends on the topic
//! channels (one per topic rule, the rule's pattern as the address). Messages are
//! whole envelopes (`type`, `meta`, `payload`), the payload being the route's own JSON
//! Schema. What AsyncAPI has no field for (limits, topic rules, history, presence,
//! rate limits) is in `x-switchboard-*` extensions.

use serde_json::{Map, Value, json};

use super::catalog::{Catalog, Direction, system_messages};

/// The document, deterministic for a given app (keys sorted, spec order kept in lists).
pub fn document(catalog: &Catalog<'_>) -> Value {
    let app = catalog.app;
    let spec = &app.spec;
    let mut connection_messages = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();

    for system in system_messages() {
        let key = message_key(system.message_type);
        messages.insert(
            key.clone(),
            message(system.message_type, system.summary, &system.payload, None),
        );
        connection_messages.insert(
            key.clone(),
            reference(&format!("components/messages/{key}")),
        );
        if system.direction == Direction::ToServer {
            operations.insert(
                key.clone(),
                json!({
                    "action": "receive",
                    "channel": reference("channels/connection"),
                    "summary": system.summary,
                    "messages": [reference(&format!("channels/connection/messages/{key}"))],
                }),
            );
        }
    }

    for route in &catalog.routes {
        let key = message_key(&route.message_type);
        let summary = route.summary();
        messages.insert(
            key.clone(),
            message(&route.message_type, &summary, &route.payload, None),
        );
        connection_messages.insert(
            key.clone(),
            reference(&format!("components/messages/{key}")),
        );
        let answer_key = format!("{key}.answer");
        messages.insert(
            answer_key.clone(),
            message(
                &route.answer.0,
                &format!("The answer to {}", route.message_type),
                &route.answer.1,
                Some(&route.message_type),
            ),
        );
        connection_messages.insert(
            answer_key.clone(),
            reference(&format!("components/messages/{answer_key}")),
        );
        let mut operation = json!({
            "action": "receive",
            "channel": reference("channels/connection"),
            "summary": summary,
            "messages": [reference(&format!("channels/connection/messages/{key}"))],
            "reply": {
                "channel": reference("channels/connection"),
                "messages": [
                    reference(&format!("channels/connection/messages/{answer_key}")),
                    reference(&format!("channels/connection/messages/{}", message_key(route.error_type))),
                ],
            },
            "x-switchboard-route": serde_json::to_value(&route.spec).unwrap_or(Value::Null),
        });
        if let Some(roles) = &route.spec.roles {
            operation["description"] =
                json!(format!("Needs one of the roles {}.", roles.join(", ")));
        }
        operations.insert(key, operation);
    }

    let mut channels = Map::new();
    for (i, channel) in catalog.channels.iter().enumerate() {
        let mut channel_messages = Map::new();
        for delivery in catalog
            .deliveries
            .iter()
            .filter(|d| d.channels.contains(&i))
        {
            // A publish route without `emit` delivers its own type: another message.
            let mut key = message_key(&delivery.message_type);
            if catalog
                .routes
                .iter()
                .any(|r| r.message_type == delivery.message_type)
            {
                key.push_str(".delivery");
            }
            messages.insert(
                key.clone(),
                message(
                    &delivery.message_type,
                    &format!("Delivered to subscribers of {}", channel.pattern),
                    &delivery.payload,
                    None,
                ),
            );
            channel_messages.insert(
                key.clone(),
                reference(&format!("components/messages/{key}")),
            );
            operations.insert(
                format!("{}.{key}", channel.id),
                json!({
                    "action": "send",
                    "channel": reference(&format!("channels/{}", channel.id)),
                    "messages": [reference(&format!("channels/{}/messages/{key}", channel.id))],
                }),
            );
        }
        if channel.join_leave {
            for t in ["$ws:join", "$ws:leave"] {
                let key = message_key(t);
                channel_messages.insert(
                    key.clone(),
                    reference(&format!("components/messages/{key}")),
                );
            }
        }
        let rule = &spec.topics[i];
        let parameters: Map<String, Value> = channel
            .params
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    json!({"description": format!("The {p} segment of the topic")}),
                )
            })
            .collect();
        let mut entry = json!({
            "address": channel.pattern,
            "title": format!("Topic {}", channel.pattern),
            "description": "Topic deliveries carry meta.topic, meta.publisher and, on topics with history, meta.offset and meta.epoch.",
            "messages": channel_messages,
            "x-switchboard-topic": serde_json::to_value(rule).unwrap_or(Value::Null),
        });
        if !parameters.is_empty() {
            entry["parameters"] = Value::Object(parameters);
        }
        channels.insert(channel.id.clone(), entry);
    }
    channels.insert(
        "connection".into(),
        json!({
            "address": "/ws",
            "title": "The WebSocket connection",
            "description": "Every route's message, its answer, and the system frames (docs/PROTOCOL.md).",
            "messages": connection_messages,
            "bindings": {"ws": {
                "method": "GET",
                "query": {"type": "object", "properties": {"access_token": {"type": "string", "description": "The JWT, when it cannot go in a header"}}},
                "bindingVersion": "0.1.0",
            }},
        }),
    );

    let mut security_schemes = Map::new();
    if app.jwt.is_some() {
        security_schemes.insert(
            "bearer".into(),
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "Authorization: Bearer <token>, or the subprotocol bearer.<token> beside switchboard.v1"}),
        );
        security_schemes.insert(
            "accessToken".into(),
            json!({"type": "httpApiKey", "in": "query", "name": "access_token"}),
        );
    }
    let mut server = json!({
        "host": "localhost:8080",
        "protocol": "ws",
        "pathname": "/ws",
        "description": "switchboard-server's WebSocket listener (in Kubernetes, the app's Service)",
    });
    if !security_schemes.is_empty() {
        server["security"] = Value::Array(
            security_schemes
                .keys()
                .map(|k| reference(&format!("components/securitySchemes/{k}")))
                .collect(),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "id": format!("urn:switchboard:{}:{}", app.namespace, app.name),
        "info": {
            "title": app.name,
            "version": "1",
            "description": format!(
                "The RealtimeApp {}/{} as its clients see it, generated by switchboard-server {}.",
                app.namespace, app.name, env!("CARGO_PKG_VERSION")
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"gateway": server},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "securitySchemes": security_schemes},
        "x-switchboard-auth": {"anonymous": spec.auth.anonymous, "jwt": spec.auth.jwt.as_ref().map(|j| json!({"algorithms": j.algorithms}))},
        "x-switchboard-limits": serde_json::to_value(&spec.limits).unwrap_or(Value::Null),
        "x-switchboard-heartbeat": serde_json::to_value(&spec.heartbeat).unwrap_or(Value::Null),
        "x-switchboard-rateLimits": serde_json::to_value(&spec.rate_limits).unwrap_or(Value::Null),
    })
}

/// The document as served and printed: pretty JSON with a final newline.
pub fn render(catalog: &Catalog<'_>) -> String {
    let mut text = serde_json::to_string_pretty(&document(catalog)).unwrap_or_default();
    text.push('\n');
    text
}

/// A key AsyncAPI accepts (`^[A-Za-z0-9.\-_]+$`): `$ws:ack` becomes `ws.ack`.
fn message_key(message_type: &str) -> String {
    message_type
        .trim_start_matches('$')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '.'
            }
        })
        .collect()
}

fn reference(path: &str) -> Value {
    json!({"$ref": format!("#/{path}")})
}

/// A message whose payload is the whole envelope with `payload` inside.
fn message(message_type: &str, summary: &str, payload: &Value, answers: Option<&str>) -> Value {
    let mut meta = json!({
        "type": "object",
        "properties": {
            "correlationId": {"type": "string", "maxLength": 128},
            "timestamp": {"type": "number", "description": "Unix milliseconds (always set by the server)"},
        },
    });
    if answers.is_some() {
        meta["required"] = json!(["correlationId"]);
    }
    json!({
        "name": message_type,
        "title": message_type,
        "summary": summary,
        "payload": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"const": message_type},
                "meta": meta,
                "payload": payload,
            },
        },
    })
}
