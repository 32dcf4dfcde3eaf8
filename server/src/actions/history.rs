//! `history`: answer a topic's recent publications, newest last, a page at a time
//! (docs/PROTOCOL.md §5). Needs the topic's `subscribe` access, like reading it live.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_spec::HistoryAction;

use crate::history::PageQuery;
use crate::policy::{self, Verb};
use crate::protocol::{self, Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

/// What the answer needs from a stored delivery frame.
#[derive(Deserialize)]
struct StoredFrame<'a> {
    #[serde(rename = "type", borrow)]
    message_type: &'a str,
    meta: StoredMeta<'a>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct StoredMeta<'a> {
    #[serde(default, borrow)]
    publisher: Option<&'a str>,
    timestamp: u64,
}

pub fn run(
    state: &AppState,
    session: &Session,
    msg: &Inbound,
    action: &HistoryAction,
) -> Result<(), Rejection> {
    let topic = policy::render(&action.topic, session, msg)?;
    let rule = policy::check_access(state, session, &topic, Verb::Subscribe)?;
    let Some(settings) = rule.history else {
        return Err(Rejection::new(
            protocol::ErrorCode::FailedPrecondition,
            format!("the topic rule governing {topic} does not declare history"),
        ));
    };
    let offset = |field: &str| -> Result<Option<u64>, Rejection> {
        match msg.payload.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Rejection::invalid_field(
                    &format!("/{field}"),
                    format!("{field} is an offset (a whole number)"),
                )
            }),
        }
    };
    let limit = offset("limit")?.unwrap_or(u64::from(action.max_limit));
    let query = PageQuery {
        before: offset("before")?,
        since: offset("since")?,
        limit: limit.clamp(1, u64::from(action.max_limit)) as usize,
    };
    let page = state.history.read(&topic, settings, query);
    let mut publications = Vec::with_capacity(page.publications.len());
    for stored in &page.publications {
        // Frames the server encoded itself: they always read back.
        let Ok(frame) = serde_json::from_slice::<StoredFrame<'_>>(&stored.frame) else {
            continue;
        };
        publications.push(json!({
            "offset": stored.offset,
            "type": frame.message_type,
            "payload": frame.payload,
            "publisher": frame.meta.publisher,
            "timestamp": frame.meta.timestamp,
        }));
    }
    let answer = json!({
        "topic": topic.as_str(),
        "offset": page.position.offset,
        "epoch": &*page.position.epoch,
        "publications": publications,
    });
    session
        .handle
        .reply(protocol::ACK_TYPE, msg.correlation_id.as_deref(), &answer);
    Ok(())
}
