//! `request`: ask a backend over the bus and answer the client with its reply (checked
//! against `replySchema`) or an RPC_ERROR, exactly once.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::Value;
use switchboard_ops::metrics::{CounterByLabel, register};
use switchboard_spec::RequestAction;
use tracing::Instrument as _;

use super::bus_rejection;
use crate::bus::RpcError;
use crate::protocol::{self, ErrorCode, Inbound, Rejection};
use crate::session::Session;
use crate::state::AppState;
use crate::trace::SPAN_TARGET;

/// Sends the request to the backends and answers when they do. Runs as its own task so
/// the connection keeps reading while the backend works; the connection counts it as
/// in flight, so a drain delivers the reply before closing.
pub fn run(state: &Arc<AppState>, session: &Session, msg: &Inbound, action: &Arc<RequestAction>) {
    let started = Instant::now();
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "rpc.request",
        rpc.subject = %action.subject,
        outcome = tracing::field::Empty,
    );
    // Entered while the bus builds the request, which carries this span's context to
    // the backend.
    let pending = span.in_scope(|| {
        state.bus.request(
            &action.subject,
            Bytes::copy_from_slice(msg.raw_payload.get().as_bytes()),
            &session.identity,
            action.timeout,
        )
    });
    let (state, action) = (state.clone(), action.clone());
    let handle = session.handle.clone();
    let correlation_id = msg.correlation_id.clone();
    handle.rpc_started();
    let (task_span, tasks) = (span.clone(), state.tasks.clone());
    let task = async move {
        let answer = match pending.await {
            Ok(reply) => backend_reply(&action, &reply),
            Err(e @ RpcError::Timeout(_)) => Err((bus_rejection(&e), RpcOutcome::Timeout)),
            Err(e) => Err((bus_rejection(&e), RpcOutcome::Unavailable)),
        };
        let outcome = answer.as_ref().map_or_else(|(_, o)| *o, |_| RpcOutcome::Ok);
        // Counted before the answer is queued, so a client that has it sees it counted.
        span.record("outcome", outcome.as_str());
        state.metrics.rpc.requests.inc(outcome);
        state
            .metrics
            .rpc
            .duration
            .observe(started.elapsed().as_secs_f64());
        let correlation_id = correlation_id.as_deref();
        match answer {
            Ok(value) => handle.reply(&action.reply, correlation_id, &value),
            Err((r, _)) => handle.refuse(protocol::RPC_ERROR_TYPE, correlation_id, &r),
        };
        handle.rpc_finished();
    };
    tasks.spawn(task.instrument(task_span));
}

/// A backend's reply as the client's reply payload: a value checked against
/// `replySchema`, or the backend's own `{"error": {"code", "message"}}` as a refusal.
fn backend_reply(action: &RequestAction, reply: &[u8]) -> Result<Value, (Rejection, RpcOutcome)> {
    let invalid = |message: String| {
        (
            Rejection::new(ErrorCode::Internal, message),
            RpcOutcome::InvalidReply,
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
            .and_then(ErrorCode::parse)
            .unwrap_or(ErrorCode::Internal);
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the backend refused the request");
        return Err((Rejection::new(code, message), RpcOutcome::Error));
    }
    if let Some(v) = &action.reply_validator
        && let Some(e) = v.iter_errors(&value).next()
    {
        return Err(invalid(format!(
            "the backend's reply does not match the route's replySchema at {:?}: {e}",
            e.instance_path().to_string()
        )));
    }
    Ok(value)
}

switchboard_ops::label_values! {
    /// How a request to a backend ended: the `outcome` of `switchboard_rpc_requests_total`.
    pub enum RpcOutcome {
        /// The backend replied and the reply passed `replySchema`.
        Ok => "ok",
        /// The backend answered with `{"error": …}`.
        Error => "error",
        /// The reply was not JSON or failed `replySchema`.
        InvalidReply => "invalid_reply",
        Timeout => "timeout",
        /// No bus, no responders, or the bus backed up.
        Unavailable => "unavailable",
    }
}

/// Requests to backends, by outcome, and how long each took.
pub struct RpcMetrics {
    pub requests: CounterByLabel<RpcOutcome>,
    pub duration: Histogram,
}

impl RpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = CounterByLabel::register(
            registry,
            "switchboard_rpc_requests",
            "Requests to backends, by outcome (ok, error, invalid_reply, timeout, unavailable)",
            "outcome",
        );
        // 1 ms .. ~33 s
        let duration = register(
            registry,
            "switchboard_rpc_duration_seconds",
            "Time from sending a request to a backend to its outcome",
            Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        );
        Self { requests, duration }
    }
}
