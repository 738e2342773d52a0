//! The queued-ingestion REST API ("v2", Preview) on the DM listener:
//! `GET /v1/rest/ingestion/configuration`, `POST /v1/rest/ingestion/queued/{db}/{table}` and
//! `GET /v1/rest/ingestion/queued/{db}/{table}/{operationId}[?details=true]`, with the bodies of
//! the docs (see `docs/wire-facts.md`, "Queued ingestion REST (v2)").
//!
//! A queued POST becomes one v1 message per blob on the emulator's own ready-for-aggregation
//! queues, so the same ingestion worker ingests both protocols and reports one set of outcomes;
//! the status GET reads those outcomes back. Tokens are checked as for `POST /v1/rest/mgmt`.
//! With [`RestV2Config::enabled`] off the routes do not exist (404), like an older cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use warp::http::HeaderMap;
use warp::reply::Response;

use super::faults::RestV2Endpoint;
use super::reply;
use super::state::State;
use super::tables::{self, ErrorContext};

/// What the emulator's v2 API looks like to a client.
#[derive(Debug, Clone)]
pub struct RestV2Config {
    /// Serve the v2 routes at all; `false` answers 404 like a cluster without them.
    pub enabled: bool,
    /// `ingestionSettings.preferredIngestionMethod`: the docs name `V1`/`V2`, their example
    /// and the Spark connector use `REST`/`Legacy`; `None` sends `null`.
    pub preferred_ingestion_method: Option<String>,
    /// `ingestionSettings.maxBlobsPerBatch` (the docs: 20); larger POSTs are refused with 400.
    pub max_blobs_per_batch: usize,
    /// `containerSettings.refreshInterval`.
    pub refresh_interval: Duration,
    /// `ingestionSettings.maxDataSize` in bytes (the docs' example: 6 GiB, the queued-ingestion
    /// size limit). Only announced: the emulator does not know what the real DM does with a
    /// larger blob.
    pub max_data_size: u64,
}

impl Default for RestV2Config {
    fn default() -> Self {
        RestV2Config {
            enabled: true,
            // A cluster that has the API but still prefers the queues, as clusters did while
            // it was in preview: a client on "auto" keeps using v1 unless a test says otherwise.
            preferred_ingestion_method: Some("V1".into()),
            max_blobs_per_batch: 20,
            refresh_interval: Duration::from_secs(3600),
            max_data_size: MAX_DATA_SIZE,
        }
    }
}

/// One v2 request the emulator answered (tests check batching with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestV2Request {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Blobs in a queued POST's body (0 for other calls or unreadable bodies).
    pub blobs: usize,
    /// When the answer was ready (after any injected delay).
    pub at: std::time::Instant,
    /// The request was acted on but its connection closed without an answer
    /// ([`super::Faults::lose_rest_v2_answers`]).
    pub answer_lost: bool,
}

/// A tracked v2 operation, kept in memory (the real DM keeps its own records).
#[derive(Debug, Clone)]
pub(crate) struct V2Operation {
    database: String,
    table: String,
    started: String,
    /// `(sourceId, url without its query, when its outcome was first seen)` per blob.
    blobs: Vec<(String, String, Option<String>)>,
}

/// Mutable v2 state: tracked operations, the request log, injected per-blob failures.
#[derive(Debug, Default)]
pub(crate) struct V2State {
    pub operations: HashMap<String, V2Operation>,
    pub requests: Vec<RestV2Request>,
    /// Queued POSTs naming a blob whose URL contains the pattern answer the status.
    pub poisoned: Vec<(String, u16)>,
}

