//! Integration tests of switchboard-server over real sockets (one test binary, many
//! modules, so the suite links once).

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod binary;
mod bus_credentials;
mod bus_security;
mod client_crate;
mod compression;
mod drain;
mod examples;
mod harness;
mod heartbeat;
mod history;
mod history_nats;
mod jwks;
mod limits;
mod nats;
mod protocol;
mod proxies;
mod routing;
mod tls;
