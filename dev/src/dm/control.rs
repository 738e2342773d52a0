//! `/_emulator/…`: a small JSON control API so out-of-process tools (benchmarks, the
//! local-stack script) can read the logs and inject faults.
//!
//! * `GET  /_emulator/state`    — URLs, queues, fault state, counters
//! * `GET  /_emulator/requests` — mgmt and token request logs
//! * `POST /_emulator/faults`   — body: any of `{"push_statuses": [[429, 2], [503, null]],
//!   "push_rest_v2_statuses": {"endpoint": "Queued" | "Configuration" | "Status", "statuses": [[429, 1]]},
//!   "rest_v2_delay": {"endpoint": "Configuration", "delay_ms": 60000 (0 clears)},
//!   "lose_rest_v2_answers": {"endpoint": "Queued", "count": 1},
//!   "delay_ms": 0, "down": false, "break_account": {"account": "a", "mode": "ServerBusy"},
//!   "heal_account": "a", "sas_lifetime_secs": 2, "token_lifetime_secs": 3600,
//!   "fail_token_endpoint": 500 (0 clears), "token_delay_ms": 0,
//!   "oversized_answers": 1048576 (bytes, 0 clears), "ingest_delay_ms": 0, "dm": "stop" | "start",
//!   "reset": true}`; break modes: `ServerBusy`, `BadSignature`, `Hang`, `Reset`, `ResetAfterEnqueue`
//! * `POST /_emulator/reset`    — clear faults and logs
//! * `GET  /_emulator/tables`   — `{"db.table": rows}` ingested by the ingestion worker
//! * `GET  /_emulator/ingestions` — the worker's outcomes (`IngestionOutcome`s)
//! * `POST /_emulator/catalog`  — body `{"catalog": {"db": ["Table"]}}` or `{"catalog": null}`

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use warp::http::Method;
use warp::reply::Response;

use super::faults::{BreakMode, RestV2Endpoint};
use super::ingest::Catalog;
use super::reply;
use super::state::State;

#[derive(Debug, Deserialize)]
struct BreakRequest {
    account: String,
    mode: BreakMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestV2Statuses {
    endpoint: RestV2Endpoint,
    statuses: Vec<(u16, Option<u64>)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestV2Delay {
    endpoint: RestV2Endpoint,
    delay_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LostRestV2Answers {
    endpoint: RestV2Endpoint,
    count: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultCommand {
    reset: Option<bool>,
    push_statuses: Option<Vec<(u16, Option<u64>)>>,
    push_rest_v2_statuses: Option<RestV2Statuses>,
    rest_v2_delay: Option<RestV2Delay>,
    lose_rest_v2_answers: Option<LostRestV2Answers>,
    delay_ms: Option<u64>,
    down: Option<bool>,
    break_account: Option<BreakRequest>,
    heal_account: Option<String>,
    sas_lifetime_secs: Option<f64>,
    token_lifetime_secs: Option<f64>,
    fail_token_endpoint: Option<u16>,
    token_delay_ms: Option<u64>,
    oversized_answers: Option<usize>,
    ingest_delay_ms: Option<u64>,
    dm: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogCommand {
    catalog: Option<Catalog>,
}

fn secs(v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|e| format!("invalid duration {v}: {e}"))
}

pub(crate) fn state_json(state: &State) -> serde_json::Value {
    let l = &state.layout;
    let ingest = {
        let store = state.ingest();
        serde_json::json!({
            "worker": state.ingest_worker,
            "catalog": store.catalog(),
            "tables": store.counts(),
            "ingestions": store.outcomes().len(),
        })
    };
    serde_json::json!({
        "dm_url": state.dm_url,
        "identity_endpoint": state.identity_url,
        "identity_header": state.identity_header,
        "storage_url": state.storage_url,
        "ingestion_queues": l.ingestion_queues,
        "failed_queue": l.failed_queue,
        "successful_queue": l.successful_queue,
        "temp_containers": l.temp_containers,
        "status_table": l.status_table,
        "null_queue": state.null_queue,
        "null_queue_count": state.null_count.load(Ordering::Relaxed),
        "busy_count": state.busy_count.load(Ordering::Relaxed),
        "fake_storage": state.log().fake_storage,
        "faults": state.faults.to_json(),
        "ingest": ingest,
    })
}

fn requests_json(state: &State) -> serde_json::Value {
    let log = state.log();
    let ms =
        |at: std::time::Instant| at.saturating_duration_since(state.started).as_millis() as u64;
    let mgmt: Vec<serde_json::Value> = log
        .mgmt
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["at_ms"] = ms(r.at).into();
            v
        })
        .collect();
    let token: Vec<serde_json::Value> = log
        .token
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["at_ms"] = ms(r.at).into();
            v
        })
        .collect();
    serde_json::json!({
        "mgmt": mgmt,
        "token": token,
        "authorization_contexts": log.authorization_contexts,
        "null_queue_count": state.null_count.load(Ordering::Relaxed),
    })
}

