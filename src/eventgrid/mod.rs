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
mod report;

pub(crate) use blob_store::BlobStore;

use crate::domain::{DmEndpoint, SourceId};
use crate::ingest::{Backend, Batch, BlobJob, Deadline};
use crate::properties::Properties;
use crate::routing::RouteTable;
use blob_store::BlobMetadata;
use futures::StreamExt;
use prepare::{Label, Planned, Verdict};
use report::Report;
use serde_json::Value;
use uuid::Uuid;

/// Events of one invocation prepared (metadata read) at once.
const CONCURRENT_PREPARES: usize = 16;

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

    /// Handles one invocation of the `BlobCreated` function, by `deadline`. Never panics on any
    /// input.
    pub(crate) async fn handle<B: Backend, M: BlobMetadata>(
        &self,
        backend: &B,
        metadata: &M,
        body: &[u8],
        deadline: Deadline,
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
        report.events(values.len());

        // Events are independent: their metadata reads run concurrently, results kept in order.
        // Indexing keeps the closure free of a higher-ranked lifetime (rust-lang/rust#102211).
        let prepares =
            (0..values.len()).map(|i| prepare::prepare(self, metadata, &values[i], deadline));
        let prepared: Vec<_> = futures::stream::iter(prepares)
            .buffered(CONCURRENT_PREPARES)
            .collect()
            .await;
        let mut planned = Vec::new();
        for result in prepared {
            match result {
                Ok(p) => planned.push(p),
                Err(Verdict::Skip(line)) => report.skipped(line),
                Err(Verdict::Reject(line)) => report.rejected(line),
                Err(Verdict::Retry(line)) => report.retry(line),
            }
        }
        if planned.is_empty() {
            return report.finish();
        }
        if report.has_retries() {
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
        let tracked = jobs.iter().any(|job| job.spec.report_method.tracked());
        let batch = Batch {
            dm: &self.dm,
            jobs: &jobs,
            deadline,
            operation: tracked.then(uuid::Uuid::new_v4),
        };
        match backend.ingest(batch).await {
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
            Ok(ingested) => {
                if let Some(operation) = &ingested.operation {
                    report.tracked(&operation.encode(), &jobs);
                }
                report.outcomes(&labels, &jobs, &ingested.outcomes);
            }
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

#[cfg(test)]
mod tests;
