//! The JetStream stream that holds an app's history topics (docs/RECOVERY.md, "On
//! NATS"), computed in one place for the two that put it in place: the server at
//! start (so an app run without the operator has it) and the operator before it
//! rolls a spec out (so a change JetStream refuses is a Degraded condition while the
//! running pods keep the stream they have).
//!
//! Subjects, with `P` = `<prefix>.<namespace>.<app>` ([`subject_base`]): the stream
//! stores `P.s.<topic>` and republishes each stored message to `P.r.<topic>`.

use std::time::Duration;

use async_nats::jetstream::stream;

use crate::CompiledApp;

/// First token of every subject when the spec sets no `nats.subjectPrefix`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "sb";

/// Byte bound of the app's stream when the spec sets no `nats.historyMaxBytes`.
pub const DEFAULT_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// `<prefix>.<namespace>.<app>`, under which every subject of the app lives.
pub fn subject_base(app: &CompiledApp) -> String {
    let prefix = app
        .spec
        .nats
        .as_ref()
        .and_then(|n| n.subject_prefix.as_deref())
        .unwrap_or(DEFAULT_SUBJECT_PREFIX);
    format!("{prefix}.{}.{}", app.namespace, app.name)
}

/// The stream's configuration, or `None` when no topic rule keeps history (such an
/// app has no stream). Per-subject count and age are the largest any rule asks for:
/// the server trims each topic to its own rule when it reads.
pub fn config(app: &CompiledApp) -> Option<stream::Config> {
    let (size, ttl) =
        app.topics
            .iter()
            .filter_map(|t| t.history)
            .fold(None, |acc: Option<(u32, u32)>, h| {
                let (s, t) = acc.unwrap_or((1, 1));
                Some((s.max(h.size), t.max(h.ttl_seconds)))
            })?;
    let max_bytes = app
        .spec
        .nats
        .as_ref()
        .and_then(|n| n.history_max_bytes)
        .map_or(DEFAULT_MAX_BYTES, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let base = subject_base(app);
    Some(stream::Config {
        name: format!("SB_{}", base.replace(['.', '-'], "_")).to_uppercase(),
        subjects: vec![format!("{base}.s.>")],
        max_messages_per_subject: i64::from(size),
        max_age: Duration::from_secs(u64::from(ttl)),
        max_bytes,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: format!("{base}.s.>"),
            destination: format!("{base}.r.>"),
            headers_only: false,
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    fn app(yaml: &str) -> CompiledApp {
        crate::load(yaml).unwrap()
    }

    const APP: &str = r#"
metadata: {name: chat, namespace: team-a}
spec:
  auth: {anonymous: true}
  nats: {url: "nats://n:4222", historyMaxBytes: 1048576}
  routes:
    - type: POST
      payload: {type: object, required: [id], properties: {id: {type: string}}}
      publish: {topic: "board:{id}"}
  topics:
    - pattern: "board:{id}"
      publish: {roles: [anonymous]}
      history: {size: 50, ttlSeconds: 60}
    - pattern: "wall:{id}"
      history: {size: 10, ttlSeconds: 600}
    - pattern: "room:{id}"
"#;

    #[test]
    fn the_stream_covers_the_apps_stored_subjects_with_the_largest_bounds() {
        let config = config(&app(APP)).unwrap();
        assert_eq!(config.name, "SB_SB_TEAM_A_CHAT");
        assert_eq!(config.subjects, ["sb.team-a.chat.s.>"]);
        assert_eq!(config.max_messages_per_subject, 50);
        assert_eq!(config.max_age, Duration::from_secs(600));
        assert_eq!(config.max_bytes, 1_048_576);
        assert_eq!(config.republish.unwrap().destination, "sb.team-a.chat.r.>");
    }

    #[test]
    fn an_app_without_history_has_no_stream() {
        let plain = APP
            .replace("history: {size: 50, ttlSeconds: 60}", "")
            .replace("history: {size: 10, ttlSeconds: 600}", "");
        assert!(config(&app(&plain)).is_none());
    }
}
