//! Topic policy: which concrete topic a message names, and whether its sender may
//! subscribe or publish there under the app's topic rules (roles, owner, subscribed
//! first).

use switchboard_spec::{CompiledTopicRule, Topic, TopicAccess, TopicTemplate};

use crate::protocol::{ErrorCode, Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

/// What a sender wants to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Subscribe,
    Publish,
}

impl Verb {
    fn phrase(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe to",
            Self::Publish => "publish to",
        }
    }
}

/// The topic a route's template names for this message and sender.
pub fn render(
    template: &TopicTemplate,
    session: &Session,
    msg: &Inbound,
) -> Result<Topic, Rejection> {
    template
        .render(&msg.payload, &session.identity)
        .map_err(|e| Rejection::invalid_field(e.pointer(), e.to_string()))
}

/// Applies the `subscribe` or `publish` access of the first topic rule governing
/// `topic`, and returns that rule (its `history` and `presence` say what else to do).
pub fn check_access<'a>(
    state: &'a AppState,
    session: &Session,
    topic: &Topic,
    verb: Verb,
) -> Result<&'a CompiledTopicRule, Rejection> {
    let Some((rule, captures)) = state.app.topic_rule(topic) else {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            format!("no topic rule governs {topic}"),
        ));
    };
    let access: &TopicAccess = match verb {
        Verb::Subscribe => &rule.subscribe,
        Verb::Publish => &rule.publish,
    };
    let verb_phrase = verb.phrase();
    if let Some(roles) = &access.roles
        && !session.identity.has_any_role(roles)
    {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            format!("{verb_phrase} {topic} needs one of the roles {roles:?}"),
        ));
    }
    // The segment holds the encoded user id (docs/PROTOCOL.md, "Topics"): decoded, it
    // must be the caller's own.
    if let Some(owner) = &access.owner
        && captures
            .get(owner.as_str())
            .and_then(|segment| switchboard_spec::topic::decode_segment(segment))
            .as_deref()
            != Some(session.identity.user_id.as_str())
    {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            format!("only its owner may {verb_phrase} {topic}"),
        ));
    }
    if verb == Verb::Publish && access.require_subscribed && !session.subscriptions.contains(topic)
    {
        return Err(Rejection::new(
            ErrorCode::FailedPrecondition,
            format!("subscribe to {topic} before publishing to it"),
        ));
    }
    Ok(rule)
}
