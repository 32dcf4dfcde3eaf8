//! `JetStreamHistory`: history shared by every replica, in one JetStream stream per app
//! (docs/RECOVERY.md, "On NATS").
//!
//! Subjects, with `P` = `<prefix>.<namespace>.<app>`:
//! - `P.s.<topic>`: the stream's subjects, one per history topic;
//! - `P.r.<topic>`: where the stream republishes each stored message, with its stream
//!   sequence (`Nats-Sequence`). Replicas deliver history topics from here, never from
//!   `P.t.<topic>` or `P.x.<topic>`. Both are written by servers only (JetStream
//!   itself republishes), so NATS permissions can keep backends off them.
//!
//! Offsets are stream sequences: strictly increasing per topic, not contiguous. What
//! makes recovery provable rather than assumed is a chain: every message is stored
//! with `Sb-Prev`, the sequence of the topic's previous message, and JetStream enforces
//! it (`Nats-Expected-Last-Subject-Sequence`), so two replicas publishing at once cannot
//! both claim the same predecessor. A recovery from offset N is served only if the
//! stored messages after N chain back to N; a live message whose `Sb-Prev` is not the
//! last one delivered reveals a gap, filled from the stream before it is delivered.
//!
//! Each history topic with local subscribers has one feed task. It alone adds and
//! removes the topic's local subscribers and fans out its messages, so a recovering
//! subscribe (read the stream up to the last delivered offset, queue ack and replay,
//! join) can never interleave with a live delivery: no gap, no duplicate.
//! Backends publish into history topics as into any topic, on `P.t.<topic>`: one
//! replica (a queue group) checks each such publish like any backend publish (its
//! headers, `Sb-Origin` included, change nothing) and
//! stores it in the chain, so it gets an offset and is recovered like the rest. Two
//! publishes may reach two replicas and be stored in either order; a backend that
//! sends each as a request gets `{"offset", "epoch"}` (or `{"error"}`) back once it is
//! stored, and keeps its order by waiting for the answer.
//! The epoch is the stream's creation time: it changes only when the stream (and so
//! every topic's history) is lost or recreated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use serde_json::json;
use switchboard_spec::{CompiledApp, HistorySettings, Topic, TopicPattern};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{NotRecovered, Page, PageQuery, Position, Publication, StoredFrame};
use crate::bus::Delivery;
use crate::bus::nats::{self as bus_nats, BackendCheck, NatsBus, Subjects, header};
use crate::bus::{BusRejectReason, BusSource};
use crate::handle::ConnectionHandle;
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Rejection, Since};
use crate::topics::TopicRegistry;

/// `Sb-Prev`: the stream sequence of the topic's previous message.
const PREV: &str = "Sb-Prev";
/// Set by JetStream on republished and directly read messages.
const SEQUENCE: &str = "Nats-Sequence";
/// On the end-of-batch marker of a batched direct get: messages left after the batch.
const NUM_PENDING: &str = "Nats-Num-Pending";
/// How long a direct read waits for the stream's answer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages asked for per batched read.
const BATCH: usize = 1000;
/// A publish that keeps meeting other publishers' messages gives up after this many
/// tries (each try learns the topic's new last sequence).
const PUBLISH_TRIES: usize = 16;
/// Remembered last sequences before the map is cleared (a bound, not a cache policy).
const LAST_KNOWN_MAX: usize = 100_000;

/// One message of the stream, as read back.
struct StoredMessage {
    sequence: u64,
    prev: Option<u64>,
    message_type: Arc<str>,
    exclude: Option<Arc<str>>,
    body: Bytes,
}

impl StoredMessage {
    fn from_parts(headers: Option<&HeaderMap>, body: Bytes) -> Option<Self> {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        Some(Self {
            sequence: header(SEQUENCE)?.parse().ok()?,
            prev: header(PREV).and_then(|p| p.parse().ok()),
            message_type: Arc::from(header(header::TYPE)?),
            exclude: header(header::EXCLUDE).map(Arc::from),
            body,
        })
    }

    /// Whether it outlived the rule's `ttlSeconds` (the stream keeps the longest ttl of
    /// the app's rules; each rule's own is applied here, by the publish timestamp).
    fn expired(&self, settings: HistorySettings) -> bool {
        StoredFrame::read(&self.body).is_some_and(|f| {
            protocol::now_ms().saturating_sub(f.meta.timestamp)
                >= u64::from(settings.ttl_seconds) * 1000
        })
    }

