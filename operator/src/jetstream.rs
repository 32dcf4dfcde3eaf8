//! The JetStream stream of an app's history topics, put in place before a spec rolls
//! out (docs/RECOVERY.md, "On NATS"). The pods would create or update it themselves
//! at start, but a change JetStream refuses (another stream already holds the
//! subjects, a byte bound above what the server allows, JetStream not enabled) would
//! then leave every new pod unready while the rollout replaces the old ones. Refused
//! here, it is a Degraded condition instead, and the running pods keep the stream
//! they have.
//!
//! The operator reaches NATS at `spec.nats.url`, as the pods do. When it cannot (a
//! network policy, NATS still starting), it cannot judge the stream, so it says so in
//! its log and rolls out as it would without history: the pods report the stream in
//! their readiness. The same holds, without trying, for a bus that needs
//! `spec.nats.auth` or `spec.nats.tls`: the operator never reads the app's Secrets (it
//! would need `get` on every Secret of the cluster), so it holds no bus credentials.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, context::CreateStreamErrorKind, stream};
use switchboard_spec::NatsSettings;
use tokio::sync::Mutex;
use tracing::{debug, warn};

/// How long connecting to NATS, and then JetStream's answer, may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the stream is not in place.
#[derive(Debug, thiserror::Error)]
pub enum StreamProblem {
    /// NATS answers but has no JetStream: history cannot work at all.
    #[error(
        "spec.topics[].history needs JetStream, and the NATS server at {url} does not have it enabled (start it with -js, or set jetstream in its config)"
    )]
    NoJetStream { url: String },
    /// JetStream refused the stream as the spec wants it.
    #[error("JetStream at {url} refused stream {stream} as this spec wants it: {message}")]
    Refused {
        url: String,
        stream: String,
        message: String,
    },
}

impl StreamProblem {
    /// The Degraded condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoJetStream { .. } => "JetStreamUnavailable",
            Self::Refused { .. } => "HistoryStreamRefused",
        }
    }
}

/// One NATS connection per URL, kept across reconciles.
#[derive(Default)]
pub struct HistoryStreams {
    clients: Mutex<HashMap<String, async_nats::Client>>,
}

impl HistoryStreams {
    /// Creates or updates the stream to `config` (idempotent: the pods ask for the
    /// same). `Ok` too when NATS cannot be reached (see the module docs).
    pub async fn ensure(
        &self,
        nats: &NatsSettings,
        config: stream::Config,
    ) -> Result<(), StreamProblem> {
        let url = nats.url.as_str();
        if nats.auth.is_some() || nats.tls.is_some() {
            debug!(%url, stream = %config.name, "the bus needs credentials the operator does not hold; the pods put the history stream in place and report it in their readiness");
            return Ok(());
        }
        let Some(client) = self.client(url).await else {
            return Ok(());
        };
        let name = config.name.clone();
        let js = jetstream::new(client);
        let answer = tokio::time::timeout(NATS_TIMEOUT, js.create_or_update_stream(config)).await;
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match e.kind() {
                CreateStreamErrorKind::JetStreamUnavailable => Err(StreamProblem::NoJetStream {
                    url: url.to_owned(),
                }),
                CreateStreamErrorKind::JetStream(api) => Err(StreamProblem::Refused {
                    url: url.to_owned(),
                    stream: name,
                    message: api.to_string(),
                }),
                other => {
                    warn!(%url, stream = %name, error = %other, "no answer from JetStream; rolling out without checking the history stream");
                    Ok(())
                }
            },
            Err(_) => {
                warn!(%url, stream = %name, "JetStream did not answer in time; rolling out without checking the history stream");
                Ok(())
            }
        }
    }

    async fn client(&self, url: &str) -> Option<async_nats::Client> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(url) {
            return Some(client.clone());
        }
        let connected = async_nats::ConnectOptions::new()
            .connection_timeout(NATS_TIMEOUT)
            .connect(url)
            .await;
        match connected {
            Ok(client) => {
                clients.insert(url.to_owned(), client.clone());
                Some(client)
            }
            Err(e) => {
                warn!(%url, error = %e, "cannot reach NATS; rolling out without checking the history stream");
                None
            }
        }
    }
}
