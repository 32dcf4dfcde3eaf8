//! The router: one client message in, its route's checks, its one action, exactly one
//! answer (a reply, an ack, or an error) when the protocol calls for one.
//!
//! Order of checks: envelope → route → roles → rate limit → payload schema → action.
//! Rate limits come before schema validation so a flood of invalid messages costs the
//! sender tokens and the server little.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use switchboard_spec::{CompiledRoute, Identity, RouteAction, Topic, TopicAccess, TopicTemplate};

use crate::bus::{Delivery, RpcError, SubscribedFuture};
use crate::handle::ConnectionHandle;
use crate::liveness::Liveness;
use crate::protocol::{self, ErrorCode, Inbound, OutMeta, Rejection};
use crate::ratelimit::{Caller, ConnectionBuckets};
use crate::state::AppState;
use crate::trace::{self, SPAN_TARGET};
use tracing::Instrument as _;

/// Most validation errors reported for one message.
const MAX_REPORTED_ERRORS: usize = 10;

/// One connection's state that only its reader touches.
pub struct Session {
    pub handle: Arc<ConnectionHandle>,
    pub identity: Identity,
    /// `identity.user_id`, shared cheaply with rate-limit keys.
    pub user_id: Arc<str>,
    pub ip: IpAddr,
    pub subscriptions: HashSet<Topic>,
    pub buckets: ConnectionBuckets,
    pub liveness: Arc<Liveness>,
    /// The exported `ws.connection` span (disabled with export off). Message spans link
    /// to it rather than nest in it, so a long connection does not become one endless
    /// trace.
    pub span: tracing::Span,
}

/// A refused message and the frame type to refuse it with.
struct Refused {
    error_type: &'static str,
    rejection: Rejection,
}

impl From<Rejection> for Refused {
    fn from(rejection: Rejection) -> Self {
        Self {
            error_type: protocol::ERROR_TYPE,
            rejection,
        }
    }
}

/// Handles one complete text message from the client.
pub fn handle_text(state: &Arc<AppState>, session: &mut Session, text: &[u8]) {
    let msg = match protocol::parse_inbound(text) {
        Ok(msg) => msg,
        Err(bad) => {
            state.metrics.for_type("unknown").received.inc();
            send_error(
                state,
                session,
                protocol::ERROR_TYPE,
                bad.correlation_id.as_deref(),
                &bad.rejection,
            );
            return;
        }
    };
    let counters = state.metrics.for_type(&msg.message_type);
    counters.received.inc();
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        parent: None,
        "ws.message",
        message.type = %msg.message_type,
        connection.id = %session.handle.id,
        instance = %state.instance,
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
    );
    trace::continue_from(&span, msg.traceparent.as_deref(), None);
    span.follows_from(&session.span);
    let _entered = span.enter();
    let result = dispatch(state, session, &msg);
    span.record(
        "outcome",
        match &result {
            Ok(()) => "ok",
            Err(_) => "refused",
        },
    );
    if let Err(refused) = result {
        span.record("error.code", refused.rejection.code.as_str());
        if refused.rejection.code == ErrorCode::InvalidArgument
            && refused.rejection.details.is_some()
        {
            counters.validation_failures.inc();
        }
        send_error(
            state,
            session,
            refused.error_type,
            msg.correlation_id.as_deref(),
            &refused.rejection,
        );
    }
}

/// Handles a non-text data frame: always an error, the connection lives on.
pub fn handle_binary(state: &Arc<AppState>, session: &Session) {
    state.metrics.for_type("unknown").received.inc();
    let r = Rejection::new(
        ErrorCode::InvalidArgument,
        "binary frames are not supported: send JSON text frames",
    );
    send_error(state, session, protocol::ERROR_TYPE, None, &r);
}

fn send_error(
    state: &AppState,
    session: &Session,
    error_type: &str,
    correlation_id: Option<&str>,
    r: &Rejection,
) {
    state.metrics.error(r.code);
    state.metrics.sent(error_type, 1);
    session.handle.send(
        protocol::encode_error(error_type, correlation_id, r),
        &state.metrics,
    );
}

fn reply(
    state: &AppState,
    session: &Session,
    message_type: &str,
    correlation_id: Option<&str>,
    payload: &Value,
) {
    state.metrics.sent(message_type, 1);
    session.handle.send(
        protocol::encode_reply(message_type, correlation_id, payload),
        &state.metrics,
    );
}

/// `$ws:ack`, sent only when the client asked for an answer by giving a correlation id.
fn ack(state: &AppState, session: &Session, msg: &Inbound, payload: Value) {
    if let Some(c) = msg.correlation_id.as_deref() {
        reply(state, session, protocol::ACK_TYPE, Some(c), &payload);
    }
}

