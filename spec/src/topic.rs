//! Topic names, the templates routes render them from, and the patterns topic rules
//! match them with.
//!
//! A topic is segments joined by `:`, each segment `[A-Za-z0-9_@=+-]+`. The alphabet is
//! the security boundary: it has no `.`, `*`, `>` or whitespace, so a rendered topic
//! maps one-to-one onto NATS subject tokens and nothing a client sends can form a
//! wildcard or climb into another app's subject prefix.
//!
//! Values rendered into a template (`{roomId}`, `{user.id}`, `{claims.NAME}`) may be
//! any non-empty string: [`encode_segment`] escapes every byte outside
//! `[A-Za-z0-9_@+-]` as `=XX` (uppercase hex of its UTF-8 bytes), `=` itself included,
//! so `auth0|64f1` becomes `auth0=7C64f1` and `ann.lee@example.com`
//! `ann=2Elee@example=2Ecom`. Ids made of the common characters are unchanged. The
//! encoding is canonical (one spelling per value), so comparing encoded segments is
//! comparing values; [`decode_segment`] accepts only that spelling (docs/PROTOCOL.md,
//! "Topics").

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Longest topic accepted, so one subject stays well inside NATS limits.
pub const MAX_TOPIC_LEN: usize = 256;

/// Who is asking: what the auth layer learned about a connection. Templates read
/// `{user.id}` and `{claims.NAME}` from it; policies read the roles.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<String>,
    /// Every claim of the token (empty for anonymous connections).
    pub claims: Map<String, Value>,
    pub anonymous: bool,
}

impl Identity {
    pub fn has_any_role(&self, allowed: &[String]) -> bool {
        allowed
            .iter()
            .any(|r| self.roles.iter().any(|mine| mine == r))
    }
}

/// A validated topic name. Cheap to clone: fan-out passes it around a lot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        if s.is_empty() || s.len() > MAX_TOPIC_LEN {
            return Err(TopicError::Length);
        }
        for segment in s.split(':') {
            check_segment(segment)?;
        }
        Ok(Self(Arc::from(s)))
    }

    /// The topic whose segments hold `values`, each encoded with [`encode_segment`]:
    /// how a backend names `user:{userId}` for a user id of any shape.
    pub fn from_values<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, TopicError> {
        let segments: Vec<String> = values.into_iter().map(encode_segment).collect();
        Self::parse(&segments.join(":"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split(':')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("a topic is 1 to {MAX_TOPIC_LEN} characters")]
    Length,
    #[error("a topic segment may not be empty")]
    EmptySegment,
    #[error("character {0:?} is not allowed in a topic (allowed: A-Z a-z 0-9 _ @ = + -)")]
    BadChar(char),
}

pub fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '=' | '+' | '-')
}

fn check_segment(segment: &str) -> Result<(), TopicError> {
    if segment.is_empty() {
        return Err(TopicError::EmptySegment);
    }
    match segment.chars().find(|c| !is_segment_char(*c)) {
        Some(c) => Err(TopicError::BadChar(c)),
        None => Ok(()),
    }
}

/// The escape of [`encode_segment`]: `=` and two uppercase hex digits per byte.
pub const SEGMENT_ESCAPE: u8 = b'=';

/// Bytes a value keeps as they are: the topic alphabet without the escape.
fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'@' | b'+' | b'-')
}

