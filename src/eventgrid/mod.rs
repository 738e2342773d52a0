//! The Event Grid trigger (`BlobCreated`): the Functions host POSTs the invocation envelope to
//! `/BlobCreated`; each `Microsoft.Storage.BlobCreated` event in it is routed, optionally enriched
//! from blob metadata, and queued for ingestion through the ingestion backend.
//!
//! What the reply status means to Event Grid:
//! - **200** — done with this delivery: every event was queued, skipped (not ingestible: other
//!   event types or APIs, folders, empty blobs, no matching rule, blob gone) or rejected
//!   (malformed: redelivering the same bytes cannot fix it). `Logs` says which and why.
//! - **500** — something on our side (DM, identity, queues, storage) failed; Event Grid redelivers
//!   the event on its retry schedule and dead-letters it when that runs out. The source id is
//!   derived from the event id, so a redelivery is ingested under the same id.

mod blob_store;
mod envelope;
mod event;
mod format;
mod metadata;
mod prepare;

pub(crate) use blob_store::BlobStore;

use crate::domain::{DmEndpoint, SourceId};
use crate::ingest::{Backend, BlobJob, BlobOutcome};
use crate::properties::Properties;
use crate::routing::RouteTable;
use blob_store::BlobMetadata;
use prepare::{Label, Planned, Verdict};
use serde_json::Value;
use uuid::Uuid;

/// Namespace of the UUID v5 source ids derived from event ids. Fixed forever: changing it would
/// give a redelivered event a different source id than its first delivery.
const SOURCE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x4ec80876_6aa9_43d6_be63_fd26f02d705b);

/// The `data.api` values that mean a complete blob now exists. `CreateFile` (ADLS Gen2) fires
/// before any content is written; `FlushWithClose` follows when the file is complete.
const INGESTED_APIS: &[&str] = &["PutBlob", "PutBlockList", "FlushWithClose", "CopyBlob"];

/// The source id a BlobCreated event's blob is ingested under.
pub fn source_id_for(event_id: &str) -> SourceId {
    SourceId::derived_from(&SOURCE_ID_NAMESPACE, event_id)
}

/// The HTTP status and body the handler answers the Functions host with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InvocationReply {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// What the trigger knows beyond the events: where blobs go and how they are ingested.
pub(crate) struct Trigger {
    routes: RouteTable,
    /// `INGEST_DEFAULT_PROPERTIES`, under everything else.
    defaults: Properties,
    /// Whether blob metadata is read (one Get Blob Properties per blob).
    read_metadata: bool,
    /// The DM every event is ingested through.
    dm: DmEndpoint,
}

impl Trigger {
    pub(crate) fn new(
        routes: RouteTable,
        defaults: Properties,
        read_metadata: bool,
        dm: DmEndpoint,
    ) -> Self {
        Self {
            routes,
            defaults,
            read_metadata,
            dm,
        }
    }

    /// Handles one invocation of the `BlobCreated` function. Never panics on any input.
    pub(crate) async fn handle<B: Backend, M: BlobMetadata>(
        &self,
        backend: &B,
        metadata: &M,
        body: &[u8],
    ) -> InvocationReply {
        let mut report = Report::default();
        let values = match envelope::decode_events(body) {
            Ok(values) => values,
            Err(error) => {
                report.rejected(format!(
                    "rejected the invocation: {error}; nothing was queued"
                ));
                return report.finish();
            }
        };
        report.events = values.len();

        let mut planned = Vec::new();
        for value in &values {
            match prepare::prepare(self, metadata, value).await {
                Ok(p) => planned.push(p),
                Err(Verdict::Skip(line)) => report.skipped(line),
                Err(Verdict::Reject(line)) => report.rejected(line),
                Err(Verdict::Retry(line)) => report.retry(line),
            }
        }
        if planned.is_empty() {
            return report.finish();
        }
        if report.retry > 0 {
            // Event Grid redelivers the whole batch: queueing these now would ingest them twice.
            for Planned { label, .. } in planned {
                report.retry(format!(
                    "event {}: not queued yet: another event of this delivery must be retried, and Event Grid redelivers them together",
                    label.event_id
                ));
            }
            return report.finish();
        }
        let (labels, jobs): (Vec<Label>, Vec<BlobJob>) =
            planned.into_iter().map(|p| (p.label, p.job)).unzip();
        match backend.ingest(&self.dm, &jobs).await {
            Err(failure) => {
                let kind = if failure.is_transient() {
                    "transient"
                } else {
                    "persistent"
                };
                for label in &labels {
                    report.retry(format!(
                        "event {}: not queued ({kind} {}: {}); Event Grid will redeliver it",
                        label.event_id, failure.code, failure.message
                    ));
                }
            }
            Ok(outcomes) => report.outcomes(&labels, &jobs, &outcomes),
        }
        report.finish()
    }
}

/// An invocation refused before decoding (its body was too large, say): acknowledged with a log
/// line, because redelivering it would fail the same way.
pub(crate) fn rejected(reason: &str) -> InvocationReply {
    let mut report = Report::default();
    report.rejected(format!(
        "rejected the invocation: {reason}; nothing was queued"
    ));
    report.finish()
}

#[derive(Default)]
struct Report {
    lines: Vec<String>,
    events: usize,
    queued: usize,
    skipped: usize,
    rejected: usize,
    failed: usize,
    retry: usize,
}

impl Report {
    fn queued(&mut self, label: &Label, job: &BlobJob) {
        self.queued += 1;
        let format = job
            .spec
            .additional
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("format"))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("csv");
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

    fn skipped(&mut self, line: String) {
        self.skipped += 1;
        tracing::info!("{line}");
        self.lines.push(line);
    }

    fn rejected(&mut self, line: String) {
        self.rejected += 1;
        tracing::warn!("{line}");
        self.lines.push(line);
    }

    fn failed(&mut self, line: String) {
        self.failed += 1;
        tracing::warn!("{line}");
        self.lines.push(line);
    }

    fn retry(&mut self, line: String) {
        self.retry += 1;
        tracing::warn!("{line}");
        self.lines.push(line);
    }

    fn outcomes(&mut self, labels: &[Label], jobs: &[BlobJob], outcomes: &[BlobOutcome]) {
        for (i, (label, job)) in labels.iter().zip(jobs).enumerate() {
            let blob = job.blob.without_credentials();
            match outcomes.get(i) {
                Some(BlobOutcome::Queued) => self.queued(label, job),
                Some(BlobOutcome::Failed(f)) if f.is_transient() => self.retry(format!(
                    "event {}: {blob} not queued ({}: {}); Event Grid will redeliver it",
                    label.event_id, f.code, f.message
                )),
                Some(BlobOutcome::Failed(f)) => self.failed(format!(
                    "event {}: {blob} cannot be queued ({}: {}); not retried",
                    label.event_id, f.code, f.message
                )),
                None => self.retry(format!(
                    "event {}: no outcome was reported; Event Grid will redeliver it",
                    label.event_id
                )),
            }
        }
    }

    fn finish(self) -> InvocationReply {
        let status = if self.retry > 0 { 500 } else { 200 };
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

#[cfg(test)]
mod tests;
