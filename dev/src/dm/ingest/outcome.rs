//! What became of one queued message: the record tests read
//! ([`crate::DmEmulator::ingestion_outcomes`]) and the failure the pipeline stops with.

use serde::Serialize;

/// Final status of an ingestion, as the DM writes it to the status table (reference §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IngestionStatus {
    Succeeded,
    Failed,
    /// `ingestIfNotExists` named an `ingest-by:` tag the table already has.
    Skipped,
}

impl IngestionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestionStatus::Succeeded => "Succeeded",
            IngestionStatus::Failed => "Failed",
            IngestionStatus::Skipped => "Skipped",
        }
    }
}

/// `FailureStatus` of a failed ingestion (DOC `error-codes.md`: permanent or transient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FailureStatus {
    Permanent,
    Transient,
}

impl FailureStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureStatus::Permanent => "Permanent",
            FailureStatus::Transient => "Transient",
        }
    }
}

/// Where the worker reported an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Report {
    /// The entity named by `IngestionStatusInTable` was updated.
    StatusTable,
    /// A message was put on the `SuccessfulIngestionsQueue`.
    SuccessQueue,
    /// A message was put on the `FailedIngestionsQueue`.
    FailureQueue,
}

/// One message the ingestion worker took off a ready-for-aggregation queue.
#[derive(Debug, Clone, Serialize)]
pub struct IngestionOutcome {
    /// The message's `Id` (`IngestionSourceId` in reports); empty if it had none.
    pub source_id: String,
    /// `OperationId` the emulator gave this ingestion.
    pub operation_id: String,
    pub database: String,
    pub table: String,
    /// `BlobPath` without SAS or `;managed_identity=` suffix.
    pub source_path: String,
    pub status: IngestionStatus,
    /// Kusto error code (`Download_SourceNotFound`, ...); `None` on success.
    pub error_code: Option<String>,
    pub failure_status: Option<FailureStatus>,
    /// Human-readable explanation (empty on success).
    pub details: String,
    /// Rows appended to the table.
    pub rows: u64,
    /// The blob was deleted after success (`RetainBlobOnSuccess: false`).
    pub blob_deleted: bool,
    /// Reports written, in order.
    pub reported: Vec<Report>,
    /// Reports that could not be written (status row, notification queues), with the reason.
    pub report_errors: Vec<String>,
    /// The decoded message (`Null` when it was not base64 JSON).
    pub message: serde_json::Value,
}

/// Why an ingestion stopped: a real DM error code, its permanence, and details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub code: &'static str,
    pub status: FailureStatus,
    pub details: String,
}

impl Failure {
    pub(crate) fn permanent(code: &'static str, details: impl Into<String>) -> Self {
        Failure {
            code,
            status: FailureStatus::Permanent,
            details: details.into(),
        }
    }

    pub(crate) fn transient(code: &'static str, details: impl Into<String>) -> Self {
        Failure {
            code,
            status: FailureStatus::Transient,
            details: details.into(),
        }
    }
}
