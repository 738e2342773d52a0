//! Status tracking, black box: `"tracking": true` writes the blobs' rows into the DM's status
//! table (real Azurite Table service) before their messages are queued, the messages point at
//! them, and `GET /api/ingest/operations/{id}` reads them back.

mod common;
mod eventgrid_support;

use base64::Engine as _;
use common::*;
use kusto_dev::BreakMode;
use reqwest::StatusCode;
use serde_json::{Value, json};

// These run against both protocols (`name::v1`, `name::v2`); the others check the v1 status
// table itself (v2 tracking is the DM's own; see also tests/ingest_v2.rs).
both_protocols!(
    malformed_and_foreign_operation_ids_are_refused_without_a_token,
    status_reads_answer_503_while_the_dm_is_unavailable,
    an_event_grid_route_can_track_its_blobs,
    the_dm_records_what_became_of_each_tracked_blob,
);

fn bodies(app: &TestApp, prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "blobUri": app.blob_uri(&format!("{prefix}/{i}.csv")) }))
        .collect()
}

fn tracked(blobs: Vec<Value>) -> Value {
    let mut body = request(blobs);
    body["tracking"] = json!(true);
    body
}

async fn status_rows(app: &TestApp) -> Vec<Value> {
    let (account, table) = app.dm.status_table();
    app.azurite
        .handle()
        .query_entities(&account, &table)
        .await
        .expect("read the status table")
}

#[tokio::test]
async fn untracked_requests_write_no_status_rows() {
    let app = TestApp::start().await;
    let reply = app.post_ingest(&request(bodies(&app, "plain", 2))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert!(reply.body.get("operationId").is_none(), "{}", reply.text);
    assert!(status_rows(&app).await.is_empty());
    let messages = app.drain_messages().await;
    assert!(
        messages
            .iter()
            .all(|m| m.body.get("IngestionStatusInTable").is_none())
    );
    assert!(messages.iter().all(|m| m.body["ReportMethod"] == 0));
}

#[tokio::test]
async fn tracked_blobs_get_pending_rows_in_one_partition_that_their_messages_name() {
    let app = TestApp::start().await;
    let blobs = bodies(&app, "tracked", 3);
    let reply = app.post_ingest(&tracked(blobs.clone())).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let operation = reply.body["operationId"]
        .as_str()
        .expect("operationId")
        .to_owned();
    assert_eq!(
        reply.body["statusUri"],
        json!(format!("/api/ingest/operations/{operation}"))
    );

    let rows = status_rows(&app).await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let partition = rows[0]["PartitionKey"].as_str().unwrap().to_owned();
    for row in &rows {
        assert_eq!(row["PartitionKey"], json!(partition));
        assert_eq!(row["Status"], "Pending");
        assert_eq!(row["RowKey"], row["IngestionSourceId"]);
        assert_eq!(row["Database"], "testdb");
        assert_eq!(row["Table"], "events");
        let path = row["IngestionSourcePath"].as_str().unwrap();
        assert!(!path.contains('?') && !path.contains("sig="), "{path}");
    }

    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 3);
    for m in &messages {
        let status = &m.body["IngestionStatusInTable"];
        assert_eq!(status["PartitionKey"], json!(partition));
        assert_eq!(status["RowKey"], m.body["Id"]);
        let table = status["TableConnectionString"].as_str().unwrap();
        assert!(table.contains(&app.dm.status_table().1), "{table}");
        assert_eq!(m.body["ReportMethod"], 1);
        assert_eq!(
            m.body["ReportLevel"], 2,
            "a tracked row must learn of successes"
        );
    }

    let status = app
        .get(&format!("/api/ingest/operations/{operation}"))
        .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text);
    assert_eq!(status.body["state"], "InProgress");
    assert_eq!(status.body["status"]["InProgress"], 3);
    let details = status.body["details"].as_array().unwrap();
    assert_eq!(details.len(), 3);
    for d in details {
        assert_eq!(d["status"], "InProgress");
        assert!(d["sourceId"].is_string() && d["updatedOn"].is_string());
        assert!(!d["blob"].as_str().unwrap().contains("sig="));
    }
    app.assert_no_secrets();
}

