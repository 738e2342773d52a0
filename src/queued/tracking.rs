//! Tracked blobs in the status table: a `Pending` row before the message, a `Failed` row when the
//! message could not be queued, and an operation's rows read back as counts and a page.

use super::status_table::{self, MAX_PAGE, Page, StatusTable, StoredRow, TableError};
use crate::ingest::{
    BlobFailure, BlobJob, BlobOutcome, BlobState, BlobStatus, Deadline, FailureCode, PageRequest,
    StatusPage,
};
use uuid::Uuid;

/// Whether a job is recorded in the status table.
pub(super) fn tracked(job: &BlobJob) -> bool {
    job.spec.report_method.tracked()
}

/// Writes a `Pending` row for every tracked job, before any message is queued.
pub(super) async fn begin(
    table: &StatusTable,
    http: &reqwest::Client,
    operation: &Uuid,
    jobs: &[BlobJob],
    deadline: Deadline,
) -> Result<(), TableError> {
    let now = status_table::now();
    let rows: Vec<_> = jobs
        .iter()
        .filter(|job| tracked(job))
        .map(|job| {
            status_table::row(
                operation,
                job.source_id,
                job,
                "Pending",
                String::new(),
                &now,
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    table.upsert(http, &rows, deadline).await
}

/// Marks tracked jobs whose message was not queued as `Failed`, so their rows do not stay
/// `Pending` for ever. (A blob whose outcome is unknown stays `Pending`: the DM may have it.)
pub(super) async fn record_failures(
    table: &StatusTable,
    http: &reqwest::Client,
    operation: &Uuid,
    jobs: &[BlobJob],
    outcomes: &[BlobOutcome],
    deadline: Deadline,
) {
    let now = status_table::now();
    let rows: Vec<_> = jobs
        .iter()
        .zip(outcomes)
        .filter(|(job, _)| tracked(job))
        .filter_map(|(job, outcome)| match outcome {
            BlobOutcome::Failed(failure) => Some(status_table::row(
                operation,
                job.source_id,
                job,
                "Failed",
                format!("not queued: {}: {}", failure.code, failure.message),
                &now,
            )),
            BlobOutcome::Queued | BlobOutcome::Unknown(_) => None,
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    if let Err(error) = table.upsert(http, &rows, deadline).await {
        tracing::warn!(%operation, %error, rows = rows.len(), "could not mark blobs that were not queued as Failed in the status table");
    }
}

/// The failure of tracked jobs that could not be recorded (and so were not queued).
pub(super) fn not_recorded(error: &TableError) -> BlobFailure {
    BlobFailure::new(
        FailureCode::TrackingUnavailable,
        format!(
            "the blob is to be tracked, but its status row could not be written, so it was not queued: {error}"
        ),
    )
}

/// Reads an operation's partition: counts over all rows, and the requested page of them.
pub(super) async fn read(
    table: &StatusTable,
    http: &reqwest::Client,
    partition: &Uuid,
    page: &PageRequest,
    deadline: Deadline,
) -> Result<StatusPage, TableError> {
    let partition = partition.to_string();
    let top = page.top.clamp(1, MAX_PAGE);
    let mut result = StatusPage::default();
    let mut next: Option<(String, String)> = None;
    loop {
        let Page { rows, next: more } = table
            .read(http, &partition, MAX_PAGE, next.as_ref(), deadline)
            .await?;
        for row in rows {
            let status = blob_status(row);
            if let Some(state) = status.state {
                result.counts.add(state);
            }
            update_span(&mut result, status.updated_on.as_deref());
            let wanted = page
                .after
                .as_deref()
                .is_none_or(|a| status.source_id.as_str() > a);
            if wanted && result.blobs.len() < top {
                result.blobs.push(status);
            } else if wanted && result.continuation.is_none() {
                result.continuation = result.blobs.last().map(|b| b.source_id.clone());
            }
        }
        match more {
            Some(more) => next = Some(more),
            None => break,
        }
    }
    Ok(result)
}

fn update_span(page: &mut StatusPage, updated_on: Option<&str>) {
    let Some(at) = updated_on else { return };
    if page.first_update.as_deref().is_none_or(|f| at < f) {
        page.first_update = Some(at.to_owned());
    }
    if page.last_update.as_deref().is_none_or(|l| at > l) {
        page.last_update = Some(at.to_owned());
    }
}

/// A stored row in the REST v2 status vocabulary.
fn blob_status(row: StoredRow) -> BlobStatus {
    let state = match row.status.as_str() {
        "Pending" | "Queued" => Some(BlobState::InProgress),
        // Skipped: `ingestIfNotExists` found the data already there.
        "Succeeded" | "Skipped" | "PartiallySucceeded" => Some(BlobState::Succeeded),
        "Failed" => Some(BlobState::Failed),
        "Canceled" => Some(BlobState::Canceled),
        _ => None,
    };
    BlobStatus {
        source_id: if row.ingestion_source_id.is_empty() {
            row.row_key
        } else {
            row.ingestion_source_id
        },
        blob: crate::domain::redact_url(&row.ingestion_source_path),
        state,
        raw_status: row.status,
        error_code: row.error_code.filter(|c| !c.is_empty()),
        failure_status: row.failure_status.filter(|f| !f.is_empty()),
        details: row
            .details
            .filter(|d| !d.is_empty())
            .map(|d| crate::domain::clip(&crate::domain::scrub_secrets(&d))),
        updated_on: row.updated_on.or(row.timestamp),
    }
}

/// The counts of rows with these statuses.
#[cfg(test)]
fn counts_of(statuses: &[&str]) -> crate::ingest::Counts {
    let mut counts = crate::ingest::Counts::default();
    for s in statuses {
        if let Some(state) = blob_status(StoredRow {
            status: (*s).to_owned(),
            ..StoredRow::default()
        })
        .state
        {
            counts.add(state);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_statuses_map_to_the_rest_v2_states() {
        let c = counts_of(&[
            "Pending",
            "Succeeded",
            "Skipped",
            "Failed",
            "Queued",
            "Weird",
        ]);
        assert_eq!((c.succeeded, c.failed, c.in_progress), (2, 1, 2));
    }

    #[test]
    fn details_are_scrubbed_and_paths_redacted() {
        let s = blob_status(StoredRow {
            status: "Failed".into(),
            ingestion_source_path: "https://a.blob.core.windows.net/c/b.csv?sig=X".into(),
            details: Some("could not read https://a/b?sig=SECRET".into()),
            ..StoredRow::default()
        });
        assert_eq!(s.blob, "https://a.blob.core.windows.net/c/b.csv?<redacted>");
        assert!(!s.details.unwrap().contains("SECRET"));
    }
}
