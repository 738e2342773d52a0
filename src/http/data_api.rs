//! `POST /api/ingest/{database}/{table}`: the request body is the data. It streams, gzip-compressed
//! on the way, into one of the DM's temporary containers (`Backend::upload`), and the blob is then
//! queued like any other, with its exact uncompressed size and `RetainBlobOnSuccess: false` (the DM
//! deletes it once ingested, as for the SDKs' uploads). Ingestion properties come as query
//! parameters with the JSON API's names, validation and error shape.

use super::errors::{ApiError, ErrorDetail, Reply, nothing_queued};
use super::results::Answer;
use crate::authorization::{Caller, Denial, Policy};
use crate::data::{DataError, DataSource, GzipBody};
use crate::domain::{AllowedDms, DatabaseName, SourceId, TableName};
use crate::ingest::{Backend, Batch, BlobJob, BlobOutcome, Deadline, Ingested, UploadError};
use crate::properties::{DATA_FORMATS, Properties, PropertyBag};
use crate::request_log as summary;
use bytes::Buf;
use futures::Stream;
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

/// Query parameters that are ingestion properties (as in the JSON API).
const QUERY_PROPERTIES: &[&str] = &[
    "format",
    "ingestionMappingReference",
    "mappingReference",
    "ignoreFirstRecord",
    "creationTime",
    "tags",
    "ingestIfNotExists",
    "flushImmediately",
    "reportLevel",
    "reportMethod",
];

/// What the route needs besides the backend.
pub(crate) struct DataApi {
    dms: AllowedDms,
    defaults: Properties,
    authorization: Policy,
    /// `INGEST_MAX_DATA_BYTES`.
    max_bytes: u64,
}

/// One data request as the route read it.
pub(crate) struct DataRequest<S> {
    pub(crate) database: String,
    pub(crate) table: String,
    pub(crate) query: String,
    pub(crate) content_type: Option<String>,
    pub(crate) content_encoding: Option<String>,
    pub(crate) content_length: Option<u64>,
    pub(crate) principal: Option<String>,
    pub(crate) body: S,
}

/// A request's parameters, parsed.
struct Parsed {
    database: DatabaseName,
    table: TableName,
    properties: Properties,
    format: String,
    source_id: SourceId,
    data_management_uri: Option<String>,
}

impl DataApi {
    pub(crate) fn new(
        dms: AllowedDms,
        defaults: Properties,
        authorization: Policy,
        max_bytes: u64,
    ) -> Self {
        Self {
            dms,
            defaults,
            authorization,
            max_bytes,
        }
    }

    pub(crate) async fn handle<B, S, D>(
        &self,
        backend: &B,
        request: DataRequest<S>,
        deadline: Deadline,
    ) -> Reply
    where
        B: Backend,
        S: Stream<Item = Result<D, warp::Error>> + Send + Unpin,
        D: Buf + Send + 'static,
    {
        if request.content_length.is_some_and(|n| n > self.max_bytes) {
            return ApiError::DataTooLarge {
                max: self.max_bytes,
            }
            .into();
        }
        let parsed = match self.parse(&request) {
            Ok(parsed) => parsed,
            Err(error) => return error.into(),
        };
        if let Err(denial) = self.authorize(request.principal.as_deref(), &parsed) {
            tracing::warn!(code = denial.code, reason = %denial.message, "refused a data request");
            return ApiError::Forbidden(denial).into();
        }
        let dm = match self.dms.resolve(parsed.data_management_uri.as_deref()) {
            Ok(dm) => dm,
            Err(not_allowed) => return ApiError::DmNotAllowed(not_allowed.0).into(),
        };
        let gzip_input = request
            .content_encoding
            .as_deref()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
        let mut source = GzipBody::new(request.body, gzip_input, self.max_bytes)
            .content_length(request.content_length);
        let name = blob_name(&parsed);
        let blob = match backend.upload(&dm, &name, &mut source, deadline).await {
            Ok(blob) => blob,
            Err(UploadError::Data(error)) => return data_error(error),
            Err(UploadError::Storage(failure)) => {
                let (status, retry_after) = nothing_queued([&failure], true);
                let detail = ErrorDetail::failure(&failure);
                return Reply::json(
                    status,
                    retry_after,
                    &super::errors::ErrorBody::new(&detail, &[]),
                );
            }
        };
        let job = BlobJob {
            blob,
            source_id: parsed.source_id,
            raw_data_size: Some(source.raw_size()),
            database: parsed.database,
            table: parsed.table,
            spec: Arc::new(parsed.properties.spec()),
        };
        summary::record("source_id", job.source_id);
        summary::record("raw_bytes", source.raw_size());
        tracing::info!(dm = %dm, blob = %job.blob, source_id = %job.source_id, raw_bytes = source.raw_size(), format = %parsed.format, "data uploaded");
        self.queue(backend, &dm, job, deadline).await
    }

