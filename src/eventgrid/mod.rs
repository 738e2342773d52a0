//! The Event Grid trigger (`BlobCreated`): the Functions host POSTs the invocation envelope to
//! `/BlobCreated`; each `Microsoft.Storage.BlobCreated` event in it is routed, optionally enriched
//! from blob metadata, and queued for ingestion through the shared [`Ingestor`].
//!
//! What the reply status means to Event Grid:
//! - **200** — done with this delivery: every event was queued, skipped (not ingestible: other
//!   event types or APIs, folders, empty blobs, no matching rule, blob gone) or rejected
//!   (malformed: redelivering the same bytes cannot fix it). `Logs` says which and why.
//! - **500** — something on our side (DM, identity, queues, storage) failed; Event Grid redelivers
//!   the event on its retry schedule and dead-letters it when that runs out. The source id is
//!   derived from the event id, so a redelivery is ingested under the same id.

pub mod envelope;
pub mod event;
pub mod format;
pub mod metadata;
pub mod routing;

use crate::config::Settings;
use crate::domain::{BlobUri, DatabaseName, SourceId, TableName};
use crate::ingestor::{BlobFailure, BlobJob, BlobOutcome, Ingestor};
use crate::properties::IngestionSpec;
use event::{BlobCreated, Event, EventKind};
use metadata::{Auth, BlobProperties, MetadataError};
use routing::DatabaseRouting;
use serde_json::Value;
use std::future::Future;
use uuid::Uuid;

/// Namespace of the UUID v5 source ids derived from event ids. Fixed forever: changing it would
/// give a redelivered event a different source id than its first delivery.
pub const SOURCE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x4ec80876_6aa9_43d6_be63_fd26f02d705b);

/// The `data.api` values that mean a complete blob now exists. `CreateFile` (ADLS Gen2) fires
/// before any content is written; `FlushWithClose` follows when the file is complete.
pub const INGESTED_APIS: &[&str] = &["PutBlob", "PutBlockList", "FlushWithClose", "CopyBlob"];

/// The source id a BlobCreated event's blob is ingested under.
pub fn source_id_for(event_id: &str) -> SourceId {
    SourceId::derived_from(&SOURCE_ID_NAMESPACE, event_id)
}

/// The HTTP status and body the handler answers the Functions host with.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationReply {
    pub status: u16,
    pub body: Value,
}

/// Handles one invocation of the `BlobCreated` function. Never panics on any input.
pub async fn handle_invocation(ingestor: &Ingestor, body: &[u8]) -> InvocationReply {
    handle(&Live(ingestor), body).await
}

/// An invocation refused before decoding (its body was too large, say): acknowledged with a log
/// line, because redelivering it would fail the same way.
pub fn rejected(reason: &str) -> InvocationReply {
    let mut report = Report::default();
    report.rejected(format!(
        "rejected the invocation: {reason}; nothing was queued"
    ));
    report.finish()
}

/// What the trigger needs from the rest of the service; the [`Ingestor`] in production.
pub trait Backend {
    fn settings(&self) -> &Settings;
    /// Queues the jobs on the default DM; outcomes in the order of `jobs`.
    fn ingest(
        &self,
        jobs: &[BlobJob],
    ) -> impl Future<Output = Result<Vec<BlobOutcome>, BlobFailure>> + Send;
    /// Get Blob Properties on a blob URL (without credentials).
    fn blob_properties(
        &self,
        url: &str,
    ) -> impl Future<Output = Result<BlobProperties, MetadataError>> + Send;
}

struct Live<'a>(&'a Ingestor);

impl Backend for Live<'_> {
    fn settings(&self) -> &Settings {
        self.0.settings()
    }

    async fn ingest(&self, jobs: &[BlobJob]) -> Result<Vec<BlobOutcome>, BlobFailure> {
        self.0
            .ingest(self.0.default_dm(), jobs)
            .await
            .map_err(|e| BlobFailure {
                code: e.code(),
                message: e.to_string(),
                transient: e.is_transient(),
            })
    }

    async fn blob_properties(&self, url: &str) -> Result<BlobProperties, MetadataError> {
        let auth = metadata::auth_for(url, self.0.settings().local_blob_sas.as_deref())?;
        let token = match auth {
            Auth::Bearer => Some(
                self.0
                    .storage_token()
                    .await
                    .map_err(|e| MetadataError::Token(e.to_string()))?,
            ),
            _ => None,
        };
        metadata::get_blob_properties(self.0.http(), url, &auth, token.as_deref()).await
    }
}

