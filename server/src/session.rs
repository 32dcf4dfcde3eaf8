//! `Session`: one connection's state that only its reader touches, and the answers it
//! sends its own client.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use switchboard_spec::{Identity, Topic};

use crate::deflate::Negotiated;
use crate::handle::ConnectionHandle;
use crate::liveness::Liveness;
use crate::protocol::{self, Inbound};
use crate::ratelimit::ConnectionBuckets;

pub struct Session {
    pub handle: Arc<ConnectionHandle>,
    pub identity: Identity,
    /// `identity.user_id`, shared cheaply with rate-limit keys.
    pub user_id: Arc<str>,
    pub ip: IpAddr,
    pub subscriptions: HashSet<Topic>,
    pub buckets: ConnectionBuckets,
    pub liveness: Arc<Liveness>,
    /// What the client agreed to at the upgrade when it negotiated permessage-deflate.
    pub deflate: Option<Negotiated>,
    /// Failed `$ws:auth` refreshes in a row, and when the last one failed: verifying a
    /// bad signature costs the server real CPU, so failures are spaced and bounded.
    pub refresh_failures: u32,
    pub last_refresh_failure: Option<std::time::Instant>,
    /// The exported `ws.connection` span (disabled with export off). Message spans link
    /// to it rather than nest in it, so a long connection does not become one endless
    /// trace.
    pub span: tracing::Span,
}

impl Session {
    /// `$ws:ack`, sent only when the client asked for an answer by giving a correlation
    /// id (docs/PROTOCOL.md §3).
    pub fn ack(&self, msg: &Inbound, payload: &Value) {
        if let Some(c) = msg.correlation_id.as_deref() {
            self.handle.reply(protocol::ACK_TYPE, Some(c), payload);
        }
    }
}
