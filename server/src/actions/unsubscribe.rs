//! `unsubscribe`: drop the sender's subscription to a topic (acknowledged whether or not
//! it held one), and the same for every topic when a connection closes.

use serde_json::json;
use switchboard_spec::TopicTemplate;

use crate::policy;
use crate::protocol::{Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

pub fn run(
    state: &AppState,
    session: &mut Session,
    msg: &Inbound,
    template: &TopicTemplate,
) -> Result<(), Rejection> {
    let topic = policy::render(template, session, msg)?;
    if session.subscriptions.remove(&topic)
        && state.registry.unsubscribe(&topic, &session.handle.id)
    {
        state.bus.topic_inactive(&topic);
    }
    session.ack(msg, &json!({"topic": topic.as_str()}));
    Ok(())
}

/// Drops every subscription of a closing connection.
pub fn all(state: &AppState, session: &mut Session) {
    for topic in session.subscriptions.drain() {
        if state.registry.unsubscribe(&topic, &session.handle.id) {
            state.bus.topic_inactive(&topic);
        }
    }
}