/// `maxDataSize` of the docs' example (6 GiB), the queued-ingestion size limit.
const MAX_DATA_SIZE: u64 = 6_442_450_944;

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A .NET TimeSpan (`[d.]hh:mm:ss`), the form `refreshInterval` takes.
fn timespan(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if days > 0 {
        format!("{days}.{h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Which v2 route a request is, if any.
pub(crate) enum Route {
    Configuration,
    Queued {
        database: String,
        table: String,
    },
    Status {
        database: String,
        table: String,
        operation: String,
    },
}

impl Route {
    /// The endpoint the v2 faults name this route by.
    fn endpoint(&self) -> RestV2Endpoint {
        match self {
            Route::Configuration => RestV2Endpoint::Configuration,
            Route::Queued { .. } => RestV2Endpoint::Queued,
            Route::Status { .. } => RestV2Endpoint::Status,
        }
    }
}

pub(crate) fn route(path: &str, get: bool, post: bool) -> Option<Route> {
    if path == "/v1/rest/ingestion/configuration" {
        return get.then_some(Route::Configuration);
    }
    let rest = path.strip_prefix("/v1/rest/ingestion/queued/")?;
    let parts: Vec<String> = rest.split('/').map(percent_decode).collect();
    if parts.iter().any(String::is_empty) {
        return None;
    }
    match parts.as_slice() {
        [db, t] if post => Some(Route::Queued {
            database: db.clone(),
            table: t.clone(),
        }),
        [db, t, op] if get => Some(Route::Status {
            database: db.clone(),
            table: t.clone(),
            operation: op.clone(),
        }),
        _ => None,
    }
}

pub(crate) async fn handle(
    state: Arc<State>,
    route: Route,
    method: &str,
    path: &str,
    query: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let activity_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = headers
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ctx = ErrorContext {
        activity_id: &activity_id,
        client_request_id: client_request_id.as_deref(),
    };
    let mut common: Vec<(&str, String)> = vec![("x-ms-activity-id", activity_id.clone())];
    if let Some(id) = &client_request_id {
        common.push(("x-ms-client-request-id", id.clone()));
    }
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string());

    // The same order as `POST /v1/rest/mgmt`: a slow or down DM is so for every endpoint; a slow
    // endpoint on top of that.
    let endpoint = route.endpoint();
    let delay = state.faults.delay() + state.faults.rest_v2_delay(endpoint);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut blobs = 0;
    // Only a request the emulator acted on (not down, authenticated, no injected status) can
    // have its answer lost.
    let mut acted = false;
    let (status, value) = if state.faults.is_down() {
        (503, to_value(tables::service_error(503, &ctx)))
    } else if let Err(reason) = state.check_bearer(authorization.as_deref()) {
        common.push(("www-authenticate", "Bearer".into()));
        (401, to_value(tables::unauthorized(&reason, &ctx)))
    } else if let Some((status, retry_after)) = state.faults.next_rest_v2_status(endpoint) {
        if let Some(secs) = retry_after {
            common.push(("retry-after", secs.to_string()));
        }
        let body = if status == 429 {
            tables::throttled_request(&ctx)
        } else {
            tables::service_error(status, &ctx)
        };
        (status, to_value(body))
    } else {
        acted = true;
        match route {
            Route::Configuration => (200, configuration(&state)),
            Route::Queued { database, table } => {
                let (status, value, n) = queued(&state, &database, &table, &body, &ctx).await;
                blobs = n;
                (status, value)
            }
            Route::Status {
                database,
                table,
                operation,
            } => operation_status(&state, &database, &table, &operation, query, &ctx),
        }
    };
    let answer_lost = acted && state.faults.take_lost_answer(endpoint);
    state.v2().requests.push(RestV2Request {
        method: method.to_string(),
        path: path.to_string(),
        status,
        blobs,
        at: std::time::Instant::now(),
        answer_lost,
    });
    if answer_lost {
        return lost_answer();
    }
    match state.faults.oversized_answers() {
        Some(min_bytes) if status == 200 => padded(&value, min_bytes, &common),
        _ => reply::json(status, &value, &common),
    }
}

/// An answer whose body fails before its first byte: hyper then closes the connection without
/// writing the response head, so the client sees the connection drop after sending its request.
fn lost_answer() -> Response {
    use warp::Reply as _;
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other(
            "kusto-dev: answer lost (Faults::lose_rest_v2_answers)",
        ))
    });
    warp::reply::stream(failing).into_response()
}

/// Characters of one padding chunk of an oversized answer.
const PADDING_FILL: usize = 16 * 1024;

