//! The RealtimeApp spec, shared by `switchboard-server` and `switchboard-operator`.
//!
//! [`types`] is the spec as written; [`compile()`] checks it and turns it into a
//! [`CompiledApp`]. Both binaries use this one compiler, so the operator refuses
//! exactly the specs the server would refuse.

pub mod action;
pub mod compile;
#[cfg(feature = "crd")]
pub mod crd;
mod schema;
pub mod topic;
pub mod types;

pub use action::{ForwardAction, PublishAction, RequestAction, RouteAction};
pub use compile::{
    Bucket, Charge, CompiledApp, CompiledRoute, CompiledTopicRule, JwtPolicy, SpecError,
    SpecErrors, compile,
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
        SpecErrors(vec![SpecError {
            path: "(document)".into(),
            message: format!("not valid YAML: {e}"),
        }])
    })?;
    if let Some(kind) = value.get("kind").and_then(|k| k.as_str())
        && kind != "RealtimeApp"
    {
        return Err(SpecErrors(vec![SpecError {
            path: "kind".into(),
            message: format!("expected RealtimeApp, found {kind:?}"),
        }]));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        SpecErrors(vec![SpecError {
            path: if path == "." {
                "(document)".into()
            } else {
                path
            },
            message: e.into_inner().to_string(),
        }])
    })
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
