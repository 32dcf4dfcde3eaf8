//! `$ws:auth`: a fresh token for the same user extends the connection's life
//! (docs/PROTOCOL.md §5).

use serde_json::{Value, json};

use crate::liveness;
use crate::protocol::{ErrorCode, Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

pub fn refresh_token(
    state: &AppState,
    session: &mut Session,
    msg: &Inbound,
) -> Result<(), Rejection> {
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
    session.ack(
        msg,
        &json!({"expiresAt": fresh.expires_at.map(liveness::unix_ms)}),
    );
    Ok(())
}
