//! `publish`: encode the delivery once and hand it to the bus, which fans it out here
//! and on every other replica. On a topic with history the publication is stored first
//! and its frame carries the offset and epoch it was given (docs/RECOVERY.md).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
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
    let rule = policy::check_access(state, session, &topic, Verb::Publish)?;
    let span =
        tracing::info_span!(target: SPAN_TARGET, "publish", topic = %topic, emit = %action.emit);
    let _entered = span.enter();
    // Encoded once; every recipient on every replica gets these bytes.
    let encode = |offset: Option<u64>, epoch: Option<&str>| {
        protocol::encode(
            &action.emit,
            OutMeta {
                topic: Some(topic.as_str()),
                publisher: Some(&session.identity.user_id),
                timestamp: protocol::now_ms(),
                offset,
                epoch,
                ..OutMeta::default()
            },
            // The client's own bytes: numbers and all arrive as written.
            &*msg.raw_payload,
        )
    };
    let emit: Arc<str> = Arc::from(action.emit.as_str());
    let deliver = |frame: Bytes| {
        state.bus.publish(Delivery {
            topic: topic.clone(),
            message_type: emit.clone(),
            frame,
            exclude: action.exclude_self.then(|| session.handle.id.clone()),
            published_at: Instant::now(),
        });
    };
    let answer = match rule.history {
        Some(settings) => {
            let stored = state.history.publish(
                &topic,
                settings,
                &emit,
                |offset, epoch| encode(Some(offset), Some(epoch)),
                deliver,
            );
            json!({"topic": topic.as_str(), "offset": stored.offset, "epoch": &*stored.epoch})
        }
        None => {
            deliver(encode(None, None));
            json!({"topic": topic.as_str()})
        }
    };
    session.ack(msg, &answer);
    Ok(())
}
