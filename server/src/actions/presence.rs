//! `presence`: answer a topic's members, and announce users joining and leaving to the
//! topic's subscribers (`$ws:join`, `$ws:leave`; docs/PROTOCOL.md §5).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use switchboard_spec::{Topic, TopicTemplate};

use crate::bus::Delivery;
use crate::policy::{self, Verb};
use crate::presence::{self, Event, LEAVE_GRACE, Left};
use crate::protocol::{self, Inbound, OutMeta, Rejection};
use crate::session::Session;
use crate::state::AppState;

/// Answers with a page of the topic's members. Needs the topic's `subscribe` access:
/// who is in a room is as private as what is said there.
pub fn run(
    state: &AppState,
    session: &Session,
    msg: &Inbound,
    template: &TopicTemplate,
) -> Result<(), Rejection> {
    let topic = policy::render(template, session, msg)?;
    let rule = policy::check_access(state, session, &topic, Verb::Subscribe)?;
    if rule.presence.is_none() {
        return Err(Rejection::new(
            protocol::ErrorCode::FailedPrecondition,
            format!("the topic rule governing {topic} does not declare presence"),
        ));
    }
    let cursor = match msg.payload.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.as_str()),
        Some(_) => return Err(Rejection::invalid_field("/cursor", "cursor is a string")),
    };
    let mut members = state.presence.local(&topic);
    if let Some(replica) = state.presence_replica.get() {
        members.extend(replica.remote(&topic));
    }
    let page = presence::page(&members, cursor);
    let members: Vec<Value> = page
        .members
        .iter()
        .map(|(c, u)| json!({"connectionId": &**c, "userId": &**u}))
        .collect();
    let mut answer = json!({"topic": topic.as_str(), "count": page.count, "members": members});
    if let Some(next) = page.cursor {
        answer["cursor"] = json!(&*next);
    }
    session
        .handle
        .reply(protocol::ACK_TYPE, msg.correlation_id.as_deref(), &answer);
    Ok(())
}

/// Sends a join or leave to the topic's subscribers (on a topic whose presence has
/// `joinLeave`), never to the connection it is about.
pub fn announce(state: &AppState, topic: &Topic, event: &Event) {
    let message_type = if event.join {
        protocol::JOIN_TYPE
    } else {
        protocol::LEAVE_TYPE
    };
    let frame = protocol::encode(
        message_type,
        OutMeta {
            topic: Some(topic.as_str()),
            timestamp: protocol::now_ms(),
            ..OutMeta::default()
        },
        &json!({"connectionId": &*event.connection_id, "userId": &*event.user_id}),
    );
    state.registry.fan_out(&Delivery {
        topic: topic.clone(),
        message_type: Arc::from(message_type),
        frame,
        exclude: Some(event.connection_id.clone()),
        published_at: Instant::now(),
    });
}

/// A member joined here: other pods learn of it, and of the event if there is one.
pub fn joined(
    state: &AppState,
    topic: &Topic,
    session: &Session,
    event: Option<Event>,
    join_leave: bool,
) {
    if let Some(replica) = state.presence_replica.get() {
        replica.joined(topic, &session.handle.id, &session.user_id);
    }
    if let Some(event) = event
        && join_leave
    {
        announce_everywhere(state, topic, &event);
    }
}

/// Announces here and on every other pod.
fn announce_everywhere(state: &AppState, topic: &Topic, event: &Event) {
    announce(state, topic, event);
    if let Some(replica) = state.presence_replica.get() {
        replica.announced(topic, event);
    }
}

/// The connection is no longer a member of `topic` (if it was one): announced now
/// when it unsubscribed, after the grace when it disconnected.
pub fn leave(state: &Arc<AppState>, session: &Session, topic: &Topic, unsubscribed: bool) {
    let Some((rule, _)) = state.app.topic_rule(topic) else {
        return;
    };
    let Some(settings) = rule.presence else {
        return;
    };
    let left = state
        .presence
        .leave(topic, &session.handle.id, unsubscribed);
    if let Some(replica) = state.presence_replica.get() {
        replica.left(topic, &session.handle.id);
    }
    match left {
        Left::Quiet => {}
        Left::Now(event) => {
            if settings.join_leave {
                announce_everywhere(state, topic, &event);
            }
        }
        Left::Later(token) => {
            let (state, topic) = (state.clone(), topic.clone());
            let (connection_id, user_id) = (session.handle.id.clone(), session.user_id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(LEAVE_GRACE).await;
                if let Some(event) = state
                    .presence
                    .settle(&topic, &connection_id, &user_id, token)
                    && settings.join_leave
                {
                    announce_everywhere(&state, &topic, &event);
                }
            });
        }
    }
}
