//! `PresenceReplica`: presence across replicas on NATS (docs/RECOVERY.md, "Presence").
//!
//! Each pod keeps its own members ([`crate::presence::Presence`]) and tells the others
//! on `<prefix>.<namespace>.<app>.presence`, batched: member changes and join/leave
//! events go out at most every [`FLUSH_EVERY`], never one message per connection event,
//! and nothing is written to a store. A pod also sends a lease every half
//! `heartbeat.intervalSeconds` and its whole membership every `SNAPSHOT_EVERY`
//! leases (and when a new pod asks, at its start): a lost delta heals by itself. A pod
//! not heard from for a whole heartbeat interval is dead: its members are dropped, with
//! leave events, between one and one and a half intervals after its last lease.
//!
//! Join and leave events are decided on the member's pod and shown by every pod to its
//! own subscribers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_spec::Topic;
use tracing::{debug, warn};

use crate::actions::presence::announce;
use crate::presence::Event;
use crate::state::AppState;

/// How often batched member changes and events are sent.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Every this many leases, the lease is a whole snapshot.
const SNAPSHOT_EVERY: u32 = 10;
/// Entries per message: snapshots of big pods go out in parts.
const CHUNK: usize = 1000;

/// (topic, connectionId, userId)
type Member = (String, String, String);

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Body {
    /// Members that joined and left, and the events their pod announced.
    Delta {
        joins: Vec<Member>,
        leaves: Vec<(String, String)>,
        events: Vec<WireEvent>,
    },
    /// The sender is alive.
    Lease,
    /// The sender's members; `reset` on the first part replaces what was known.
    Snapshot { reset: bool, members: Vec<Member> },
    /// The sender just started: everyone sends a snapshot.
    Sync,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct WireEvent {
    topic: String,
    join: bool,
    connection_id: String,
    user_id: String,
}

#[derive(Serialize, Deserialize, Debug)]
struct Wire {
    instance: String,
    #[serde(flatten)]
    body: Body,
}

#[derive(Default)]
struct Outbox {
    joins: Vec<Member>,
    leaves: Vec<(String, String)>,
    events: Vec<WireEvent>,
    /// Another pod asked for a snapshot.
    snapshot_asked: bool,
}

/// What this pod knows of another's members.
struct Pod {
    seen: Instant,
    members: HashMap<Topic, BTreeMap<Arc<str>, Arc<str>>>,
}

pub struct PresenceReplica {
    client: async_nats::Client,
    subject: String,
    instance: Arc<str>,
    /// A pod silent this long is dead.
    lease: Duration,
    outbox: Mutex<Outbox>,
    pods: Mutex<HashMap<Arc<str>, Pod>>,
}

impl PresenceReplica {
    /// Starts replicating `state`'s presence (held weakly: the tasks end with it).
    pub fn start(client: async_nats::Client, subject: String, state: &Arc<AppState>) -> Arc<Self> {
        let interval = state.app.spec.heartbeat.interval_seconds;
        let lease = Duration::from_secs(u64::from(if interval == 0 { 25 } else { interval }));
        let this = Arc::new(Self {
            client,
            subject,
            instance: state.instance.clone(),
            lease,
            outbox: Mutex::new(Outbox::default()),
            pods: Mutex::new(HashMap::new()),
        });
        tokio::spawn(this.clone().receive(Arc::downgrade(state)));
        tokio::spawn(this.clone().tick(Arc::downgrade(state)));
        this
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Pod>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn joined(&self, topic: &Topic, connection_id: &str, user_id: &str) {
        self.outbox().joins.push((
            topic.as_str().to_owned(),
            connection_id.to_owned(),
            user_id.to_owned(),
        ));
    }

    pub fn left(&self, topic: &Topic, connection_id: &str) {
        self.outbox()
            .leaves
            .push((topic.as_str().to_owned(), connection_id.to_owned()));
    }

    /// An event this pod announced, for the other pods' subscribers.
    pub fn announced(&self, topic: &Topic, event: &Event) {
        self.outbox().events.push(WireEvent {
            topic: topic.as_str().to_owned(),
            join: event.join,
            connection_id: event.connection_id.to_string(),
            user_id: event.user_id.to_string(),
        });
    }

    /// The topic's members on other pods.
    pub fn remote(&self, topic: &Topic) -> Vec<(Arc<str>, Arc<str>)> {
        self.pods()
            .values()
            .filter_map(|pod| pod.members.get(topic))
            .flat_map(|m| m.iter().map(|(c, u)| (c.clone(), u.clone())))
            .collect()
    }

    fn has_user_elsewhere(&self, topic: &Topic, user_id: &str) -> bool {
        self.pods().values().any(|pod| {
            pod.members
                .get(topic)
                .is_some_and(|m| m.values().any(|u| &**u == user_id))
        })
    }

    async fn send(&self, body: Body) {
        let wire = Wire {
            instance: self.instance.to_string(),
            body,
        };
        match serde_json::to_vec(&wire) {
            Ok(bytes) => {
                if let Err(e) = self
                    .client
                    .publish(self.subject.clone(), Bytes::from(bytes))
                    .await
                {
                    debug!(error = %e, "presence publish failed");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode a presence message"),
        }
    }

    async fn send_snapshot(&self, state: &AppState) {
        let members: Vec<Member> = state
            .presence
            .snapshot()
            .into_iter()
            .map(|(t, c, u)| (t.as_str().to_owned(), c.to_string(), u.to_string()))
            .collect();
        if members.is_empty() {
            self.send(Body::Snapshot {
                reset: true,
                members,
            })
            .await;
            return;
        }
        for (i, part) in members.chunks(CHUNK).enumerate() {
            self.send(Body::Snapshot {
                reset: i == 0,
                members: part.to_vec(),
            })
            .await;
        }
    }

    /// Flushes the outbox, sends leases and snapshots, and forgets dead pods.
    async fn tick(self: Arc<Self>, state: Weak<AppState>) {
        self.send(Body::Sync).await;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut leases = tokio::time::interval(self.lease / 2);
        let mut sent = 0u32;
        loop {
            tokio::select! {
                _ = flush.tick() => {
                    let Some(state) = state.upgrade() else { return };
                    let (delta, snapshot) = {
                        let mut out = self.outbox();
                        let snapshot = std::mem::take(&mut out.snapshot_asked);
                        let delta = (!out.joins.is_empty() || !out.leaves.is_empty() || !out.events.is_empty())
                            .then(|| (std::mem::take(&mut out.joins), std::mem::take(&mut out.leaves), std::mem::take(&mut out.events)));
                        (delta, snapshot)
                    };
                    if let Some((joins, leaves, events)) = delta {
                        for part in 0..joins.len().max(leaves.len()).max(events.len()).div_ceil(CHUNK) {
                            let slice = |len: usize| (part * CHUNK).min(len)..((part + 1) * CHUNK).min(len);
                            self.send(Body::Delta {
                                joins: joins[slice(joins.len())].to_vec(),
                                leaves: leaves[slice(leaves.len())].to_vec(),
                                events: events[slice(events.len())].to_vec(),
                            }).await;
                        }
                    }
                    if snapshot {
                        self.send_snapshot(&state).await;
                    }
                }
                _ = leases.tick() => {
                    let Some(state) = state.upgrade() else { return };
                    sent += 1;
                    if sent.is_multiple_of(SNAPSHOT_EVERY) {
                        self.send_snapshot(&state).await;
                    } else {
                        self.send(Body::Lease).await;
                    }
                    self.forget_dead(&state);
                }
            }
        }
    }

    /// Drops pods whose lease ran out, announcing leaves for their members.
    fn forget_dead(&self, state: &AppState) {
        let now = Instant::now();
        let dead: Vec<(Arc<str>, Pod)> = {
            let mut pods = self.pods();
            let gone: Vec<Arc<str>> = pods
                .iter()
                .filter(|(_, p)| now.duration_since(p.seen) >= self.lease)
                .map(|(i, _)| i.clone())
                .collect();
            gone.into_iter()
                .filter_map(|i| pods.remove(&i).map(|p| (i, p)))
                .collect()
        };
        for (instance, pod) in dead {
            warn!(%instance, "a replica stopped renewing its presence lease: its members left");
            for (topic, members) in pod.members {
                for (connection_id, user_id) in members {
                    let event = Event {
                        join: false,
                        connection_id,
                        user_id,
                    };
                    if !state.presence.has_user(&topic, &event.user_id)
                        && !self.has_user_elsewhere(&topic, &event.user_id)
                    {
                        announce_if_wanted(state, &topic, &event);
                    }
                }
            }
        }
    }

    async fn receive(self: Arc<Self>, state: Weak<AppState>) {
        let mut sub = loop {
            match self.client.subscribe(self.subject.clone()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    warn!(error = %e, "cannot subscribe to presence; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            let Some(state) = state.upgrade() else { return };
            let Ok(wire) = serde_json::from_slice::<Wire>(&msg.payload) else {
                debug!("dropped a presence message that is not one");
                continue;
            };
            if *wire.instance == *self.instance {
                continue;
            }
            self.apply(&state, wire);
        }
    }

    fn apply(&self, state: &AppState, wire: Wire) {
        let instance: Arc<str> = Arc::from(wire.instance);
        let mut events = Vec::new();
        {
            let mut pods = self.pods();
            let known = pods.contains_key(&instance);
            let pod = pods.entry(instance.clone()).or_insert_with(|| Pod {
                seen: Instant::now(),
                members: HashMap::new(),
            });
            pod.seen = Instant::now();
            match wire.body {
                Body::Lease => {
                    if !known {
                        // A pod we know nothing of (we started after it): ask.
                        drop(pods);
                        self.outbox().snapshot_asked = true;
                        return;
                    }
                }
                Body::Sync => self.outbox().snapshot_asked = true,
                Body::Snapshot { reset, members } => {
                    if reset {
                        pod.members.clear();
                    }
                    for (topic, c, u) in members {
                        if let Ok(topic) = Topic::parse(&topic) {
                            pod.members
                                .entry(topic)
                                .or_default()
                                .insert(Arc::from(c), Arc::from(u));
                        }
                    }
                }
                Body::Delta {
                    joins,
                    leaves,
                    events: announced,
                } => {
                    for (topic, c, u) in joins {
                        if let Ok(topic) = Topic::parse(&topic) {
                            pod.members
                                .entry(topic)
                                .or_default()
                                .insert(Arc::from(c), Arc::from(u));
                        }
                    }
                    for (topic, c) in leaves {
                        if let Ok(topic) = Topic::parse(&topic)
                            && let Some(m) = pod.members.get_mut(&topic)
                        {
                            m.remove(c.as_str());
                            if m.is_empty() {
                                pod.members.remove(&topic);
                            }
                        }
                    }
                    events = announced;
                }
            }
        }
        for e in events {
            if let Ok(topic) = Topic::parse(&e.topic) {
                let event = Event {
                    join: e.join,
                    connection_id: Arc::from(e.connection_id),
                    user_id: Arc::from(e.user_id),
                };
                announce_if_wanted(state, &topic, &event);
            }
        }
    }
}

/// Shows an event to this pod's subscribers, if the topic's presence has `joinLeave`.
fn announce_if_wanted(state: &AppState, topic: &Topic, event: &Event) {
    if state
        .app
        .topic_rule(topic)
        .and_then(|(rule, _)| rule.presence)
        .is_some_and(|p| p.join_leave)
    {
        announce(state, topic, event);
    }
}
