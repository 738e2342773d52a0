//! The body of `POST /api/ingest` — the Logic App's body, and more — parsed into blob jobs. Fields
//! are read by hand from the JSON so every error names its exact path, and every problem of a
//! request is reported in one answer.

use crate::domain::{BlobUri, DatabaseName, SourceId, TableName, json_kind};
use crate::http::errors::{ApiError, ErrorDetail};
use crate::ingest::BlobJob;
use crate::properties::{IngestionSpec, Properties, PropertyBag, PropertyError};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A validated request.
#[derive(Debug)]
pub(crate) struct IngestRequest {
    pub(crate) data_management_uri: Option<String>,
    pub(crate) jobs: Vec<BlobJob>,
}

/// The most JSON values an array or object field may hold. A queued ingestion message (64 KiB of
/// base64, Azure Queue Storage's limit) carries the properties: at most 48 KiB of JSON, so at most
/// ~24 Ki values of two bytes each. Counting values (not bytes) bounds the JSON tree a field can
/// cost, while a long string, which costs no more parsed than raw, is left to the message check.
const MAX_FIELD_VALUES: usize = 24 * 1024;

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
    /// `value` parsed into `T`, or the problem recorded against `target`.
    fn parsed<T, E: ToString>(&mut self, target: &str, value: Result<T, E>) -> Option<T> {
        value.map_err(|e| self.invalid(target, e.to_string())).ok()
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
                format!("must be a string, not {}", json_kind(other)),
            );
            None
        }
    }
}

/// An optional object of ingestion properties, parsed; `None` when it is invalid (recorded).
fn property_object(
    obj: &Map<String, Value>,
    key: &str,
    target: &str,
    problems: &mut Problems,
) -> Option<Properties> {
    match obj.get(key) {
        None | Some(Value::Null) => Some(Properties::default()),
        Some(Value::Object(map)) => PropertyBag::from_map(map.clone())
            .parse()
            .map_err(|e| problems.property(target, e))
            .ok(),
        Some(other) => {
            problems.invalid(
                target,
                format!(
                    "must be an object of ingestion properties, not {}",
                    json_kind(other)
                ),
            );
            None
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
pub(crate) fn parse(
    body: &[u8],
    max_blobs: usize,
    defaults: &Properties,
) -> Result<IngestRequest, ApiError> {
    let top = body_fields(body)?;
    let mut problems = Problems::default();
    let blobs = blob_items(top.get("blobs").copied(), max_blobs, &mut problems)?;
    let obj = small_fields(&top, "", &mut problems);
    let destination = Destination {
        database: required_str(&obj, "database", "database", &mut problems)
            .and_then(|s| problems.parsed("database", DatabaseName::parse(s))),
        table: required_str(&obj, "table", "table", &mut problems)
            .and_then(|s| problems.parsed("table", TableName::parse(s))),
    };
    let data_management_uri = match obj.get("dataManagementUri") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.invalid(
                "dataManagementUri",
                format!("must be a string, not {}", json_kind(other)),
            );
            None
        }
    };
    let idempotent = idempotent(&obj, &mut problems);
    // Most requests give properties only at request level: one spec then serves every blob.
    let base = request_properties(&obj, defaults, &mut problems).map(|properties| RequestLevel {
        spec: Arc::new(properties.spec()),
        properties,
        idempotent,
    });
    let jobs = blobs
        .iter()
        .enumerate()
        .filter_map(|(i, item)| parse_blob(i, item, &destination, base.as_ref(), &mut problems))
        .collect();
    if !problems.0.is_empty() {
        return Err(ApiError::InvalidFields(problems.0));
    }
    Ok(IngestRequest {
        data_management_uri,
        jobs,
    })
}

/// The body's top-level fields, unparsed: the body is never turned into one JSON tree, which
/// would cost ~25 times its size.
fn body_fields(body: &[u8]) -> Result<BTreeMap<String, &RawValue>, ApiError> {
    // Valid JSON first, so that a syntax error is reported as such.
    let raw: &RawValue =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    raw_object(raw).ok_or_else(|| {
        ApiError::InvalidFields(vec![ErrorDetail::new(
            "InvalidField",
            format!(
                "The request body must be a JSON object, not {}.",
                raw_kind(raw)
            ),
            None,
        )])
    })
}

/// The fields of a JSON object, unparsed; `None` when `raw` is not an object.
fn raw_object(raw: &RawValue) -> Option<BTreeMap<String, &RawValue>> {
    (raw_kind(raw) == "an object")
        .then(|| serde_json::from_str(raw.get()).ok())
        .flatten()
}

/// How a JSON value is named in messages, from its first character.
fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Fields of one object (the body's, or a blob's) as JSON values, except `blobs`. An array or
/// object with more values than a queue message can hold can never be queued: it is refused
/// unparsed, so no field's JSON tree grows beyond [`MAX_FIELD_VALUES`] values.
fn small_fields(
    fields: &BTreeMap<String, &RawValue>,
    prefix: &str,
    problems: &mut Problems,
) -> Map<String, Value> {
    let mut small = Map::new();
    for (key, raw) in fields {
        if key == "blobs" && prefix.is_empty() {
            continue;
        }
        let target = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if count_values(raw.get()).0 > MAX_FIELD_VALUES {
            problems.invalid(
                &target,
                format!(
                    "holds more than {MAX_FIELD_VALUES} JSON values; an ingestion message could never carry them"
                ),
            );
            continue;
        }
        match serde_json::from_str(raw.get()) {
            Ok(value) => {
                small.insert(key.clone(), value);
            }
            Err(error) => problems.invalid(&target, error.to_string()),
        }
    }
    small
}

/// How many values the JSON text `raw` holds, in all (an empty array or object counts one too
/// many) and as direct items of the outermost array or object: counted by the separators and
/// brackets outside strings, without parsing.
fn count_values(raw: &str) -> (usize, usize) {
    let raw = raw.trim();
    let (mut all, mut items, mut depth) = (1usize, 0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in raw.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                all += 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => {
                all += 1;
                if depth == 1 {
                    items += 1;
                }
            }
            _ => {}
        }
    }
    let empty = raw.len() <= 2 || raw[1..raw.len() - 1].trim().is_empty();
    (all, if empty { 0 } else { items + 1 })
}