    /// The delivery frame, with offset and epoch (`None`: a body no replica wrote).
    fn publication(&self, topic: &Topic, epoch: &str) -> Option<Publication> {
        let frame = StoredFrame::read(&self.body)?;
        Some(Publication {
            offset: self.sequence,
            message_type: self.message_type.clone(),
            frame: frame.delivery(topic, self.sequence, epoch),
        })
    }
}

/// A subscribe for the feed to admit.
pub struct Join {
    pub handle: Arc<ConnectionHandle>,
    pub since: Option<Since>,
    pub correlation_id: Option<String>,
}

/// A publication waiting for its topic's publisher.
struct Job {
    message_type: Arc<str>,
    body: Bytes,
    exclude: Option<Arc<str>>,
    done: Box<dyn FnOnce(Result<Position, Rejection>) + Send>,
}

/// How long a topic's publisher task waits for more before it ends.
const PUBLISHER_IDLE: Duration = Duration::from_secs(10);

enum FeedEvent {
    Join(Join),
    Leave(Arc<str>),
}

pub struct JetStreamHistory {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    stream_name: String,
    config: stream::Config,
    /// The stream's epoch once it is in place; history answers UNAVAILABLE before.
    epoch: RwLock<Option<Arc<str>>>,
    feeds: Mutex<HashMap<Topic, mpsc::UnboundedSender<FeedEvent>>>,
    /// One publisher per topic with publications in flight: a topic's publications
    /// from this pod are stored one after the other, in the order they came, and never
    /// race each other for the same predecessor.
    publishers: Mutex<HashMap<Topic, mpsc::UnboundedSender<Job>>>,
    /// Each topic's last sequence as last seen here: the predecessor a publish claims.
    last_known: DashMap<Topic, u64>,
    registry: Arc<TopicRegistry>,
    metrics: Arc<Metrics>,
    instance: Arc<str>,
    recovery_limit: usize,
}

impl JetStreamHistory {
    /// Starts putting the app's stream in place (retried until it is; see
    /// [`JetStreamHistory::is_ready`]).
    pub fn start(
        client: async_nats::Client,
        app: &CompiledApp,
        config: stream::Config,
        registry: Arc<TopicRegistry>,
        metrics: Arc<Metrics>,
        instance: Arc<str>,
    ) -> Arc<Self> {
        let subjects = NatsBus::subjects_of(app);
        let stream_name = config.name.clone();
        let this = Arc::new(Self {
            js: jetstream::new(client.clone()),
            client,
            subjects,
            stream_name,
            config,
            epoch: RwLock::new(None),
            feeds: Mutex::new(HashMap::new()),
            publishers: Mutex::new(HashMap::new()),
            last_known: DashMap::new(),
            registry,
            metrics,
            instance,
            recovery_limit: app.spec.limits.max_recovery_publications as usize,
        });
        tokio::spawn(this.clone().keep_stream());
        let rules: Vec<(TopicPattern, bool)> = app
            .topics
            .iter()
            .map(|t| (t.pattern.clone(), t.history.is_some()))
            .collect();
        tokio::spawn(this.clone().ingest(rules, BackendCheck::new(app)));
        this
    }