#[tokio::test]
async fn report_method_table_is_tracking_too() {
    let app = TestApp::start().await;
    let mut body = request(bodies(&app, "rm", 1));
    body["reportMethod"] = json!("queueAndTable");
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert!(reply.body["operationId"].is_string());
    let messages = app.drain_messages().await;
    assert_eq!(messages[0].body["ReportMethod"], 2);
}

#[tokio::test]
async fn a_blob_that_could_not_be_queued_is_marked_failed_not_left_pending() {
    let app = TestApp::builder()
        .faults(|f| f.break_account("ingestacct2", BreakMode::ServerBusy))
        .emulator(|c| c.queues_per_account = 1)
        .start()
        .await;
    // Both queues of the status table's account refuse too: break it after the table exists.
    app.dm
        .faults()
        .break_account("ingestacct1", BreakMode::ServerBusy);
    let reply = app.post_ingest(&tracked(bodies(&app, "refused", 2))).await;
    let rows = status_rows(&app).await;
    if reply.status == StatusCode::SERVICE_UNAVAILABLE
        && reply.error_code() == "TrackingUnavailable"
    {
        // The table itself sits on a refusing account: nothing was queued, nothing is Pending.
        assert!(rows.iter().all(|r| r["Status"] != "Pending"), "{rows:#?}");
        return;
    }
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for row in &rows {
        assert_eq!(row["Status"], "Failed", "{row:#?}");
        assert!(
            row["Details"]
                .as_str()
                .unwrap()
                .contains("QueueUnavailable")
        );
    }
}

#[tokio::test]
async fn five_thousand_tracked_blobs_page_through_one_get_at_a_time() {
    let app = TestApp::builder()
        .env("INGEST_MAX_BLOBS", "5000")
        .env("INGEST_MAX_BODY_BYTES", "16777216")
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "120")
        .emulator(|c| c.null_queue = true)
        .start()
        .await;
    let reply = app.post_ingest(&tracked(bodies(&app, "many", 5000))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:.300}", reply.text);
    let operation = reply.body["operationId"].as_str().unwrap().to_owned();
    let mut seen = std::collections::BTreeSet::new();
    let mut path = format!("/api/ingest/operations/{operation}?$top=1000");
    let mut pages = 0;
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{:.300}", page.text);
        assert_eq!(page.body["status"]["InProgress"], 5000);
        for d in page.body["details"].as_array().unwrap() {
            assert!(
                seen.insert(d["sourceId"].as_str().unwrap().to_owned()),
                "duplicate"
            );
        }
        pages += 1;
        match page.body["continuation"].as_str() {
            Some(c) => {
                path = format!("/api/ingest/operations/{operation}?$top=1000&continuation={c}")
            }
            None => break,
        }
        assert!(pages <= 6, "too many pages");
    }
    assert_eq!(seen.len(), 5000);
    assert_eq!(pages, 5);
}

async fn malformed_and_foreign_operation_ids_are_refused_without_a_token(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let reply = app.get("/api/ingest/operations/not-an-id").await;
    reply.assert_error(StatusCode::BAD_REQUEST, "InvalidOperationId");

    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"v": 1, "dm": "https://ingest-evil.kusto.windows.net", "t": "https://evil.table.core.windows.net/t",
               "p": "11111111-2222-4333-8444-555555555555"})
        .to_string(),
    );
    let reply = app.get(&format!("/api/ingest/operations/{forged}")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);

    // The right DM, a table it does not hand out: the handler asks its own DM, never the table.
    let foreign_table = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"v": 1, "dm": app.dm.url(), "t": "https://evil.table.core.windows.net/t",
               "p": "11111111-2222-4333-8444-555555555555"})
        .to_string(),
    );
    let reply = app
        .get(&format!("/api/ingest/operations/{foreign_table}"))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    assert!(
        app.dm
            .token_requests()
            .iter()
            .all(|t| !format!("{t:?}").contains("evil")),
        "no token for a foreign host"
    );
}

