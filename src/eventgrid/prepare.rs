//! One event to one blob job, or the reason it is skipped, rejected or to be retried: the event is
//! parsed, checked (api, folder, empty), its URL parsed once into a [`BlobUri`], routed, optionally
//! enriched from blob metadata, and given its destination and ingestion properties.

use super::blob_store::{self, BlobMetadata};
use super::event::{self, BlobCreated, Event, EventKind, Schema};
use super::metadata::{self, Overrides};
use super::{INGESTED_APIS, Trigger, format, source_id_for};
use crate::domain::{BlobUri, DatabaseName, TableName, clip, redact_url};
use crate::ingest::{BlobJob, Deadline};
use crate::properties::Properties;
use crate::routing::{DatabaseRouting, Route};
use serde_json::Value;
use std::sync::Arc;
use url::Url;

/// A blob ready to be queued, with what the log line says about it.
pub(super) struct Planned {
    pub(super) label: Label,
    pub(super) job: BlobJob,
}

pub(super) struct Label {
    pub(super) event_id: String,
    pub(super) route: String,
}

/// Why an event yields no job; each holds its log line.
pub(super) enum Verdict {
    /// Not for us, or not ingestible: acknowledged.
    Skip(String),
    /// Malformed: redelivering the same bytes cannot fix it. Acknowledged.
    Reject(String),
    /// Something on our side failed: Event Grid should redeliver.
    Retry(String),
}

/// What the log lines about one blob event say about it.
struct Context<'a> {
    /// Clipped event id.
    id: String,
    /// The blob as `where_` ('path' in container 'c') and, once routed, `at` (URL, schema, rule).
    blob: &'a BlobCreated,
    at: String,
}

/// How a blob routed by its metadata alone is described in logs and replies.
const BY_METADATA: &str = "no rule: database and table from blob metadata";

pub(super) async fn prepare<M: BlobMetadata>(
    trigger: &Trigger,
    metadata: &M,
    value: &Value,
    deadline: Deadline,
) -> Result<Planned, Verdict> {
    let (event_id, schema, blob) = blob_created(value)?;
    // The full id names the source id; log lines get a clipped copy.
    let source_id = source_id_for(&event_id);
    let id = clip(&event_id);
    let where_ = format!(
        "'{}' in container '{}'",
        clip(&blob.path),
        clip(&blob.container)
    );
    check_ingestible(&id, &where_, &blob)?;
    let blob_uri = locate(&id, &blob)?;
    // Without any rule, as with Azure Data Explorer's own Event Grid connection, the blob's
    // kustoDatabase/kustoTable metadata names its destination. With rules, they are the scope.
    let route = trigger.routes.find(&blob.container, &blob.path);
    let by_metadata = route.is_none() && trigger.routes.is_empty();
    if route.is_none() && !by_metadata {
        return Err(Verdict::Skip(format!(
            "event {id}: skipped {where_}: no INGEST_ROUTES rule matches ({})",
            blob_uri.without_credentials()
        )));
    }
    let at = format!(
        "{} ({schema}, {})",
        blob_uri.without_credentials(),
        route.map_or_else(|| BY_METADATA.to_owned(), Route::describe)
    );
    let cx = Context {
        id,
        blob: &blob,
        at,
    };
    let overrides = if trigger.read_metadata || by_metadata {
        read_overrides(&cx, metadata, &blob_uri, deadline).await?
    } else {
        Overrides::default()
    };
    if overrides.is_folder {
        return Err(cx.skip("it is a folder (hdi_isfolder)"));
    }
    let (database, table) = match route {
        Some(route) => destination(&cx, route, &overrides)?,
        None => metadata_destination(&cx, &overrides)?,
    };
    let properties = layered_properties(&cx, trigger, route, &overrides)?;
    let raw_data_size = overrides.raw_size.or(if blob_uri.is_compressed() {
        None
    } else {
        blob.content_length
    });
    let blob_for_dm = match route.and_then(|r| r.blob_uri_suffix.as_ref()) {
        None => blob_uri,
        Some(suffix) => blob_uri.with_credential_suffix(suffix),
    };
    Ok(Planned {
        label: Label {
            event_id: cx.id,
            route: route.map_or_else(|| BY_METADATA.to_owned(), Route::describe),
        },
        job: BlobJob {
            blob: blob_for_dm,
            source_id,
            raw_data_size,
            database,
            table,
            spec: Arc::new(properties.spec()),
        },
    })
}

/// The event's id, schema and blob, if it is a `BlobCreated` event.
fn blob_created(value: &Value) -> Result<(String, Schema, BlobCreated), Verdict> {
    let Event { id, schema, kind } = event::parse_event(value).map_err(|error| {
        let id = event::peek_id(value).unwrap_or_else(|| "<no id>".to_owned());
        Verdict::Reject(format!("event {id}: rejected, it is malformed: {error}"))
    })?;
    match kind {
        EventKind::BlobCreated(blob) => Ok((id, schema, blob)),
        EventKind::Other { event_type } => Err(Verdict::Skip(format!(
            "event {}: skipped: type '{}' is not {}",
            clip(&id),
            clip(&event_type),
            event::BLOB_CREATED
        ))),
    }
}

impl Context<'_> {
    fn skip(&self, reason: impl std::fmt::Display) -> Verdict {
        Verdict::Skip(format!("event {}: skipped {}: {reason}", self.id, self.at))
    }
}

