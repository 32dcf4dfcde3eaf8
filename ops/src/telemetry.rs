//! Logs and traces for both binaries.
//!
//! Logs: `RUST_LOG` filters (default `info`), `SWITCHBOARD_LOG_FORMAT=json` for JSON lines.
//!
//! Traces: OTLP export, configured only by the standard environment:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `grpc` (default) or `http/protobuf`;
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the process;
//! `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` choose the sampler (read by the SDK);
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off.
//!
//! Exported spans use the target [`SPAN_TARGET`]. The log layer never enables that
//! target, so with export off those spans are disabled at their call sites: creating
//! one costs a cached interest check, and the hot path pays nothing else.

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of every span meant for export (`info_span!(target: SPAN_TARGET, ...)`).
pub const SPAN_TARGET: &str = "sb_span";

/// The installed tracing pipeline; [`Telemetry::shutdown`] flushes what is buffered.
#[must_use = "call shutdown() before exit, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every span still buffered, then stops the exporter. Called after a drain,
    /// so the last traces of a pod are not lost with it. The SDK's shutdown blocks until
    /// the exporter is done, and the exporter needs this runtime to do it: hence a
    /// blocking thread.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: cannot flush traces: {e}"),
            Err(e) => eprintln!("warning: cannot flush traces: {e}"),
        }
    }
}

/// The filter without `RUST_LOG`. async-nats logs every client event at info, one line
/// per failed reconnect attempt with no address or cause; the server logs NATS
/// trouble itself (see `server/src/bus/outage.rs`), so the library's own lines start at
/// warn.
pub const DEFAULT_LOG_FILTER: &str = "info,async_nats=warn";

/// Installs logging and, when the environment asks for it, OTLP trace export.
///
/// `service` names the process when `OTEL_SERVICE_NAME` does not; `instance` becomes
/// `service.instance.id` (the pod name), so spans of two replicas can be told apart.
/// Spans of [`SPAN_TARGET`] are exported, and so are INFO spans of `also_export`
/// targets (spans that are log context too, like the operator's per-reconcile span).
/// Must be called within a tokio runtime (the HTTP exporter runs on it).
pub fn init(service: &str, instance: &str, also_export: &[&str]) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Spans for export are never log lines, whatever RUST_LOG says.
    let filter = filter.add_directive(format!("{SPAN_TARGET}=off").parse()?);
    let json =
        std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };

    let provider = if export_requested() {
        Some(provider(service, instance)?)
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        // Our spans, and warnings/errors as events on them.
        let targets = also_export.iter().fold(
            Targets::new()
                .with_target(SPAN_TARGET, Level::TRACE)
                .with_default(Level::WARN),
            |t, target| t.with_target(*target, Level::INFO),
        );
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("switchboard"))
            .with_filter(targets)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("cannot install the tracing subscriber")?;
    Ok(Telemetry { provider })
}

fn export_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn provider(service: &str, instance: &str) -> anyhow::Result<SdkTracerProvider> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".into());
    // The endpoint, headers and timeout come from the OTEL_EXPORTER_OTLP_* variables,
    // read by the exporter builders themselves.
    let provider = match protocol.as_str() {
        "grpc" => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .context("cannot build the OTLP gRPC exporter")?;
            builder.with_batch_exporter(exporter).build()
        }
        "http/protobuf" => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build()
                .context("cannot build the OTLP HTTP exporter")?;
            // The hyper client needs the batch processor that runs on tokio.
            let processor =
                opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
            builder.with_span_processor(processor).build()
        }
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use grpc or http/protobuf"
        ),
    };
    Ok(provider)
}
