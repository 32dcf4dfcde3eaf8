//! `Presence`: who is subscribed to the topics whose rule declares `presence`, on this
//! pod (docs/RECOVERY.md, "Presence").
//!
//! Members are connections (`connectionId`, `userId`); events are about users. A user's
//! first connection joining a topic is a `$ws:join`, its last one leaving a `$ws:leave`.
//! A connection that ends (rather than unsubscribing) leaves after [`LEAVE_GRACE`]: a
//! client that reconnects within it, as the server itself asks on drain, slow
//! consumption or token expiry, makes neither a leave nor a second join.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use switchboard_spec::Topic;

/// How long a disconnected user's leave waits for the user to come back.
pub const LEAVE_GRACE: Duration = Duration::from_secs(5);
/// Most members one presence answer holds; the rest follow by `cursor`.
pub const PAGE_SIZE: usize = 1000;

/// One topic's members.
#[derive(Default)]
struct Members {
    /// connectionId → userId, ordered so pages are stable.
    connections: BTreeMap<Arc<str>, Arc<str>>,
    /// Connections per user.
    users: HashMap<Arc<str>, usize>,
    /// Users whose last connection ended, with the token of that leave.
    leaving: HashMap<Arc<str>, u64>,
}

/// A presence event to send to the topic's subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub join: bool,
    pub connection_id: Arc<str>,
    pub user_id: Arc<str>,
}

/// What a leave came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// Nothing to announce (not a member, or the user is still here).
    Quiet,
    Now(Event),
    /// Announce after the grace, if [`Presence::settle`] with this token still finds
    /// the user gone.
    Later(u64),
}

/// One page of members.
pub struct MemberPage {
    pub count: usize,
    pub members: Vec<(Arc<str>, Arc<str>)>,
    /// Where the next page starts, when there is one.
    pub cursor: Option<Arc<str>>,
}

#[derive(Default)]
pub struct Presence {
    topics: DashMap<Topic, Members>,
    next_token: std::sync::atomic::AtomicU64,
}

impl Presence {
    /// Adds a member. Returns the join to announce, if this is the user's first
    /// connection here and the user was not just leaving.
    pub fn join(
        &self,
        topic: &Topic,
        connection_id: &Arc<str>,
        user_id: &Arc<str>,
    ) -> Option<Event> {
        let mut members = self.topics.entry(topic.clone()).or_default();
        if members.connections.contains_key(connection_id) {
            return None;
        }
        members
            .connections
            .insert(connection_id.clone(), user_id.clone());
        let count = members.users.entry(user_id.clone()).or_default();
        *count += 1;
        if *count > 1 || members.leaving.remove(user_id).is_some() {
            return None;
        }
        Some(Event {
            join: true,
            connection_id: connection_id.clone(),
            user_id: user_id.clone(),
        })
    }

    /// Removes a member: `unsubscribed` leaves now, a connection that ended after the
    /// grace.
    pub fn leave(&self, topic: &Topic, connection_id: &str, unsubscribed: bool) -> Left {
        let Some(mut members) = self.topics.get_mut(topic) else {
            return Left::Quiet;
        };
        let Some((connection_id, user_id)) = members.connections.remove_entry(connection_id) else {
            return Left::Quiet;
        };
        let remaining = members.users.get_mut(&user_id).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if remaining > 0 {
            return Left::Quiet;
        }
        members.users.remove(&user_id);
        if unsubscribed {
            let empty = members.connections.is_empty() && members.leaving.is_empty();
            drop(members);
            if empty {
                self.topics.remove_if(topic, |_, m| {
                    m.connections.is_empty() && m.leaving.is_empty()
                });
            }
            return Left::Now(Event {
                join: false,
                connection_id,
                user_id,
            });
        }
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        members.leaving.insert(user_id, token);
        Left::Later(token)
    }

    /// After the grace: the leave `token` stands for, if its user did not come back.
    pub fn settle(
        &self,
        topic: &Topic,
        connection_id: &Arc<str>,
        user_id: &Arc<str>,
        token: u64,
    ) -> Option<Event> {
        let mut members = self.topics.get_mut(topic)?;
        if members.leaving.get(user_id) != Some(&token) {
            return None;
        }
        members.leaving.remove(user_id);
        let empty = members.connections.is_empty() && members.leaving.is_empty();
        drop(members);
        if empty {
            self.topics.remove_if(topic, |_, m| {
                m.connections.is_empty() && m.leaving.is_empty()
            });
        }
        Some(Event {
            join: false,
            connection_id: connection_id.clone(),
            user_id: user_id.clone(),
        })
    }

