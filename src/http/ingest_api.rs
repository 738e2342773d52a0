//! `POST /api/ingest`: the Logic App's body (and more) parsed into blob jobs, and the per-blob
//! answer. Fields are read by hand from the JSON so every error names its exact path.

use super::errors::{ApiError, ErrorDetail, retry_after_header};
use crate::domain::{BlobUri, DatabaseName, SourceId, TableName};
use crate::ingestor::{BlobFailure, BlobJob, BlobOutcome, Ingestor};
use crate::properties::{IngestionSpec, PropertyBag, PropertyError};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A validated request.
#[derive(Debug)]
pub struct IngestRequest {
    pub data_management_uri: Option<String>,
    pub jobs: Vec<BlobJob>,
}

/// Request-level fields that are ingestion properties, in the order they are applied.
const REQUEST_PROPERTIES: &[&str] = &[
    "format",
    "ingestionMappingReference",
    "ignoreFirstRecord",
    "creationTime",
    "tags",
    "ingestIfNotExists",
    "flushImmediately",
    "reportLevel",
    "reportMethod",
    "retainBlobOnSuccess",
];

/// Collects every problem with a request, so one answer lists them all.
#[derive(Default)]
struct Problems(Vec<ErrorDetail>);

impl Problems {
    fn missing(&mut self, target: &str) {
        self.0.push(ErrorDetail::new(
            "MissingField",
            format!("'{target}' is required."),
            Some(target.to_owned()),
        ));
    }
    fn invalid(&mut self, target: &str, message: impl Into<String>) {
        self.0.push(ErrorDetail::new(
            "InvalidField",
            format!("'{target}': {}", message.into()),
            Some(target.to_owned()),
        ));
    }
    fn property(&mut self, prefix: &str, error: PropertyError) {
        let target = if prefix.is_empty() {
            error.key.clone()
        } else {
            format!("{prefix}.{}", error.key)
        };
        self.invalid(&target, error.message);
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A required non-empty string field.
fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    target: &str,
    problems: &mut Problems,
) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            problems.missing(target);
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            problems.invalid(target, "must not be empty");
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            problems.invalid(
                target,
                format!("must be a string, not {}", type_name(other)),
            );
            None
        }
    }
}

/// An optional object of ingestion properties.
fn property_object(
    obj: &Map<String, Value>,
    key: &str,
    target: &str,
    problems: &mut Problems,
) -> PropertyBag {
    match obj.get(key) {
        None | Some(Value::Null) => PropertyBag::new(),
        Some(Value::Object(map)) => {
            let bag = PropertyBag::from_map(map.clone());
            if let Err(e) = bag.validate() {
                problems.property(target, e);
            }
            bag
        }
        Some(other) => {
            problems.invalid(
                target,
                format!(
                    "must be an object of ingestion properties, not {}",
                    type_name(other)
                ),
            );
            PropertyBag::new()
        }
    }
}

fn raw_data_size(value: Option<&Value>, target: &str, problems: &mut Problems) -> Option<u64> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        // The Logic App's expressions often produce numbers as strings.
        Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => s.trim().parse().ok(),
        Some(_) => {
            problems.invalid(
                target,
                "must be a non-negative integer (the uncompressed size in bytes)",
            );
            None
        }
    }
}

