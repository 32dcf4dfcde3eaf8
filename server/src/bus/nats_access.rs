//! How a replica logs in to NATS and which TLS it speaks: `spec.nats.auth` and
//! `spec.nats.tls` (README, "Securing the bus"), read from the mounted Secrets at
//! `<secrets-dir>/<name>/<key>`. The one place connection options get credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions};
use switchboard_spec::{NatsSettings, SecretKeyRef};

use super::outage;

/// Why the bus cannot be used as the spec says.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A Secret the spec names is not mounted (or not readable) where the operator
    /// mounts it.
    #[error("spec.nats.{field}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The field under `spec.nats` naming the Secret, for the user to fix.
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `credsRef` Secret holds no user JWT and seed.
    #[error("spec.nats.auth.credsRef: {} is not a NATS .creds file: {source}", path.display())]
    NotCreds {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The NATS server answered and refused: retrying would not help.
    #[error("spec.nats.{field}: the NATS server at {url} refused this replica: {cause}")]
    Refused {
        /// `auth` or `tls`: which settings it refused.
        field: &'static str,
        url: String,
        /// What async-nats reports, e.g. "authorization violation".
        cause: String,
    },
}

/// How long the first attempt at start may take to tell a refusal from an absence.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection options carrying the spec's credentials and TLS settings (none when
/// `settings` is absent: `--nats-url` alone connects anonymously).
pub fn options(
    settings: Option<&NatsSettings>,
    secrets_dir: &Path,
) -> Result<ConnectOptions, AccessError> {
    let mut options = ConnectOptions::new();
    let Some(settings) = settings else {
        return Ok(options);
    };
    let file = |field: &'static str, r: &SecretKeyRef| {
        let path = secrets_dir.join(&r.name).join(&r.key);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(source) => Err(AccessError::Unreadable {
                field,
                path,
                source,
            }),
        }
    };
    // A Secret written with `echo` ends in a newline that is no part of the value.
    let value =
        |field, r| file(field, r).map(|(_, text)| text.trim_end_matches(['\r', '\n']).to_owned());
    if let Some(auth) = &settings.auth {
        if let (Some(user), Some(r)) = (&auth.user, &auth.password_ref) {
            options = options.user_and_password(user.clone(), value("auth.passwordRef", r)?);
        }
        if let Some(r) = &auth.token_ref {
            options = options.token(value("auth.tokenRef", r)?);
        }
        if let Some(r) = &auth.nkey_seed_ref {
            options = options.nkey(value("auth.nkeySeedRef", r)?);
        }
        if let Some(r) = &auth.creds_ref {
            let (path, text) = file("auth.credsRef", r)?;
            options = options
                .credentials(&text)
                .map_err(|source| AccessError::NotCreds { path, source })?;
        }
    }
    if let Some(tls) = &settings.tls {
        // async-nats reads the PEM files when it connects; read here first, a missing
        // one names its field at start rather than failing every reconnect.
        options = options.require_tls(true);
        if let Some(r) = &tls.ca_ref {
            options = options.add_root_certificates(file("tls.caRef", r)?.0);
        }
        if let (Some(cert), Some(key)) = (&tls.cert_ref, &tls.key_ref) {
            let cert = file("tls.certRef", cert)?.0;
            options = options.add_client_certificate(cert, file("tls.keyRef", key)?.0);
        }
    }
    Ok(options)
}

/// Tries the spec's credentials and TLS once, at start, when it names any: NATS
/// refusing them is a configuration error to fail on, where NATS being away is an
/// outage the replica rides out (it retries in the background). `Ok` in that case.
pub async fn probe(
    settings: Option<&NatsSettings>,
    secrets_dir: &Path,
    url: &str,
) -> Result<(), AccessError> {
    let Some(settings) = settings.filter(|s| s.auth.is_some() || s.tls.is_some()) else {
        return Ok(());
    };
    let attempt = options(Some(settings), secrets_dir)?
        .connection_timeout(PROBE_TIMEOUT)
        .connect(url)
        .await;
    let error = match attempt {
        Ok(client) => {
            drop(client);
            return Ok(());
        }
        Err(error) => error,
    };
    let field = match error.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => "auth",
        ConnectErrorKind::Tls => "tls",
        // A NATS server that rejects the client's certificate (or its lack of one)
        // ends the connection after the handshake: an I/O error on a TCP connection
        // that works.
        ConnectErrorKind::Io
            if settings.tls.is_some()
                && outage::probe(&outage::first_address(url)).await.is_none() =>
        {
            "tls"
        }
        _ => return Ok(()),
    };
    Err(AccessError::Refused {
        field,
        url: url.to_owned(),
        cause: std::error::Error::source(&error)
            .map_or_else(|| error.to_string(), |s| format!("{error}: {s}")),
    })
}