    /// The topic's members on this pod: connectionId → userId.
    pub fn local(&self, topic: &Topic) -> BTreeMap<Arc<str>, Arc<str>> {
        self.topics
            .get(topic)
            .map(|m| m.connections.clone())
            .unwrap_or_default()
    }

    /// Whether `user_id` has a connection in `topic` on this pod.
    pub fn has_user(&self, topic: &Topic, user_id: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|m| m.users.contains_key(user_id))
    }

    /// Every member on this pod, as (topic, connectionId, userId).
    pub fn snapshot(&self) -> Vec<(Topic, Arc<str>, Arc<str>)> {
        self.topics
            .iter()
            .flat_map(|entry| {
                let topic = entry.key().clone();
                entry
                    .connections
                    .iter()
                    .map(|(c, u)| (topic.clone(), c.clone(), u.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The members after `cursor` (a connection id), at most [`PAGE_SIZE`].
pub fn page(members: &BTreeMap<Arc<str>, Arc<str>>, cursor: Option<&str>) -> MemberPage {
    let from = match cursor {
        Some(c) => std::ops::Bound::Excluded(c),
        None => std::ops::Bound::Unbounded,
    };
    let mut page: Vec<(Arc<str>, Arc<str>)> = members
        .range::<str, _>((from, std::ops::Bound::Unbounded))
        .take(PAGE_SIZE + 1)
        .map(|(c, u)| (c.clone(), u.clone()))
        .collect();
    let more = page.len() > PAGE_SIZE;
    page.truncate(PAGE_SIZE);
    MemberPage {
        count: members.len(),
        cursor: more.then(|| page.last().map(|(c, _)| c.clone())).flatten(),
        members: page,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::parse("room:a").unwrap_or_else(|e| panic!("{e}"))
    }

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_user_joins_once_and_leaves_with_its_last_connection() {
        let p = Presence::default();
        let (c1, c2, u) = (id("c1"), id("c2"), id("u"));
        assert!(p.join(&topic(), &c1, &u).is_some_and(|e| e.join));
        assert_eq!(
            p.join(&topic(), &c1, &u),
            None,
            "at most once per connection"
        );
        assert_eq!(
            p.join(&topic(), &c2, &u),
            None,
            "a second connection of the user"
        );
        assert_eq!(p.leave(&topic(), "c1", true), Left::Quiet);
        assert!(
            matches!(p.leave(&topic(), "c2", true), Left::Now(e) if !e.join && &*e.user_id == "u")
        );
        assert_eq!(p.local(&topic()).len(), 0);
    }

    #[test]
    fn a_reconnect_within_the_grace_is_neither_a_leave_nor_a_join() {
        let p = Presence::default();
        let (c1, c2, u) = (id("c1"), id("c2"), id("u"));
        p.join(&topic(), &c1, &u);
        let Left::Later(token) = p.leave(&topic(), "c1", false) else {
            panic!("a disconnect leaves later");
        };
        assert_eq!(p.join(&topic(), &c2, &u), None);
        assert_eq!(p.settle(&topic(), &c1, &u, token), None);
        // Gone for good this time.
        let Left::Later(token) = p.leave(&topic(), "c2", false) else {
            panic!("a disconnect leaves later");
        };
        assert!(p.settle(&topic(), &c2, &u, token).is_some_and(|e| !e.join));
    }

    #[test]
    fn members_page_by_cursor() {
        let p = Presence::default();
        for i in 0..10_000 {
            p.join(&topic(), &id(&format!("c{i:05}")), &id("u"));
        }
        let all = p.local(&topic());
        let first = page(&all, None);
        assert_eq!((first.count, first.members.len()), (10_000, PAGE_SIZE));
        let mut seen = first.members.len();
        let mut cursor = first.cursor;
        let mut pages = 1;
        while let Some(c) = cursor {
            let next = page(&all, Some(&c));
            assert_eq!(
                &*next.members[0].0,
                format!("c{seen:05}"),
                "pages continue where the last ended"
            );
            seen += next.members.len();
            cursor = next.cursor;
            pages += 1;
        }
        assert_eq!((seen, pages), (10_000, 10));
    }
}
