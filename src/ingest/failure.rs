//! Why a blob was not queued: one code per kind of failure, each knowing whether trying again
//! later may help and how long to wait. The HTTP edge maps them to its error shape in one place
//! (`http::errors`); the Event Grid trigger decides between redelivery and acknowledgement on
//! `is_transient`.

use std::fmt;
use std::time::Duration;

/// How long a caller is told to wait after a transient failure that carries no hint of its own.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Every per-blob failure code the service answers with (`error.code` of a failed blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureCode {
    /// No managed-identity token for the DM.
    IdentityUnavailable,
    /// The DM is unreachable, throttling or failing (5xx).
    DataManagementUnavailable,
    /// The DM refused the app's identity (401/403).
    DataManagementUnauthorized,
    /// The DM refused the command or answered something unusable.
    DataManagementRejected,
    /// The encoded message is over the queue's 64 KiB.
    MessageTooLarge,
    /// A queue refused the message itself (413, 400 MessageTooLarge): any queue would.
    MessageRejected,
    /// The queues refused their SAS even with fresh resources.
    QueueAuthorizationFailed,
    /// No queue accepted the message (5xx, throttling, refused connections).
    QueueUnavailable,
    /// A queue may have taken the message but its answer was lost (a reset or a timeout after
    /// the message was sent): the blob may be ingested. Never reported as a failure.
    QueueOutcomeUnknown,
    /// The request's (or invocation's) deadline passed before the blob was tried.
    DeadlineExceeded,
    /// The blob is to be tracked, but its status row could not be written (or the DM hands out
    /// no status table); it was not queued.
    TrackingUnavailable,
    /// A data body could not be stored in the DM's temporary storage.
    UploadUnavailable,
    /// The blob is larger (uncompressed) than the DM accepts for one ingestion (the `maxDataSize`
    /// of its REST v2 configuration); it was not sent.
    DataTooLarge,
    /// A queued-ingestion POST (REST v2) went out but its answer was lost: the DM may have
    /// queued the blob. Never reported as a failure.
    IngestionOutcomeUnknown,
}

/// What an `unknown` outcome tells the caller about sending the blob again, whichever backend
/// lost the answer.
pub(crate) const UNKNOWN_OUTCOME_ADVICE: &str = "Ingestion is at least once: sending the blob again may ingest it twice, unless the request sets \"idempotent\": true with the same sourceId";

impl FailureCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureCode::IdentityUnavailable => "IdentityUnavailable",
            FailureCode::DataManagementUnavailable => "DataManagementUnavailable",
            FailureCode::DataManagementUnauthorized => "DataManagementUnauthorized",
            FailureCode::DataManagementRejected => "DataManagementRejected",
            FailureCode::MessageTooLarge => "MessageTooLarge",
            FailureCode::MessageRejected => "MessageRejected",
            FailureCode::QueueAuthorizationFailed => "QueueAuthorizationFailed",
            FailureCode::QueueUnavailable => "QueueUnavailable",
            FailureCode::QueueOutcomeUnknown => "QueueOutcomeUnknown",
            FailureCode::DeadlineExceeded => "DeadlineExceeded",
            FailureCode::TrackingUnavailable => "TrackingUnavailable",
            FailureCode::UploadUnavailable => "UploadUnavailable",
            FailureCode::IngestionOutcomeUnknown => "IngestionOutcomeUnknown",
            FailureCode::DataTooLarge => "DataTooLarge",
        }
    }

    /// Whether the same blob may be queued if tried again later.
    pub(crate) fn is_transient(self) -> bool {
        match self {
            FailureCode::IdentityUnavailable
            | FailureCode::DataManagementUnavailable
            | FailureCode::QueueAuthorizationFailed
            | FailureCode::QueueUnavailable
            | FailureCode::QueueOutcomeUnknown
            | FailureCode::DeadlineExceeded
            | FailureCode::TrackingUnavailable
            | FailureCode::UploadUnavailable
            | FailureCode::IngestionOutcomeUnknown => true,
            FailureCode::DataManagementUnauthorized
            | FailureCode::DataManagementRejected
            | FailureCode::MessageTooLarge
            | FailureCode::MessageRejected
            | FailureCode::DataTooLarge => false,
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one blob (or a whole batch, before any blob was tried) was not queued.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlobFailure {
    pub(crate) code: FailureCode,
    /// What happened, for the caller; never holds a SAS or token.
    pub(crate) message: String,
    /// For transient failures: when trying again makes sense.
    pub(crate) retry_after: Option<Duration>,
}

impl BlobFailure {
    /// A failure with the code's own retry hint ([`DEFAULT_RETRY_AFTER`] when transient).
    pub(crate) fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: code.is_transient().then_some(DEFAULT_RETRY_AFTER),
        }
    }

    /// Replaces the retry hint of a transient failure with the one the failing service gave.
    pub(crate) fn retry_after(mut self, hint: Option<Duration>) -> Self {
        if self.code.is_transient()
            && let Some(hint) = hint
        {
            self.retry_after = Some(hint);
        }
        self
    }

    pub(crate) fn is_transient(&self) -> bool {
        self.code.is_transient()
    }
}
