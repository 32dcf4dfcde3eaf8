//! Typed errors: the server's `ERROR` / `RPC_ERROR` payloads (docs/PROTOCOL.md §4)
//! and the client's own (a timeout, a closed client, a lost connection).

use serde::Deserialize;
use serde_json::Value;

/// A refusal or failure, with what a caller needs to decide whether to try again.
#[derive(Clone, Debug, thiserror::Error, Deserialize, PartialEq)]
#[error("{code}: {message}")]
#[serde(rename_all = "camelCase")]
pub struct Error {
    /// The server's code (`INVALID_ARGUMENT`, `UNAVAILABLE`, ...), or the client's own:
    /// `DEADLINE_EXCEEDED` (no answer in time), `CANCELLED` (the client was closed),
    /// `UNAVAILABLE` (the connection closed before the answer came).
    pub code: String,
    pub message: String,
    /// Whether the same message may succeed later.
    #[serde(default)]
    pub retryable: bool,
    /// On rate-limit refusals: the wait before the same charge would succeed.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    #[serde(default)]
    pub details: Option<Value>,
}

impl Error {
    /// An error the client raises itself.
    pub fn local(code: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable,
            retry_after_ms: None,
            details: None,
        }
    }

    /// From an error frame's payload (a malformed one becomes `INTERNAL`).
    pub fn from_payload(payload: &Value) -> Self {
        serde_json::from_value(payload.clone()).unwrap_or_else(|_| {
            Self::local(
                "INTERNAL",
                format!("an error frame without a valid payload: {payload}"),
                false,
            )
        })
    }
}
