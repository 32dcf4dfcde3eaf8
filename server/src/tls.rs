//! TLS on the WebSocket listener (README, "TLS and ingress"): `spec.tls.secretRef`
//! names a `kubernetes.io/tls` Secret whose `tls.crt` and `tls.key` are read from
//! `<secrets-dir>/<name>/`, and re-read whenever they change.
//!
//! Kubelet updates a mounted Secret by swapping a symlink, and cert-manager renews
//! certificates weeks before they expire, so the files are polled (two small reads
//! every [`RELOAD_EVERY`]) rather than watched: a poll sees a symlink swap the same way
//! it sees an edit in place, on every filesystem. A renewed pair is served to the next
//! handshake; connections already open keep the session they negotiated. A pair that
//! does not parse (half written, key not matching) is logged and counted, and the last
//! good one is kept: a bad renewal must not take the listener down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use switchboard_ops::metrics::CounterByLabel;
use switchboard_spec::{TlsSettings, TlsVersion};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How often the certificate files are compared with what is being served.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Key names of a `kubernetes.io/tls` Secret.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {detail}")]
    BadPem { path: PathBuf, detail: String },
    #[error("{key} does not hold a private key for the certificate in {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS settings refused by rustls: {0}")]
    Config(rustls::Error),
}

switchboard_ops::label_values! {
    /// What a look at changed certificate files led to: the `result` of
    /// `switchboard_tls_reloads_total`.
    pub enum ReloadResult {
        /// A new certificate and key are served to the next handshake.
        Loaded => "loaded",
        /// The files changed but did not make a usable pair; the old one is kept.
        Failed => "failed",
    }
}

/// Certificate reloads; a `failed` that does not go away means a renewal is stuck.
pub struct TlsMetrics {
    pub reloads: CounterByLabel<ReloadResult>,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let reloads = CounterByLabel::register(
            registry,
            "switchboard_tls_reloads",
            "Changed spec.tls certificate files seen, by whether the new pair is served",
            "result",
        );
        Self { reloads }
    }
}

/// The listener's TLS: an acceptor whose certificate follows the Secret's files.
pub struct TlsListener {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadingCertificate>,
}

impl TlsListener {
    /// Reads the pair once (a missing or broken pair stops the server from starting,
    /// with the file named) and builds the acceptor: TLS 1.3 and 1.2 (or 1.3 only),
    /// rustls's default suites on the workspace's ring provider, ALPN `http/1.1`.
    pub fn load(settings: &TlsSettings, secrets_dir: &Path) -> Result<Self, TlsError> {
        let dir = secrets_dir.join(&settings.secret_ref.name);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = FilePair::read(&dir)?;
        let key = pair.certified_key(&dir, &provider)?;
        let certificate = Arc::new(ReloadingCertificate {
            dir,
            provider: provider.clone(),
            served: RwLock::new(Arc::new(key)),
            files: RwLock::new(pair),
        });
        let versions: &[&'static rustls::SupportedProtocolVersion] =
            match settings.min_version.unwrap_or_default() {
                TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
                TlsVersion::Tls13 => &[&rustls::version::TLS13],
            };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Follows the files until the task is aborted (with the server).
    pub async fn watch(self: Arc<Self>, metrics: Arc<crate::metrics::Metrics>) {
        let mut every = tokio::time::interval(RELOAD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Some(result) = self.certificate.reload_if_changed() {
                metrics.tls.reloads.inc(result);
            }
        }
    }
}

/// The bytes of `tls.crt` and `tls.key` as last read, to tell a change from a poll.
#[derive(PartialEq, Eq)]
struct FilePair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl FilePair {
    fn read(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
        };
        Ok(Self {
            cert: read(CERT_FILE)?,
            key: read(KEY_FILE)?,
        })
    }

    /// The chain and key, checked to belong together, ready to sign handshakes.
    fn certified_key(
        &self,
        dir: &Path,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadPem {
                path: cert_path.clone(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: cert_path });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| TlsError::BadPem {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
            source,
        })
    }
}

/// The certificate handed to every handshake, swapped when the files change.
struct ReloadingCertificate {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    served: RwLock<Arc<CertifiedKey>>,
    /// What was last read, loaded or not, so a broken pair is reported once, not
    /// on every poll.
    files: RwLock<FilePair>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    /// `None` when the files are as last seen (or unreadable mid-swap: the next poll
    /// looks again).
    fn reload_if_changed(&self) -> Option<ReloadResult> {
        let pair = FilePair::read(&self.dir).ok()?;
        if self.files.read().is_ok_and(|seen| *seen == pair) {
            return None;
        }
        let checked = pair.certified_key(&self.dir, &self.provider);
        // The two files are read one after the other, so a swap between the reads
        // gives a pair that does not match: if they changed again, look next time.
        if checked.is_err()
            && FilePair::read(&self.dir)
                .ok()
                .is_none_or(|again| again != pair)
        {
            return None;
        }
        let result = match checked {
            Ok(key) => {
                if let Ok(mut served) = self.served.write() {
                    *served = Arc::new(key);
                }
                info!(dir = %self.dir.display(), "serving the renewed TLS certificate");
                ReloadResult::Loaded
            }
            Err(e) => {
                warn!(error = %e, "changed TLS files are not a usable pair; still serving the previous certificate");
                ReloadResult::Failed
            }
        };
        if let Ok(mut seen) = self.files.write() {
            *seen = pair;
        }
        Some(result)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.served.read().ok().map(|key| key.clone())
    }
}