/// Parses and validates the whole body. `max_blobs` is checked before any blob is parsed.
pub fn parse(
    body: &[u8],
    max_blobs: usize,
    defaults: &PropertyBag,
) -> Result<IngestRequest, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::InvalidFields(vec![ErrorDetail::new(
            "InvalidField",
            format!(
                "The request body must be a JSON object, not {}.",
                type_name(&value)
            ),
            None,
        )]));
    };
    let mut problems = Problems::default();

    let blobs = match obj.get("blobs") {
        None | Some(Value::Null) => {
            problems.missing("blobs");
            &[][..]
        }
        Some(Value::Array(items)) if items.is_empty() => {
            problems.invalid("blobs", "must list at least one blob");
            &[][..]
        }
        Some(Value::Array(items)) if items.len() > max_blobs => {
            return Err(ApiError::TooManyBlobs {
                count: items.len(),
                max: max_blobs,
            });
        }
        Some(Value::Array(items)) => items.as_slice(),
        Some(other) => {
            problems.invalid(
                "blobs",
                format!("must be an array, not {}", type_name(other)),
            );
            &[][..]
        }
    };

    let database = required_str(&obj, "database", "database", &mut problems).and_then(|s| {
        DatabaseName::parse(s)
            .map_err(|e| problems.invalid("database", e.to_string()))
            .ok()
    });
    let table = required_str(&obj, "table", "table", &mut problems).and_then(|s| {
        TableName::parse(s)
            .map_err(|e| problems.invalid("table", e.to_string()))
            .ok()
    });
    let data_management_uri = match obj.get("dataManagementUri") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.invalid(
                "dataManagementUri",
                format!("must be a string, not {}", type_name(other)),
            );
            None
        }
    };

    // Request level: additionalProperties, then the typed fields over them.
    let mut request_props = property_object(
        &obj,
        "additionalProperties",
        "additionalProperties",
        &mut problems,
    );
    let mut typed = PropertyBag::new();
    for key in REQUEST_PROPERTIES {
        if let Some(value) = obj.get(*key).filter(|v| !v.is_null()) {
            typed.set(*key, value.clone());
        }
    }
    if let Err(e) = typed.validate() {
        problems.property("", e);
    }
    request_props.overlay(&typed);
    let mut base = defaults.clone();
    base.overlay(&request_props);
    // Most requests give properties only at request level: one spec then serves every blob.
    let shared_spec = IngestionSpec::from_bag(base.clone()).ok().map(Arc::new);

    let mut jobs = Vec::with_capacity(blobs.len());
    for (i, item) in blobs.iter().enumerate() {
        let at = format!("blobs[{i}]");
        let Value::Object(blob) = item else {
            problems.invalid(
                &at,
                format!("must be an object with a blobUri, not {}", type_name(item)),
            );
            continue;
        };
        let uri_target = format!("{at}.blobUri");
        let uri = required_str(blob, "blobUri", &uri_target, &mut problems).and_then(|s| {
            BlobUri::parse(s)
                .map_err(|e| problems.invalid(&uri_target, e.to_string()))
                .ok()
        });
        let source_target = format!("{at}.sourceId");
        let source_id = match blob.get("sourceId") {
            None | Some(Value::Null) => Some(SourceId::new_random()),
            Some(Value::String(s)) => SourceId::parse(s)
                .map_err(|e| problems.invalid(&source_target, e.to_string()))
                .ok(),
            Some(other) => {
                problems.invalid(
                    &source_target,
                    format!("must be a GUID string, not {}", type_name(other)),
                );
                None
            }
        };
        let size = raw_data_size(
            blob.get("rawDataSize"),
            &format!("{at}.rawDataSize"),
            &mut problems,
        );
        let blob_props = property_object(
            blob,
            "additionalProperties",
            &format!("{at}.additionalProperties"),
            &mut problems,
        );
        // Each layer was validated on its own above, so merging cannot introduce a new error;
        // a failure here means an earlier one is already recorded.
        let spec = if blob_props.is_empty() {
            shared_spec.clone()
        } else {
            let mut merged = base.clone();
            merged.overlay(&blob_props);
            IngestionSpec::from_bag(merged).ok().map(Arc::new)
        };
        if let (Some(blob), Some(source_id), Some(database), Some(table), Some(spec)) =
            (uri, source_id, &database, &table, spec)
        {
            jobs.push(BlobJob {
                blob,
                source_id,
                raw_data_size: size,
                database: database.clone(),
                table: table.clone(),
                spec,
            });
        }
    }

    if !problems.0.is_empty() {
        return Err(ApiError::InvalidFields(problems.0));
    }
    Ok(IngestRequest {
        data_management_uri,
        jobs,
    })
}

/// The HTTP answer: status, extra headers, JSON body.
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        Reply {
            status: error.status(),
            retry_after: None,
            body: error.body().to_string(),
        }
    }
}

