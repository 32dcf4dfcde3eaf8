//! A route's action, one file each, run by the router after every check has passed.
//! Each answers the client itself: an ack, a reply, or (via `Err`) an error frame.

pub mod forward;
pub mod history;
pub mod presence;
pub mod publish;
pub mod request;
pub mod subscribe;
pub mod unsubscribe;

use crate::bus::RpcError;
use crate::protocol::{ErrorCode, Rejection};

/// What the client is told when the bus could not carry its message to a backend.
fn bus_rejection(e: &RpcError) -> Rejection {
    let code = match e {
        RpcError::Timeout(_) => ErrorCode::DeadlineExceeded,
        RpcError::NoBus | RpcError::NoResponders | RpcError::Unavailable(_) => {
            ErrorCode::Unavailable
        }
    };
    Rejection::new(code, e.to_string())
}