/// The `blobs` array, each element unparsed; empty (problem recorded) when it is missing or not
/// an array.
fn blob_items<'a>(
    raw: Option<&'a RawValue>,
    max_blobs: usize,
    problems: &mut Problems,
) -> Result<Vec<&'a RawValue>, ApiError> {
    let Some(raw) = raw.filter(|raw| raw_kind(raw) != "null") else {
        problems.missing("blobs");
        return Ok(Vec::new());
    };
    if raw_kind(raw) != "an array" {
        problems.invalid("blobs", format!("must be an array, not {}", raw_kind(raw)));
        return Ok(Vec::new());
    }
    // Counted before anything is allocated per item.
    let count = count_values(raw.get()).1;
    if count > max_blobs {
        return Err(ApiError::TooManyBlobs {
            count,
            max: max_blobs,
        });
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if items.is_empty() {
        problems.invalid("blobs", "must list at least one blob");
    }
    Ok(items)
}

/// Where every blob of the request goes; `None` parts are invalid (recorded).
struct Destination {
    database: Option<DatabaseName>,
    table: Option<TableName>,
}

/// The request's own properties, the spec of a blob that adds none, and whether each blob is to
/// be ingested at most once.
struct RequestLevel {
    properties: Properties,
    spec: Arc<IngestionSpec>,
    idempotent: bool,
}

/// `"idempotent": true`: every blob carries the caller's `sourceId`, and Kusto ingests a blob with
/// a given source id once (an `ingest-by:` tag with `ingestIfNotExists`).
fn idempotent(obj: &Map<String, Value>, problems: &mut Problems) -> bool {
    match obj.get("idempotent") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            problems.invalid("idempotent", "must be true or false");
            false
        }
    }
}

/// The properties every blob starts from: the settings' defaults, then the request's
/// `additionalProperties`, then its typed fields. `None` when a layer is invalid (recorded).
fn request_properties(
    obj: &Map<String, Value>,
    defaults: &Properties,
    problems: &mut Problems,
) -> Option<Properties> {
    let additional = property_object(
        obj,
        "additionalProperties",
        "additionalProperties",
        problems,
    );
    let mut typed = PropertyBag::new();
    for key in REQUEST_PROPERTIES {
        if let Some(value) = obj.get(*key).filter(|v| !v.is_null()) {
            typed.set(*key, value.clone());
        }
    }
    // `"tracking": true` is `"reportMethod": "table"` unless the request names a method.
    match obj.get("tracking") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) if typed.get("reportMethod").is_none() => {
            typed.set("reportMethod", Value::String("table".to_owned()));
        }
        Some(Value::Bool(true)) => {}
        Some(_) => problems.invalid("tracking", "must be true or false"),
    }
    let typed = typed.parse().map_err(|e| problems.property("", e)).ok();
    let mut base = defaults.clone();
    base.overlay(&additional?);
    base.overlay(&typed?);
    Some(base)
}

/// One element of `blobs`; `None` when anything about it (or the request) is invalid.
fn parse_blob(
    i: usize,
    item: &RawValue,
    destination: &Destination,
    base: Option<&RequestLevel>,
    problems: &mut Problems,
) -> Option<BlobJob> {
    let at = format!("blobs[{i}]");
    let Some(fields) = raw_object(item) else {
        problems.invalid(
            &at,
            format!("must be an object with a blobUri, not {}", raw_kind(item)),
        );
        return None;
    };
    let blob = &small_fields(&fields, &at, problems);
    let uri_target = format!("{at}.blobUri");
    let uri = required_str(blob, "blobUri", &uri_target, problems)
        .and_then(|s| problems.parsed(&uri_target, BlobUri::parse(s)));
    let source_target = format!("{at}.sourceId");
    let idempotent = base.is_some_and(|b| b.idempotent);
    let source_id = match blob.get("sourceId") {
        None | Some(Value::Null) if idempotent => {
            problems.invalid(
                &source_target,
                "is required when \"idempotent\" is true: send the blob again with the same sourceId and Kusto ingests it once",
            );
            None
        }
        None | Some(Value::Null) => Some(SourceId::new_random()),
        Some(Value::String(s)) => problems.parsed(&source_target, SourceId::parse(s)),
        Some(other) => {
            problems.invalid(
                &source_target,
                format!("must be a GUID string, not {}", json_kind(other)),
            );
            None
        }
    };
    let size = raw_data_size(
        blob.get("rawDataSize"),
        &format!("{at}.rawDataSize"),
        problems,
    );
    let own = property_object(
        blob,
        "additionalProperties",
        &format!("{at}.additionalProperties"),
        problems,
    );
    let source_id = source_id?;
    let spec = blob_spec(base?, own?, idempotent.then_some(source_id));
    Some(BlobJob {
        blob: uri?,
        source_id,
        raw_data_size: size,
        database: destination.database.clone()?,
        table: destination.table.clone()?,
        spec,
    })
}

