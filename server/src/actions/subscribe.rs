//! `subscribe`: add the sender to a topic's subscribers, acknowledged once deliveries
//! from every replica reach it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_spec::TopicTemplate;

use crate::bus::SubscribedFuture;
use crate::policy::{self, Verb};
use crate::protocol::{self, ErrorCode, Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

/// How long a subscribe's ack waits for the bus to confirm before it is sent anyway
/// (NATS stalled: local delivery works, the subscription follows).
const SUBSCRIBED_WAIT: Duration = Duration::from_secs(5);

pub fn run(
    state: &Arc<AppState>,
    session: &mut Session,
    msg: &Inbound,
    template: &TopicTemplate,
) -> Result<(), Rejection> {
    let topic = policy::render(template, session, msg)?;
    policy::check_access(state, session, &topic, Verb::Subscribe)?;
    let answer = json!({"topic": topic.as_str()});
    if !session.subscriptions.contains(&topic) {
        let max = state.app.spec.limits.max_subscriptions_per_connection as usize;
        if session.subscriptions.len() >= max {
            return Err(Rejection {
                retryable: false,
                ..Rejection::new(
                    ErrorCode::ResourceExhausted,
                    format!("a connection may hold at most {max} subscriptions"),
                )
            });
        }
        state.registry.subscribe(&topic, &session.handle);
        session.subscriptions.insert(topic.clone());
        if let Some(subscribed) = state.bus.topic_active(&topic) {
            ack_once(state, session, msg, answer, subscribed);
            return Ok(());
        }
    }
    session.ack(msg, &answer);
    Ok(())
}

/// `$ws:ack` once `subscribed` resolves: until then a publish on another replica might
/// not reach this client, and an ack must not promise that it would.
fn ack_once(
    state: &Arc<AppState>,
    session: &Session,
    msg: &Inbound,
    payload: Value,
    subscribed: SubscribedFuture,
) {
    let Some(correlation_id) = msg.correlation_id.clone() else {
        return;
    };
    let handle = session.handle.clone();
    state.tasks.spawn(async move {
        let _ = tokio::time::timeout(SUBSCRIBED_WAIT, subscribed).await;
        handle.reply(protocol::ACK_TYPE, Some(&correlation_id), &payload);
    });
}