/// Handles one request body end to end. The body is dropped once parsed.
pub async fn handle(ingestor: &Ingestor, body: bytes::Bytes) -> Reply {
    let settings = ingestor.settings();
    let parsed = parse(&body, settings.max_blobs, &settings.default_properties);
    drop(body);
    let request = match parsed {
        Ok(request) => request,
        Err(error) => {
            tracing::info!(status = error.status(), error = ?error.body()["error"]["code"], "rejected ingest request");
            return error.into();
        }
    };
    let dm = match ingestor.resolve_dm(request.data_management_uri.as_deref()) {
        Ok(dm) => dm,
        Err(not_allowed) => {
            tracing::warn!(requested = %not_allowed.0, "rejected a dataManagementUri outside the allowlist");
            return ApiError::DmNotAllowed(not_allowed.0).into();
        }
    };
    let jobs = request.jobs;
    let outcomes = match ingestor.ingest(&dm, &jobs).await {
        Ok(outcomes) => outcomes,
        Err(error) => {
            let failure = BlobFailure {
                code: error.code(),
                message: error.to_string(),
                transient: error.is_transient(),
            };
            let outcomes = vec![BlobOutcome::Failed(failure.clone()); jobs.len()];
            let headline = ErrorDetail::new(failure.code, failure.message, None);
            return Reply {
                status: if error.is_transient() { 503 } else { 502 },
                retry_after: error.retry_after().map(retry_after_header),
                body: results_body(&jobs, &outcomes, Some(&headline)),
            };
        }
    };
    let queued = outcomes
        .iter()
        .filter(|o| matches!(o, BlobOutcome::Queued))
        .count();
    let (status, retry_after, headline) = if queued == jobs.len() {
        (202, None, None)
    } else if queued > 0 {
        (207, None, None)
    } else {
        let transient = outcomes
            .iter()
            .any(|o| matches!(o, BlobOutcome::Failed(f) if f.transient));
        let headline = outcomes.iter().find_map(|o| match o {
            BlobOutcome::Failed(f) => Some(ErrorDetail::new(
                f.code,
                format!("No blob was queued: {}", f.message),
                None,
            )),
            BlobOutcome::Queued => None,
        });
        if transient {
            (
                503,
                Some(retry_after_header(std::time::Duration::from_secs(10))),
                headline,
            )
        } else {
            (400, None, headline)
        }
    };
    tracing::info!(dm = %dm, blobs = jobs.len(), queued, status, "ingest request done");
    Reply {
        status,
        retry_after,
        body: results_body(&jobs, &outcomes, headline.as_ref()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultsBody<'a> {
    blob_count: usize,
    queued: usize,
    failed: usize,
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

/// The per-blob answer, serialized straight from the jobs (no intermediate JSON tree).
fn results_body(jobs: &[BlobJob], outcomes: &[BlobOutcome], error: Option<&ErrorDetail>) -> String {
    let queued = outcomes
        .iter()
        .filter(|o| matches!(o, BlobOutcome::Queued))
        .count();
    let blobs = jobs
        .iter()
        .zip(outcomes)
        .map(|(job, outcome)| BlobResult {
            blob_uri: &job.blob,
            source_id: &job.source_id,
            status: match outcome {
                BlobOutcome::Queued => "queued",
                BlobOutcome::Failed(_) => "failed",
            },
            error: match outcome {
                BlobOutcome::Queued => None,
                BlobOutcome::Failed(f) => Some(BlobError {
                    code: f.code,
                    message: &f.message,
                }),
            },
        })
        .collect();
    let body = ResultsBody {
        blob_count: jobs.len(),
        queued,
        failed: jobs.len() - queued,
        blobs,
        error,
    };
    serde_json::to_string(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<IngestRequest, ApiError> {
        parse(v.to_string().as_bytes(), 10, &PropertyBag::new())
    }

    fn targets(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidFields(d) => d.into_iter().filter_map(|d| d.target).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn logic_app_body_is_accepted_unchanged() {
        let req = parse_json(json!({
            "database": "myingest", "table": "employees",
            "dataManagementUri": "https://ingest-mycluster.westeurope.kusto.windows.net",
            "blobs": [{"blobUri": "https://acct.blob.core.windows.net/c/a.csv?sv=1&sig=s",
                       "additionalProperties": {"format": "csv", "mappingReference": "m", "ignoreFirstRecord": "true"}}]
        }))
        .unwrap();
        assert_eq!(req.jobs.len(), 1);
        let extra: Map<String, Value> = req.jobs[0].spec.additional.iter().cloned().collect();
        assert_eq!(extra["ignoreFirstRecord"], json!("true"));
        assert_eq!(extra["mappingReference"], json!("m"));
    }

    #[test]
    fn precedence_is_blob_over_request_over_defaults() {
        let defaults = PropertyBag::from_map(
            json!({"format": "psv", "zipPattern": "*.csv", "tags": ["d"]})
                .as_object()
                .unwrap()
                .clone(),
        );
        let body = json!({
            "database": "d", "table": "t", "format": "tsv", "tags": ["r"],
            "additionalProperties": {"format": "json", "creationTime": "2024-01-01T00:00:00Z"},
            "blobs": [{"blobUri": "https://a.blob.core.windows.net/c/1.csv", "additionalProperties": {"Tags": "[\"b\"]"}},
                      {"blobUri": "https://a.blob.core.windows.net/c/2.csv"}]
        });
        let req = parse(body.to_string().as_bytes(), 10, &defaults).unwrap();
        let first: Map<String, Value> = req.jobs[0].spec.additional.iter().cloned().collect();
        let second: Map<String, Value> = req.jobs[1].spec.additional.iter().cloned().collect();
        assert_eq!(
            first["format"],
            json!("tsv"),
            "typed request field beats request additionalProperties and defaults"
        );
        assert_eq!(first["Tags"], json!("[\"b\"]"), "blob beats request");
        assert_eq!(second["tags"], json!("[\"r\"]"));
        assert_eq!(
            second["zipPattern"],
            json!("*.csv"),
            "defaults fill the gaps"
        );
        assert_eq!(second["creationTime"], json!("2024-01-01T00:00:00Z"));
    }

    #[test]
    fn every_problem_is_named() {
        let e = parse_json(json!({
            "table": "", "format": "xlsx",
            "blobs": [{"blobUri": 5}, {"blobUri": "http://evil.example.com/c/a"}, {"sourceId": "x"},
                      {"blobUri": "https://a.blob.core.windows.net/c/b", "rawDataSize": -1,
                       "additionalProperties": {"flushImmediately": "maybe"}}, 7]
        }))
        .unwrap_err();
        assert_eq!(
            targets(e),
            vec![
                "database",
                "table",
                "format",
                "blobs[0].blobUri",
                "blobs[1].blobUri",
                "blobs[2].blobUri",
                "blobs[2].sourceId",
                "blobs[3].rawDataSize",
                "blobs[3].additionalProperties.flushImmediately",
                "blobs[4]"
            ]
        );
    }

    #[test]
    fn limits_and_shapes() {
        assert!(matches!(
            parse(b"{not json", 10, &PropertyBag::new()),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse(b"[]", 10, &PropertyBag::new()),
            Err(ApiError::InvalidFields(_))
        ));
        let many: Vec<Value> = (0..11)
            .map(|i| json!({"blobUri": format!("https://a.blob.core.windows.net/c/{i}")}))
            .collect();
        assert!(matches!(
            parse_json(json!({"database": "d", "table": "t", "blobs": many})),
            Err(ApiError::TooManyBlobs { count: 11, max: 10 })
        ));
        assert_eq!(
            targets(parse_json(json!({"database": "d", "table": "t", "blobs": []})).unwrap_err()),
            vec!["blobs"]
        );
    }

    #[test]
    fn truncated_and_mangled_bodies_are_rejected_never_accepted_or_panicking() {
        let body = json!({
            "database": "d", "table": "t", "format": "csv", "tags": ["a"],
            "blobs": [{"blobUri": "https://a.blob.core.windows.net/c/1.csv?sig=x", "rawDataSize": 5,
                       "sourceId": "11111111-2222-4333-8444-555555555555",
                       "additionalProperties": {"ignoreFirstRecord": "true"}}]
        })
        .to_string();
        let bytes = body.as_bytes();
        assert!(parse(bytes, 10, &PropertyBag::new()).is_ok());
        for cut in 0..bytes.len() {
            assert!(
                parse(&bytes[..cut], 10, &PropertyBag::new()).is_err(),
                "prefix of {cut} bytes"
            );
        }
        for (i, _) in body.char_indices().step_by(3) {
            let mut mangled = bytes.to_vec();
            mangled[i] = b'\x00';
            // Whatever the damage, parsing answers (Ok only if the JSON still means a valid request).
            let _ = parse(&mangled, 10, &PropertyBag::new());
        }
    }

    #[test]
    fn caller_guid_is_kept() {
        let req = parse_json(json!({"database": "d", "table": "t", "blobs": [
            {"blobUri": "https://a.blob.core.windows.net/c/1", "sourceId": "11111111-2222-4333-8444-555555555555"},
            {"blobUri": "https://a.blob.core.windows.net/c/2"}]}))
        .unwrap();
        assert_eq!(
            req.jobs[0].source_id.to_string(),
            "11111111-2222-4333-8444-555555555555"
        );
        assert_ne!(req.jobs[1].source_id, req.jobs[0].source_id);
    }
}
