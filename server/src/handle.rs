//! `ConnectionHandle`: the part of a connection that other tasks may touch.
//!
//! Fan-out and the server's shutdown reach a client only through its handle: they push
//! frames into its queue, and nothing else. The reader and writer own the socket.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;
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
    /// Requests to backends not yet answered: a drain closes the connection only after
    /// their replies are queued.
    pub rpcs_in_flight: AtomicUsize,
    pub rpcs_settled: Notify,
}

impl ConnectionHandle {
    pub fn new(id: Arc<str>, queue: OutboundQueue, abort: CancellationToken) -> Self {
        Self {
            id,
            queue,
            abort,
            rpcs_in_flight: AtomicUsize::new(0),
            rpcs_settled: Notify::new(),
        }
    }

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

    pub fn rpc_started(&self) {
        self.rpcs_in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn rpc_finished(&self) {
        if self.rpcs_in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.rpcs_settled.notify_waiters();
        }
    }

    /// Resolves once no request of this connection awaits its backend.
    pub async fn rpcs_done(&self) {
        loop {
            let mut settled = pin!(self.rpcs_settled.notified());
            settled.as_mut().enable();
            if self.rpcs_in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            settled.await;
        }
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
