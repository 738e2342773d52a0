//! The per-blob answer of `POST /api/ingest`, serialized straight from the jobs and outcomes (no
//! intermediate JSON tree).

use crate::domain::{BlobUri, SourceId};
use crate::http::errors::{ErrorDetail, Reply};
use crate::ingest::{BlobJob, BlobOutcome};
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
pub(super) fn counts(outcomes: &[BlobOutcome]) -> (usize, usize, usize) {
    outcomes.iter().fold(
        (0, 0, 0),
        |(queued, unknown, failed), outcome| match outcome {
            BlobOutcome::Queued => (queued + 1, unknown, failed),
            BlobOutcome::Unknown(_) => (queued, unknown + 1, failed),
            BlobOutcome::Failed(_) => (queued, unknown, failed + 1),
        },
    )
}

/// One result per job, in order, under `status`.
pub(super) fn reply(
    status: u16,
    retry_after: Option<Duration>,
    jobs: &[BlobJob],
    outcomes: &[BlobOutcome],
    error: Option<&ErrorDetail>,
) -> Reply {
    let (queued, unknown, failed) = counts(outcomes);
    let blobs = jobs
        .iter()
        .zip(outcomes)
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
    let body = ResultsBody {
        blob_count: jobs.len(),
        queued,
        failed,
        unknown,
        blobs,
        error,
    };
    Reply::json(status, retry_after, &body)
}