/// `value` (a JSON object) with a leading `"kustoDevPadding"` string member that makes the body at
/// least `min_bytes` long, streamed chunked without `Content-Length` (as the oversized
/// `.get ingestion resources` is): a client that ignores unknown members reads the same
/// answer, if it reads that much.
fn padded(value: &Value, min_bytes: usize, headers: &[(&str, String)]) -> Response {
    let json = value.to_string();
    let Some(members) = json.strip_prefix('{') else {
        return reply::json(200, value, headers);
    };
    let separator = if members == "}" { "" } else { "," };
    let fill = Bytes::from("x".repeat(PADDING_FILL));
    let chunks = min_bytes.saturating_sub(json.len()).div_ceil(PADDING_FILL);
    let body = std::iter::once(Bytes::from_static(b"{\"kustoDevPadding\":\""))
        .chain(std::iter::repeat_n(fill, chunks))
        .chain(std::iter::once(Bytes::from(format!(
            "\"{separator}{members}"
        ))))
        .map(Ok);
    reply::stream(200, reply::JSON, futures::stream::iter(body), headers)
}

fn to_value(body: tables::KustoErrorBody) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

fn configuration(state: &State) -> Value {
    let config = &state.rest_v2;
    // The TempStorage containers `.get ingestion resources` hands out, signed now: the same
    // accounts, so a storage fault (`Faults::break_account`) hits both protocols alike.
    let containers: Vec<Value> = super::mgmt::resource_rows(state)
        .into_iter()
        .filter(|(kind, _)| kind == "TempStorage")
        .map(|(_, url)| json!({ "path": url }))
        .collect();
    json!({
        "containerSettings": {
            "containers": containers,
            "lakeFolders": [],
            "refreshInterval": timespan(config.refresh_interval),
            "preferredUploadMethod": "Storage",
        },
        "ingestionSettings": {
            "maxBlobsPerBatch": config.max_blobs_per_batch,
            "maxDataSize": config.max_data_size,
            "preferredIngestionMethod": config.preferred_ingestion_method,
        },
    })
}

/// A blob of a queued POST, checked.
struct Blob {
    url: String,
    source_id: String,
    raw_size: Option<u64>,
}

fn read_blobs(body: &Value, max: usize) -> Result<Vec<Blob>, String> {
    let blobs = body
        .get("blobs")
        .and_then(Value::as_array)
        .ok_or("'blobs' is required and must be an array")?;
    if blobs.is_empty() {
        return Err("'blobs' must name at least one blob".into());
    }
    if blobs.len() > max {
        return Err(format!(
            "{} blobs in one request; at most {max} (maxBlobsPerBatch) are supported",
            blobs.len()
        ));
    }
    blobs
        .iter()
        .map(|b| {
            let url = b
                .get("url")
                .and_then(Value::as_str)
                .filter(|u| url::Url::parse(u).is_ok())
                .ok_or("every blob needs a 'url' that is an absolute URL")?;
            let source_id = match b.get("sourceId") {
                None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
                Some(Value::String(s)) => uuid::Uuid::parse_str(s)
                    .map_err(|_| format!("'sourceId' {s:?} is not a GUID"))?
                    .to_string(),
                Some(_) => return Err("'sourceId' must be a GUID string".to_string()),
            };
            let raw_size = match b.get("rawSize") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or("'rawSize' must be a non-negative integer")?,
                ),
            };
            Ok(Blob {
                url: url.to_string(),
                source_id,
                raw_size,
            })
        })
        .collect()
}