fn dispatch(state: &Arc<AppState>, session: &mut Session, msg: &Inbound) -> Result<(), Refused> {
    match msg.message_type.as_str() {
        protocol::HEARTBEAT_TYPE => {
            reply(
                state,
                session,
                protocol::HEARTBEAT_ACK_TYPE,
                msg.correlation_id.as_deref(),
                &json!({}),
            );
            return Ok(());
        }
        protocol::AUTH_TYPE => return refresh_token(state, session, msg).map_err(Refused::from),
        _ => {}
    }
    session.liveness.touch_activity();
    let Some(route) = state.app.routes.get(&msg.message_type).cloned() else {
        return Err(Rejection::new(
            ErrorCode::Unimplemented,
            format!("no route handles type {:?}", msg.message_type),
        )
        .into());
    };
    let error_type = match route.action {
        RouteAction::Request { .. } => protocol::RPC_ERROR_TYPE,
        _ => protocol::ERROR_TYPE,
    };
    let refused = |rejection| Refused {
        error_type,
        rejection,
    };
    check_route(state, session, &route, msg).map_err(refused)?;
    match &route.action {
        RouteAction::Subscribe(template) => {
            subscribe(state, session, msg, template).map_err(refused)
        }
        RouteAction::Unsubscribe(template) => {
            unsubscribe(state, session, msg, template).map_err(refused)
        }
        RouteAction::Publish {
            topic,
            emit,
            exclude_self,
        } => publish(state, session, msg, topic, emit, *exclude_self).map_err(refused),
        RouteAction::Request { .. } => {
            request(state, session, msg, route.clone());
            Ok(())
        }
        RouteAction::Forward { subject } => {
            let payload = Bytes::from(msg.payload.to_string());
            state
                .bus
                .forward(subject, payload, &session.identity)
                .map_err(|e| refused(rpc_rejection(&e)))?;
            ack(state, session, msg, json!({}));
            Ok(())
        }
    }
}

/// Roles, rate limits and payload schema: the checks every route shares.
fn check_route(
    state: &AppState,
    session: &mut Session,
    route: &CompiledRoute,
    msg: &Inbound,
) -> Result<(), Rejection> {
    if let Some(roles) = &route.roles
        && !session.identity.has_any_role(roles)
    {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            format!("{} needs one of the roles {roles:?}", route.message_type),
        ));
    }
    let caller = Caller {
        user_id: &session.user_id,
        ip: session.ip,
    };
    if let Err(limited) = state.limiter.charge(
        &route.charges,
        &mut session.buckets,
        &caller,
        Instant::now(),
    ) {
        state.metrics.rate_limited(&limited.bucket);
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            format!("rate limit {:?} exceeded", limited.bucket),
        )
        .retry_after(limited.retry_after_ms)
        .with_details(json!({"bucket": limited.bucket})));
    }
    if let Some(validator) = &route.validator {
        let errors: Vec<Value> = validator
            .iter_errors(&msg.payload)
            .take(MAX_REPORTED_ERRORS)
            .map(|e| json!({"pointer": e.instance_path().to_string(), "message": e.to_string()}))
            .collect();
        if let Some(first) = errors.first() {
            let pointer = first["pointer"].as_str().unwrap_or_default().to_owned();
            let message = format!(
                "payload of {} is invalid at {:?}: {}",
                route.message_type,
                if pointer.is_empty() {
                    "/"
                } else {
                    pointer.as_str()
                },
                first["message"].as_str().unwrap_or_default()
            );
            return Err(Rejection::new(ErrorCode::InvalidArgument, message)
                .with_details(json!({"field": pointer, "errors": errors})));
        }
    }
    Ok(())
}

fn render(template: &TopicTemplate, session: &Session, msg: &Inbound) -> Result<Topic, Rejection> {
    template
        .render(&msg.payload, &session.identity)
        .map_err(|e| Rejection::invalid_field(e.pointer(), e.to_string()))
}

/// Applies a topic rule's `subscribe` or `publish` access for this caller.
fn check_access(
    state: &AppState,
    session: &Session,
    topic: &Topic,
    publish: bool,
) -> Result<(), Rejection> {
    let Some((rule, captures)) = state.app.topic_rule(topic) else {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            format!("no topic rule governs {topic}"),
        ));
    };
    let access: &TopicAccess = if publish {
        &rule.publish
    } else {
        &rule.subscribe
    };
    let verb = if publish {
        "publish to"
    } else {
        "subscribe to"
    };
    if let Some(roles) = &access.roles
        && !session.identity.has_any_role(roles)
    {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            format!("{verb} {topic} needs one of the roles {roles:?}"),
        ));
    }
    if let Some(owner) = &access.owner
        && captures.get(owner.as_str()) != Some(&session.identity.user_id.as_str())
    {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            format!("only its owner may {verb} {topic}"),
        ));
    }
    if publish && access.require_subscribed && !session.subscriptions.contains(topic) {
        return Err(Rejection::new(
            ErrorCode::FailedPrecondition,
            format!("subscribe to {topic} before publishing to it"),
        ));
    }
    Ok(())
}

