//! What both binaries (`switchboard-server`, `switchboard-operator`) share for being
//! operated: one admin listener shape (`/healthz`, `/readyz`, `/metrics`) and one
//! telemetry setup (logs, and OTLP traces from the standard `OTEL_*` environment), so
//! probes, scrapes, log pipelines and trace backends treat them alike; one way to
//! declare bounded metric labels; one way to stop on signals; and one way to name the
//! process.

pub mod admin;
pub mod instance;
pub mod listener;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