    /// Queues the uploaded blob; deletes it again when it could not be queued.
    async fn queue<B: Backend>(
        &self,
        backend: &B,
        dm: &crate::domain::DmEndpoint,
        job: BlobJob,
        deadline: Deadline,
    ) -> Reply {
        let jobs = [job];
        let tracked = jobs[0].spec.report_method.tracked();
        let batch = Batch {
            dm,
            jobs: &jobs,
            deadline,
            operation: tracked.then(Uuid::new_v4),
        };
        let (outcomes, operation) = match backend.ingest(batch).await {
            Ok(Ingested {
                outcomes,
                operation,
            }) => {
                if let Some(operation) = &operation {
                    summary::record("operation_id", operation.encode());
                }
                (outcomes, operation)
            }
            Err(failure) => (vec![BlobOutcome::Failed(failure)], None),
        };
        super::results::record_outcomes(dm, jobs.len(), &outcomes);
        let (status, retry_after, headline) = match outcomes.first() {
            Some(BlobOutcome::Queued) => (202, None, None),
            Some(BlobOutcome::Unknown(_)) => (207, None, None),
            Some(BlobOutcome::Failed(failure)) => {
                backend.discard(&jobs[0].blob).await;
                let (status, retry_after) = nothing_queued([failure], false);
                (status, retry_after, Some(ErrorDetail::failure(failure)))
            }
            None => (500, None, None),
        };
        Answer::new(&jobs, &outcomes)
            .error(headline.as_ref())
            .operation(operation.as_ref())
            .reply(status, retry_after)
    }

    fn parse<S>(&self, request: &DataRequest<S>) -> Result<Parsed, ApiError> {
        let mut problems = Vec::new();
        let mut invalid = |target: &str, message: String| {
            problems.push(ErrorDetail::new(
                "InvalidField",
                format!("'{target}': {message}"),
                Some(target.to_owned()),
            ));
        };
        let database = DatabaseName::parse(&decode(&request.database))
            .map_err(|e| invalid("database", e.to_string()))
            .ok();
        let table = TableName::parse(&decode(&request.table))
            .map_err(|e| invalid("table", e.to_string()))
            .ok();
        let query = Query::parse(&request.query);
        let mut bag = PropertyBag::new();
        for key in QUERY_PROPERTIES {
            if let Some(value) = query.get(key) {
                bag.set(*key, query_value(key, value));
            }
        }
        let format = match query.get("format") {
            Some(format) => Some(format.to_ascii_lowercase()),
            None => format_of(request.content_type.as_deref()).map(|f| {
                bag.set("format", Value::String(f.to_owned()));
                f.to_owned()
            }),
        };
        if format.is_none() {
            invalid(
                "format",
                "is required: the Content-Type does not say which format the data is in (text/csv, application/x-ndjson, …)".to_owned(),
            );
        }
        match query
            .get("tracking")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("false") => {}
            Some("true") if bag.get("reportMethod").is_none() => {
                bag.set("reportMethod", Value::String("table".to_owned()))
            }
            Some("true") => {}
            Some(_) => invalid("tracking", "must be true or false".to_owned()),
        }
        // The DM deletes the uploaded blob once ingested, as with the SDKs' uploads.
        bag.set("retainBlobOnSuccess", Value::Bool(false));
        let properties = match bag.parse() {
            Ok(own) => {
                let mut properties = self.defaults.clone();
                properties.overlay(&own);
                Some(properties)
            }
            Err(e) => {
                invalid(&e.key, e.message);
                None
            }
        };
        let source_id = match query.get("sourceId") {
            None => Some(SourceId::new_random()),
            Some(raw) => SourceId::parse(raw)
                .map_err(|e| invalid("sourceId", e.to_string()))
                .ok(),
        };
        match (database, table, properties, format, source_id) {
            (Some(database), Some(table), Some(properties), Some(format), Some(source_id))
                if problems.is_empty() =>
            {
                Ok(Parsed {
                    database,
                    table,
                    properties,
                    format,
                    source_id,
                    data_management_uri: query.get("dataManagementUri").map(str::to_owned),
                })
            }
            _ => Err(ApiError::InvalidFields(problems)),
        }
    }

    fn authorize(&self, principal: Option<&str>, parsed: &Parsed) -> Result<(), Denial> {
        let caller = if self.authorization.needs_caller() {
            Caller::from_principal(principal).map_err(|message| Denial {
                code: "CallerNotAuthenticated",
                message,
                target: None,
            })?
        } else {
            None
        };
        self.authorization
            .check_target(caller.as_ref(), &parsed.database, &parsed.table)
    }
}

