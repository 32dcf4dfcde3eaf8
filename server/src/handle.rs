//! `ConnectionHandle`: the part of a connection that other tasks may touch.
//!
//! Fan-out and the server's shutdown reach a client only through its handle: they push
//! frames into its queue, and nothing else. The reader and writer own the socket.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbound::{Outbound, OutboundQueue, Pushed};

pub struct ConnectionHandle {
    /// Unique across replicas (instance + counter), so `excludeSelf` works over the bus.
    pub id: Arc<str>,
    pub queue: OutboundQueue,
    /// Fired when the writer must stop waiting on the socket: the client stopped reading
    /// and overflowed its queue, or the server is exiting now.
    pub abort: CancellationToken,
}

impl ConnectionHandle {
    /// Queues a topic delivery, applying the slow-consumer policy. Returns whether the
    /// frame was queued.
    pub fn deliver(&self, frame: &Bytes, published_at: Instant, metrics: &Metrics) -> bool {
        let pushed = self.queue.push(Outbound::Delivery {
            frame: frame.clone(),
            published_at,
        });
        self.account(pushed, metrics)
    }

    /// Queues a frame for this client alone (reply, error, system frame).
    pub fn send(&self, frame: Bytes, metrics: &Metrics) -> bool {
        let pushed = self.queue.push(Outbound::Frame(frame));
        self.account(pushed, metrics)
    }

    fn account(&self, pushed: Pushed, metrics: &Metrics) -> bool {
        match pushed {
            Pushed::Queued => true,
            Pushed::DroppedOldest => {
                metrics.dropped("slow_consumer_drop_oldest", 1);
                true
            }
            Pushed::Overflowed => {
                metrics.dropped("slow_consumer_disconnect", 1);
                self.abort.cancel();
                false
            }
            Pushed::Closed => {
                metrics.dropped("connection_closing", 1);
                false
            }
        }
    }
}
