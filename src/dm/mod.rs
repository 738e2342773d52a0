//! Talking to a Kusto Data Management endpoint: management commands with the app's token and the
//! SDKs' headers, the v1 JSON table format they answer in, and the errors the DM returns. What the
//! commands mean belongs to the backend that runs them.

mod client;
pub(crate) mod refresh;
pub(crate) mod v1;

pub(crate) use client::{Call, DmClient, RetryPolicy};

use std::time::Duration;

/// `x-ms-app` and the message's `ApplicationForTracing`: how the cluster's logs name this service.
pub(crate) const APPLICATION_FOR_TRACING: &str = "kusto-ingest-api";
/// `x-ms-client-version` and the message's `ClientVersionForTracing`, in the SDKs' format.
pub(crate) const CLIENT_VERSION_FOR_TRACING: &str = concat!(
    "Kusto.IngestApi:{",
    env!("CARGO_PKG_VERSION"),
    "}|Runtime.{rust}"
);

/// Why a DM call failed. Messages never contain the bearer token or a SAS.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DmError {
    #[error("could not get a managed-identity token for the DM: {0}")]
    Identity(String),
    #[error("the DM at {endpoint} could not be reached: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The request went out but its answer was lost (a reset, a timeout): the DM may have acted
    /// on it.
    #[error("the DM at {endpoint} did not answer: {reason}")]
    Unanswered { endpoint: String, reason: String },
    #[error("the DM at {endpoint} is throttling requests (HTTP 429){}", retry_hint(.retry_after))]
    Throttled {
        endpoint: String,
        retry_after: Option<Duration>,
    },
    #[error("the DM at {endpoint} failed with HTTP {status}: {message}")]
    Server {
        endpoint: String,
        status: u16,
        message: String,
        /// A 503 may say when to come back.
        retry_after: Option<Duration>,
    },
    #[error("the DM at {endpoint} refused the app's identity (HTTP {status}): {message}")]
    Unauthorized {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("the DM at {endpoint} rejected the command (HTTP {status}): {message}")]
    Rejected {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("the DM at {endpoint} answered with something other than the expected table: {reason}")]
    InvalidResponse { endpoint: String, reason: String },
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!("; retry after {} s", d.as_secs()))
        .unwrap_or_default()
}

impl DmError {
    /// Transient failures may succeed if the same call is made again later.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            DmError::Identity(_)
                | DmError::Unreachable { .. }
                | DmError::Unanswered { .. }
                | DmError::Throttled { .. }
                | DmError::Server { .. }
        )
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            DmError::Throttled { retry_after, .. } | DmError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}
