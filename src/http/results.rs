//! The per-blob answer of `POST /api/ingest` (and of a data upload), serialized straight from the jobs and outcomes (no
//! intermediate JSON tree).

use crate::domain::{BlobUri, DmEndpoint, SourceId};
use crate::http::errors::{ErrorDetail, Reply};
use crate::ingest::{BlobJob, BlobOutcome, OperationId};
use crate::request_log::{self as summary, BatchCounts};
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultsBody<'a> {
    blob_count: usize,
    queued: usize,
    failed: usize,
    /// Blobs that may have been queued (`status: "unknown"`).
    #[serde(skip_serializing_if = "is_zero")]
    unknown: usize,
    blobs: Vec<BlobResult<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorDetail>,
    /// For tracked blobs: the operation to look them up by, and where.
    #[serde(skip_serializing_if = "Option::is_none")]
    operation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_uri: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlobResult<'a> {
    /// `BlobUri`'s `Display`: without its SAS.
    #[serde(serialize_with = "serialize_display")]
    blob_uri: &'a BlobUri,
    #[serde(serialize_with = "serialize_display")]
    source_id: &'a SourceId,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BlobError<'a>>,
}

#[derive(Serialize)]
struct BlobError<'a> {
    code: &'static str,
    message: &'a str,
}

fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How many outcomes are queued, unknown and failed.
pub(crate) fn counts(outcomes: &[BlobOutcome]) -> (usize, usize, usize) {
    outcomes.iter().fold(
        (0, 0, 0),
        |(queued, unknown, failed), outcome| match outcome {
            BlobOutcome::Queued => (queued + 1, unknown, failed),
            BlobOutcome::Unknown(_) => (queued, unknown + 1, failed),
            BlobOutcome::Failed(_) => (queued, unknown, failed + 1),
        },
    )
}

/// Records the DM and the counts of `outcomes` (for `blobs` jobs; those without a `Queued` or
/// `Unknown` outcome count as failed) in the request's summary line; returns (queued, unknown).
pub(crate) fn record_outcomes(
    dm: &DmEndpoint,
    blobs: usize,
    outcomes: &[BlobOutcome],
) -> (usize, usize) {
    let (queued, unknown, _) = counts(outcomes);
    summary::record_batch(
        dm,
        &BatchCounts {
            blobs,
            queued,
            failed: blobs - queued - unknown,
            unknown,
        },
    );
    (queued, unknown)
}

/// The answer to a request: one result per job, in order, and what the request as a whole says.
pub(crate) struct Answer<'a> {
    jobs: &'a [BlobJob],
    outcomes: &'a [BlobOutcome],
    error: Option<&'a ErrorDetail>,
    operation: Option<&'a OperationId>,
}

impl<'a> Answer<'a> {
    pub(crate) fn new(jobs: &'a [BlobJob], outcomes: &'a [BlobOutcome]) -> Self {
        Self {
            jobs,
            outcomes,
            error: None,
            operation: None,
        }
    }

    pub(crate) fn error(self, error: Option<&'a ErrorDetail>) -> Self {
        Self { error, ..self }
    }

    pub(crate) fn operation(self, operation: Option<&'a OperationId>) -> Self {
        Self { operation, ..self }
    }

    pub(crate) fn reply(self, status: u16, retry_after: Option<Duration>) -> Reply {
        let (queued, unknown, failed) = counts(self.outcomes);
        let blobs = self
            .jobs
            .iter()
            .zip(self.outcomes)
            .map(|(job, outcome)| {
                let (status, failure) = match outcome {
                    BlobOutcome::Queued => ("queued", None),
                    BlobOutcome::Unknown(f) => ("unknown", Some(f)),
                    BlobOutcome::Failed(f) => ("failed", Some(f)),
                };
                BlobResult {
                    blob_uri: &job.blob,
                    source_id: &job.source_id,
                    status,
                    error: failure.map(|f| BlobError {
                        code: f.code.as_str(),
                        message: &f.message,
                    }),
                }
            })
            .collect();
        let operation_id = self.operation.map(OperationId::encode);
        let body = ResultsBody {
            blob_count: self.jobs.len(),
            queued,
            failed,
            unknown,
            blobs,
            error: self.error,
            status_uri: operation_id
                .as_ref()
                .map(|id| super::operations::status_uri(id)),
            operation_id,
        };
        Reply::json(status, retry_after, &body)
    }
}
