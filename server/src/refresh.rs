//! `$ws:auth`: a fresh token for the same user extends the connection's life
//! (docs/PROTOCOL.md §5). The new identity then governs the subscriptions already held:
//! those its roles or user id no longer allow end, each with `$ws:unsubscribed`.
//! Failed refreshes are spaced (after four in a row, one a second) and bounded (the
//! sixth in a row closes the connection with 1008), since each bad signature costs a
//! verification.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::actions;
use crate::liveness;
use crate::policy::{self, Verb};
use crate::protocol::{self, CloseReason, ErrorCode, Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

/// Failed refreshes in a row that may come at any pace (a client retrying a typo).
const FREE_FAILURES: u32 = 4;
/// Past those, a refresh this soon after a failed one is refused without verifying it.
const FAILED_REFRESH_GAP: Duration = Duration::from_secs(1);
/// This many failed refreshes in a row end the connection.
const MAX_FAILED_REFRESHES: u32 = 6;

pub async fn refresh_token(
    state: &Arc<AppState>,
    session: &mut Session,
    msg: &Inbound,
) -> Result<(), Rejection> {
    let now = Instant::now();
    if session.refresh_failures >= FREE_FAILURES
        && let Some(last) = session.last_refresh_failure
        && now.duration_since(last) < FAILED_REFRESH_GAP
    {
        let wait = FAILED_REFRESH_GAP - now.duration_since(last);
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            "a refresh failed less than a second ago: wait before the next",
        )
        .retry_after(wait.as_millis() as u64 + 1));
    }
    match verified(state, session, msg).await {
        Ok(fresh) => {
            session.refresh_failures = 0;
            session.last_refresh_failure = None;
            session.liveness.set_expiry(fresh.expires_at);
            session.identity = fresh.identity;
            end_what_is_no_longer_allowed(state, session);
            session.ack(
                msg,
                &json!({"expiresAt": fresh.expires_at.map(liveness::unix_ms)}),
            );
            Ok(())
        }
        Err(r) => {
            session.refresh_failures += 1;
            session.last_refresh_failure = Some(now);
            if session.refresh_failures >= MAX_FAILED_REFRESHES {
                session
                    .handle
                    .refuse(protocol::ERROR_TYPE, msg.correlation_id.as_deref(), &r);
                session.handle.queue.close(
                    protocol::close::POLICY_VIOLATION,
                    CloseReason::RefreshFailures,
                );
                return Ok(());
            }
            Err(r)
        }
    }
}

async fn verified(
    state: &AppState,
    session: &Session,
    msg: &Inbound,
) -> Result<crate::auth::Authenticated, Rejection> {
    let Some(token) = msg.payload.get("token").and_then(Value::as_str) else {
        return Err(Rejection::invalid_field(
            "/token",
            "$ws:auth needs payload.token",
        ));
    };
    let fresh = state
        .auth
        .verify(token)
        .await
        .map_err(|e| Rejection::new(ErrorCode::Unauthenticated, e.to_string()))?;
    if fresh.identity.user_id != session.identity.user_id {
        return Err(Rejection::new(
            ErrorCode::PermissionDenied,
            "a refreshed token must be for the same user",
        ));
    }
    Ok(fresh)
}

/// Re-applies each held topic's `subscribe` access to the new identity.
fn end_what_is_no_longer_allowed(state: &Arc<AppState>, session: &mut Session) {
    let denied: Vec<_> = session
        .subscriptions
        .iter()
        .filter_map(|topic| {
            policy::check_access(state, session, topic, Verb::Subscribe)
                .err()
                .map(|r| (topic.clone(), r))
        })
        .collect();
    for (topic, r) in denied {
        session.subscriptions.remove(&topic);
        actions::unsubscribe::drop_subscription(state, session, &topic, true);
        session.handle.reply(
            protocol::UNSUBSCRIBED_TYPE,
            None,
            &json!({"topic": topic.as_str(), "code": r.code.as_str(), "message": r.message}),
        );
    }
}
