//! `OutboundQueue`: the bounded line of frames waiting to be written to one client.
//!
//! Publishers and the connection's own reader push; the connection's writer pops. A push
//! never waits: a client that does not read fills its own queue and then meets the
//! slow-consumer policy, so it can never slow down a publisher or another subscriber.
//! The lock is per connection and held only to move a pointer in or out.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use switchboard_spec::SlowConsumerPolicy;
use tokio::sync::Notify;

use crate::protocol::CloseReason;

/// One thing for the writer to do.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A reply, error or system frame for this client alone.
    Frame(Bytes),
    /// A topic delivery: the same bytes are shared by every recipient.
    Delivery {
        frame: Bytes,
        /// `frame` is compressed already (permessage-deflate), once for every
        /// recipient that negotiated it.
        compressed: bool,
        published_at: Instant,
    },
    /// Answer to a client ping.
    Pong(Bytes),
    /// Write a close frame, then stop.
    Close { code: u16, reason: CloseReason },
}

/// What became of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after dropping the oldest delivery (`dropOldest`).
    DroppedOldest,
    /// The queue is full and the policy is `disconnect`: the queue now holds only a
    /// close 4008 and refuses everything else.
    Overflowed,
    /// The connection is closing; the frame was dropped.
    Closed,
}

pub struct OutboundQueue {
    state: Mutex<State>,
    /// Wakes the writer. One permit is stored when it is not waiting, so no push is missed.
    ready: Notify,
    /// Wakes the reader waiting in [`OutboundQueue::room_to_answer`] once the writer
    /// has taken a batch.
    taken: Notify,
    capacity: usize,
    policy: SlowConsumerPolicy,
}

struct State {
    items: VecDeque<Outbound>,
    /// A close is queued: nothing more is accepted.
    closing: bool,
}

impl OutboundQueue {
    pub fn new(capacity: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(64)),
                closing: false,
            }),
            ready: Notify::new(),
            taken: Notify::new(),
            capacity: capacity.max(1),
            policy,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the deque half-updated in a way
        // that matters more than losing the connection, so keep serving from it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, item: Outbound) -> Pushed {
        let outcome = {
            let mut s = self.lock();
            if s.closing {
                return Pushed::Closed;
            }
            if s.items.len() < self.capacity {
                s.items.push_back(item);
                Pushed::Queued
            } else if self.policy == SlowConsumerPolicy::DropOldest
                && let Some(i) = s
                    .items
                    .iter()
                    .position(|o| matches!(o, Outbound::Delivery { .. }))
            {
                s.items.remove(i);
                s.items.push_back(item);
                Pushed::DroppedOldest
            } else {
                // `disconnect`, or a queue full of the client's own unread replies: either
                // way the client is not keeping up. Drop what it has not read and close.
                s.items.clear();
                s.items.push_back(Outbound::Close {
                    code: CloseReason::SlowConsumer.code(),
                    reason: CloseReason::SlowConsumer,
                });
                s.closing = true;
                Pushed::Overflowed
            }
        };
        self.ready.notify_one();
        outcome
    }

    /// Queues a recovering subscribe's replay whole, past the bound: the replay is
    /// bounded itself (`limits.maxRecoveryPublications`), and cutting it would turn a
    /// recovery into a loss. Later deliveries meet the bound as usual.
    pub fn push_replay(&self, items: impl IntoIterator<Item = Outbound>) -> Pushed {
        {
            let mut s = self.lock();
            if s.closing {
                return Pushed::Closed;
            }
            s.items.extend(items);
        }
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Queues a close after everything already queued. Later pushes are dropped.
    /// Returns false when a close was already queued.
    pub fn close(&self, code: u16, reason: CloseReason) -> bool {
        {
            let mut s = self.lock();
            if s.closing {
                return false;
            }
            s.items.push_back(Outbound::Close { code, reason });
            s.closing = true;
        }
        self.ready.notify_one();
        true
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Moves every queued item into `out`, waiting until there is at least one.
    /// Cancel-safe: nothing is taken until the lock is held.
    pub async fn pop_all(&self, out: &mut Vec<Outbound>) {
        loop {
            {
                let mut s = self.lock();
                if !s.items.is_empty() {
                    out.extend(s.items.drain(..));
                    drop(s);
                    self.taken.notify_waiters();
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Resolves once the queue is less than half full (or closing). The reader waits
    /// here before it reads the next message, so a client that sends a burst while it
    /// keeps reading is slowed down to the pace its answers are written at, instead of
    /// overflowing its own queue and meeting the slow-consumer policy. A client that
    /// stops reading still fills the queue with deliveries and meets it.
    pub async fn room_to_answer(&self) {
        let half = (self.capacity / 2).max(1);
        loop {
            let mut taken = std::pin::pin!(self.taken.notified());
            taken.as_mut().enable();
            {
                let s = self.lock();
                if s.closing || s.items.len() < half {
                    return;
                }
            }
            taken.await;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(n: u8) -> Outbound {
        Outbound::Delivery {
            frame: Bytes::from(vec![n]),
            compressed: false,
            published_at: Instant::now(),
        }
    }

    fn first_byte(o: &Outbound) -> u8 {
        match o {
            Outbound::Delivery { frame, .. } | Outbound::Frame(frame) => frame[0],
            _ => 0,
        }
    }

    #[tokio::test]
    async fn disconnect_policy_replaces_the_backlog_with_a_close() {
        let q = OutboundQueue::new(2, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push(delivery(1)), Pushed::Queued);
        assert_eq!(q.push(delivery(2)), Pushed::Queued);
        assert_eq!(q.push(delivery(3)), Pushed::Overflowed);
        assert_eq!(q.push(delivery(4)), Pushed::Closed);
        let mut out = Vec::new();
        q.pop_all(&mut out).await;
        assert!(matches!(
            out.as_slice(),
            [Outbound::Close { code: 4008, .. }]
        ));
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_deliveries_and_replies() {
        let q = OutboundQueue::new(3, SlowConsumerPolicy::DropOldest);
        q.push(Outbound::Frame(Bytes::from_static(&[9])));
        q.push(delivery(1));
        q.push(delivery(2));
        assert_eq!(q.push(delivery(3)), Pushed::DroppedOldest);
        let mut out = Vec::new();
        q.pop_all(&mut out).await;
        assert_eq!(
            out.iter().map(first_byte).collect::<Vec<_>>(),
            vec![9, 2, 3]
        );
    }

    #[tokio::test]
    async fn the_reader_waits_for_room_until_the_writer_takes_a_batch() {
        let q = std::sync::Arc::new(OutboundQueue::new(4, SlowConsumerPolicy::Disconnect));
        q.push(delivery(1));
        // Under half full: room at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), q.room_to_answer())
            .await
            .unwrap();
        q.push(delivery(2));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.room_to_answer().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "half full: the reader waits");
        let mut out = Vec::new();
        q.pop_all(&mut out).await;
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn close_comes_after_what_was_queued_and_stops_further_pushes() {
        let q = OutboundQueue::new(8, SlowConsumerPolicy::Disconnect);
        q.push(delivery(1));
        assert!(q.close(4001, CloseReason::HeartbeatTimeout));
        assert!(!q.close(1000, CloseReason::Client));
        assert_eq!(q.push(delivery(2)), Pushed::Closed);
        let mut out = Vec::new();
        q.pop_all(&mut out).await;
        assert!(matches!(
            out.as_slice(),
            [
                Outbound::Delivery { .. },
                Outbound::Close { code: 4001, .. }
            ]
        ));
    }
}
