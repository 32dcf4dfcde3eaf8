//! `forward`: hand the payload to backends on a NATS subject, fire and forget;
//! acknowledged once the bus has taken it.

use bytes::Bytes;
use serde_json::json;
use switchboard_spec::ForwardAction;

use super::bus_rejection;
use crate::protocol::{Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;

pub fn run(
    state: &AppState,
    session: &Session,
    msg: &Inbound,
    action: &ForwardAction,
) -> Result<(), Rejection> {
    let payload = Bytes::copy_from_slice(msg.raw_payload.get().as_bytes());
    state
        .bus
        .forward(&action.subject, payload, &session.identity)
        .map_err(|e| bus_rejection(&e))?;
    session.ack(msg, &json!({}));
    Ok(())
}