/// The v1 message the DM's own pipeline would carry for one blob: what the worker reads.
fn message(
    blob: &Blob,
    database: &str,
    table: &str,
    properties: &Map<String, Value>,
    authorization_context: String,
) -> Value {
    let mut additional = Map::new();
    additional.insert("authorizationContext".into(), authorization_context.into());
    for (key, value) in properties {
        match key.as_str() {
            "enableTracking" | "skipBatching" | "deleteAfterDownload" => {}
            // v1 carries list properties as JSON-array strings.
            "tags" | "ingestIfNotExists" => {
                additional.insert(key.clone(), value.to_string().into());
            }
            _ => {
                additional.insert(key.clone(), value.clone());
            }
        }
    }
    let flag = |name: &str| {
        properties
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let mut message = json!({
        "Id": blob.source_id,
        "BlobPath": blob.url,
        "DatabaseName": database,
        "TableName": table,
        // The v2 API deletes the blob only when asked to.
        "RetainBlobOnSuccess": !flag("deleteAfterDownload"),
        "FlushImmediately": flag("skipBatching"),
        // Tracking is the API's own (the status GET); no notification queues, no table rows.
        "ReportLevel": 1,
        "ReportMethod": 0,
        "AdditionalProperties": additional,
    });
    // An unknown size stays unknown, as a client's v1 message leaves it out.
    if let Some(size) = blob.raw_size {
        message["RawDataSize"] = size.into();
    }
    message
}

async fn queued(
    state: &State,
    database: &str,
    table: &str,
    body: &[u8],
    ctx: &ErrorContext<'_>,
) -> (u16, Value, usize) {
    let bad = |detail: String, n: usize| (400, to_value(tables::bad_request(&detail, ctx)), n);
    let body: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad("the request body must be a JSON object".into(), 0),
        Err(e) => return bad(format!("the request body is not JSON: {e}"), 0),
    };
    let count = body
        .get("blobs")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let blobs = match read_blobs(&body, state.rest_v2.max_blobs_per_batch) {
        Ok(b) => b,
        Err(detail) => return bad(detail, count),
    };
    let empty = Map::new();
    let properties = match body.get("properties") {
        Some(Value::Object(p)) => p,
        None => &empty,
        Some(_) => return bad("'properties' must be an object".into(), count),
    };
    if properties
        .get("format")
        .and_then(Value::as_str)
        .is_none_or(|f| f.trim().is_empty())
    {
        return bad("'properties.format' is required".into(), count);
    }
    let poisoned = state.v2().poisoned.iter().find_map(|(pattern, status)| {
        blobs
            .iter()
            .any(|b| b.url.contains(pattern.as_str()))
            .then_some(*status)
    });
    if let Some(status) = poisoned {
        let value = if status == 400 {
            tables::bad_request("a blob of this request was refused (injected)", ctx)
        } else {
            tables::service_error(status, ctx)
        };
        return (status, to_value(value), count);
    }
    for blob in &blobs {
        let json = message(
            blob,
            database,
            table,
            properties,
            state.issue_authorization_context(),
        );
        let text = base64::engine::general_purpose::STANDARD.encode(json.to_string());
        let queues = &state.layout.ingestion_queues;
        let (account, queue) =
            &queues[state.v2_next_queue.fetch_add(1, Ordering::Relaxed) % queues.len()];
        if let Err(e) = state.storage.put_message(account, queue, &text).await {
            tracing::warn!("kusto-dev v2: enqueue failed: {e}");
            return (500, to_value(tables::service_error(500, ctx)), count);
        }
    }
    let tracked = properties
        .get("enableTracking")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id = if tracked {
        let id = format!("emu-op-{}", uuid::Uuid::new_v4().simple());
        let op = V2Operation {
            database: database.to_string(),
            table: table.to_string(),
            started: now(),
            blobs: blobs
                .iter()
                .map(|b| {
                    let path = b.url.split(['?', ';']).next().unwrap_or_default();
                    (b.source_id.clone(), path.to_string(), None)
                })
                .collect(),
        };
        state.v2().operations.insert(id.clone(), op);
        id
    } else {
        String::new()
    };
    (200, json!({"ingestionOperationId": id}), count)
}

