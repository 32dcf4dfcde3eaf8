//! `publish`: encode the delivery once and hand it to the bus, which fans it out here
//! and on every other replica.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use switchboard_spec::PublishAction;

use crate::bus::Delivery;
use crate::policy::{self, Verb};
use crate::protocol::{self, Inbound, OutMeta, Rejection};
use crate::session::Session;
use crate::state::AppState;
use crate::trace::SPAN_TARGET;

pub fn run(
    state: &AppState,
    session: &Session,
    msg: &Inbound,
    action: &PublishAction,
) -> Result<(), Rejection> {
    let topic = policy::render(&action.topic, session, msg)?;
    policy::check_access(state, session, &topic, Verb::Publish)?;
    let span =
        tracing::info_span!(target: SPAN_TARGET, "publish", topic = %topic, emit = %action.emit);
    let _entered = span.enter();
    // Encoded once; every recipient on every replica gets these bytes.
    let frame = protocol::encode(
        &action.emit,
        OutMeta {
            topic: Some(topic.as_str()),
            publisher: Some(&session.identity.user_id),
            timestamp: protocol::now_ms(),
            ..OutMeta::default()
        },
        // The client's own bytes: numbers and all arrive as written.
        &*msg.raw_payload,
    );
    state.bus.publish(Delivery {
        topic: topic.clone(),
        message_type: Arc::from(action.emit.as_str()),
        frame,
        exclude: action.exclude_self.then(|| session.handle.id.clone()),
        published_at: Instant::now(),
    });
    session.ack(msg, &json!({"topic": topic.as_str()}));
    Ok(())
}
