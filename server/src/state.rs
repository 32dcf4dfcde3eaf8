//! `AppState`: what every connection of one app shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use switchboard_spec::CompiledApp;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::codegen::asyncapi;
use crate::codegen::catalog::Catalog;
use crate::deflate::Outgoing;
use crate::handle::ConnectionHandle;
use crate::history::HistoryStore;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::presence_nats::PresenceReplica;
use crate::ratelimit::RateLimiter;
use crate::topics::TopicRegistry;

pub struct AppState {
    pub app: CompiledApp,
    /// This process's name (the pod name in Kubernetes): in `$ws:open` and connection ids.
    pub instance: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<TopicRegistry>,
    pub bus: Arc<dyn Bus>,
    /// Recent publications of the topics whose rule declares `history`.
    pub history: HistoryStore,
    /// Members of the topics whose rule declares `presence`, on this pod.
    pub presence: Presence,
    /// Their replication to the other pods (with NATS, when a rule declares presence).
    pub presence_replica: std::sync::OnceLock<Arc<PresenceReplica>>,
    pub limiter: RateLimiter,
    pub auth: Authenticator,
    pub admission: Admission,
    /// Every open connection, so shutdown can reach each one.
    pub connections: DashMap<Arc<str>, Arc<ConnectionHandle>>,
    /// Connection tasks, so shutdown can wait for them to finish.
    pub tasks: TaskTracker,
    /// Set once shutdown begins: readiness fails and upgrades are refused.
    pub draining: AtomicBool,
    /// Fired when the process must stop now (second signal): every connection aborts.
    pub abort_all: CancellationToken,
    /// The app's AsyncAPI document, served at `/asyncapi.json` on the admin port.
    asyncapi: bytes::Bytes,
    /// `spec.compression`, when enabled: offered to clients at the upgrade.
    pub compression: Option<Outgoing>,
    /// Serve the demo page beside `/ws` (`--demo`; see [`crate::demo`]).
    pub demo: bool,
    next_connection: AtomicU64,
}

impl AppState {
    pub fn new(
        app: CompiledApp,
        instance: Arc<str>,
        auth: Authenticator,
        metrics: Arc<Metrics>,
        bus_for: impl FnOnce(&CompiledApp, Arc<TopicRegistry>) -> (Arc<dyn Bus>, HistoryStore),
    ) -> Self {
        let registry = Arc::new(TopicRegistry::new(metrics.clone()));
        let (bus, history) = bus_for(&app, registry.clone());
        let limiter = RateLimiter::new(app.buckets.clone());
        let admission = Admission::new(
            app.spec.limits.max_connections,
            app.spec.limits.max_connections_per_ip,
        );
        let asyncapi = asyncapi::render(&Catalog::new(&app)).into();
        Self {
            asyncapi,
            compression: Outgoing::from_spec(&app.spec),
            demo: false,
            app,
            instance,
            metrics,
            registry,
            bus,
            history,
            presence: Presence::default(),
            presence_replica: std::sync::OnceLock::new(),
            limiter,
            auth,
            admission,
            connections: DashMap::new(),
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            abort_all: CancellationToken::new(),
            next_connection: AtomicU64::new(1),
        }
    }

    /// A connection id unique across replicas: `<instance>-<n>`.
    pub fn next_connection_id(&self) -> Arc<str> {
        let n = self.next_connection.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{n:x}", self.instance))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Ready once the bus can reach other replicas (a replica that took clients before its
/// first NATS connection would cut them off from the rest of the app); not ready again
/// as soon as draining starts, so the Service stops sending new clients. A later NATS
/// outage does not unready it: local delivery goes on. With `auth.jwt.jwks`, not ready
/// until a first key set is loaded (every token would be refused); a later failed
/// refresh does not unready it, as the last good set stays in use.
impl switchboard_ops::admin::AdminState for AppState {
    fn readiness(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            Err("draining\n")
        } else if !self.bus.is_ready() {
            Err("waiting for the first NATS connection\n")
        } else if !self.history.is_ready() {
            Err("waiting for the JetStream history stream\n")
        } else if self.auth.jwks().is_some_and(|k| !k.is_loaded()) {
            Err("waiting for the first JWKS key set (spec.auth.jwt.jwks.url)\n")
        } else {
            Ok(())
        }
    }

    fn encode_metrics(&self) -> String {
        self.metrics.encode()
    }

    fn json_document(&self, path: &str) -> Option<bytes::Bytes> {
        (path == "/asyncapi.json").then(|| self.asyncapi.clone())
    }
}