/// A value as one topic segment (see the module docs): reversible, canonical, and
/// made of topic characters only.
pub fn encode_segment(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if is_plain_byte(b) {
            out.push(char::from(b));
        } else {
            out.push(char::from(SEGMENT_ESCAPE));
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The value [`encode_segment`] made `segment` from; `None` for anything it could not
/// have made (a lowercase or short escape, an escaped plain byte, a bare `=`, bytes
/// that are not UTF-8), so one value never has two topics.
pub fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == SEGMENT_ESCAPE {
            let hex = |d: u8| match d {
                b'0'..=b'9' => Some(d - b'0'),
                b'A'..=b'F' => Some(d - b'A' + 10),
                _ => None,
            };
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let decoded = (hi << 4) | lo;
            if is_plain_byte(decoded) {
                return None;
            }
            out.push(decoded);
            i += 3;
        } else if is_plain_byte(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Where a template variable takes its value from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateVar {
    /// `{field}`: a top-level field of the message payload.
    Payload(String),
    /// `{user.id}`: the caller's user id.
    UserId,
    /// `{claims.NAME}`: a claim of the caller's token.
    Claim(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(TemplateVar),
}

/// A topic with `{variables}`, parsed once at start-up and rendered per message.
#[derive(Clone, Debug)]
pub struct TopicTemplate {
    source: String,
    /// One entry per `:`-segment; a segment may mix literals and variables (`dm-{a}`).
    segments: Vec<Vec<Part>>,
}

/// Why a template could not be rendered for one message: the client's fault, reported
/// as INVALID_ARGUMENT with the JSON pointer of the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("payload field {pointer} is required to build the topic")]
    Missing { pointer: String },
    #[error("payload field {pointer} must be a string or an integer to build the topic")]
    NotScalar { pointer: String },
    #[error("payload field {pointer} cannot be used in a topic: {reason}")]
    Invalid { pointer: String, reason: TopicError },
}

impl RenderError {
    pub fn pointer(&self) -> &str {
        match self {
            Self::Missing { pointer }
            | Self::NotScalar { pointer }
            | Self::Invalid { pointer, .. } => pointer,
        }
    }
}

impl TopicTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("a topic template may not be empty".into());
        }
        let mut segments = Vec::new();
        for segment in source.split(':') {
            segments.push(parse_segment(segment)?);
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn vars(&self) -> impl Iterator<Item = &TemplateVar> {
        self.segments.iter().flatten().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// The segment as a pattern would see it: `Some(literal)` when it has no variable.
    fn literal_segment(&self, i: usize) -> Option<&str> {
        match self.segments.get(i).map(Vec::as_slice) {
            Some([Part::Literal(l)]) => Some(l),
            _ => None,
        }
    }

    pub fn render(&self, payload: &Value, identity: &Identity) -> Result<Topic, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            for part in segment {
                match part {
                    Part::Literal(l) => out.push_str(l),
                    Part::Var(var) => {
                        let (pointer, value) = resolve(var, payload, identity)?;
                        if value.is_empty() {
                            return Err(RenderError::Invalid {
                                pointer,
                                reason: TopicError::EmptySegment,
                            });
                        }
                        out.push_str(&encode_segment(&value));
                    }
                }
            }
        }
        Topic::parse(&out).map_err(|reason| RenderError::Invalid {
            pointer: String::new(),
            reason,
        })
    }
}

fn resolve(
    var: &TemplateVar,
    payload: &Value,
    identity: &Identity,
) -> Result<(String, String), RenderError> {
    let (pointer, value) = match var {
        TemplateVar::UserId => return Ok(("/user/id".into(), identity.user_id.clone())),
        TemplateVar::Payload(field) => (format!("/{field}"), payload.get(field)),
        TemplateVar::Claim(name) => (format!("/claims/{name}"), identity.claims.get(name)),
    };
    match value {
        None | Some(Value::Null) => Err(RenderError::Missing { pointer }),
        Some(Value::String(s)) => Ok((pointer, s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok((pointer, n.to_string())),
        Some(_) => Err(RenderError::NotScalar { pointer }),
    }
}

fn parse_segment(segment: &str) -> Result<Vec<Part>, String> {
    if segment.is_empty() {
        return Err(
            "a topic template has an empty segment (two ':' in a row, or one at an end)".into(),
        );
    }
    let mut parts = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        if let Some(after_brace) = rest.strip_prefix('{') {
            let end = after_brace
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in segment {segment:?}"))?;
            let name = &after_brace[..end];
            parts.push(Part::Var(parse_var(name)?));
            rest = &after_brace[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            let literal = &rest[..end];
            if let Some(c) = literal.chars().find(|c| !is_segment_char(*c)) {
                return Err(format!(
                    "character {c:?} is not allowed in a topic (allowed: A-Z a-z 0-9 _ @ = + -)"
                ));
            }
            parts.push(Part::Literal(literal.to_owned()));
            rest = &rest[end..];
        }
    }
    Ok(parts)
}

fn parse_var(name: &str) -> Result<TemplateVar, String> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if name == "user.id" {
        Ok(TemplateVar::UserId)
    } else if let Some(claim) = name.strip_prefix("claims.") {
        if ident(claim) {
            Ok(TemplateVar::Claim(claim.to_owned()))
        } else {
            Err(format!("{{{name}}} names no claim"))
        }
    } else if ident(name) {
        Ok(TemplateVar::Payload(name.to_owned()))
    } else {
        Err(format!(
            "{{{name}}} is not a template variable (use {{field}}, {{user.id}} or {{claims.NAME}})"
        ))
    }
}

/// One segment of a topic rule's pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    Var(String),
}

/// A topic rule's `pattern`, e.g. `room:{roomId}`: each segment is a literal or a
/// variable that captures the whole segment.
#[derive(Clone, Debug)]
pub struct TopicPattern {
    source: String,
    segments: Vec<PatternSegment>,
}

impl TopicPattern {
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        for segment in source.split(':') {
            if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!("{segment:?} is not a valid pattern variable"));
                }
                if segments.contains(&PatternSegment::Var(inner.to_owned())) {
                    return Err(format!("variable {{{inner}}} appears twice"));
                }
                segments.push(PatternSegment::Var(inner.to_owned()));
            } else {
                check_segment(segment).map_err(|e| {
                    format!("segment {segment:?}: {e} (a variable takes a whole segment: {{name}})")
                })?;
                segments.push(PatternSegment::Literal(segment.to_owned()));
            }
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Each segment's literal text, `None` for a variable.
    pub fn literals(&self) -> impl Iterator<Item = Option<&str>> {
        self.segments.iter().map(|s| match s {
            PatternSegment::Literal(l) => Some(l.as_str()),
            PatternSegment::Var(_) => None,
        })
    }

    /// The variables' names, in segment order.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            PatternSegment::Var(v) => Some(v.as_str()),
            PatternSegment::Literal(_) => None,
        })
    }

    pub fn has_var(&self, name: &str) -> bool {
        self.segments
            .contains(&PatternSegment::Var(name.to_owned()))
    }

    /// The variables' values when `topic` matches, else `None`.
    pub fn captures<'t>(&self, topic: &'t Topic) -> Option<HashMap<&str, &'t str>> {
        let mut captures = HashMap::new();
        let mut segments = topic.segments();
        for pattern in &self.segments {
            let actual = segments.next()?;
            match pattern {
                PatternSegment::Literal(l) if l != actual => return None,
                PatternSegment::Literal(_) => {}
                PatternSegment::Var(name) => {
                    captures.insert(name.as_str(), actual);
                }
            }
        }
        if segments.next().is_some() {
            return None;
        }
        Some(captures)
    }

    /// Could some rendering of `template` match this pattern? Used at compile time so a
    /// route whose topic no rule governs is caught before it serves.
    pub fn may_match(&self, template: &TopicTemplate) -> bool {
        template.segments.len() == self.segments.len()
            && self.segments.iter().enumerate().all(|(i, p)| {
                match (p, template.literal_segment(i)) {
                    (PatternSegment::Literal(l), Some(t)) => l == t,
                    _ => true,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Identity {
        let mut claims = Map::new();
        claims.insert("org".into(), json!("acme"));
        claims.insert("nested".into(), json!({"a": 1}));
        Identity {
            user_id: "alice".into(),
            roles: vec!["user".into()],
            claims,
            anonymous: false,
        }
    }

    #[test]
    fn renders_payload_user_and_claims() {
        let t = TopicTemplate::parse("org:{claims.org}:room-{roomId}:{user.id}").unwrap();
        let topic = t.render(&json!({"roomId": 42}), &alice()).unwrap();
        assert_eq!(topic.as_str(), "org:acme:room-42:alice");
    }

    #[test]
    fn values_stay_inside_their_segment_encoded() {
        let t = TopicTemplate::parse("room:{roomId}").unwrap();
        for evil in [
            "a.b",
            "*",
            ">",
            "a:b",
            "sb.ns.other.t.x",
            "a b",
            "é",
            "a=2Eb",
        ] {
            let topic = t.render(&json!({ "roomId": evil }), &alice()).unwrap();
            let segments: Vec<&str> = topic.segments().collect();
            assert_eq!(segments.len(), 2, "{evil:?} became {topic}");
            assert!(!topic.as_str().contains(['.', '*', '>', ' ']), "{topic}");
            assert_eq!(decode_segment(segments[1]).as_deref(), Some(evil));
        }
        let err = t.render(&json!({ "roomId": "" }), &alice()).unwrap_err();
        assert_eq!(err.pointer(), "/roomId");
    }

    #[test]
    fn real_world_ids_have_one_readable_spelling() {
        for (value, segment) in [
            ("alice", "alice"),
            ("auth0|64f1c2", "auth0=7C64f1c2"),
            ("ann.lee@example.com", "ann=2Elee@example=2Ecom"),
            ("a=b", "a=3Db"),
            ("é", "=C3=A9"),
        ] {
            assert_eq!(encode_segment(value), segment);
            assert_eq!(decode_segment(segment).as_deref(), Some(value));
        }
        // Spellings the encoder never makes decode to nothing.
        for other in ["a=7c", "a=", "a=3", "=41", "a.b", "=FF"] {
            assert_eq!(decode_segment(other), None, "{other:?}");
        }
        assert_eq!(
            Topic::from_values(["user", "auth0|64f1c2"])
                .unwrap()
                .as_str(),
            "user:auth0=7C64f1c2"
        );
    }

    #[test]
    fn missing_and_non_scalar_fields_are_reported_with_pointer() {
        let t = TopicTemplate::parse("room:{roomId}").unwrap();
        assert_eq!(
            t.render(&json!({}), &alice()).unwrap_err(),
            RenderError::Missing {
                pointer: "/roomId".into()
            }
        );
        assert_eq!(
            t.render(&json!({"roomId": {"x": 1}}), &alice())
                .unwrap_err(),
            RenderError::NotScalar {
                pointer: "/roomId".into()
            }
        );
        let c = TopicTemplate::parse("x:{claims.nested}").unwrap();
        assert!(matches!(
            c.render(&json!({}), &alice()),
            Err(RenderError::NotScalar { .. })
        ));
    }

    #[test]
    fn template_syntax_errors() {
        assert!(TopicTemplate::parse("room:{roomId").is_err());
        assert!(TopicTemplate::parse("room::x").is_err());
        assert!(TopicTemplate::parse("room.x").is_err());
        assert!(TopicTemplate::parse("room:{a b}").is_err());
        assert!(TopicTemplate::parse("x:{claims.}").is_err());
    }

    #[test]
    fn pattern_captures_and_shape_checks() {
        let p = TopicPattern::parse("user:{userId}").unwrap();
        let t = Topic::parse("user:alice").unwrap();
        assert_eq!(p.captures(&t).unwrap().get("userId"), Some(&"alice"));
        assert!(p.captures(&Topic::parse("room:alice").unwrap()).is_none());
        assert!(p.captures(&Topic::parse("user:alice:x").unwrap()).is_none());
        assert!(p.may_match(&TopicTemplate::parse("user:{user.id}").unwrap()));
        assert!(!p.may_match(&TopicTemplate::parse("room:{roomId}").unwrap()));
        assert!(!p.may_match(&TopicTemplate::parse("user:{a}:{b}").unwrap()));
        assert!(TopicPattern::parse("room:{a}:{a}").is_err());
        assert!(TopicPattern::parse("room:x{a}").is_err());
    }

    #[test]
    fn topic_parse_rejects_wildcards() {
        assert!(Topic::parse("a:b").is_ok());
        for bad in ["a.b", "a:*", ">", "a::b", ""] {
            assert!(Topic::parse(bad).is_err(), "{bad}");
        }
        assert!(Topic::parse(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }
}
