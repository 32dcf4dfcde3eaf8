//! `Subscription`: a subscribe route's message that is sent again after each
//! reconnect, with the last delivery's position as `meta.since` (docs/PROTOCOL.md §3a).

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use crate::{Frame, lock};

/// What the connection task updates and the handle reads.
pub(crate) struct SubscriptionState {
    message_type: String,
    payload: Value,
    inner: Mutex<Position>,
}

#[derive(Default, Clone)]
struct Position {
    topic: Option<String>,
    offset: Option<u64>,
    epoch: Option<String>,
    recovered: Option<bool>,
    reason: Option<String>,
    renewals: u64,
}

impl SubscriptionState {
    pub(crate) fn new(message_type: &str, payload: Value) -> Self {
        Self {
            message_type: message_type.to_owned(),
            payload,
            inner: Mutex::new(Position::default()),
        }
    }

    /// The subscribe frame, with `meta.since` once a position is known.
    pub(crate) fn frame(&self) -> Frame {
        let p = lock(&self.inner).clone();
        let mut meta = Map::new();
        if let (Some(offset), Some(epoch)) = (p.offset, p.epoch) {
            meta.insert("since".into(), json!({"offset": offset, "epoch": epoch}));
        }
        Frame {
            message_type: self.message_type.clone(),
            meta,
            payload: self.payload.clone(),
        }
    }

    pub(crate) fn topic(&self) -> Option<String> {
        lock(&self.inner).topic.clone()
    }

    /// Takes the ack's topic, position and recovery outcome.
    pub(crate) fn acked(&self, payload: &Value) {
        let mut p = lock(&self.inner);
        let recovering = p.offset.is_some();
        if let Some(topic) = payload["topic"].as_str() {
            p.topic = Some(topic.to_owned());
        }
        if let Some(recovered) = payload["recovered"].as_bool() {
            p.recovered = Some(recovered);
            p.reason = payload["reason"].as_str().map(str::to_owned);
            p.renewals += 1;
        }
        // A first subscribe, or a refused recovery, starts from the new position.
        if !recovering || payload["recovered"] == Value::Bool(false) {
            p.offset = payload["offset"].as_u64();
            p.epoch = payload["epoch"].as_str().map(str::to_owned);
        }
    }

    /// Moves the position forward from a delivery on the topic.
    pub(crate) fn delivered(&self, frame: &Frame) {
        if let (Some(offset), Some(epoch)) = (
            frame.meta("offset").and_then(Value::as_u64),
            frame.meta("epoch").and_then(Value::as_str),
        ) {
            let mut p = lock(&self.inner);
            p.offset = Some(offset);
            p.epoch = Some(epoch.to_owned());
        }
    }
}

/// A handle on a renewed subscription.
#[derive(Clone)]
pub struct Subscription(Arc<SubscriptionState>);

impl Subscription {
    pub(crate) fn new(state: Arc<SubscriptionState>) -> Self {
        Self(state)
    }

    pub(crate) fn state(&self) -> &Arc<SubscriptionState> {
        &self.0
    }

    /// The topic, from the server's ack.
    pub fn topic(&self) -> Option<String> {
        self.0.topic()
    }

    /// The last delivery's `(offset, epoch)` (topics with history).
    pub fn position(&self) -> Option<(u64, String)> {
        let p = lock(&self.0.inner);
        p.offset.zip(p.epoch.clone())
    }

    /// After a renewal: whether every missed publication followed, and if not, why.
    pub fn recovered(&self) -> Option<(bool, Option<String>)> {
        let p = lock(&self.0.inner);
        p.recovered.map(|r| (r, p.reason.clone()))
    }

    /// How many renewals were acknowledged with a recovery outcome.
    pub fn renewals(&self) -> u64 {
        lock(&self.0.inner).renewals
    }
}