/// Events for blobs that are not (yet) complete files are acknowledged without ingesting.
fn check_ingestible(id: &str, where_: &str, blob: &BlobCreated) -> Result<(), Verdict> {
    if !INGESTED_APIS
        .iter()
        .any(|api| api.eq_ignore_ascii_case(&blob.api))
    {
        return Err(Verdict::Skip(format!(
            "event {id}: skipped {where_}: api '{}' is not one of {}",
            clip(&blob.api),
            INGESTED_APIS.join(", ")
        )));
    }
    if blob.is_folder() {
        return Err(Verdict::Skip(format!(
            "event {id}: skipped {where_}: it is a folder"
        )));
    }
    if blob.content_length == Some(0) {
        return Err(Verdict::Skip(format!(
            "event {id}: skipped {where_}: the blob is empty (contentLength 0)"
        )));
    }
    Ok(())
}

/// `data.url`, parsed once, through the blob endpoint (ADLS Gen2 events name the `dfs` one).
fn locate(id: &str, blob: &BlobCreated) -> Result<BlobUri, Verdict> {
    let reject = |shown: &str, error: &dyn std::fmt::Display| {
        Verdict::Reject(format!(
            "event {id}: rejected, data.url '{}' is not a blob URL: {error}",
            clip(&redact_url(shown))
        ))
    };
    let url = Url::parse(&blob.url)
        .map_err(|e| reject(&blob.url, &format!("blob URI is not a valid URL: {e}")))?;
    let parsed = match blob_store::to_blob_endpoint(&url) {
        Some(rewritten) => BlobUri::from_parsed(rewritten.to_string(), &rewritten),
        None => BlobUri::from_parsed(blob.url.clone(), &url),
    };
    parsed.map_err(|e| reject(&blob.url, &e))
}

/// The metadata keys of the blob, or why the event is skipped or must be redelivered.
async fn read_overrides<M: BlobMetadata>(
    cx: &Context<'_>,
    metadata: &M,
    blob: &BlobUri,
    deadline: Deadline,
) -> Result<Overrides, Verdict> {
    let read = tokio::time::timeout_at(deadline.instant(), metadata.blob_properties(blob)).await;
    let properties = match read {
        Err(_) => {
            return Err(Verdict::Retry(format!(
                "event {}: {}: Get Blob Properties did not answer before the invocation's deadline; Event Grid will redeliver it",
                cx.id, cx.at
            )));
        }
        Ok(Ok(p)) => p,
        Ok(Err(error)) if error.is_permanent() => return Err(cx.skip(error)),
        Ok(Err(error)) => {
            return Err(Verdict::Retry(format!(
                "event {}: {}: {error}; Event Grid will redeliver it",
                cx.id, cx.at
            )));
        }
    };
    metadata::overrides(&properties.metadata)
        .map_err(|error| cx.skip(format_args!("blob metadata {error}")))
}

/// The rule's database and table, unless metadata names others (and may).
fn destination(
    cx: &Context<'_>,
    route: &Route,
    overrides: &Overrides,
) -> Result<(DatabaseName, TableName), Verdict> {
    let database = match (&overrides.database, route.database_routing) {
        (None, _) => route.database.clone(),
        (Some(db), DatabaseRouting::Multi) => DatabaseName::parse(db)
            .map_err(|error| cx.skip(format_args!("blob metadata kustoDatabase: {error}")))?,
        (Some(db), DatabaseRouting::Single) if db.trim() == route.database.as_str() => {
            route.database.clone()
        }
        (Some(db), DatabaseRouting::Single) => {
            return Err(cx.skip(format_args!(
                "blob metadata kustoDatabase '{}' differs from the rule's database '{}' and the rule does not set \"databaseRouting\": \"multi\"",
                clip(db),
                route.database
            )));
        }
    };
    let table = match &overrides.table {
        None => route.table.clone(),
        Some(t) => TableName::parse(t)
            .map_err(|error| cx.skip(format_args!("blob metadata kustoTable: {error}")))?,
    };
    Ok((database, table))
}

/// The destination of a blob no rule covers: its metadata must name both.
fn metadata_destination(
    cx: &Context<'_>,
    overrides: &Overrides,
) -> Result<(DatabaseName, TableName), Verdict> {
    let (Some(database), Some(table)) = (&overrides.database, &overrides.table) else {
        return Err(cx.skip(
            "INGEST_ROUTES is empty and the blob's metadata does not name both kustoDatabase and kustoTable",
        ));
    };
    let database = DatabaseName::parse(database)
        .map_err(|error| cx.skip(format_args!("blob metadata kustoDatabase: {error}")))?;
    let table = TableName::parse(table)
        .map_err(|error| cx.skip(format_args!("blob metadata kustoTable: {error}")))?;
    Ok((database, table))
}

/// Precedence, lowest first: settings defaults, format from the blob name, the rule, metadata.
fn layered_properties(
    cx: &Context<'_>,
    trigger: &Trigger,
    route: Option<&Route>,
    overrides: &Overrides,
) -> Result<Properties, Verdict> {
    let from_metadata = overrides
        .properties
        .clone()
        .parse()
        .map_err(|error| cx.skip(format_args!("invalid ingestion property {error}")))?;
    let mut properties = trigger.defaults.clone();
    let file_name = cx.blob.path.rsplit('/').next().unwrap_or_default();
    if let Some(format) = format::infer_format(file_name) {
        properties.overlay(&Properties::format(format));
    }
    if let Some(route) = route {
        properties.overlay(&route.properties);
    }
    properties.overlay(&from_metadata);
    Ok(properties)
}
