//! `history`: answer a topic's recent publications, newest last, a page at a time
//! (docs/PROTOCOL.md §5). Needs the topic's `subscribe` access, like reading it live.

use serde_json::{Value, json};
use switchboard_spec::{HistoryAction, Topic};

use crate::history::{HistoryStore, Page, PageQuery, StoredFrame};
use crate::policy::{self, Verb};
use crate::protocol::{self, Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

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
                Rejection::invalid_field(&format!("/{field}"), format!("{field} is a whole number"))
            }),
        }
    };
    let limit = offset("limit")?.unwrap_or(u64::from(action.max_limit));
    let query = PageQuery {
        before: offset("before")?,
        since: offset("since")?,
        limit: limit.clamp(1, u64::from(action.max_limit)) as usize,
    };
    let handle = session.handle.clone();
    let correlation_id = msg.correlation_id.clone();
    match &state.history {
        HistoryStore::Memory(history) => {
            let page = history.read(&topic, settings, query);
            handle.reply(
                protocol::ACK_TYPE,
                correlation_id.as_deref(),
                &answer(&topic, &page),
            );
        }
        HistoryStore::JetStream(js) => {
            let js = js.clone();
            tokio::spawn(async move {
                match js.read(&topic, settings, query).await {
                    Ok(page) => handle.reply(
                        protocol::ACK_TYPE,
                        correlation_id.as_deref(),
                        &answer(&topic, &page),
                    ),
                    Err(r) => handle.refuse(protocol::ERROR_TYPE, correlation_id.as_deref(), &r),
                };
            });
        }
    }
    Ok(())
}

/// `{"topic", "offset", "epoch", "publications": [{"offset", "type", "payload",
/// "publisher", "timestamp"}]}`, newest last.
fn answer(topic: &Topic, page: &Page) -> Value {
    let publications: Vec<Value> = page
        .publications
        .iter()
        .filter_map(|p| {
            // Frames the server encoded itself: they always read back.
            let frame = StoredFrame::read(&p.frame)?;
            Some(json!({
                "offset": p.offset,
                "type": frame.message_type,
                "payload": frame.payload,
                "publisher": frame.meta.publisher,
                "timestamp": frame.meta.timestamp,
            }))
        })
        .collect();
    json!({
        "topic": topic.as_str(),
        "offset": page.position.offset,
        "epoch": &*page.position.epoch,
        "publications": publications,
    })
}
