//! `switchboard-server`: the WebSocket gateway of a RealtimeApp.
//!
//! A message's path, by file: [`gateway`] accepts and authenticates the upgrade,
//! [`connection`] reads frames into the connection's [`session`], [`protocol`] parses
//! the envelope, [`router`] checks the route (roles, [`ratelimit`], schema) and runs its
//! one action from [`actions`] (topic access by [`policy`]); a publish is encoded once
//! and handed to the [`bus`], whose [`topics`] registry pushes the same bytes through
//! each subscriber's [`handle`] into its [`outbound`] queue, which that subscriber's
//! writer drains to its socket. [`refresh`] handles `$ws:auth`, [`drain`] a shutdown.

pub mod actions;
pub mod admission;
pub mod auth;
pub mod bus;
pub mod client_addr;
pub mod codegen;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod demo;
pub mod drain;
pub mod frame_watch;
pub mod frame_write;
pub mod gateway;
pub mod handle;
pub mod history;
pub mod jwks;
pub mod liveness;
pub mod log_budget;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod presence;
pub mod presence_nats;
pub mod protocol;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod refresh;
pub mod router;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
pub mod topics;
pub mod trace;

pub use config::{Cli, ServerConfig};
pub use server::Server;
pub use switchboard_ops::shutdown::Shutdown;
