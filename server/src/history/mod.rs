//! History: the recent publications of topics whose rule declares `history`, with the
//! offsets and epochs that let a client recover what it missed (docs/RECOVERY.md).
//!
//! Two stores, one behaviour: [`memory::TopicHistory`] for a single replica without
//! NATS (the embedded default), and [`jetstream::JetStreamHistory`] for replicas on
//! NATS, where one JetStream stream per app holds every history topic.

pub mod jetstream;
pub mod memory;

use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_ops::metrics::{CounterByLabel, register};
use switchboard_spec::Topic;

use crate::protocol::{self, OutMeta};

/// The app's history store: in memory for one replica without NATS, in JetStream for
/// replicas on NATS (only when some topic rule declares `history`).
pub enum HistoryStore {
    Memory(memory::TopicHistory),
    JetStream(Arc<jetstream::JetStreamHistory>),
}

impl HistoryStore {
    /// Whether history can be served: the JetStream stream is in place.
    pub fn is_ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::JetStream(js) => js.is_ready(),
        }
    }

    /// The JetStream store, when history lives there.
    pub fn jetstream(&self) -> Option<&Arc<jetstream::JetStreamHistory>> {
        match self {
            Self::JetStream(js) => Some(js),
            Self::Memory(_) => None,
        }
    }
}

/// Where a topic's history stands: the last offset given out, under which epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

switchboard_ops::label_values! {
    /// Why a recovering subscribe could not be served from history: the ack's `reason`.
    pub enum NotRecovered {
        /// The epoch is not the topic's current one (history lost or reset), or the
        /// offset is one this epoch never reached.
        Epoch => "epoch",
        /// Publications after the offset were trimmed by the topic's `size`.
        Trimmed => "trimmed",
        /// Publications after the offset outlived the topic's `ttlSeconds`.
        Expired => "expired",
        /// More were missed than `limits.maxRecoveryPublications` allows replaying.
        Limit => "limit",
    }
}

/// How recovering subscribes fared.
pub struct HistoryMetrics {
    pub recovered: Counter,
    pub not_recovered: CounterByLabel<NotRecovered>,
}

impl HistoryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            recovered: register(
                registry,
                "switchboard_recoveries",
                "Subscribes with meta.since answered with every missed publication",
                Counter::default(),
            ),
            not_recovered: CounterByLabel::register(
                registry,
                "switchboard_recoveries_refused",
                "Subscribes with meta.since that could not recover, by reason (epoch, trimmed, expired, limit)",
                "reason",
            ),
        }
    }

    pub fn count<T>(&self, recovery: &Result<T, NotRecovered>) {
        match recovery {
            Ok(_) => {
                self.recovered.inc();
            }
            Err(reason) => self.not_recovered.inc(*reason),
        }
    }
}

/// One stored publication: the delivery frame exactly as subscribers receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    pub offset: u64,
    /// The emitted type, for `switchboard_messages_sent_total` when it is replayed.
    pub message_type: Arc<str>,
    pub frame: Bytes,
}

/// What a subscribe to a history topic found, under the topic's lock.
pub struct Subscribed {
    pub position: Position,
    /// `None`: the subscribe did not ask to recover. Else the publications it missed,
    /// oldest first, or why they cannot be replayed.
    pub recovery: Option<Result<Vec<Publication>, NotRecovered>>,
}

/// A page of history, oldest first, and the position it was read at.
pub struct Page {
    pub position: Position,
    pub publications: Vec<Publication>,
}

/// Which part of the history a `history` route asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageQuery {
    /// The newest publications before this offset (exclusive); absent: the newest.
    pub before: Option<u64>,
    /// Only publications after this offset; with `before` absent, the oldest of those.
    pub since: Option<u64>,
    pub limit: usize,
}

impl PageQuery {
    /// The publications this query selects from `all` (oldest first), oldest first.
    pub fn select<'a>(
        &self,
        all: impl DoubleEndedIterator<Item = &'a Publication>,
    ) -> Vec<Publication> {
        let selected = all.filter(|p| {
            self.before.is_none_or(|b| p.offset < b) && self.since.is_none_or(|s| p.offset > s)
        });
        if self.before.is_none() && self.since.is_some() {
            selected.take(self.limit).cloned().collect()
        } else {
            let mut newest: Vec<_> = selected.rev().take(self.limit).cloned().collect();
            newest.reverse();
            newest
        }
    }
}

/// The parts of a stored frame a history answer or a re-encoded delivery needs.
#[derive(Deserialize)]
pub struct StoredFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub message_type: &'a str,
    #[serde(borrow)]
    pub meta: StoredMeta<'a>,
    #[serde(borrow)]
    pub payload: &'a RawValue,
}

#[derive(Deserialize)]
pub struct StoredMeta<'a> {
    #[serde(default, borrow)]
    pub publisher: Option<&'a str>,
    pub timestamp: u64,
}

impl<'a> StoredFrame<'a> {
    pub fn read(frame: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(frame).ok()
    }

    /// The delivery frame of this publication at `offset` under `epoch`.
    pub fn delivery(&self, topic: &Topic, offset: u64, epoch: &str) -> Bytes {
        protocol::encode(
            self.message_type,
            OutMeta {
                topic: Some(topic.as_str()),
                publisher: self.meta.publisher,
                timestamp: self.meta.timestamp,
                offset: Some(offset),
                epoch: Some(epoch),
                ..OutMeta::default()
            },
            self.payload,
        )
    }
}
