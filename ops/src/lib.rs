//! What both binaries (`switchboard-server`, `switchboard-operator`) share for being
//! operated: one admin listener shape (`/healthz`, `/readyz`, `/metrics`) and one
//! logging setup, so probes, scrapes and log pipelines treat them alike.

pub mod admin;
pub mod logging;
