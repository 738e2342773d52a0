//! The reply to one invocation: a count of what became of the events and one log line per event,
//! which go both to the handler's log and to the host (`Logs`).

use super::envelope;
use super::{InvocationReply, Label};
use crate::ingest::{BlobJob, BlobOutcome};
use crate::request_log as summary;

/// What became of each event, for the log and the reply.
#[derive(Default)]
pub(super) struct Report {
    lines: Vec<String>,
    events: usize,
    queued: usize,
    skipped: usize,
    rejected: usize,
    failed: usize,
    retry: usize,
}

/// What happened to an event that was not queued.
#[derive(Clone, Copy)]
enum Tally {
    Skipped,
    Rejected,
    Failed,
    Retry,
}

impl Report {
    fn queued(&mut self, label: &Label, job: &BlobJob) {
        self.queued += 1;
        let format = job.spec.format();
        tracing::info!(event_id = %label.event_id, source_id = %job.source_id, blob = job.blob.without_credentials(),
            database = %job.database, table = %job.table, format, route = %label.route, "event queued for ingestion");
        self.lines.push(format!(
            "event {}: queued {} into {}.{} (format {}, {}, source id {})",
            label.event_id,
            job.blob.without_credentials(),
            job.database,
            job.table,
            format,
            label.route,
            job.source_id
        ));
    }

    pub(super) fn events(&mut self, count: usize) {
        self.events = count;
    }

    pub(super) fn has_retries(&self) -> bool {
        self.retry > 0
    }

    pub(super) fn skipped(&mut self, line: String) {
        self.record(Tally::Skipped, line);
    }

    pub(super) fn rejected(&mut self, line: String) {
        self.record(Tally::Rejected, line);
    }

    pub(super) fn retry(&mut self, line: String) {
        self.record(Tally::Retry, line);
    }

    fn record(&mut self, tally: Tally, line: String) {
        let count = match tally {
            Tally::Skipped => &mut self.skipped,
            Tally::Rejected => &mut self.rejected,
            Tally::Failed => &mut self.failed,
            Tally::Retry => &mut self.retry,
        };
        *count += 1;
        match tally {
            Tally::Skipped => tracing::info!("{line}"),
            _ => tracing::warn!("{line}"),
        }
        self.lines.push(line);
    }

    /// The operation the invocation's tracked blobs are recorded under, for
    /// `GET /api/ingest/operations/{id}`.
    pub(super) fn tracked(&mut self, operation_id: &str, jobs: &[BlobJob]) {
        let sources: Vec<String> = jobs
            .iter()
            .filter(|job| job.spec.report_method.tracked())
            .map(|job| job.source_id.to_string())
            .collect();
        tracing::info!(operation_id, source_ids = %sources.join(","), "tracked operation");
        self.lines.push(format!(
            "tracked as operation {operation_id} (GET /api/ingest/operations/{operation_id}); source ids {}",
            sources.join(", ")
        ));
    }

    pub(super) fn outcomes(
        &mut self,
        labels: &[Label],
        jobs: &[BlobJob],
        outcomes: &[BlobOutcome],
    ) {
        for (i, (label, job)) in labels.iter().zip(jobs).enumerate() {
            let blob = job.blob.without_credentials();
            match outcomes.get(i) {
                Some(BlobOutcome::Queued) => self.queued(label, job),
                Some(BlobOutcome::Unknown(f)) => self.retry(format!(
                    "event {}: {blob} may have been queued ({}: {}); Event Grid will redeliver it (at least once)",
                    label.event_id, f.code, f.message
                )),
                Some(BlobOutcome::Failed(f)) if f.is_transient() => self.retry(format!(
                    "event {}: {blob} not queued ({}: {}); Event Grid will redeliver it",
                    label.event_id, f.code, f.message
                )),
                Some(BlobOutcome::Failed(f)) => self.record(
                    Tally::Failed,
                    format!(
                        "event {}: {blob} cannot be queued ({}: {}); not retried",
                        label.event_id, f.code, f.message
                    ),
                ),
                None => self.retry(format!(
                    "event {}: no outcome was reported; Event Grid will redeliver it",
                    label.event_id
                )),
            }
        }
    }

    pub(super) fn finish(self) -> InvocationReply {
        let status = if self.retry > 0 { 500 } else { 200 };
        summary::record("events", self.events);
        summary::record("queued", self.queued);
        summary::record("skipped", self.skipped);
        summary::record("rejected", self.rejected);
        summary::record("failed", self.failed);
        summary::record("retry", self.retry);
        let mut lines = Vec::with_capacity(self.lines.len() + 1);
        lines.push(format!(
            "BlobCreated: {} event(s): {} queued, {} skipped, {} rejected, {} failed, {} to retry{}",
            self.events,
            self.queued,
            self.skipped,
            self.rejected,
            self.failed,
            self.retry,
            if status == 500 { " (answering 500 so that Event Grid redelivers)" } else { "" }
        ));
        lines.extend(self.lines);
        InvocationReply {
            status,
            body: envelope::reply_body(lines),
        }
    }
}