async fn status_reads_answer_503_while_the_dm_is_unavailable(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "5")
        .faults(|f| f.set_down(true))
        .start()
        .await;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"v": 1, "dm": app.dm.url(), "t": "http://127.0.0.1:1/acct/status",
               "p": "11111111-2222-4333-8444-555555555555"})
        .to_string(),
    );
    let reply = app.get(&format!("/api/ingest/operations/{id}")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert!(reply.headers.contains_key("retry-after"));
}

async fn an_event_grid_route_can_track_its_blobs(protocol: Protocol) {
    use eventgrid_support::{
        Encoding, Schema, blob_created, envelope, post_blob_created, reply_logs,
    };
    let app = TestApp::builder()
        .protocol(protocol)
        .env(
            "INGEST_ROUTES",
            r#"[{"container": "landing", "database": "db", "table": "T", "tracking": true}]"#,
        )
        .start()
        .await;
    let event = blob_created(Schema::EventGrid, "tracked-1", &app, "landing", "a.csv", 10);
    let reply = post_blob_created(&app, envelope(Encoding::HostDoubleEncoded, &event)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let logs = reply_logs(&reply).join("\n");
    let operation = logs
        .split("tracked as operation ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no operation id in {logs}"))
        .to_owned();
    let status = app
        .get(&format!("/api/ingest/operations/{operation}"))
        .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text);
    assert_eq!(status.body["details"].as_array().unwrap().len(), 1);
    assert_eq!(
        status.body["details"][0]["sourceId"],
        json!(kusto_ingest_api::eventgrid::source_id_for("tracked-1").to_string())
    );
}

/// Polls the operation until no blob is in progress (the emulator's worker ingests in the
/// background), within `seconds`.
async fn settled(app: &TestApp, operation: &str, seconds: u64) -> Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let reply = app
            .get(&format!("/api/ingest/operations/{operation}"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        if reply.body["state"] != "InProgress" || std::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn the_dm_records_what_became_of_each_tracked_blob(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .emulator(|c| c.ingest = true)
        .start()
        .await;
    let mut blobs = Vec::new();
    for i in 0..3 {
        let uri = app
            .upload_blob(&format!("good/{i}.csv"), b"a,b\n1,2\n3,4\n")
            .await;
        blobs.push(json!({ "blobUri": uri }));
    }
    let bad = app.upload_blob("bad/broken.json", b"{\"a\": 1").await;
    blobs.push(json!({ "blobUri": bad, "additionalProperties": { "format": "multijson" } }));
    blobs.push(json!({ "blobUri": app.blob_uri("missing/nothing.csv") }));

    let reply = app.post_ingest(&tracked(blobs)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let operation = reply.body["operationId"].as_str().unwrap().to_owned();
    let status = settled(&app, &operation, 30).await;
    assert_eq!(
        status.body["state"], "PartiallySucceeded",
        "{}",
        status.text
    );
    assert_eq!(status.body["status"]["Succeeded"], 3, "{}", status.text);
    assert_eq!(status.body["status"]["Failed"], 2, "{}", status.text);
    // Three lines of each good blob (no ignoreFirstRecord: the header is a row too).
    assert_eq!(app.dm.row_count("testdb", "events"), 9);
    for d in status.body["details"].as_array().unwrap() {
        if d["status"] == "Failed" {
            assert_eq!(d["failureStatus"], "Permanent", "{d}");
            let code = d["errorCode"].as_str().unwrap_or("");
            assert!(
                code.starts_with("Download_") || code.starts_with("BadRequest_"),
                "a DM error code: {d}"
            );
        }
    }
    app.assert_no_secrets();
}
