//! What a compiled route does: one action, each a struct holding exactly what the
//! compiler checked, so the server dispatches on the variant once and never re-matches.

use std::sync::Arc;
use std::time::Duration;

use jsonschema::Validator;

use crate::topic::TopicTemplate;

/// A route's one action.
#[derive(Debug)]
pub enum RouteAction {
    /// Subscribe the sender to the rendered topic.
    Subscribe(TopicTemplate),
    /// Drop the sender's subscription to the rendered topic.
    Unsubscribe(TopicTemplate),
    Publish(PublishAction),
    /// Shared, because the answer is built in a task of its own after the backend replies.
    Request(Arc<RequestAction>),
    Forward(ForwardAction),
    History(HistoryAction),
    /// Answer the rendered topic's members.
    Presence(TopicTemplate),
}

/// Answer a topic's recent publications.
#[derive(Debug)]
pub struct HistoryAction {
    pub topic: TopicTemplate,
    /// Most publications one answer holds.
    pub max_limit: u32,
}

/// Deliver the message to every subscriber of a topic, as type `emit`.
#[derive(Debug)]
pub struct PublishAction {
    pub topic: TopicTemplate,
    /// Type of the delivery frames (the route's own type unless the spec says otherwise).
    pub emit: String,
    /// Leave out the publishing connection itself.
    pub exclude_self: bool,
}

/// Ask a backend over a NATS request and answer the sender with its reply.
#[derive(Debug)]
pub struct RequestAction {
    pub subject: String,
    pub timeout: Duration,
    /// Type of the reply frame.
    pub reply: String,
    /// The route's `replySchema`: a backend's reply that fails it becomes an INTERNAL error.
    pub reply_validator: Option<Validator>,
}

/// Hand the message to backends on a NATS subject, fire and forget.
#[derive(Debug)]
pub struct ForwardAction {
    pub subject: String,
}