    /// Creates or updates the stream until it works. Two replicas doing it at once
    /// agree (the same config is idempotent); a change JetStream cannot make (say,
    /// another app's stream on these subjects) is logged with what to do, and retried.
    async fn keep_stream(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            match self.js.create_or_update_stream(self.config.clone()).await {
                Ok(info) => {
                    let epoch: Arc<str> =
                        Arc::from(format!("{:x}", info.created.unix_timestamp_nanos()));
                    info!(stream = %self.stream_name, %epoch, "history stream in place");
                    if let Ok(mut e) = self.epoch.write() {
                        *e = Some(epoch);
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(12) {
                        warn!(stream = %self.stream_name, error = %e,
                            "cannot put the history stream in place (is JetStream enabled on the NATS server?); history topics answer UNAVAILABLE until it is, retrying every 5 s");
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    /// Stores backends' publishes into history topics (see the module docs). `rules`:
    /// every topic rule's pattern and whether it keeps history, in spec order.
    async fn ingest(self: Arc<Self>, rules: Vec<(TopicPattern, bool)>, backends: BackendCheck) {
        let queue = format!("{}.history-ingest", self.subjects.base());
        let mut subscriptions = Vec::new();
        for (pattern, _) in rules.iter().filter(|(_, history)| *history) {
            let subject = self.subjects.topics_matching(pattern);
            match self
                .client
                .queue_subscribe(subject.clone(), queue.clone())
                .await
            {
                Ok(sub) => subscriptions.push(sub),
                Err(e) => warn!(%subject, error = %e, "cannot take backend publishes into history"),
            }
        }
        let mut publishes = futures_util::stream::select_all(subscriptions);
        while let Some(msg) = publishes.next().await {
            let Some(topic) = self.subjects.topic_of(msg.subject.as_str()) else {
                continue;
            };
            // The first rule governing the topic decides, as for clients.
            let governed = rules.iter().find(|(p, _)| p.captures(&topic).is_some());
            if !governed.is_some_and(|(_, history)| *history) {
                continue;
            }
            self.metrics.bus.received.inc(BusSource::Backend);
            let user = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(header::USER))
                .map(|v| v.as_str().to_owned());
            let reply = msg.reply.clone();
            let (message_type, body) = match backends.frame(&topic, &msg.payload, user.as_deref()) {
                Ok(checked) => checked,
                Err(reason) => {
                    bus_nats::note_rejection(
                        &self.metrics,
                        &topic,
                        reason,
                        "dropped a backend publish",
                    );
                    if let Some(reply) = reply {
                        let answer = json!({"error": reason.as_str()});
                        let _ = self
                            .client
                            .publish(reply, Bytes::from(answer.to_string()))
                            .await;
                    }
                    continue;
                }
            };
            let metrics = self.metrics.clone();
            let client = self.client.clone();
            let failed_topic = topic.clone();
            self.publish(topic, message_type, body, None, move |stored| {
                let answer = match &stored {
                    Ok(position) => json!({"offset": position.offset, "epoch": &*position.epoch}),
                    Err(r) => {
                        metrics.bus.rejected.inc(BusRejectReason::NotStored);
                        warn!(topic = %failed_topic, error = %r.message, "a backend publish into a history topic could not be stored");
                        json!({"error": BusRejectReason::NotStored.as_str()})
                    }
                };
                if let Some(reply) = reply {
                    tokio::spawn(async move {
                        let _ = client.publish(reply, Bytes::from(answer.to_string())).await;
                    });
                }
            });
        }
    }

    pub fn is_ready(&self) -> bool {
        self.current_epoch().is_some()
    }

    fn current_epoch(&self) -> Option<Arc<str>> {
        self.epoch.read().ok().and_then(|e| e.clone())
    }

    fn unavailable() -> Rejection {
        Rejection::new(
            ErrorCode::Unavailable,
            "history is not available yet: the JetStream stream is not in place",
        )
    }

    /// Stores a publication (`body`: its frame without offset), claiming the topic's
    /// last message as its predecessor; `done` gets the position it was stored at.
    pub fn publish(
        self: &Arc<Self>,
        topic: Topic,
        message_type: Arc<str>,
        body: Bytes,
        exclude: Option<Arc<str>>,
        done: impl FnOnce(Result<Position, Rejection>) + Send + 'static,
    ) {
        let job = Job {
            message_type,
            body,
            exclude,
            done: Box::new(done),
        };
        let mut publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
        let tx = publishers.entry(topic.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().publisher(topic, rx));
            tx
        });
        let _ = tx.send(job);
    }

    /// Stores a topic's publications in order; ends when idle.
    async fn publisher(self: Arc<Self>, topic: Topic, mut rx: mpsc::UnboundedReceiver<Job>) {
        loop {
            match tokio::time::timeout(PUBLISHER_IDLE, rx.recv()).await {
                Ok(Some(job)) => {
                    let result = self
                        .store(&topic, &job.message_type, job.body, job.exclude)
                        .await;
                    (job.done)(result);
                }
                Ok(None) => return,
                Err(_) => {
                    let mut publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
                    if rx.is_empty() {
                        publishers.remove(&topic);
                        return;
                    }
                }
            }
        }
    }

    async fn store(
        &self,
        topic: &Topic,
        message_type: &str,
        body: Bytes,
        exclude: Option<Arc<str>>,
    ) -> Result<Position, Rejection> {
        let epoch = self.current_epoch().ok_or_else(Self::unavailable)?;
        let subject = self.subjects.history(topic);
        for _ in 0..PUBLISH_TRIES {
            let prev = match self.last_known.get(topic).map(|l| *l) {
                Some(prev) => prev,
                None => self.last_sequence(&subject).await.map_err(|e| {
                    Rejection::new(ErrorCode::Unavailable, format!("history read failed: {e}"))
                })?,
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGIN, &*self.instance);
            headers.insert(header::TYPE, message_type);
            headers.insert(PREV, prev.to_string().as_str());
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                prev.to_string().as_str(),
            );
            if let Some(exclude) = &exclude {
                headers.insert(header::EXCLUDE, &**exclude);
            }
            let acked = match self
                .js
                .publish_with_headers(subject.clone(), headers, body.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => {
                    self.remember(topic, ack.sequence);
                    return Ok(Position {
                        offset: ack.sequence,
                        epoch,
                    });
                }
                // Another publisher got there first: learn the new last one, try again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.last_known.remove(topic);
                }
                Err(e) => {
                    self.metrics.bus.publish_failures.inc();
                    return Err(Rejection::new(
                        ErrorCode::Unavailable,
                        format!("the publication could not be stored: {e}"),
                    ));
                }
            }
        }
        Err(Rejection::new(
            ErrorCode::Aborted,
            "the topic is too busy: the publication could not be stored, try again",
        ))
    }

