//! The Kusto Data Management endpoint: the two management commands queued ingestion needs, the
//! v1 JSON table format they answer in, and the errors the DM returns.

mod client;
pub mod resources;
pub mod v1;

pub use client::{DmClient, RetryPolicy};
pub use resources::{IngestionResources, QueueResource};

use std::fmt;
use std::time::Duration;

/// The opaque identity token (`.get kusto identity token`) every message must carry. Never
/// printed: `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationContext(String);

impl AuthorizationContext {
    pub fn new(token: String) -> Self {
        Self(token)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthorizationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationContext(<redacted>)")
    }
}

/// Why a DM call failed. Messages never contain the bearer token or a SAS.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DmError {
    #[error("could not get a managed-identity token for the DM: {0}")]
    Identity(String),
    #[error("the DM at {endpoint} could not be reached: {reason}")]
    Unreachable { endpoint: String, reason: String },
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
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DmError::Identity(_)
                | DmError::Unreachable { .. }
                | DmError::Throttled { .. }
                | DmError::Server { .. }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DmError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
