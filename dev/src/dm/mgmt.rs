//! `POST /v1/rest/mgmt`: authentication, fault injection, and the two commands a
//! queued-ingestion client needs.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use warp::http::HeaderMap;
use warp::reply::Response;

use super::faults::BreakMode;
use super::reply;
use super::state::{MgmtRequest, State, normalize_command};
use super::tables::{self, ErrorContext};
use crate::sas::{self, SasWindow};

#[derive(Deserialize)]
struct Body {
    csl: String,
    #[serde(default)]
    db: Option<String>,
}

enum Command {
    IngestionResources,
    IdentityToken,
    Unknown,
}

fn parse_command(csl: &str) -> Command {
    let c = normalize_command(csl);
    // The Node SDK's browser build appends ` with (EnableBlobCors='true', ...)`.
    let is = |prefix: &str| c == prefix || c.starts_with(&format!("{prefix} with"));
    if is(".get ingestion resources") || is(".show ingestion resources") {
        Command::IngestionResources
    } else if c == ".get kusto identity token" {
        Command::IdentityToken
    } else {
        Command::Unknown
    }
}

pub(crate) async fn handle(state: Arc<State>, headers: HeaderMap, body: Bytes) -> Response {
    let activity_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = headers
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string());
    let recorded_headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            let value = if n.as_str() == "authorization" {
                "<redacted>".to_string()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            (n.as_str().to_string(), value)
        })
        .collect();

    let delay = state.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let parsed: Result<Body, String> = serde_json::from_slice(&body).map_err(|e| e.to_string());
    let (command, db) = match &parsed {
        Ok(b) => (b.csl.trim().to_string(), b.db.clone()),
        Err(_) => (String::new(), None),
    };

    let ctx = ErrorContext {
        activity_id: &activity_id,
        client_request_id: client_request_id.as_deref(),
    };
    let mut common: Vec<(&str, String)> = vec![("x-ms-activity-id", activity_id.clone())];
    if let Some(id) = &client_request_id {
        common.push(("x-ms-client-request-id", id.clone()));
    }

    let mut handled = false;
    let (status, response) = if state.faults.is_down() {
        (
            503,
            reply::json(503, &tables::service_error(503, &ctx), &common),
        )
    } else if let Err(reason) = state.check_bearer(authorization.as_deref()) {
        let mut h = common.clone();
        h.push(("www-authenticate", "Bearer".to_string()));
        (
            401,
            reply::json(401, &tables::unauthorized(&reason, &ctx), &h),
        )
    } else if let Err(e) = &parsed {
        let detail = format!("request body must be JSON {{\"csl\": ..., \"db\": ...}}: {e}");
        (
            400,
            reply::json(400, &tables::bad_request(&detail, &ctx), &common),
        )
    } else if let Some((status, retry_after)) = state.faults.next_status() {
        handled = true;
        let mut h = common.clone();
        let body = if status == 429 {
            tables::throttled(&command, &ctx)
        } else {
            tables::service_error(status, &ctx)
        };
        if let Some(secs) = retry_after {
            h.push(("retry-after", secs.to_string()));
        }
        (status, reply::json(status, &body, &h))
    } else {
        handled = true;
        match parse_command(&command) {
            Command::IngestionResources => {
                let table = tables::ingestion_resources(resource_rows(&state));
                let response = match state.faults.oversized_answers() {
                    Some(min_bytes) => oversized(&table, min_bytes, &common),
                    None => reply::json(200, &table, &common),
                };
                (200, response)
            }
            Command::IdentityToken => {
                let context = state.issue_authorization_context();
                (
                    200,
                    reply::json(200, &tables::identity_token(&context), &common),
                )
            }
            Command::Unknown => (
                400,
                reply::json(400, &tables::syntax_error(&command, &ctx), &common),
            ),
        }
    };

    state.log().mgmt.push(MgmtRequest {
        command,
        db,
        status,
        authorization_present: authorization.is_some(),
        client_request_id,
        headers: recorded_headers,
        handled,
        at: std::time::Instant::now(),
    });
    response
}

/// Characters of the `StorageRoot` of one padding row (each row is its own chunk).
const PADDING_FILL: usize = 16 * 1024;