async fn apply(state: &Arc<State>, cmd: FaultCommand) -> Result<(), String> {
    let f = &state.faults;
    if cmd.reset == Some(true) {
        f.reset();
    }
    if let Some(s) = cmd.push_statuses {
        f.push_statuses(&s);
    }
    if let Some(v2) = cmd.push_rest_v2_statuses {
        f.push_rest_v2_statuses(v2.endpoint, &v2.statuses);
    }
    if let Some(d) = cmd.rest_v2_delay {
        f.set_rest_v2_delay(d.endpoint, Duration::from_millis(d.delay_ms));
    }
    if let Some(lost) = cmd.lose_rest_v2_answers {
        f.lose_rest_v2_answers(lost.endpoint, lost.count);
    }
    if let Some(ms) = cmd.delay_ms {
        f.set_delay(Duration::from_millis(ms));
    }
    if let Some(down) = cmd.down {
        f.set_down(down);
    }
    if let Some(b) = cmd.break_account {
        f.break_account(&b.account, b.mode);
    }
    if let Some(a) = cmd.heal_account {
        f.heal_account(&a);
    }
    if let Some(s) = cmd.sas_lifetime_secs {
        f.set_sas_lifetime(secs(s)?);
    }
    if let Some(s) = cmd.token_lifetime_secs {
        f.set_token_lifetime(secs(s)?);
    }
    if let Some(status) = cmd.fail_token_endpoint {
        f.fail_token_endpoint((status != 0).then_some(status));
    }
    if let Some(ms) = cmd.token_delay_ms {
        f.set_token_delay(Duration::from_millis(ms));
    }
    if let Some(bytes) = cmd.oversized_answers {
        f.set_oversized_answers((bytes != 0).then_some(bytes));
    }
    if let Some(ms) = cmd.ingest_delay_ms {
        f.set_ingest_delay(Duration::from_millis(ms));
    }
    if let Some(dm) = cmd.dm {
        let faults = f.clone();
        // stop_dm blocks until the port refuses connections: keep it off the workers.
        let result = tokio::task::spawn_blocking(move || match dm.as_str() {
            "stop" => faults.stop_dm().map_err(|e| e.to_string()),
            "start" => faults.start_dm().map_err(|e| e.to_string()),
            other => Err(format!("dm must be \"stop\" or \"start\", not {other:?}")),
        })
        .await;
        result.map_err(|e| e.to_string())??;
    }
    Ok(())
}

pub(crate) async fn handle(
    state: Arc<State>,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Response {
    let route = path.trim_start_matches("/_emulator").trim_end_matches('/');
    match (method.as_str(), route) {
        ("GET", "/state") | ("GET", "") => reply::json(200, &state_json(&state), &[]),
        ("GET", "/requests") => reply::json(200, &requests_json(&state), &[]),
        ("GET", "/tables") => reply::json(200, &state.ingest().counts(), &[]),
        ("GET", "/ingestions") => reply::json(200, &state.ingest().outcomes(), &[]),
        ("POST", "/catalog") => match serde_json::from_slice::<CatalogCommand>(&body) {
            Ok(c) => {
                state.ingest().set_catalog(c.catalog);
                reply::json(200, &state_json(&state)["ingest"], &[])
            }
            Err(e) => reply::json(400, &serde_json::json!({"error": e.to_string()}), &[]),
        },
        ("POST", "/reset") => {
            state.faults.reset();
            state.clear_logs();
            reply::json(200, &state_json(&state), &[])
        }
        ("POST", "/faults") => {
            let cmd: FaultCommand = if body.is_empty() {
                FaultCommand::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(c) => c,
                    Err(e) => {
                        return reply::json(400, &serde_json::json!({"error": e.to_string()}), &[]);
                    }
                }
            };
            match apply(&state, cmd).await {
                Ok(()) => reply::json(200, &state_json(&state), &[]),
                Err(e) => reply::json(400, &serde_json::json!({"error": e}), &[]),
            }
        }
        _ => reply::not_found(&format!("{method} {path}")),
    }
}
