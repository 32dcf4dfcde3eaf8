//! `TopicHistory`: history kept in this process's memory, per topic, bounded by `size`
//! and `ttlSeconds` (docs/RECOVERY.md). For one replica without NATS.
//!
//! Each topic has one `TopicLog` behind one lock. Everything that must be ordered
//! against publications happens under that lock: a publish takes the next offset,
//! stores the frame and fans it out; a subscribe reads the position (and, recovering,
//! the publications it missed), queues its ack and replay, and joins the subscribers.
//! So a publication is either in a subscriber's replay or in its live stream, never in
//! both and never in neither, however publishes and subscribes interleave.
//!
//! Offsets count from 1 per topic. An epoch names one life of a topic's log: it is
//! this process's random start id plus the log's generation, so it changes when the
//! process restarts (memory is lost) and when a forgotten log is started again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use switchboard_spec::{HistorySettings, Topic};

use super::{NotRecovered, Page, PageQuery, Position, Publication, Subscribed};
use crate::protocol::Since;

/// One stored publication and when it was stored (for `ttlSeconds`).
struct Stored {
    publication: Publication,
    stored_at: Instant,
}

/// One topic's log.
struct TopicLog {
    epoch: Arc<str>,
    last: u64,
    entries: VecDeque<Stored>,
    /// Highest offset dropped for `size`, and for `ttlSeconds`.
    trimmed_through: u64,
    expired_through: u64,
    settings: HistorySettings,
    /// When anything last happened: an idle, empty log is forgotten by [`TopicHistory::sweep`].
    touched: Instant,
}

impl TopicLog {
    fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.settings.ttl_seconds))
    }

    /// Drops what outlived the ttl.
    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl();
        while let Some(oldest) = self.entries.front() {
            if now.duration_since(oldest.stored_at) < ttl {
                break;
            }
            self.expired_through = oldest.publication.offset;
            self.entries.pop_front();
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.last,
            epoch: self.epoch.clone(),
        }
    }

    /// The stored frames after `since`, or why they cannot all be had.
    fn after(&self, since: &Since, limit: usize) -> Result<Vec<Publication>, NotRecovered> {
        if *since.epoch != *self.epoch || since.offset > self.last {
            return Err(NotRecovered::Epoch);
        }
        let first_missed = since.offset + 1;
        let oldest = self
            .entries
            .front()
            .map_or(self.last + 1, |e| e.publication.offset);
        if first_missed < oldest {
            return Err(if first_missed <= self.expired_through {
                NotRecovered::Expired
            } else {
                NotRecovered::Trimmed
            });
        }
        let missed = (self.last - since.offset) as usize;
        if missed > limit {
            return Err(NotRecovered::Limit);
        }
        let skip = self.entries.len() - missed;
        Ok(self
            .entries
            .iter()
            .skip(skip)
            .map(|e| e.publication.clone())
            .collect())
    }
}

pub struct TopicHistory {
    /// This process's start id: the first half of every epoch.
    start_id: String,
    generation: AtomicU64,
    logs: DashMap<Topic, Arc<Mutex<TopicLog>>>,
}

impl Default for TopicHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl TopicHistory {
    pub fn new() -> Self {
        Self {
            start_id: format!("{:08x}", rand::random::<u32>()),
            generation: AtomicU64::new(0),
            logs: DashMap::new(),
        }
    }

    fn log(&self, topic: &Topic, settings: HistorySettings) -> Arc<Mutex<TopicLog>> {
        if let Some(log) = self.logs.get(topic) {
            return log.clone();
        }
        self.logs
            .entry(topic.clone())
            .or_insert_with(|| {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                Arc::new(Mutex::new(TopicLog {
                    epoch: Arc::from(format!("{}-{generation}", self.start_id)),
                    last: 0,
                    entries: VecDeque::new(),
                    trimmed_through: 0,
                    expired_through: 0,
                    settings,
                    touched: Instant::now(),
                }))
            })
            .clone()
    }

    fn lock(log: &Mutex<TopicLog>) -> MutexGuard<'_, TopicLog> {
        // A panic under this lock leaves at worst one publication unstored; serving
        // the rest beats losing the topic.
        log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a publication: `encode` builds its frame from the offset and epoch it was
    /// given, `deliver` fans it out, both under the topic's lock (see the module docs).
    /// Returns the offset it was given.
    pub fn publish(
        &self,
        topic: &Topic,
        settings: HistorySettings,
        message_type: &Arc<str>,
        encode: impl FnOnce(u64, &str) -> Bytes,
        deliver: impl FnOnce(Bytes),
    ) -> Position {
        let log = self.log(topic, settings);
        let mut log = Self::lock(&log);
        let now = Instant::now();
        log.settings = settings;
        log.touched = now;
        log.expire(now);
        log.last += 1;
        let offset = log.last;
        let frame = encode(offset, &log.epoch);
        log.entries.push_back(Stored {
            publication: Publication {
                offset,
                message_type: message_type.clone(),
                frame: frame.clone(),
            },
            stored_at: now,
        });
        while log.entries.len() > settings.size as usize {
            if let Some(dropped) = log.entries.pop_front() {
                log.trimmed_through = dropped.publication.offset;
            }
        }
        deliver(frame);
        log.position()
    }

