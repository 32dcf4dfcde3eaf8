//! The RealtimeApp spec, shared by `switchboard-server` and `switchboard-operator`.
//!
//! [`types`] is the spec as written; [`compile()`] checks it and turns it into a
//! [`CompiledApp`]. Both binaries use this one compiler, so the operator refuses
//! exactly the specs the server would refuse.

pub mod action;
pub mod compile;
#[cfg(feature = "crd")]
pub mod crd;
#[cfg(feature = "jetstream")]
pub mod history_stream;
mod schema;
pub mod topic;
pub mod types;

pub use action::{ForwardAction, HistoryAction, PublishAction, RequestAction, RouteAction};
pub use compile::{
    Bucket, Charge, CompiledApp, CompiledRoute, CompiledTopicRule, JwksPolicy, JwtPolicy,
    SpecError, SpecErrors, compile,
};
pub use topic::{Identity, RenderError, Topic, TopicError, TopicPattern, TopicTemplate};
pub use types::*;

/// Reply type of a route without a reply type of its own (docs/PROTOCOL.md §3).
pub const ACK_TYPE: &str = "$ws:ack";
/// Type of error frames.
pub const ERROR_TYPE: &str = "ERROR";
/// Type of error frames answering a `request` route.
pub const RPC_ERROR_TYPE: &str = "RPC_ERROR";

/// Reads a RealtimeApp manifest from YAML (or JSON), naming the field at fault when
/// its shape is wrong (`spec.routes[2].topc: unknown field`).
pub fn parse_manifest(yaml: &str) -> Result<AppManifest, SpecErrors> {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| {
        SpecErrors(vec![SpecError::new(
            "(document)",
            format!("not valid YAML: {e}"),
        )])
    })?;
    if let Some(kind) = value.get("kind").and_then(|k| k.as_str())
        && kind != "RealtimeApp"
    {
        return Err(SpecErrors(vec![SpecError::new(
            "kind",
            format!("expected RealtimeApp, found {kind:?}"),
        )]));
    }
    let type_at = |i: usize| {
        value["spec"]["routes"][i]["type"]
            .as_str()
            .map(str::to_owned)
    };
    let manifest: AppManifest = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(document)".to_owned()
        } else {
            path
        };
        let message = in_spec_words(&e.into_inner().to_string());
        SpecErrors(vec![SpecError::new(path, message).name_route(type_at)])
    })?;
    // serde's derived structs also accept a list of their fields in declaration order
    // (`spec: [1, null, …]`). The CRD's schema makes Kubernetes refuse that, so the
    // server and `--check` must too: read back what was parsed, and refuse any object
    // that was written as a list.
    let parsed = serde_json::to_value(&manifest).map_err(|e| {
        SpecErrors(vec![SpecError::new(
            "(document)",
            format!("cannot read back: {e}"),
        )])
    })?;
    if let Some(path) = object_written_as_list(&value, &parsed, String::new()) {
        return Err(SpecErrors(vec![
            SpecError::new(path, "expected an object (key: value fields), found a list")
                .name_route(type_at),
        ]));
    }
    Ok(manifest)
}

/// The first path (`spec.routes[0].payload`) where `written` has a list and `parsed`
/// an object.
fn object_written_as_list(
    written: &serde_json::Value,
    parsed: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value;
    match (written, parsed) {
        (Value::Array(_), Value::Object(_)) => Some(if path.is_empty() {
            "(document)".to_owned()
        } else {
            path
        }),
        (Value::Object(w), Value::Object(p)) => p.iter().find_map(|(key, p)| {
            let w = w.get(key)?;
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            object_written_as_list(w, p, path)
        }),
        (Value::Array(w), Value::Array(p)) => w
            .iter()
            .zip(p)
            .enumerate()
            .find_map(|(i, (w, p))| object_written_as_list(w, p, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// serde's messages name Rust types (`expected u32`, `invalid type: map`); a spec's
/// author writes YAML, so say it in those words.
fn in_spec_words(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected an object (key: value fields)"),
        ("expected a boolean", "expected true or false"),
        ("invalid type: map", "invalid type: an object"),
        ("invalid type: sequence", "invalid type: a list"),
        ("invalid type: floating point", "invalid type: the number"),
        ("invalid type: integer", "invalid type: the number"),
        ("invalid value: integer", "invalid value: the number"),
    ];
    let mut out = message.to_owned();
    for (rust, spec) in WORDS {
        out = out.replace(rust, spec);
    }
    // `expected struct RouteSpec` and the like: every struct is a YAML object.
    while let Some(at) = out.find("expected struct ") {
        let name_end = out[at + 16..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |n| at + 16 + n);
        out.replace_range(at..name_end, "expected an object");
    }
    out
}

/// [`parse_manifest`] then [`compile()`].
pub fn load(yaml: &str) -> Result<CompiledApp, SpecErrors> {
    compile(&parse_manifest(yaml)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = include_str!("../../manifests/examples/chat.yaml");

    #[test]
    fn example_chat_app_compiles() {
        let app = load(CHAT).unwrap();
        assert_eq!(app.name, "chat");
        for ty in [
            "JOIN_ROOM",
            "LEAVE_ROOM",
            "SEND_MESSAGE",
            "TYPING",
            "FETCH_PROFILE",
        ] {
            assert!(app.routes.contains_key(ty), "{ty}");
        }
        let send = &app.routes["SEND_MESSAGE"];
        assert!(matches!(&send.action, RouteAction::Publish(p) if p.emit == "ROOM_MESSAGE"));
        assert!(
            send.charges
                .iter()
                .all(|c| app.buckets[c.bucket].capacity <= 50)
        );
        assert!(
            matches!(&app.routes["FETCH_PROFILE"].action, RouteAction::Request(r) if r.reply == "PROFILE")
        );
    }
}
