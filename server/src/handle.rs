//! `ConnectionHandle`: the part of a connection that other tasks may touch.
//!
//! Fan-out, backend replies and the server's shutdown reach a client only through its
//! handle: they push frames into its queue, and nothing else. The reader and writer own
//! the socket. Because every frame for a client passes here, this is also where frames
//! are counted: `switchboard_messages_sent_total` counts what was really queued, once.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::Value;
use switchboard_ops::metrics::{CounterByLabel, CounterByName, register};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::deflate::Outgoing;
use crate::history::Publication;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, OutboundQueue, Pushed};
use crate::protocol::{self, ErrorCode, Rejection};

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
    /// Set when the client negotiated permessage-deflate: frames at least this app's
    /// threshold long go to it compressed.
    pub deflate: Option<Outgoing>,
    /// Where the frames pushed here are counted.
    metrics: Arc<Metrics>,
}

impl ConnectionHandle {
    pub fn new(
        id: Arc<str>,
        queue: OutboundQueue,
        abort: CancellationToken,
        deflate: Option<Outgoing>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            id,
            queue,
            abort,
            rpcs_in_flight: AtomicUsize::new(0),
            rpcs_settled: Notify::new(),
            deflate,
            metrics,
        }
    }

    /// Queues a topic delivery, applying the slow-consumer policy. `compressed`: the
    /// frame is the publication compressed once for every recipient that negotiated
    /// it. `sent` is the delivery type's counter, resolved once per fan-out by
    /// [`OutboundMetrics::sent_counter`]. Returns whether the frame was queued.
    pub fn deliver(
        &self,
        frame: &Bytes,
        compressed: bool,
        published_at: Instant,
        sent: Option<&Counter>,
    ) -> bool {
        let pushed = self.queue.push(Outbound::Delivery {
            frame: frame.clone(),
            compressed,
            published_at,
        });
        self.account(pushed, sent)
    }

    /// Queues a frame of `message_type` for this client alone (reply, ack, system frame).
    pub fn send(&self, message_type: &str, frame: Bytes) -> bool {
        let pushed = self.queue.push(Outbound::Frame(frame));
        self.account(pushed, self.metrics.outbound.sent_counter(message_type))
    }

    /// Queues a frame of `message_type` with this payload, answering `correlation_id`.
    pub fn reply(&self, message_type: &str, correlation_id: Option<&str>, payload: &Value) -> bool {
        self.send(
            message_type,
            protocol::encode_reply(message_type, correlation_id, payload),
        )
    }

    /// Queues the publications a recovering subscribe missed, oldest first (see
    /// [`OutboundQueue::push_replay`]).
    pub fn replay(&self, publications: &[Publication]) -> bool {
        let published_at = Instant::now();
        let pushed = self
            .queue
            .push_replay(publications.iter().map(|p| Outbound::Delivery {
                frame: p.frame.clone(),
                // Compressed, if at all, by this connection's writer.
                compressed: false,
                published_at,
            }));
        if pushed != Pushed::Queued {
            return self.account(pushed, None);
        }
        for p in publications {
            if let Some(sent) = self.metrics.outbound.sent_counter(&p.message_type) {
                sent.inc();
            }
        }
        true
    }

    /// Queues an error frame (`ERROR`, or `RPC_ERROR` for a request route) saying why a
    /// message was refused.
    pub fn refuse(&self, error_type: &str, correlation_id: Option<&str>, r: &Rejection) -> bool {
        self.metrics.outbound.errors.inc(r.code);
        self.send(
            error_type,
            protocol::encode_error(error_type, correlation_id, r),
        )
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

    fn account(&self, pushed: Pushed, sent: Option<&Counter>) -> bool {
        let dropped = &self.metrics.outbound.dropped;
        let queued = match pushed {
            Pushed::Queued => true,
            Pushed::DroppedOldest => {
                dropped.inc(DropReason::SlowConsumerDropOldest);
                true
            }
            Pushed::Overflowed => {
                dropped.inc(DropReason::SlowConsumerDisconnect);
                self.abort.cancel();
                false
            }
            Pushed::Closed => {
                dropped.inc(DropReason::ConnectionClosing);
                false
            }
        };
        if queued && let Some(sent) = sent {
            sent.inc();
        }
        queued
    }
}

switchboard_ops::label_values! {
    /// Why a frame did not reach a client: the `reason` of
    /// `switchboard_dropped_deliveries_total`.
    pub enum DropReason {
        /// The queue was full and the app drops the oldest frame to make room.
        SlowConsumerDropOldest => "slow_consumer_drop_oldest",
        /// The queue was full and the app disconnects such a client: this frame is lost
        /// with the connection.
        SlowConsumerDisconnect => "slow_consumer_disconnect",
        /// The connection was already closing.
        ConnectionClosing => "connection_closing",
    }
}

/// What leaves for clients: frames queued by type, error frames by code, frames lost,
/// and how long a delivery took from its publish to the subscriber's socket.
pub struct OutboundMetrics {
    sent: CounterByName,
    pub errors: CounterByLabel<ErrorCode>,
    pub dropped: CounterByLabel<DropReason>,
    /// Observed by the writer as each delivery is written.
    pub delivery_latency: Histogram,
}

impl OutboundMetrics {
    /// `sent_types`: every type the server may send to this app's clients.
    pub fn register<'a>(
        registry: &mut Registry,
        sent_types: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let sent = CounterByName::register(
            registry,
            "switchboard_messages_sent",
            "Frames queued to clients, by type; a delivery counts once per recipient",
            "type",
            sent_types,
        );
        let errors = CounterByLabel::register(
            registry,
            "switchboard_errors",
            "ERROR and RPC_ERROR frames sent, by code",
            "code",
        );
        let dropped = CounterByLabel::register(
            registry,
            "switchboard_dropped_deliveries",
            "Deliveries that did not reach a client, by reason",
            "reason",
        );
        // 50 µs .. ~1.6 s
        let delivery_latency = register(
            registry,
            "switchboard_delivery_latency_seconds",
            "Time from a publish on this pod to the delivery frame's write to a subscriber's socket",
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        );
        Self {
            sent,
            errors,
            dropped,
            delivery_latency,
        }
    }

    /// The counter of frames of `message_type`. Every type the server sends was
    /// registered at start-up; `None` would be a type the server never declared.
    pub fn sent_counter(&self, message_type: &str) -> Option<&Counter> {
        self.sent.get(message_type)
    }
}