fn subscribe(
    state: &Arc<AppState>,
    session: &mut Session,
    msg: &Inbound,
    template: &TopicTemplate,
) -> Result<(), Rejection> {
    let topic = render(template, session, msg)?;
    check_access(state, session, &topic, false)?;
    if !session.subscriptions.contains(&topic) {
        let max = state.app.spec.limits.max_subscriptions_per_connection as usize;
        if session.subscriptions.len() >= max {
            return Err(Rejection {
                retryable: false,
                ..Rejection::new(
                    ErrorCode::ResourceExhausted,
                    format!("a connection may hold at most {max} subscriptions"),
                )
            });
        }
        state.registry.subscribe(&topic, &session.handle);
        session.subscriptions.insert(topic.clone());
        if let Some(subscribed) = state.bus.topic_active(&topic) {
            ack_once(
                state,
                session,
                msg,
                json!({"topic": topic.as_str()}),
                subscribed,
            );
            return Ok(());
        }
    }
    ack(state, session, msg, json!({"topic": topic.as_str()}));
    Ok(())
}

/// How long a subscribe's ack waits for the bus to confirm before it is sent anyway
/// (NATS stalled: local delivery works, the subscription follows).
const SUBSCRIBED_WAIT: Duration = Duration::from_secs(5);

/// `$ws:ack` once `subscribed` resolves: until then a publish on another replica might
/// not reach this client, and an ack must not promise that it would.
fn ack_once(
    state: &Arc<AppState>,
    session: &Session,
    msg: &Inbound,
    payload: Value,
    subscribed: SubscribedFuture,
) {
    let Some(correlation_id) = msg.correlation_id.clone() else {
        return;
    };
    let (state, handle) = (state.clone(), session.handle.clone());
    state.tasks.clone().spawn(async move {
        let _ = tokio::time::timeout(SUBSCRIBED_WAIT, subscribed).await;
        state.metrics.sent(protocol::ACK_TYPE, 1);
        handle.send(
            protocol::encode_reply(protocol::ACK_TYPE, Some(&correlation_id), &payload),
            &state.metrics,
        );
    });
}

fn unsubscribe(
    state: &AppState,
    session: &mut Session,
    msg: &Inbound,
    template: &TopicTemplate,
) -> Result<(), Rejection> {
    let topic = render(template, session, msg)?;
    if session.subscriptions.remove(&topic)
        && state.registry.unsubscribe(&topic, &session.handle.id)
    {
        state.bus.topic_inactive(&topic);
    }
    ack(state, session, msg, json!({"topic": topic.as_str()}));
    Ok(())
}

/// Drops every subscription of a closing connection.
pub fn unsubscribe_all(state: &AppState, session: &mut Session) {
    for topic in session.subscriptions.drain() {
        if state.registry.unsubscribe(&topic, &session.handle.id) {
            state.bus.topic_inactive(&topic);
        }
    }
}

fn publish(
    state: &AppState,
    session: &Session,
    msg: &Inbound,
    template: &TopicTemplate,
    emit: &str,
    exclude_self: bool,
) -> Result<(), Rejection> {
    let topic = render(template, session, msg)?;
    check_access(state, session, &topic, true)?;
    let span = tracing::info_span!(target: SPAN_TARGET, "publish", topic = %topic, emit = emit);
    let _entered = span.enter();
    // Encoded once; every recipient on every replica gets these bytes.
    let frame = protocol::encode(
        emit,
        OutMeta {
            topic: Some(topic.as_str()),
            publisher: Some(&session.identity.user_id),
            timestamp: protocol::now_ms(),
            ..OutMeta::default()
        },
        &msg.payload,
    );
    state.bus.publish(Delivery {
        topic: topic.clone(),
        message_type: Arc::from(emit),
        frame,
        exclude: exclude_self.then(|| session.handle.id.clone()),
        published_at: Instant::now(),
    });
    ack(state, session, msg, json!({"topic": topic.as_str()}));
    Ok(())
}