/// What became of one event before anything was queued.
enum Prepared {
    Queue(Box<Planned>),
    Skip(String),
    Reject(String),
    Retry(String),
}

/// A blob ready to be queued, with what the log line says about it.
struct Planned {
    label: Label,
    job: BlobJob,
}

struct Label {
    event_id: String,
    route: String,
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

/// The trigger, over any [`Backend`].
pub async fn handle<B: Backend>(backend: &B, body: &[u8]) -> InvocationReply {
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

    let mut labels = Vec::new();
    let mut jobs = Vec::new();
    for value in &values {
        match prepare(backend, value).await {
            Prepared::Queue(p) => {
                labels.push(p.label);
                jobs.push(p.job);
            }
            Prepared::Skip(line) => report.skipped(line),
            Prepared::Reject(line) => report.rejected(line),
            Prepared::Retry(line) => report.retry(line),
        }
    }
    if jobs.is_empty() {
        return report.finish();
    }
    if report.retry > 0 {
        // Event Grid redelivers the whole batch: queueing these now would ingest them twice.
        for label in labels {
            report.retry(format!(
                "event {}: not queued yet: another event of this delivery must be retried, and Event Grid redelivers them together",
                label.event_id
            ));
        }
        return report.finish();
    }

    match backend.ingest(&jobs).await {
        Err(failure) => {
            let kind = if failure.transient {
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
        Ok(outcomes) => {
            for (i, (label, job)) in labels.iter().zip(&jobs).enumerate() {
                let blob = job.blob.without_credentials();
                match outcomes.get(i) {
                    Some(BlobOutcome::Queued) => report.queued(label, job),
                    Some(BlobOutcome::Failed(f)) if f.transient => report.retry(format!(
                        "event {}: {blob} not queued ({}: {}); Event Grid will redeliver it",
                        label.event_id, f.code, f.message
                    )),
                    Some(BlobOutcome::Failed(f)) => report.failed(format!(
                        "event {}: {blob} cannot be queued ({}: {}); not retried",
                        label.event_id, f.code, f.message
                    )),
                    None => report.retry(format!(
                        "event {}: no outcome was reported; Event Grid will redeliver it",
                        label.event_id
                    )),
                }
            }
        }
    }
    report.finish()
}

async fn prepare<B: Backend>(backend: &B, value: &Value) -> Prepared {
    let event = match event::parse_event(value) {
        Ok(event) => event,
        Err(error) => {
            let id = event::peek_id(value).unwrap_or_else(|| "<no id>".to_owned());
            return Prepared::Reject(format!("event {id}: rejected, it is malformed: {error}"));
        }
    };
    let Event {
        id: event_id,
        schema,
        kind,
    } = event;
    // The full id names the source id; log lines get a clipped copy.
    let source_id = source_id_for(&event_id);
    let id = clip(&event_id);
    let blob = match kind {
        EventKind::BlobCreated(blob) => blob,
        EventKind::Other { event_type } => {
            return Prepared::Skip(format!(
                "event {id}: skipped: type '{}' is not {}",
                clip(&event_type),
                event::BLOB_CREATED
            ));
        }
    };
    let where_ = format!(
        "'{}' in container '{}'",
        clip(&blob.path),
        clip(&blob.container)
    );
    if !INGESTED_APIS
        .iter()
        .any(|api| api.eq_ignore_ascii_case(&blob.api))
    {
        return Prepared::Skip(format!(
            "event {id}: skipped {where_}: api '{}' is not one of {}",
            clip(&blob.api),
            INGESTED_APIS.join(", ")
        ));
    }
    if blob.is_folder() {
        return Prepared::Skip(format!("event {id}: skipped {where_}: it is a folder"));
    }
    if blob.content_length == Some(0) {
        return Prepared::Skip(format!(
            "event {id}: skipped {where_}: the blob is empty (contentLength 0)"
        ));
    }
    let url = metadata::to_blob_endpoint(&blob.url);
    let blob_uri = match BlobUri::parse(&url) {
        Ok(uri) => uri,
        Err(error) => {
            return Prepared::Reject(format!(
                "event {id}: rejected, data.url '{}' is not a blob URL: {error}",
                clip(&crate::domain::redact_url(&url))
            ));
        }
    };
    let settings = backend.settings();
    let Some(route) = settings.routes.find(&blob.container, &blob.path) else {
        return Prepared::Skip(format!(
            "event {id}: skipped {where_}: no INGEST_ROUTES rule matches ({})",
            blob_uri.without_credentials()
        ));
    };
    let at = format!(
        "{} ({schema}, {})",
        blob_uri.without_credentials(),
        route.describe()
    );

    let overrides = if settings.read_blob_metadata {
        let properties = match backend
            .blob_properties(blob_uri.without_credentials())
            .await
        {
            Ok(p) => p,
            Err(error) if error.is_permanent() => {
                return Prepared::Skip(format!("event {id}: skipped {at}: {error}"));
            }
            Err(error) => {
                return Prepared::Retry(format!(
                    "event {id}: {at}: {error}; Event Grid will redeliver it"
                ));
            }
        };
        match metadata::overrides(&properties.metadata) {
            Ok(o) => o,
            Err(error) => {
                return Prepared::Skip(format!("event {id}: skipped {at}: blob metadata {error}"));
            }
        }
    } else {
        metadata::Overrides::default()
    };
    if overrides.is_folder {
        return Prepared::Skip(format!(
            "event {id}: skipped {at}: it is a folder (hdi_isfolder)"
        ));
    }

    let database = match (&overrides.database, route.database_routing) {
        (None, _) => route.database.clone(),
        (Some(db), DatabaseRouting::Multi) => match DatabaseName::parse(db) {
            Ok(db) => db,
            Err(error) => {
                return Prepared::Skip(format!(
                    "event {id}: skipped {at}: blob metadata kustoDatabase: {error}"
                ));
            }
        },
        (Some(db), DatabaseRouting::Single) if db.trim() == route.database.as_str() => {
            route.database.clone()
        }
        (Some(db), DatabaseRouting::Single) => {
            return Prepared::Skip(format!(
                "event {id}: skipped {at}: blob metadata kustoDatabase '{}' differs from the rule's database '{}' and the rule does not set \"databaseRouting\": \"multi\"",
                clip(db),
                route.database
            ));
        }
    };
    let table = match &overrides.table {
        None => route.table.clone(),
        Some(t) => match TableName::parse(t) {
            Ok(t) => t,
            Err(error) => {
                return Prepared::Skip(format!(
                    "event {id}: skipped {at}: blob metadata kustoTable: {error}"
                ));
            }
        },
    };

    // Precedence, lowest first: settings defaults, format from the blob name, the rule, metadata.
    let mut bag = settings.default_properties.clone();
    if let Some(format) = format::infer_format(file_name(&blob)) {
        bag.set("format", Value::String(format.to_owned()));
    }
    bag.overlay(&route.properties);
    bag.overlay(&overrides.properties);
    let spec = match IngestionSpec::from_bag(bag) {
        Ok(spec) => spec,
        Err(error) => {
            return Prepared::Skip(format!(
                "event {id}: skipped {at}: invalid ingestion property {error}"
            ));
        }
    };

    let raw_data_size = overrides.raw_size.or(if blob_uri.is_compressed() {
        None
    } else {
        blob.content_length
    });
    let blob_for_dm = match &route.blob_uri_suffix {
        None => blob_uri,
        Some(suffix) => {
            match BlobUri::parse(&format!("{}{suffix}", blob_uri.without_credentials())) {
                Ok(uri) => uri,
                Err(error) => {
                    return Prepared::Reject(format!("event {id}: rejected {at}: {error}"));
                }
            }
        }
    };
    Prepared::Queue(Box::new(Planned {
        label: Label {
            event_id: id,
            route: route.describe(),
        },
        job: BlobJob {
            blob: blob_for_dm,
            source_id,
            raw_data_size,
            database,
            table,
            spec: std::sync::Arc::new(spec),
        },
    }))
}

fn file_name(blob: &BlobCreated) -> &str {
    blob.path.rsplit('/').next().unwrap_or_default()
}

/// Untrusted text for a log line: at most 256 characters, control characters escaped.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 256;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
