//! `publish`: encode the delivery once and hand it to the bus, which fans it out here
//! and on every other replica. On a topic with history the publication is stored first
//! and its frame carries the offset and epoch it was given (docs/RECOVERY.md).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use switchboard_spec::PublishAction;

use crate::bus::Delivery;
use crate::history::HistoryStore;
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
    let answer = match (rule.history, &state.history) {
        (Some(_), HistoryStore::JetStream(js)) => {
            // Delivered by every replica's feed once stored; the ack waits for that.
            let handle = session.handle.clone();
            let correlation_id = msg.correlation_id.clone();
            let answered = topic.clone();
            js.publish(
                topic.clone(),
                emit,
                encode(None, None),
                action.exclude_self.then(|| session.handle.id.clone()),
                move |stored| match stored {
                    Ok(position) => {
                        if let Some(c) = correlation_id.as_deref() {
                            let answer = json!({"topic": answered.as_str(), "offset": position.offset, "epoch": &*position.epoch});
                            handle.reply(protocol::ACK_TYPE, Some(c), &answer);
                        }
                    }
                    Err(r) => {
                        handle.refuse(protocol::ERROR_TYPE, correlation_id.as_deref(), &r);
                    }
                },
            );
            return Ok(());
        }
        (Some(settings), HistoryStore::Memory(history)) => {
            let stored = history.publish(
                &topic,
                settings,
                &emit,
                |offset, epoch| encode(Some(offset), Some(epoch)),
                deliver,
            );
            json!({"topic": topic.as_str(), "offset": stored.offset, "epoch": &*stored.epoch})
        }
        (None, _) => {
            deliver(encode(None, None));
            json!({"topic": topic.as_str()})
        }
    };
    session.ack(msg, &answer);
    Ok(())
}
