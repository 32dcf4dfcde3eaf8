//! One trace across the hops of a message: W3C trace context (`traceparent`) taken from
//! a client's `meta.traceparent`, carried in NATS headers from the publishing replica to
//! the delivering one, and handed to RPC backends.
//!
//! Every helper here is a no-op on disabled spans: with trace export off, spans of
//! [`SPAN_TARGET`] are disabled at their call sites and nothing is parsed or formatted.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use switchboard_ops::telemetry::SPAN_TARGET;

/// The W3C header (and NATS header) names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Makes `span` a child of the remote span described by `traceparent`/`tracestate`,
/// when they are valid; otherwise `span` stays a root.
pub fn continue_from(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| !span.is_disabled()) else {
        return;
    };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when the span already started a trace of its own: not the case
        // for the freshly created spans this is called with.
        let _ = span.set_parent(cx);
    }
}

/// `span`'s context for the next hop: (`traceparent`, `tracestate`), or `None` when
/// the span is disabled or not sampled... in which case the next hop starts fresh.
pub fn context_of(span: &Span) -> Option<(String, Option<String>)> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    let traceparent = carrier.remove(TRACEPARENT)?;
    Some((
        traceparent,
        carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_spans_carry_nothing() {
        let span = Span::none();
        continue_from(
            &span,
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            None,
        );
        assert!(context_of(&span).is_none());
    }
}