/// Sends the request to the backends and answers when they do. Runs as its own task so
/// the connection keeps reading while the backend works; the connection counts it as
/// in flight, so a drain delivers the reply before closing.
fn request(state: &Arc<AppState>, session: &Session, msg: &Inbound, route: Arc<CompiledRoute>) {
    let RouteAction::Request {
        subject, timeout, ..
    } = &route.action
    else {
        return;
    };
    let started = Instant::now();
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "rpc.request",
        rpc.subject = %subject,
        outcome = tracing::field::Empty,
    );
    // Entered while the bus builds the request, which carries this span's context to
    // the backend.
    let pending = span.in_scope(|| {
        state.bus.request(
            subject,
            Bytes::from(msg.payload.to_string()),
            &session.identity,
            *timeout,
        )
    });
    let state = state.clone();
    let handle = session.handle.clone();
    let correlation_id = msg.correlation_id.clone();
    handle.rpc_started();
    let (task_span, tasks) = (span.clone(), state.tasks.clone());
    let task = async move {
        let answer = match pending.await {
            Ok(reply) => rpc_reply(&route, correlation_id.as_deref(), &reply),
            Err(e @ RpcError::Timeout(_)) => Err((rpc_rejection(&e), "timeout")),
            Err(e) => Err((rpc_rejection(&e), "unavailable")),
        };
        let frame = match answer {
            Ok((frame, reply_type)) => {
                span.record("outcome", "ok");
                state.metrics.rpc("ok", started.elapsed());
                state.metrics.sent(reply_type, 1);
                frame
            }
            Err((r, outcome)) => {
                span.record("outcome", outcome);
                state.metrics.rpc(outcome, started.elapsed());
                state.metrics.error(r.code);
                state.metrics.sent(protocol::RPC_ERROR_TYPE, 1);
                protocol::encode_error(protocol::RPC_ERROR_TYPE, correlation_id.as_deref(), &r)
            }
        };
        handle.send(frame, &state.metrics);
        handle.rpc_finished();
    };
    tasks.spawn(task.instrument(task_span));
}

/// A refused request and its outcome label for `switchboard_rpc_requests_total`.
type RpcRefusal = (Rejection, &'static str);

/// Turns a backend's reply into the client's reply frame: a payload checked against
/// `replySchema`, or the backend's own `{"error": {"code", "message"}}`.
fn rpc_reply<'r>(
    route: &'r CompiledRoute,
    correlation_id: Option<&str>,
    reply: &[u8],
) -> Result<(Bytes, &'r str), RpcRefusal> {
    let RouteAction::Request {
        reply: reply_type,
        reply_validator,
        ..
    } = &route.action
    else {
        return Err((
            Rejection::new(ErrorCode::Internal, "not a request route"),
            "invalid_reply",
        ));
    };
    let invalid = |message: String| {
        (
            Rejection::new(ErrorCode::Internal, message),
            "invalid_reply",
        )
    };
    let value: Value = serde_json::from_slice(reply)
        .map_err(|_| invalid("the backend's reply is not JSON".into()))?;
    if let Some(err) = value
        .get("error")
        .filter(|_| value.as_object().is_some_and(|o| o.len() == 1))
    {
        let code = err
            .get("code")
            .and_then(Value::as_str)
            .and_then(|c| ErrorCode::ALL.into_iter().find(|k| k.as_str() == c))
            .unwrap_or(ErrorCode::Internal);
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the backend refused the request");
        return Err((Rejection::new(code, message), "error"));
    }
    if let Some(v) = reply_validator
        && let Some(e) = v.iter_errors(&value).next()
    {
        return Err(invalid(format!(
            "the backend's reply does not match the route's replySchema at {:?}: {e}",
            e.instance_path().to_string()
        )));
    }
    Ok((
        protocol::encode_reply(reply_type, correlation_id, &value),
        reply_type.as_str(),
    ))
}

fn rpc_rejection(e: &RpcError) -> Rejection {
    let code = match e {
        RpcError::Timeout(_) => ErrorCode::DeadlineExceeded,
        RpcError::NoBus | RpcError::NoResponders | RpcError::Unavailable(_) => {
            ErrorCode::Unavailable
        }
    };
    Rejection::new(code, e.to_string())
}

/// `$ws:auth`: a fresh token for the same user extends the connection's life.
fn refresh_token(state: &AppState, session: &mut Session, msg: &Inbound) -> Result<(), Rejection> {
    let Some(token) = msg.payload.get("token").and_then(Value::as_str) else {
        return Err(Rejection::invalid_field(
            "/token",
            "$ws:auth needs payload.token",
        ));
    };
    let fresh = state
        .auth
        .verify(token)
        .map_err(|e| Rejection::new(ErrorCode::Unauthenticated, e.to_string()))?;
    if fresh.identity.user_id != session.identity.user_id {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            "a refreshed token must be for the same user",
        ));
    }
    session.liveness.set_expiry(fresh.expires_at);
    session.identity = fresh.identity;
    ack(
        state,
        session,
        msg,
        json!({"expiresAt": fresh.expires_at.map(crate::liveness::unix_ms)}),
    );
    Ok(())
}
