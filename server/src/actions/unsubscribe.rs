//! `unsubscribe`: drop the sender's subscription to a topic (acknowledged whether or not
//! it held one), and the same for every topic when a connection closes.

use std::sync::Arc;

use serde_json::json;
use switchboard_spec::{Topic, TopicTemplate};

use crate::actions::presence;
use crate::policy;
use crate::protocol::{Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

pub fn run(
    state: &Arc<AppState>,
    session: &mut Session,
    msg: &Inbound,
    template: &TopicTemplate,
) -> Result<(), Rejection> {
    let topic = policy::render(template, session, msg)?;
    if session.subscriptions.remove(&topic) {
        drop_subscription(state, session, &topic, true);
    }
    session.ack(msg, &json!({"topic": topic.as_str()}));
    Ok(())
}

/// Drops every subscription of a closing connection. Its presence ends after the grace
/// (see presence.rs), so a quick reconnect is not a leave.
pub fn all(state: &Arc<AppState>, session: &mut Session) {
    let topics: Vec<Topic> = session.subscriptions.drain().collect();
    for topic in topics {
        drop_subscription(state, session, &topic, false);
    }
}

/// Removes the connection from a topic it no longer holds (already taken out of
/// `session.subscriptions`): from the local subscribers, the bus's interest, and the
/// topic's members. `unsubscribed`: the client (or a refresh) ended it, not a close.
pub fn drop_subscription(
    state: &Arc<AppState>,
    session: &Session,
    topic: &Topic,
    unsubscribed: bool,
) {
    let in_jetstream = state.history.jetstream().filter(|_| {
        state
            .app
            .topic_rule(topic)
            .is_some_and(|(rule, _)| rule.history.is_some())
    });
    if let Some(js) = in_jetstream {
        // The topic's feed owns its local subscribers.
        js.leave(topic, &session.handle.id);
    } else if state.registry.unsubscribe(topic, &session.handle.id) {
        state.bus.topic_inactive(topic);
    }
    presence::leave(state, session, topic, unsubscribed);
}
