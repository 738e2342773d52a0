//! `POST /v1/rest/query`: just enough of the engine's query endpoint to count what the
//! ingestion worker stored — `T | count` (also `['T'] | count`), with the database from the
//! body's `db`. Bearer-checked like `/v1/rest/mgmt`; answered with a v1 table of one
//! `Count` column. Not logged in `mgmt_requests`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use warp::http::HeaderMap;
use warp::reply::Response;

use super::reply;
use super::state::State;
use super::tables::{self, ErrorContext};

#[derive(Deserialize)]
struct Body {
    csl: String,
    #[serde(default)]
    db: Option<String>,
}

/// The table of `T | count`, or `None` for any other query.
fn count_target(csl: &str) -> Option<String> {
    let csl = csl.trim().trim_end_matches(';');
    let (table, op) = csl.split_once('|')?;
    if !op.trim().eq_ignore_ascii_case("count") {
        return None;
    }
    let table = table.trim();
    let table = table
        .strip_prefix("['")
        .and_then(|t| t.strip_suffix("']"))
        .or_else(|| {
            table
                .strip_prefix("[\"")
                .and_then(|t| t.strip_suffix("\"]"))
        })
        .unwrap_or(table);
    let plain = !table.is_empty()
        && table
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '));
    plain.then(|| table.to_string())
}

pub(crate) async fn handle(state: Arc<State>, headers: HeaderMap, body: Bytes) -> Response {
    let activity_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = headers
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ctx = ErrorContext {
        activity_id: &activity_id,
        client_request_id: client_request_id.as_deref(),
    };
    let common = vec![("x-ms-activity-id", activity_id.clone())];
    if state.faults.is_down() {
        return reply::json(503, &tables::service_error(503, &ctx), &common);
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err(reason) = state.check_bearer(authorization) {
        let mut h = common.clone();
        h.push(("www-authenticate", "Bearer".to_string()));
        return reply::json(401, &tables::unauthorized(&reason, &ctx), &h);
    }
    let body: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let detail = format!("request body must be JSON {{\"csl\": ..., \"db\": ...}}: {e}");
            return reply::json(400, &tables::bad_request(&detail, &ctx), &common);
        }
    };
    let Some(table) = count_target(&body.csl) else {
        let detail = format!(
            "kusto-dev's query endpoint runs `<Table> | count` only, not '{}'",
            body.csl.trim()
        );
        return reply::json(400, &tables::semantic_error(&detail, &ctx), &common);
    };
    let Some(db) = body.db.filter(|d| !d.trim().is_empty()) else {
        let detail = "the request names no database (`db`)";
        return reply::json(400, &tables::semantic_error(detail, &ctx), &common);
    };
    let store = state.ingest();
    if let Err(f) = store.check_target(&db, &table) {
        return reply::json(400, &tables::semantic_error(&f.details, &ctx), &common);
    }
    match store.row_count(&db, &table) {
        Some(n) => reply::json(200, &tables::count(n), &common),
        None => {
            let detail = format!(
                "'{table}' operator: Failed to resolve table or column expression named '{table}' in database '{db}'"
            );
            reply::json(400, &tables::semantic_error(&detail, &ctx), &common)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_queries() {
        assert_eq!(
            count_target("Employees | count").as_deref(),
            Some("Employees")
        );
        assert_eq!(
            count_target(" ['My Table']|COUNT ;").as_deref(),
            Some("My Table")
        );
        assert_eq!(count_target("Employees | take 1"), None);
        assert_eq!(count_target("T | where x | count"), None);
        assert_eq!(count_target("| count"), None);
    }
}