/// `table` (one `Table_0` with at least one row) followed by padding rows until the
/// body is at least `min_bytes` long, streamed: the padding is one shared chunk repeated.
fn oversized(table: &tables::V1Response, min_bytes: usize, headers: &[(&str, String)]) -> Response {
    let json = serde_json::to_string(table).unwrap_or_default();
    // `{"Tables":[{…,"Rows":[[…],…]}]}`: the padding goes before the closing `]}]}`.
    let Some(head) = json.strip_suffix("]}]}").filter(|h| h.ends_with(']')) else {
        return reply::json(200, table, headers);
    };
    let row = bytes::Bytes::from(format!(
        r#",["{}","{}"]"#,
        tables::PADDING_RESOURCE_TYPE,
        "x".repeat(PADDING_FILL)
    ));
    let rows = min_bytes.saturating_sub(json.len()).div_ceil(row.len());
    let chunks = std::iter::once(bytes::Bytes::from(head.to_string()))
        .chain(std::iter::repeat_n(row, rows))
        .chain(std::iter::once(bytes::Bytes::from_static(b"]}]}")))
        .map(Ok);
    reply::stream(200, reply::JSON, futures::stream::iter(chunks), headers)
}

/// Which endpoint a resource URL of `account` points at right now.
enum Target {
    Azurite,
    Fake,
    BadSig,
}

fn target(state: &State, account: &str, ingestion_queue: bool) -> Target {
    match state.faults.broken(account) {
        Some(
            BreakMode::ServerBusy
            | BreakMode::Hang
            | BreakMode::Reset
            | BreakMode::ResetAfterEnqueue,
        ) => Target::Fake,
        Some(BreakMode::BadSignature) => Target::BadSig,
        None if ingestion_queue && state.null_queue => Target::Fake,
        None => Target::Azurite,
    }
}

fn key(state: &State, account: &str) -> String {
    // Accounts were validated against Azurite at start; an empty key just signs wrongly.
    state
        .storage
        .account_key(account)
        .unwrap_or_default()
        .to_string()
}

fn queue_url(
    state: &State,
    account: &str,
    queue: &str,
    perms: &str,
    w: SasWindow,
    ingest: bool,
) -> String {
    let q = sas::queue_sas(account, &key(state, account), queue, perms, w);
    match target(state, account, ingest) {
        Target::Azurite => format!("{}/{queue}?{q}", state.storage.queue_endpoint(account)),
        Target::Fake => format!("{}/{account}/{queue}?{q}", state.storage_url),
        Target::BadSig => format!(
            "{}/{queue}?{}",
            state.storage.queue_endpoint(account),
            sas::tamper_signature(&q)
        ),
    }
}

/// The `.get ingestion resources` rows, with SAS signed now (`se` = now + SAS lifetime).
pub(crate) fn resource_rows(state: &State) -> Vec<(String, String)> {
    let w = SasWindow::from_now(state.faults.sas_lifetime());
    let layout = &state.layout;
    let mut rows = Vec::new();
    for (account, queue) in &layout.ingestion_queues {
        rows.push((
            "SecuredReadyForAggregationQueue".to_string(),
            queue_url(state, account, queue, "a", w, true),
        ));
    }
    let (fa, fq) = &layout.failed_queue;
    rows.push((
        "FailedIngestionsQueue".to_string(),
        queue_url(state, fa, fq, "rp", w, false),
    ));
    let (sa, sq) = &layout.successful_queue;
    rows.push((
        "SuccessfulIngestionsQueue".to_string(),
        queue_url(state, sa, sq, "rp", w, false),
    ));
    for (account, container) in &layout.temp_containers {
        let q = sas::blob_sas(account, &key(state, account), container, None, "rw", w);
        let url = match target(state, account, false) {
            Target::Azurite => format!("{}/{container}?{q}", state.storage.blob_endpoint(account)),
            Target::Fake => format!("{}/{account}/{container}?{q}", state.storage_url),
            Target::BadSig => format!(
                "{}/{container}?{}",
                state.storage.blob_endpoint(account),
                sas::tamper_signature(&q)
            ),
        };
        rows.push(("TempStorage".to_string(), url));
    }
    let (ta, table) = &layout.status_table;
    // An account SAS for the table service, not a table SAS as the real DM hands out: Azurite signs
    // a table SAS on `$batch` over the path's "table" (`$batch`) instead of its `tn`
    // (dist/src/table/authentication/TableSASAuthenticator.js), so entity-group transactions with
    // a table SAS always fail there, while Azure accepts them on `<account>/$batch`.
    let q = sas::account_sas(ta, &key(state, ta), "t", "co", "raud", w);
    let url = match target(state, ta, false) {
        Target::Azurite => format!("{}/{table}?{q}", state.storage.table_endpoint(ta)),
        Target::Fake => format!("{}/{ta}/{table}?{q}", state.storage_url),
        Target::BadSig => format!(
            "{}/{table}?{}",
            state.storage.table_endpoint(ta),
            sas::tamper_signature(&q)
        ),
    };
    rows.push(("IngestionsStatusTable".to_string(), url));
    rows
}