    fn remember(&self, topic: &Topic, sequence: u64) {
        if self.last_known.len() >= LAST_KNOWN_MAX {
            self.last_known.clear();
        }
        self.last_known
            .entry(topic.clone())
            .and_modify(|l| *l = (*l).max(sequence))
            .or_insert(sequence);
    }

    /// Hands a subscribe to the topic's feed (started if this is its first).
    pub fn join(self: &Arc<Self>, topic: &Topic, settings: HistorySettings, join: Join) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let tx = feeds.entry(topic.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().feed(topic.clone(), settings, rx));
            tx
        });
        let _ = tx.send(FeedEvent::Join(join));
    }

    /// The connection no longer holds `topic`.
    pub fn leave(&self, topic: &Topic, connection_id: &Arc<str>) {
        let feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = feeds.get(topic) {
            let _ = tx.send(FeedEvent::Leave(connection_id.clone()));
        }
    }

    /// One topic's feed: see the module docs.
    async fn feed(
        self: Arc<Self>,
        topic: Topic,
        settings: HistorySettings,
        mut rx: mpsc::UnboundedReceiver<FeedEvent>,
    ) {
        let live_subject = self.subjects.republished(&topic);
        let stored_subject = self.subjects.history(&topic);
        // Subscribed (and confirmed) before the position is read: whatever is stored
        // after it reaches this subscription.
        let mut live = loop {
            match self.client.subscribe(live_subject.clone()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    warn!(%topic, error = %e, "cannot subscribe to the history feed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        bus_nats::round_trip(&self.client).await;
        let mut feed = Feed {
            topic: topic.clone(),
            subject: stored_subject,
            settings,
            last: 0,
        };
        loop {
            match (
                self.current_epoch(),
                self.last_sequence(&feed.subject).await,
            ) {
                (Some(_), Ok(last)) => {
                    feed.last = last;
                    break;
                }
                (_, Err(e)) => debug!(%topic, error = %e, "history feed waits for the stream"),
                (None, _) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.remember(&topic, feed.last);
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(FeedEvent::Join(join)) => self.admit(&mut feed, join).await,
                    Some(FeedEvent::Leave(id)) => {
                        self.registry.unsubscribe(&topic, &id);
                        if self.registry.subscriber_count(&topic) == 0 {
                            let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
                            if rx.is_empty() {
                                feeds.remove(&topic);
                                return;
                            }
                        }
                    }
                    None => return,
                },
                msg = live.next() => match msg {
                    Some(msg) => self.live(&mut feed, msg).await,
                    None => {
                        warn!(%topic, "history feed subscription ended");
                        return;
                    }
                },
            }
        }
    }

    /// A message republished by the stream: delivered after any gap before it is filled.
    async fn live(&self, feed: &mut Feed, msg: async_nats::Message) {
        let Some(stored) = StoredMessage::from_parts(msg.headers.as_ref(), msg.payload) else {
            return;
        };
        if stored.sequence <= feed.last {
            return; // already delivered by a catch-up
        }
        if let Some(prev) = stored.prev
            && prev > feed.last
        {
            self.catch_up(feed, prev).await;
        }
        self.deliver(feed, &stored);
    }

    /// Delivers what the stream holds after `feed.last` up to `to`, in order.
    async fn catch_up(&self, feed: &mut Feed, to: u64) {
        while feed.last < to {
            let batch = match self.read_after(&feed.subject, feed.last, BATCH).await {
                Ok((batch, _)) => batch,
                Err(e) => {
                    warn!(topic = %feed.topic, error = %e, "cannot fill a gap in the history feed");
                    return;
                }
            };
            let before = feed.last;
            for stored in batch.iter().filter(|s| s.sequence <= to) {
                self.deliver(feed, stored);
            }
            if feed.last == before {
                return; // nothing more is stored up to `to`
            }
        }
    }

    fn deliver(&self, feed: &mut Feed, stored: &StoredMessage) {
        feed.last = stored.sequence;
        self.remember(&feed.topic, stored.sequence);
        let Some(epoch) = self.current_epoch() else {
            return;
        };
        let Some(publication) = stored.publication(&feed.topic, &epoch) else {
            return;
        };
        self.registry.fan_out(&Delivery {
            topic: feed.topic.clone(),
            message_type: publication.message_type,
            frame: publication.frame,
            exclude: stored.exclude.clone(),
            published_at: Instant::now(),
        });
    }

    /// Queues the subscribe's ack and replay, then adds the subscriber: live messages
    /// after `feed.last` follow.
    async fn admit(&self, feed: &mut Feed, join: Join) {
        let Some(epoch) = self.current_epoch() else {
            join.handle.refuse(
                protocol::ERROR_TYPE,
                join.correlation_id.as_deref(),
                &Self::unavailable(),
            );
            return;
        };
        let recovery = match &join.since {
            Some(since) => Some(self.missed(feed, since, &epoch).await),
            None => None,
        };
        let mut answer = json!({
            "topic": feed.topic.as_str(),
            "offset": feed.last,
            "epoch": &*epoch,
        });
        match &recovery {
            Some(Ok(_)) => answer["recovered"] = json!(true),
            Some(Err(reason)) => {
                answer["recovered"] = json!(false);
                answer["reason"] = json!(reason.as_str());
            }
            None => {}
        }
        if let Some(recovery) = &recovery {
            self.metrics.history.count(recovery);
        }
        if join.correlation_id.is_some() || join.since.is_some() {
            join.handle
                .reply(protocol::ACK_TYPE, join.correlation_id.as_deref(), &answer);
        }
        if let Some(Ok(missed)) = &recovery {
            join.handle.replay(missed);
        }
        self.registry.subscribe(&feed.topic, &join.handle);
    }

    /// What a subscribe recovering from `since` missed, up to `feed.last`, proven by
    /// the chain of `Sb-Prev`.
    async fn missed(
        &self,
        feed: &mut Feed,
        since: &Since,
        epoch: &str,
    ) -> Result<Vec<Publication>, NotRecovered> {
        if *since.epoch != *epoch {
            return Err(NotRecovered::Epoch);
        }
        if since.offset > feed.last {
            // The client saw, on another replica, what has not reached this feed yet.
            self.catch_up(feed, since.offset).await;
            if feed.last != since.offset {
                return Err(NotRecovered::Epoch);
            }
        }
        let mut missed = Vec::new();
        let mut prev = since.offset;
        while prev < feed.last {
            let want = (self.recovery_limit + 1 - missed.len()).min(BATCH);
            let (batch, pending) = self
                .read_after(&feed.subject, prev, want)
                .await
                .map_err(|_| NotRecovered::Epoch)?;
            let Some(first) = batch.first() else {
                return Err(NotRecovered::Expired);
            };
            if first.prev != Some(prev) {
                // What followed `since` is gone: cut by size, or aged out.
                let stored = batch.len() as u64 + pending;
                return Err(if stored >= u64::from(feed.settings.size) {
                    NotRecovered::Trimmed
                } else {
                    NotRecovered::Expired
                });
            }
            for stored in batch.iter().take_while(|s| s.sequence <= feed.last) {
                if stored.prev != Some(prev) {
                    return Err(NotRecovered::Trimmed);
                }
                if stored.expired(feed.settings) {
                    return Err(NotRecovered::Expired);
                }
                prev = stored.sequence;
                if let Some(p) = stored.publication(&feed.topic, epoch) {
                    missed.push(p);
                }
                if missed.len() > self.recovery_limit {
                    return Err(NotRecovered::Limit);
                }
            }
        }
        if missed.len() > feed.settings.size as usize {
            return Err(NotRecovered::Trimmed);
        }
        Ok(missed)
    }

    /// A page of the topic's history (`settings.size` newest at most, as the rule keeps).
    pub async fn read(
        &self,
        topic: &Topic,
        settings: HistorySettings,
        query: PageQuery,
    ) -> Result<Page, Rejection> {
        let epoch = self.current_epoch().ok_or_else(Self::unavailable)?;
        let subject = self.subjects.history(topic);
        let failed =
            |e: String| Rejection::new(ErrorCode::Unavailable, format!("history read failed: {e}"));
        let last = self.last_sequence(&subject).await.map_err(failed)?;
        let mut all = Vec::new();
        let mut after = query.since.unwrap_or(0);
        loop {
            let (batch, pending) = self
                .read_after(&subject, after, BATCH)
                .await
                .map_err(failed)?;
            let Some(tail) = batch.last() else { break };
            after = tail.sequence;
            all.extend(
                batch
                    .iter()
                    .filter(|s| s.sequence <= last && !s.expired(settings))
                    .filter_map(|s| s.publication(topic, &epoch)),
            );
            if pending == 0 || after >= last {
                break;
            }
        }
        let keep = all.len().saturating_sub(settings.size as usize);
        Ok(Page {
            position: Position {
                offset: last,
                epoch,
            },
            publications: query.select(all[keep..].iter()),
        })
    }

    /// The topic's last stored sequence (0: nothing stored).
    async fn last_sequence(&self, subject: &str) -> Result<u64, String> {
        let replies = self
            .direct_get(json!({"last_by_subj": subject}), false)
            .await?;
        Ok(replies.0.first().map_or(0, |m| m.sequence))
    }

    /// Up to `max` stored messages of `subject` after sequence `after`, oldest first,
    /// and how many more are stored after them: one batched direct get (one round
    /// trip, where async-nats would take one per message).
    async fn read_after(
        &self,
        subject: &str,
        after: u64,
        max: usize,
    ) -> Result<(Vec<StoredMessage>, u64), String> {
        self.direct_get(
            json!({"seq": after + 1, "next_by_subj": subject, "batch": max.max(1)}),
            true,
        )
        .await
    }

    /// `$JS.API.DIRECT.GET.<stream>`. A batch ends with a 204 marker carrying the
    /// pending count; a single answer is one message; 404 is "none".
    async fn direct_get(
        &self,
        request: serde_json::Value,
        batch: bool,
    ) -> Result<(Vec<StoredMessage>, u64), String> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream_name),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Err("the reply subscription ended".into()),
                Err(_) => return Err("JetStream did not answer a history read in time".into()),
            };
            match msg.status.map(|s| s.as_u16()) {
                Some(404) => return Ok((out, 0)),
                Some(204) => {
                    let pending = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(NUM_PENDING))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                    return Ok((out, pending));
                }
                Some(code) if code >= 300 => {
                    return Err(format!("JetStream answered {code} {:?}", msg.description));
                }
                _ => {
                    if let Some(stored) =
                        StoredMessage::from_parts(msg.headers.as_ref(), msg.payload)
                    {
                        out.push(stored);
                    }
                    if !batch {
                        return Ok((out, 0));
                    }
                }
            }
        }
    }
}

/// A feed's place in its topic.
struct Feed {
    topic: Topic,
    subject: String,
    settings: HistorySettings,
    /// The last sequence delivered to this pod's subscribers.
    last: u64,
}
