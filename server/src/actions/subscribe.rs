//! `subscribe`: add the sender to a topic's subscribers, acknowledged once deliveries
//! from every replica reach it. On a topic with history the ack carries the position,
//! and a subscribe with `meta.since` gets what it missed replayed first
//! (docs/RECOVERY.md); on a topic with presence the sender becomes a member.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_spec::{CompiledTopicRule, HistorySettings, Topic, TopicTemplate};

use crate::actions::presence;
use crate::bus::SubscribedFuture;
use crate::history::jetstream::Join;
use crate::history::memory::TopicHistory;
use crate::history::{HistoryStore, Subscribed};
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
    let rule = policy::check_access(state, session, &topic, Verb::Subscribe)?;
    let held = session.subscriptions.contains(&topic);
    if !held {
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
    }
    if let Some(settings) = rule.history {
        match &state.history {
            HistoryStore::Memory(history) => {
                subscribe_with_history(state, history, session, msg, &topic, settings, held);
            }
            HistoryStore::JetStream(js) => {
                // The topic's feed queues the ack and replay and adds the subscriber.
                session.subscriptions.insert(topic.clone());
                js.join(
                    &topic,
                    settings,
                    Join {
                        handle: session.handle.clone(),
                        since: if held { None } else { msg.since.clone() },
                        correlation_id: msg.correlation_id.clone(),
                    },
                );
            }
        }
    } else {
        let answer = json!({"topic": topic.as_str()});
        if held {
            session.ack(msg, &answer);
        } else {
            join(state, session, &topic);
            match state.bus.topic_active(&topic) {
                Some(subscribed) => ack_once(state, session, msg, answer, subscribed),
                None => session.ack(msg, &answer),
            }
        }
    }
    if !held {
        become_member(state, session, &topic, rule);
    }
    Ok(())
}

/// Under the topic's history lock: the ack with the position, then the replay, then
/// the subscription, so live publications follow the replay with no gap or repeat.
fn subscribe_with_history(
    state: &Arc<AppState>,
    history: &TopicHistory,
    session: &mut Session,
    msg: &Inbound,
    topic: &Topic,
    settings: HistorySettings,
    held: bool,
) {
    // A held subscription already receives everything: nothing to recover.
    let since = if held { None } else { msg.since.as_ref() };
    let limit = state.app.spec.limits.max_recovery_publications as usize;
    history.subscribe(topic, settings, since, limit, |found: Subscribed| {
        let mut answer = json!({
            "topic": topic.as_str(),
            "offset": found.position.offset,
            "epoch": &*found.position.epoch,
        });
        match &found.recovery {
            Some(Ok(_)) => answer["recovered"] = json!(true),
            Some(Err(reason)) => {
                answer["recovered"] = json!(false);
                answer["reason"] = json!(reason.as_str());
            }
            None => {}
        }
        if let Some(recovery) = &found.recovery {
            state.metrics.history.count(recovery);
        }
        // A recovering client needs the ack to know where it stands, asked or not.
        if msg.correlation_id.is_some() || since.is_some() {
            session
                .handle
                .reply(protocol::ACK_TYPE, msg.correlation_id.as_deref(), &answer);
        }
        if let Some(Ok(missed)) = &found.recovery {
            session.handle.replay(missed);
        }
        if !held {
            join(state, session, topic);
        }
    });
    if !held {
        // History topics are served by this pod alone (see docs/RECOVERY.md), so the
        // bus has nothing to confirm; it still learns of the topic.
        drop(state.bus.topic_active(topic));
    }
}

/// Adds the subscriber here.
fn join(state: &AppState, session: &mut Session, topic: &Topic) {
    state.registry.subscribe(topic, &session.handle);
    session.subscriptions.insert(topic.clone());
}

/// On a presence topic, the sender is a member from now on.
fn become_member(state: &AppState, session: &Session, topic: &Topic, rule: &CompiledTopicRule) {
    let Some(settings) = rule.presence else {
        return;
    };
    let event = state
        .presence
        .join(topic, &session.handle.id, &session.user_id);
    presence::joined(state, topic, session, event, settings.join_leave);
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
