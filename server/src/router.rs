//! The router: one client message in, its route's checks, its one action, exactly one
//! answer (a reply, an ack, or an error) when the protocol calls for one.
//!
//! Order of checks: envelope → route → roles → rate limit → payload schema → action.
//! Rate limits come before schema validation so a flood of invalid messages costs the
//! sender tokens and the server little. The actions themselves are in [`crate::actions`].

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use switchboard_ops::metrics::CounterByName;
use switchboard_spec::{CompiledRoute, RouteAction};
use tracing::Instrument;

use crate::actions;
use crate::protocol::{self, ErrorCode, Inbound, Rejection};
use crate::ratelimit::Caller;
use crate::refresh;
use crate::session::Session;
use crate::state::AppState;
use crate::trace::{self, SPAN_TARGET};

/// Most validation errors reported for one message.
const MAX_REPORTED_ERRORS: usize = 10;

/// The `type` label for messages of no declared route type.
const UNKNOWN_TYPE: &str = "unknown";

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
pub async fn handle_text(state: &Arc<AppState>, session: &mut Session, text: &[u8]) {
    let messages = &state.metrics.messages;
    let msg = match protocol::parse_inbound(text) {
        Ok(msg) => msg,
        Err(bad) => {
            messages.received(UNKNOWN_TYPE);
            session.handle.refuse(
                protocol::ERROR_TYPE,
                bad.correlation_id.as_deref(),
                &bad.rejection,
            );
            return;
        }
    };
    messages.received(&msg.message_type);
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
    // Entered only around the (synchronous) rest: a guard held across the await would
    // leak the span into whatever the task's thread runs meanwhile.
    let result = dispatch(state, session, &msg)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
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
            messages.validation_failed(&msg.message_type);
        }
        session.handle.refuse(
            refused.error_type,
            msg.correlation_id.as_deref(),
            &refused.rejection,
        );
    }
}

/// Handles a non-text data frame: always an error, the connection lives on.
pub fn handle_binary(state: &Arc<AppState>, session: &Session) {
    state.metrics.messages.received(UNKNOWN_TYPE);
    let r = Rejection::new(
        ErrorCode::InvalidArgument,
        "binary frames are not supported: send JSON text frames",
    );
    session.handle.refuse(protocol::ERROR_TYPE, None, &r);
}

async fn dispatch(
    state: &Arc<AppState>,
    session: &mut Session,
    msg: &Inbound,
) -> Result<(), Refused> {
    match msg.message_type.as_str() {
        protocol::HEARTBEAT_TYPE => {
            session.handle.reply(
                protocol::HEARTBEAT_ACK_TYPE,
                msg.correlation_id.as_deref(),
                &json!({}),
            );
            return Ok(());
        }
        protocol::AUTH_TYPE => {
            return refresh::refresh_token(state, session, msg)
                .await
                .map_err(Refused::from);
        }
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
        RouteAction::Request(_) => protocol::RPC_ERROR_TYPE,
        _ => protocol::ERROR_TYPE,
    };
    let refused = |rejection| Refused {
        error_type,
        rejection,
    };
    check_route(state, session, &route, msg).map_err(refused)?;
    match &route.action {
        RouteAction::Subscribe(template) => actions::subscribe::run(state, session, msg, template),
        RouteAction::Unsubscribe(template) => {
            actions::unsubscribe::run(state, session, msg, template)
        }
        RouteAction::Publish(action) => actions::publish::run(state, session, msg, action),
        RouteAction::Request(action) => {
            actions::request::run(state, session, msg, action);
            Ok(())
        }
        RouteAction::Forward(action) => actions::forward::run(state, session, msg, action),
        RouteAction::History(action) => actions::history::run(state, session, msg, action),
        RouteAction::Presence(template) => actions::presence::run(state, session, msg, template),
    }
    .map_err(refused)
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
        state.metrics.rate_limits.refused(&limited);
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
            .map(|e| {
                json!({
                    "pointer": protocol::clip(&e.instance_path().to_string()),
                    "message": protocol::clip(&e.to_string()),
                })
            })
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

/// Client messages by type: received, and refused by their route's payload schema.
/// Declared route types have their own series; anything else counts as `unknown`.
pub struct MessageMetrics {
    received: CounterByName,
    validation_failures: CounterByName,
}

impl MessageMetrics {
    pub fn register<'a>(
        registry: &mut Registry,
        route_types: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Self {
        let types = || route_types.clone().into_iter().chain([UNKNOWN_TYPE]);
        Self {
            received: CounterByName::register(
                registry,
                "switchboard_messages_received",
                "Client messages received, by type (undeclared types count as unknown)",
                "type",
                types(),
            ),
            validation_failures: CounterByName::register(
                registry,
                "switchboard_validation_failures",
                "Client messages whose payload failed the route's schema, by type",
                "type",
                types(),
            ),
        }
    }

    pub fn received(&self, message_type: &str) {
        Self::count(&self.received, message_type);
    }

    pub fn validation_failed(&self, message_type: &str) {
        Self::count(&self.validation_failures, message_type);
    }

    fn count(by_type: &CounterByName, message_type: &str) {
        if let Some(c) = by_type
            .get(message_type)
            .or_else(|| by_type.get(UNKNOWN_TYPE))
        {
            c.inc();
        }
    }
}