/// The request's spec, or the blob's own properties layered over the request's; tagged to be
/// ingested once under `once` when the request is idempotent.
fn blob_spec(base: &RequestLevel, own: Properties, once: Option<SourceId>) -> Arc<IngestionSpec> {
    if own.is_empty() && once.is_none() {
        return base.spec.clone();
    }
    let mut merged = base.properties.clone();
    merged.overlay(&own);
    if let Some(source_id) = once {
        merged.ingest_once(&source_id.to_string());
    }
    Arc::new(merged.spec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<IngestRequest, ApiError> {
        parse(v.to_string().as_bytes(), 10, &Properties::default())
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
        )
        .parse()
        .unwrap();
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
            parse(b"{not json", 10, &Properties::default()),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse(b"[]", 10, &Properties::default()),
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
        assert!(parse(bytes, 10, &Properties::default()).is_ok());
        for cut in 0..bytes.len() {
            assert!(
                parse(&bytes[..cut], 10, &Properties::default()).is_err(),
                "prefix of {cut} bytes"
            );
        }
        for (i, _) in body.char_indices().step_by(3) {
            let mut mangled = bytes.to_vec();
            mangled[i] = b'\x00';
            // Whatever the damage, parsing answers (Ok only if the JSON still means a valid request).
            let _ = parse(&mangled, 10, &Properties::default());
        }
    }

    #[test]
    fn values_are_counted_without_parsing() {
        assert_eq!(count_values("[]"), (2, 0));
        assert_eq!(count_values(" [ ] "), (2, 0));
        assert_eq!(count_values("[1, 2, 3]"), (4, 3));
        assert_eq!(count_values(r#"[{"a": [1, 2]}, "x,[{", 3]"#), (7, 3));
        assert_eq!(count_values(r#"{"a": "\"[", "b": 1}"#), (3, 2));
        assert_eq!(count_values("7"), (1, 0));
    }

    #[test]
    fn a_field_of_many_tiny_values_is_refused_unparsed() {
        let tiny = format!("[{}1]", "1,".repeat(MAX_FIELD_VALUES));
        let body = format!(
            r#"{{"database": "d", "table": "t", "junk": {tiny}, "blobs": [{{"blobUri": "https://a.blob.core.windows.net/c/1"}}]}}"#
        );
        assert_eq!(
            targets(parse(body.as_bytes(), 10, &Properties::default()).unwrap_err()),
            vec!["junk"]
        );
        let many = format!(
            r#"{{"database": "d", "table": "t", "blobs": [{}1]}}"#,
            "1,".repeat(20)
        );
        assert!(matches!(
            parse(many.as_bytes(), 10, &Properties::default()),
            Err(ApiError::TooManyBlobs { count: 21, max: 10 })
        ));
    }

    #[test]
    fn idempotent_requests_need_a_source_id_and_tag_each_blob() {
        let e = parse_json(
            json!({"database": "d", "table": "t", "idempotent": true, "blobs": [
            {"blobUri": "https://a.blob.core.windows.net/c/1"}]}),
        )
        .unwrap_err();
        assert_eq!(targets(e), vec!["blobs[0].sourceId"]);
        let req = parse_json(json!({"database": "d", "table": "t", "idempotent": true, "tags": ["x"], "blobs": [
            {"blobUri": "https://a.blob.core.windows.net/c/1", "sourceId": "11111111-2222-4333-8444-555555555555"}]}))
        .unwrap();
        let extra: Map<String, Value> = req.jobs[0].spec.additional.iter().cloned().collect();
        assert_eq!(
            extra["tags"],
            json!("[\"x\",\"ingest-by:11111111-2222-4333-8444-555555555555\"]")
        );
        assert_eq!(
            extra["ingestIfNotExists"],
            json!("[\"11111111-2222-4333-8444-555555555555\"]")
        );
        assert_eq!(
            targets(
                parse_json(
                    json!({"database": "d", "table": "t", "idempotent": 1, "blobs": [
                {"blobUri": "https://a.blob.core.windows.net/c/1"}]})
                )
                .unwrap_err()
            ),
            vec!["idempotent"]
        );
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