    /// Reads the position (and with `since`, at most `limit` missed publications), then
    /// runs `join` with what it found, under the topic's lock: `join` queues the ack and
    /// the replay and adds the subscriber, so no publication slips in between.
    pub fn subscribe<T>(
        &self,
        topic: &Topic,
        settings: HistorySettings,
        since: Option<&Since>,
        limit: usize,
        join: impl FnOnce(Subscribed) -> T,
    ) -> T {
        let log = self.log(topic, settings);
        let mut log = Self::lock(&log);
        let now = Instant::now();
        log.touched = now;
        log.expire(now);
        let recovery = since.map(|since| log.after(since, limit));
        join(Subscribed {
            position: log.position(),
            recovery,
        })
    }

    /// A page of stored publications, oldest first.
    pub fn read(&self, topic: &Topic, settings: HistorySettings, query: PageQuery) -> Page {
        let log = self.log(topic, settings);
        let mut log = Self::lock(&log);
        let now = Instant::now();
        log.touched = now;
        log.expire(now);
        let publications = query.select(log.entries.iter().map(|e| &e.publication));
        Page {
            position: log.position(),
            publications,
        }
    }

    /// Forgets logs with nothing stored and nothing done for `idle`: memory is bounded
    /// by the topics in use, not by every topic ever published to. A forgotten topic
    /// starts again under a new epoch, so a client recovering from it is told `epoch`.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.logs.retain(|_, log| {
            let mut log = Self::lock(log);
            log.expire(now);
            !log.entries.is_empty() || now.duration_since(log.touched) < idle.max(log.ttl())
        });
    }

    pub fn topics(&self) -> usize {
        self.logs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::parse("room:a").unwrap_or_else(|e| panic!("{e}"))
    }

    const SETTINGS: HistorySettings = HistorySettings {
        size: 3,
        ttl_seconds: 60,
    };

    fn publish(h: &TopicHistory, n: u64) {
        for _ in 0..n {
            h.publish(
                &topic(),
                SETTINGS,
                &Arc::from("T"),
                |o, _| Bytes::from(o.to_string()),
                |_| {},
            );
        }
    }

    fn recover(h: &TopicHistory, offset: u64, epoch: &str) -> Result<Vec<Bytes>, NotRecovered> {
        let since = Since {
            offset,
            epoch: epoch.to_owned(),
        };
        h.subscribe(&topic(), SETTINGS, Some(&since), 2, |s| s.recovery)
            .unwrap_or(Err(NotRecovered::Epoch))
            .map(|stored| stored.into_iter().map(|s| s.frame).collect())
    }

    #[test]
    fn recovery_replays_what_was_missed_or_says_why_not() {
        let h = TopicHistory::new();
        publish(&h, 2);
        let epoch = h.subscribe(&topic(), SETTINGS, None, 2, |s| {
            assert_eq!(s.position.offset, 2);
            assert!(s.recovery.is_none());
            s.position.epoch
        });
        assert_eq!(recover(&h, 2, &epoch), Ok(vec![]));
        assert_eq!(recover(&h, 1, &epoch), Ok(vec![Bytes::from("2")]));
        assert_eq!(
            recover(&h, 0, &epoch),
            Ok(vec![Bytes::from("1"), Bytes::from("2")])
        );
        assert_eq!(recover(&h, 1, "other"), Err(NotRecovered::Epoch));
        assert_eq!(recover(&h, 9, &epoch), Err(NotRecovered::Epoch));
        publish(&h, 3); // 5 published, 3 kept: 3, 4, 5
        assert_eq!(recover(&h, 1, &epoch), Err(NotRecovered::Trimmed));
        assert_eq!(recover(&h, 2, &epoch), Err(NotRecovered::Limit));
        assert_eq!(
            recover(&h, 3, &epoch),
            Ok(vec![Bytes::from("4"), Bytes::from("5")])
        );
    }

    #[test]
    fn pages_are_oldest_first_and_bounded() {
        let h = TopicHistory::new();
        publish(&h, 3);
        let offsets = |q: PageQuery| -> Vec<u64> {
            h.read(&topic(), SETTINGS, q)
                .publications
                .iter()
                .map(|p| p.offset)
                .collect()
        };
        let q = |before, since, limit| PageQuery {
            before,
            since,
            limit,
        };
        assert_eq!(offsets(q(None, None, 2)), [2, 3]);
        assert_eq!(offsets(q(Some(3), None, 1)), [2]);
        assert_eq!(offsets(q(None, Some(1), 1)), [2]);
        assert_eq!(offsets(q(Some(3), Some(0), 5)), [1, 2]);
    }
}
