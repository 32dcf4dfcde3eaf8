//! `Server`: binds the listeners, wires state, runs until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::bus::local::LocalBus;
use crate::bus::nats::{self, NatsBus};
use crate::config::ServerConfig;
use crate::history::HistoryStore;
use crate::history::jetstream::JetStreamHistory;
use crate::history::memory::TopicHistory;
use crate::metrics::Metrics;
use crate::presence_nats::PresenceReplica;
use crate::state::AppState;
use crate::tls::TlsListener;
use crate::{drain, gateway};
use switchboard_ops::admin;
use switchboard_ops::shutdown::Shutdown;
use switchboard_spec::history_stream;

/// How long a history log with nothing stored is kept before it is forgotten.
const HISTORY_IDLE: Duration = Duration::from_secs(600);
/// How often idle shared rate-limit buckets and history logs are swept.
const BUCKET_SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct Server {
    state: Arc<AppState>,
    ws: TcpListener,
    /// `spec.tls`: the WebSocket listener speaks TLS with this certificate.
    tls: Option<Arc<TlsListener>>,
    admin: TcpListener,
}

impl Server {
    /// Loads secrets and binds both listeners; nothing is served until [`Server::run`].
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let app = config.app;
        let auth = Authenticator::load(
            app.jwt.as_ref(),
            app.spec.auth.anonymous,
            &config.secrets_dir,
        )?;
        let tls = match &app.spec.tls {
            Some(settings) => Some(Arc::new(
                TlsListener::load(settings, &config.secrets_dir)
                    .context("cannot serve spec.tls.secretRef")?,
            )),
            None => None,
        };
        let instance: Arc<str> = Arc::from(config.instance);
        let demo = config.demo;
        let metrics = Arc::new(Metrics::new(&app));
        let nats_url = config
            .nats_url
            .or_else(|| app.spec.nats.as_ref().map(|n| n.url.clone()));
        let nats = match &nats_url {
            Some(url) => Some(
                nats::connect(url, &app, &config.secrets_dir, &instance, metrics.clone())
                    .await
                    .with_context(|| format!("cannot use NATS at {url}"))?,
            ),
            None => None,
        };
        let (bus_instance, bus_metrics) = (instance.clone(), metrics.clone());
        let presence_client = nats.as_ref().map(|n| n.client());
        let mut state = AppState::new(
            app,
            instance,
            auth,
            metrics,
            move |app, registry| match nats {
                Some(connection) => {
                    let history = match history_stream::config(app) {
                        Some(config) => HistoryStore::JetStream(JetStreamHistory::start(
                            connection.client(),
                            app,
                            config,
                            registry.clone(),
                            bus_metrics.clone(),
                            bus_instance.clone(),
                        )),
                        None => HistoryStore::Memory(TopicHistory::new()),
                    };
                    let bus = NatsBus::start(connection, app, registry, bus_metrics, bus_instance);
                    (bus as Arc<dyn Bus>, history)
                }
                None => (
                    Arc::new(LocalBus::new(registry)) as Arc<dyn Bus>,
                    HistoryStore::Memory(TopicHistory::new()),
                ),
            },
        );
        state.demo = demo;
        let state = Arc::new(state);
        if let Some(client) = presence_client
            && state.app.topics.iter().any(|t| t.presence.is_some())
        {
            let subject = NatsBus::subjects_of(&state.app).presence();
            let replica = PresenceReplica::start(client, subject, &state);
            let _ = state.presence_replica.set(replica);
        }
        let ws = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (--admin-listen)", config.admin_listen)
            })?;
        Ok(Self {
            state,
            ws,
            tls,
            admin,
        })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown.begin` fires, then drains (see [`drain`]) and returns
    /// before the grace period ends; `shutdown.now` cuts the drain short.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let state = self.state;
        info!(
            ws = %self.ws.local_addr()?, admin = %self.admin.local_addr()?,
            app = %state.app.name, instance = %state.instance, "serving"
        );
        if state.demo {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            info!(url = %format!("{scheme}://{}/", self.ws.local_addr()?), "demo page");
        }
        let certificate_watch = self
            .tls
            .clone()
            .map(|tls| tokio::spawn(tls.watch(state.metrics.clone())));
        let stop_accepting = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let ws_task = tokio::spawn(gateway::accept_loop(
            self.ws,
            state.clone(),
            self.tls,
            stop_accepting.clone(),
        ));
        let admin_task = tokio::spawn(admin::accept_loop(
            self.admin,
            state.clone(),
            admin_stop.clone(),
        ));
        let sweeper = tokio::spawn(sweep_idle_state(state.clone()));
        let jwks_refresher = state
            .auth
            .jwks()
            .map(|jwks| tokio::spawn(jwks.clone().refresh_loop(state.metrics.clone())));

        shutdown.begin.cancelled().await;
        let started = Instant::now();
        state.draining.store(true, Ordering::Release);
        stop_accepting.cancel();
        let _ = ws_task.await;
        drain::drain(&state, &shutdown).await;
        state.abort_all.cancel();
        // Hand buffered publishes to NATS in what is left of the grace period.
        let margin = Duration::from_secs(u64::from(state.app.spec.drain.grace_period_seconds))
            .saturating_sub(started.elapsed());
        tokio::select! {
            () = state.bus.drain() => {}
            () = tokio::time::sleep(margin) => {}
            () = shutdown.now.cancelled() => {}
        }
        sweeper.abort();
        if let Some(watch) = certificate_watch {
            watch.abort();
        }
        if let Some(refresher) = jwks_refresher {
            refresher.abort();
            let _ = refresher.await;
        }
        admin_stop.cancel();
        let _ = admin_task.await;
        info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
        Ok(())
    }
}

/// Forgets what idle users and topics left behind: rate-limit buckets, and history
/// logs with nothing stored (see history.rs).
async fn sweep_idle_state(state: Arc<AppState>) {
    let mut every = tokio::time::interval(BUCKET_SWEEP_EVERY);
    loop {
        every.tick().await;
        state.limiter.evict_idle(Instant::now());
        if let HistoryStore::Memory(history) = &state.history {
            history.sweep(HISTORY_IDLE);
        }
    }
}
