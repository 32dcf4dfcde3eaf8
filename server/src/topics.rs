//! `TopicRegistry`: which local connections are subscribed to which topic.
//!
//! Each topic maps to an immutable snapshot of its subscribers. Fan-out clones the
//! snapshot pointer and pushes to every queue without holding any lock; subscribe and
//! unsubscribe build a new snapshot. Publishing, the frequent operation, never waits
//! for a subscription change, and the map is sharded so unrelated topics never contend.

use std::sync::Arc;

use dashmap::DashMap;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use switchboard_ops::metrics::register;
use switchboard_spec::Topic;

use bytes::Bytes;

use crate::bus::Delivery;
use crate::deflate;
use crate::handle::ConnectionHandle;
use crate::metrics::Metrics;
use crate::trace::SPAN_TARGET;

type Subscribers = Arc<[Arc<ConnectionHandle>]>;

pub struct TopicRegistry {
    topics: DashMap<Topic, Subscribers>,
    metrics: Arc<Metrics>,
}

impl TopicRegistry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            topics: DashMap::new(),
            metrics,
        }
    }

    /// Adds a subscriber (once: a second subscribe of the same connection is a no-op).
    /// The bus learns separately (`Bus::topic_active`) and re-reads the count itself.
    pub fn subscribe(&self, topic: &Topic, handle: &Arc<ConnectionHandle>) {
        let mut first = false;
        let mut entry = self.topics.entry(topic.clone()).or_insert_with(|| {
            first = true;
            Arc::from(Vec::new())
        });
        if entry.iter().any(|h| h.id == handle.id) {
            return;
        }
        let mut next: Vec<_> = entry.iter().cloned().collect();
        next.push(handle.clone());
        *entry = Arc::from(next);
        self.metrics.topics.subscriptions.inc();
        if first {
            self.metrics.topics.topics.inc();
        }
    }

    /// Removes a subscriber. Returns true when it was the topic's last local subscriber.
    pub fn unsubscribe(&self, topic: &Topic, connection_id: &str) -> bool {
        let mut removed = false;
        let emptied = self
            .topics
            .remove_if_mut(topic, |_, subs| {
                if subs.iter().any(|h| &*h.id == connection_id) {
                    removed = true;
                    let next: Vec<_> = subs
                        .iter()
                        .filter(|h| &*h.id != connection_id)
                        .cloned()
                        .collect();
                    *subs = Arc::from(next);
                }
                subs.is_empty()
            })
            .is_some();
        if removed {
            self.metrics.topics.subscriptions.dec();
        }
        if emptied {
            self.metrics.topics.topics.dec();
        }
        emptied
    }

    /// Pushes the delivery's bytes to every local subscriber's queue. Returns how many
    /// queued it.
    pub fn fan_out(&self, delivery: &Delivery) -> usize {
        let Some(subscribers) = self.topics.get(&delivery.topic).map(|s| s.clone()) else {
            return 0;
        };
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "deliver",
            topic = %delivery.topic,
            recipients = tracing::field::Empty,
            dropped = tracing::field::Empty,
        );
        let _entered = span.enter();
        // Resolved once for every recipient of this delivery.
        let sent = self.metrics.outbound.sent_counter(&delivery.message_type);
        let (mut queued, mut dropped) = (0, 0);
        // Compressed at the first recipient that wants it, and shared by the rest.
        let mut deflated: Option<Bytes> = None;
        for handle in subscribers.iter() {
            if delivery
                .exclude
                .as_deref()
                .is_some_and(|id| id == &*handle.id)
            {
                continue;
            }
            let (frame, compressed) = match handle.deflate {
                Some(out) if out.wants(delivery.frame.len()) => {
                    let frame = deflated.get_or_insert_with(|| {
                        deflate::compress(&delivery.frame, &self.metrics.deflate)
                    });
                    (&*frame, true)
                }
                _ => (&delivery.frame, false),
            };
            if handle.deliver(frame, compressed, delivery.published_at, sent) {
                queued += 1;
            } else {
                dropped += 1;
            }
        }
        span.record("recipients", queued);
        span.record("dropped", dropped);
        self.metrics.topics.fanout_recipients.observe(queued as f64);
        queued
    }

    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |s| s.len())
    }
}

/// Subscriptions held here and how wide each delivery fans out.
pub struct TopicMetrics {
    pub subscriptions: Gauge,
    pub topics: Gauge,
    pub fanout_recipients: Histogram,
}

impl TopicMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let subscriptions = register(
            registry,
            "switchboard_subscriptions",
            "Topic subscriptions held by local connections",
            Gauge::default(),
        );
        let topics = register(
            registry,
            "switchboard_topics",
            "Topics with at least one local subscriber",
            Gauge::default(),
        );
        let fanout_recipients = register(
            registry,
            "switchboard_fanout_recipients",
            "Local recipients of one topic delivery",
            Histogram::new(exponential_buckets(1.0, 4.0, 10)),
        );
        Self {
            subscriptions,
            topics,
            fanout_recipients,
        }
    }
}