fn operation_status(
    state: &State,
    database: &str,
    table: &str,
    operation: &str,
    query: &str,
    ctx: &ErrorContext<'_>,
) -> (u16, Value) {
    let mut v2 = state.v2();
    let Some(op) = v2.operations.get_mut(operation).filter(|o| {
        o.database.eq_ignore_ascii_case(database) && o.table.eq_ignore_ascii_case(table)
    }) else {
        let mut body = tables::bad_request(
            &format!("ingestion operation '{operation}' was not found in {database}.{table}"),
            ctx,
        );
        body.error.code = "NotFound".into();
        body.error.message = "The requested resource was not found.".into();
        body.error.permanent = true;
        return (404, to_value(body));
    };
    let details = url::form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "details" && v.eq_ignore_ascii_case("true"));
    let store = state.ingest();
    let mut counts = [0usize; 3];
    let mut last = op.started.clone();
    let mut rows = Vec::new();
    for (source_id, url, seen) in &mut op.blobs {
        let outcome = store
            .outcomes()
            .iter()
            .rev()
            .find(|o| &o.source_id == source_id);
        // The worker records no time; the first read that sees an outcome stamps it, so
        // `lastUpdated` stays put on later reads.
        let mut row = json!({"sourceId": *source_id, "url": *url, "startTime": op.started});
        match outcome {
            None => {
                counts[2] += 1;
                row["status"] = "InProgress".into();
                row["lastUpdated"] = op.started.clone().into();
            }
            Some(o) => {
                let updated = seen.get_or_insert_with(now).clone();
                if updated > last {
                    last = updated.clone();
                }
                row["lastUpdated"] = updated.into();
                if o.status == super::IngestionStatus::Failed {
                    counts[1] += 1;
                    row["status"] = "Failed".into();
                    row["errorCode"] = o.error_code.clone().unwrap_or_default().into();
                    row["failureStatus"] =
                        o.failure_status.map_or("Unknown", |f| f.as_str()).into();
                    row["details"] = o.details.clone().into();
                } else {
                    // Skipped (ingestIfNotExists found the tag) ends well, as v1 tracking reads it.
                    counts[0] += 1;
                    row["status"] = "Succeeded".into();
                }
            }
        }
        rows.push(row);
    }
    let mut answer = json!({
        "startTime": op.started,
        "lastUpdated": last,
        "status": {"Succeeded": counts[0], "Failed": counts[1], "InProgress": counts[2], "Canceled": 0},
    });
    if details {
        answer["details"] = Value::Array(rows);
    }
    (200, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_are_dotnet_shaped() {
        assert_eq!(timespan(Duration::from_secs(3600)), "01:00:00");
        assert_eq!(timespan(Duration::from_secs(90)), "00:01:30");
        assert_eq!(timespan(Duration::from_secs(86_400 + 61)), "1.00:01:01");
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/v1/rest/ingestion/configuration", true, false),
            Some(Route::Configuration)
        ));
        assert!(route("/v1/rest/ingestion/configuration", false, true).is_none());
        assert!(matches!(
            route("/v1/rest/ingestion/queued/My%20Db/T", false, true),
            Some(Route::Queued { database, table }) if database == "My Db" && table == "T"
        ));
        assert!(matches!(
            route("/v1/rest/ingestion/queued/db/T/op1", true, false),
            Some(Route::Status { operation, .. }) if operation == "op1"
        ));
        assert!(route("/v1/rest/ingestion/queued/db//x", true, false).is_none());
        assert!(route("/v1/rest/ingestion/queued/db", false, true).is_none());
    }

    #[test]
    fn blobs_are_checked_like_the_docs_say() {
        let ok = json!({"blobs": [{"url": "https://a.blob.core.windows.net/c/b.csv?sig=x",
            "sourceId": "123e4567-e89b-12d3-a456-426614174000", "rawSize": 10}]});
        let blobs = read_blobs(&ok, 20).unwrap();
        assert_eq!(blobs[0].raw_size, Some(10));
        assert_eq!(blobs[0].source_id, "123e4567-e89b-12d3-a456-426614174000");
        for (bad, why) in [
            (json!({}), "required"),
            (json!({"blobs": []}), "at least one"),
            (json!({"blobs": [{"url": "nope"}]}), "absolute URL"),
            (
                json!({"blobs": [{"url": "https://a/b", "sourceId": "x"}]}),
                "GUID",
            ),
            (
                json!({"blobs": [{"url": "https://a/b"}, {"url": "https://a/c"}]}),
                "at most 1",
            ),
        ] {
            let e = read_blobs(&bad, 1).err().unwrap();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_message_is_one_the_worker_reads() {
        let blob = Blob {
            url: "https://a.blob.core.windows.net/c/b.csv?sig=x".into(),
            source_id: "123e4567-e89b-12d3-a456-426614174000".into(),
            raw_size: None,
        };
        let props = json!({"format": "csv", "tags": ["ingest-by:x"], "enableTracking": true,
            "ignoreFirstRecord": true});
        let m = message(&blob, "db", "T", props.as_object().unwrap(), "ctx".into());
        let (read, check) = super::super::ingest::read_message(m);
        assert!(check.is_ok());
        assert_eq!(read.id, blob.source_id);
        assert_eq!(read.format, "csv");
        assert_eq!(read.tags, vec!["ingest-by:x".to_string()]);
        assert!(read.ignore_first_record);
        assert!(read.retain_blob_on_success);
        assert_eq!(read.authorization_context.as_deref(), Some("ctx"));
        assert!(
            read.json.get("RawDataSize").is_none(),
            "unknown size left out"
        );
    }
}