/// What went wrong with the body itself.
fn data_error(error: DataError) -> Reply {
    match error {
        DataError::TooLarge { max } => ApiError::DataTooLarge { max }.into(),
        DataError::OverDmLimit { max } => ApiError::DataOverDmLimit { max }.into(),
        DataError::Empty => ApiError::InvalidData("EmptyBody", error.to_string()).into(),
        DataError::BadGzip(_) => ApiError::InvalidData("InvalidGzip", error.to_string()).into(),
        DataError::Interrupted(_) => {
            tracing::info!(%error, "data request abandoned; nothing was queued");
            ApiError::InvalidData("BodyInterrupted", error.to_string()).into()
        }
    }
}

/// The temporary blob's name: what it is, for an operator looking at the container.
fn blob_name(parsed: &Parsed) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect()
    };
    format!(
        "{}__{}__{}__{}.gz",
        clean(parsed.database.as_str()),
        clean(parsed.table.as_str()),
        parsed.source_id,
        clean(&parsed.format)
    )
}

/// The format a Content-Type names, if it names one.
fn format_of(content_type: Option<&str>) -> Option<&'static str> {
    let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    let format = match essence.as_str() {
        "text/csv" => "csv",
        "text/tab-separated-values" => "tsv",
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => "json",
        "application/json" => "multijson",
        "application/vnd.apache.parquet" | "application/x-parquet" => "parquet",
        "application/avro" | "avro/binary" => "avro",
        _ => return None,
    };
    debug_assert!(DATA_FORMATS.contains(&format));
    Some(format)
}

/// A query parameter as the JSON API would have it: lists (`tags`, `ingestIfNotExists`) as JSON
/// arrays or comma-separated, everything else as the string it is.
fn query_value(key: &str, raw: &str) -> Value {
    match key {
        "tags" | "ingestIfNotExists" => match serde_json::from_str::<Value>(raw) {
            Ok(array @ Value::Array(_)) => array,
            _ => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
        },
        _ => Value::String(raw.to_owned()),
    }
}

/// A path segment, percent-decoded.
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Query parameters, decoded; the last of a repeated one wins.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Self(
            url::form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_formats() {
        assert_eq!(format_of(Some("text/csv; charset=utf-8")), Some("csv"));
        assert_eq!(format_of(Some("application/x-ndjson")), Some("json"));
        assert_eq!(format_of(Some("application/json")), Some("multijson"));
        assert_eq!(format_of(Some("application/octet-stream")), None);
        assert_eq!(format_of(None), None);
    }

    #[test]
    fn list_parameters_become_arrays() {
        assert_eq!(query_value("tags", "a, b"), serde_json::json!(["a", "b"]));
        assert_eq!(
            query_value("tags", r#"["a,b"]"#),
            serde_json::json!(["a,b"])
        );
        assert_eq!(query_value("format", "csv"), serde_json::json!("csv"));
    }
}
