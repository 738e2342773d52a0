//! The emulator's ingestion worker against a real Azurite: messages built the way the
//! handler builds them, outcomes read back through the Rust API, the status table, the
//! notification queues, `/v1/rest/query` and the control API.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use kusto_dev::dm::{FailureStatus, Report};
use kusto_dev::{Azurite, Catalog, DmEmulator, EmulatorConfig, IngestionOutcome, IngestionStatus};
use serde_json::{Value, json};

const DATA: &str = "datalake1";
const KUSTO: &str = "https://kusto.kusto.windows.net";
const WAIT: Duration = Duration::from_secs(20);
const CSV5: &[u8] = b"EmployeeId,Name\n1,Ada\n2,Grace\n3,\"Turing, Alan\"\n4,Katherine\n5,Edsger\n";

async fn emulator(configure: impl FnOnce(&mut EmulatorConfig)) -> DmEmulator {
    let mut config = EmulatorConfig {
        ingest: true,
        ..EmulatorConfig::default()
    };
    configure(&mut config);
    DmEmulator::start(Azurite::shared(), config)
        .await
        .expect("emulator starts")
}

/// Uploads `bytes` to a fresh container; returns (container, blob URL with a read+delete SAS).
async fn upload(name: &str, bytes: &[u8]) -> (String, String) {
    let az = Azurite::shared();
    let container = format!("src{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    az.create_container(DATA, &container).await.unwrap();
    az.upload_blob(DATA, &container, name, bytes.to_vec(), &[])
        .await
        .unwrap();
    let url = az.blob_sas_url(DATA, &container, name, "rd", Duration::from_secs(3600));
    (container, url)
}

/// A message as the handler (PY-style PascalCase) builds it; `extra` is merged on top
/// (`AdditionalProperties` entries merged into the defaults).
fn message(emu: &DmEmulator, blob_path: &str, table: &str, extra: Value) -> Value {
    let mut m = json!({
        "Id": uuid::Uuid::new_v4().to_string(),
        "BlobPath": blob_path,
        "RawDataSize": 100,
        "DatabaseName": "db1",
        "TableName": table,
        "RetainBlobOnSuccess": true,
        "FlushImmediately": false,
        "ReportLevel": 2,
        "ReportMethod": 0,
        "AdditionalProperties": {
            "authorizationContext": emu.issue_authorization_context(),
            "format": "csv",
            "ignoreFirstRecord": true,
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        if k == "AdditionalProperties" {
            for (pk, pv) in v.as_object().unwrap() {
                m[k][pk] = pv.clone();
            }
        } else {
            m[k] = v.clone();
        }
    }
    m
}

/// Puts the message (base64 JSON) on the emulator's first ingestion queue.
async fn enqueue(emu: &DmEmulator, m: &Value) -> String {
    let (account, queue) = &emu.ingestion_queues()[0];
    let text = base64::engine::general_purpose::STANDARD.encode(m.to_string());
    emu.azurite()
        .put_message(account, queue, &text)
        .await
        .unwrap();
    m["Id"].as_str().unwrap().to_string()
}

async fn ingest(emu: &DmEmulator, m: &Value) -> IngestionOutcome {
    let id = enqueue(emu, m).await;
    emu.wait_for_outcome(&id, WAIT)
        .await
        .unwrap_or_else(|| panic!("no outcome for {id} within {WAIT:?}"))
}

fn failed_with(o: &IngestionOutcome, code: &str, status: FailureStatus) {
    assert_eq!(o.status, IngestionStatus::Failed, "{o:#?}");
    assert_eq!(o.error_code.as_deref(), Some(code), "{o:#?}");
    assert_eq!(o.failure_status, Some(status), "{o:#?}");
}

/// Decoded notifications on a queue (peeked).
async fn notifications(emu: &DmEmulator, (account, queue): (String, String)) -> Vec<Value> {
    emu.azurite()
        .peek_messages(&account, &queue)
        .await
        .unwrap()
        .iter()
        .map(|t| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(t).unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
        .collect()
}

async fn token(emu: &DmEmulator) -> String {
    emu.issue_token(KUSTO)
}

async fn query(emu: &DmEmulator, bearer: Option<&str>, db: &str, csl: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/rest/query", emu.url()))
        .json(&json!({"db": db, "csl": csl}));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let rsp = req.send().await.unwrap();
    let status = rsp.status().as_u16();
    (status, rsp.json().await.unwrap())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn csv_is_ingested_with_status_row_notification_and_count() {
    let emu = emulator(|_| {}).await;
    let (container, url) = upload("employees.csv", CSV5).await;

    // The client inserts a Pending row first (JV/ND style), then names it in the message.
    let (ta, table) = emu.status_table();
    let table_url = emu
        .azurite()
        .table_sas_url(&ta, &table, "raud", Duration::from_secs(3600));
    let id = uuid::Uuid::new_v4().to_string();
    let (base, sas) = table_url.split_once('?').unwrap();
    let rsp = reqwest::Client::new()
        .post(format!("{base}?{sas}"))
        .header("accept", "application/json;odata=nometadata")
        .header("content-type", "application/json")
        .body(
            json!({"PartitionKey": id, "RowKey": id, "Status": "Pending",
                "IngestionSourcePath": "kept-by-merge"})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 201);

    let m = message(
        &emu,
        &url,
        "Employees",
        json!({"Id": id, "ReportMethod": 2, "IngestionStatusInTable": {
            "TableConnectionString": table_url, "PartitionKey": id, "RowKey": id}}),
    );
    let o = ingest(&emu, &m).await;
    assert_eq!(o.status, IngestionStatus::Succeeded, "{o:#?}");
    assert_eq!(o.rows, 5);
    assert_eq!(o.reported, [Report::StatusTable, Report::SuccessQueue]);
    assert!(o.report_errors.is_empty(), "{o:#?}");
    assert_eq!(emu.row_count("db1", "Employees"), 5);
    assert_eq!(
        emu.rows("db1", "Employees")[2],
        json!(["3", "Turing, Alan"])
    );

    let rows = emu.azurite().query_entities(&ta, &table).await.unwrap();
    let row = rows.iter().find(|r| r["RowKey"] == id).unwrap();
    assert_eq!(row["Status"], "Succeeded");
    assert_eq!(row["IngestionSourcePath"], "kept-by-merge");
    assert_eq!(row["OperationId"], o.operation_id.as_str());
    assert!(row["UpdatedOn"].as_str().is_some());

    let ok = notifications(&emu, emu.successful_queue()).await;
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["IngestionSourceId"], id.as_str());
    assert_eq!(ok[0]["Database"], "db1");
    assert_eq!(ok[0]["Table"], "Employees");
    assert!(ok[0]["SucceededOn"].as_str().unwrap().ends_with('Z'));
    assert!(
        !ok[0]["IngestionSourcePath"]
            .as_str()
            .unwrap()
            .contains("sig=")
    );
    assert!(notifications(&emu, emu.failed_queue()).await.is_empty());

    // The message is gone; the blob stays (RetainBlobOnSuccess: true).
    assert!(emu.receive_ingestion_messages().await.unwrap().is_empty());
    let blobs = emu.azurite().list_blobs(DATA, &container).await.unwrap();
    assert_eq!(blobs, ["employees.csv"]);

    // Counts: query endpoint and control API.
    let tok = token(&emu).await;
    let (status, body) = query(&emu, Some(&tok), "db1", "Employees | count").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Tables"][0]["Columns"][0]["ColumnName"], "Count");
    assert_eq!(body["Tables"][0]["Rows"][0][0], 5);
    let tables: Value = reqwest::get(format!("{}/tables", emu.control_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tables, json!({"db1.Employees": 5}));
}

#[tokio::test]
async fn missing_blob_fails_permanently_and_reports_it() {
    let emu = emulator(|_| {}).await;
    let (container, _) = upload("present.csv", CSV5).await;
    let missing =
        emu.azurite()
            .blob_sas_url(DATA, &container, "absent.csv", "r", Duration::from_secs(60));
    // The status table URL exactly as `.get ingestion resources` hands it out.
    let (ta, table) = emu.status_table();
    let table_url = emu
        .ingestion_resources()
        .into_iter()
        .find(|(kind, _)| kind == "IngestionsStatusTable")
        .unwrap()
        .1;
    let m = message(
        &emu,
        &missing,
        "T",
        json!({"ReportLevel": 0, "ReportMethod": 2, "IngestionStatusInTable": {
            "TableConnectionString": table_url, "PartitionKey": "p1",
            "RowKey": "00000000-0000-0000-0000-000000000000"}}),
    );
    let o = ingest(&emu, &m).await;
    failed_with(&o, "Download_SourceNotFound", FailureStatus::Permanent);
    assert_eq!(o.reported, [Report::StatusTable, Report::FailureQueue]);

    // No entity existed: it was upserted.
    let rows = emu.azurite().query_entities(&ta, &table).await.unwrap();
    let row = rows.iter().find(|r| r["PartitionKey"] == "p1").unwrap();
    assert_eq!(row["Status"], "Failed");
    assert_eq!(row["ErrorCode"], "Download_SourceNotFound");
    assert_eq!(row["FailureStatus"], "Permanent");

    let failed = notifications(&emu, emu.failed_queue()).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["ErrorCode"], "Download_SourceNotFound");
    assert_eq!(failed[0]["FailureStatus"], "Permanent");
    assert_eq!(failed[0]["ShouldRetry"], false);
    assert_eq!(failed[0]["IngestionSourceId"], m["Id"]);
    assert_eq!(emu.row_count("db1", "T"), 0);
}

#[tokio::test]
async fn malformed_data_fails_with_the_dm_codes() {
    let emu = emulator(|_| {}).await;
    let cases: [(&str, &[u8], &str, &str); 5] = [
        (
            "bad.json",
            b"{\"a\": 1} {\"a\":",
            "multijson",
            "BadRequest_InvalidBlob",
        ),
        (
            "ragged.csv",
            b"a,b\n1,2\n3,4,5\n",
            "csv",
            "Stream_WrongNumberOfFields",
        ),
        (
            "open.csv",
            b"a,b\n\"1,2\n",
            "csv",
            "Stream_ClosingQuoteMissing",
        ),
        ("empty.csv", b"", "csv", "BadRequest_EmptyBlob"),
        (
            "header-only.csv",
            b"a,b\n",
            "csv",
            "BadRequest_NoRecordsOrWrongFormat",
        ),
    ];
    for (name, bytes, format, code) in cases {
        let (_, url) = upload(name, bytes).await;
        let m = message(
            &emu,
            &url,
            "T",
            json!({"AdditionalProperties": {"format": format}}),
        );
        let o = ingest(&emu, &m).await;
        failed_with(&o, code, FailureStatus::Permanent);
    }
    assert_eq!(notifications(&emu, emu.failed_queue()).await.len(), 5);
    assert_eq!(emu.row_count("db1", "T"), 0);
}

#[tokio::test]
async fn unknown_authorization_context_is_rejected() {
    let emu = emulator(|_| {}).await;
    let (_, url) = upload("a.csv", CSV5).await;
    let m = message(
        &emu,
        &url,
        "T",
        json!({"AdditionalProperties": {"authorizationContext": "forged"}}),
    );
    let o = ingest(&emu, &m).await;
    failed_with(
        &o,
        "BadRequest_InvalidKustoIdentityToken",
        FailureStatus::Permanent,
    );

    // A message that is not base64 JSON: recorded, nothing reported.
    let (account, queue) = &emu.ingestion_queues()[1];
    emu.azurite()
        .put_message(account, queue, "{not base64}")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while emu.ingestion_outcomes().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let corrupted = emu
        .ingestion_outcome("")
        .expect("outcome of the corrupted message");
    failed_with(
        &corrupted,
        "BadRequest_CorruptedMessage",
        FailureStatus::Permanent,
    );
    assert!(corrupted.reported.is_empty());
}

#[tokio::test]
async fn catalog_rejects_missing_tables_and_databases() {
    let catalog = Catalog::from([("db1".to_string(), vec!["Known".to_string()])]);
    let emu = emulator(|c| c.catalog = Some(catalog.clone())).await;
    let (_, url) = upload("a.csv", CSV5).await;

    let o = ingest(&emu, &message(&emu, &url, "Missing", json!({}))).await;
    failed_with(&o, "BadRequest_TableNotExist", FailureStatus::Permanent);
    let o = ingest(
        &emu,
        &message(&emu, &url, "Known", json!({"DatabaseName": "nodb"})),
    )
    .await;
    failed_with(&o, "BadRequest_DatabaseNotExist", FailureStatus::Permanent);
    let o = ingest(&emu, &message(&emu, &url, "Known", json!({}))).await;
    assert_eq!(o.status, IngestionStatus::Succeeded, "{o:#?}");

    // The control API adds the table; the query endpoint sees the catalog.
    let tok = token(&emu).await;
    let (status, body) = query(&emu, Some(&tok), "db1", "Missing | count").await;
    assert_eq!(status, 400, "{body}");
    let rsp = reqwest::Client::new()
        .post(format!("{}/catalog", emu.control_url()))
        .json(&json!({"catalog": {"db1": ["Known", "Missing"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let o = ingest(&emu, &message(&emu, &url, "Missing", json!({}))).await;
    assert_eq!(o.status, IngestionStatus::Succeeded, "{o:#?}");
    assert_eq!(
        emu.table_counts(),
        [("db1.Known".to_string(), 5), ("db1.Missing".to_string(), 5)].into()
    );
    let (status, body) = query(&emu, Some(&tok), "db1", "['Missing'] | count").await;
    assert_eq!((status, &body["Tables"][0]["Rows"][0][0]), (200, &json!(5)));
}

#[tokio::test]
async fn gzip_multijson_through_the_managed_identity_stand_in() {
    let emu = emulator(|_| {}).await;
    let data = b"[{\"a\": 1}, {\"a\": 2}]\n{\"a\": 3}";
    let (container, _) = upload("events.multijson.gz", &gzip(data)).await;
    let path = format!(
        "{};managed_identity=system",
        emu.azurite()
            .blob_url(DATA, &container, "events.multijson.gz")
    );
    let m = message(
        &emu,
        &path,
        "Events",
        json!({"AdditionalProperties": {"format": "multijson"}}),
    );
    let o = ingest(&emu, &m).await;
    assert_eq!(o.status, IngestionStatus::Succeeded, "{o:#?}");
    assert_eq!(o.rows, 3);
    assert!(!o.source_path.contains("managed_identity"));
    assert_eq!(emu.rows("db1", "Events")[2], json!({"a": 3}));

    // Without a SAS or managed identity suffix Azurite refuses the download.
    let bare = emu
        .azurite()
        .blob_url(DATA, &container, "events.multijson.gz");
    let o = ingest(&emu, &message(&emu, &bare, "Events", json!({}))).await;
    assert_eq!(o.status, IngestionStatus::Failed, "{o:#?}");
    assert!(
        o.error_code.as_deref().unwrap().starts_with("Download_"),
        "{o:#?}"
    );

    // A blob outside this Azurite cannot be read with the emulator's keys.
    let foreign = "https://acct.blob.core.windows.net/c/b.csv;managed_identity=system";
    let o = ingest(&emu, &message(&emu, foreign, "Events", json!({}))).await;
    failed_with(&o, "Download_AccountNotFound", FailureStatus::Permanent);
}

#[tokio::test]
async fn retain_blob_false_deletes_the_blob_after_success() {
    let emu = emulator(|_| {}).await;
    let (container, url) = upload("gone.csv", CSV5).await;
    let m = message(&emu, &url, "T", json!({"RetainBlobOnSuccess": false}));
    let o = ingest(&emu, &m).await;
    assert_eq!(o.status, IngestionStatus::Succeeded, "{o:#?}");
    assert!(o.blob_deleted, "{o:#?}");
    let blobs = emu.azurite().list_blobs(DATA, &container).await.unwrap();
    assert!(blobs.is_empty(), "{blobs:?}");

    // A failed ingestion keeps its blob.
    let (container, url) = upload("bad.csv", b"a,b\n1\n").await;
    let m = message(&emu, &url, "T", json!({"RetainBlobOnSuccess": false}));
    let o = ingest(&emu, &m).await;
    assert_eq!(o.status, IngestionStatus::Failed);
    assert!(!o.blob_deleted);
    assert_eq!(
        emu.azurite()
            .list_blobs(DATA, &container)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn ingest_if_not_exists_skips_a_tag_already_ingested() {
    let emu = emulator(|_| {}).await;
    let (_, url) = upload("a.csv", CSV5).await;
    let tagged = json!({"AdditionalProperties": {
        "tags": "[\"t1\",\"ingest-by:batch-7\"]", "ingestIfNotExists": "[\"batch-7\"]"}});
    let first = ingest(&emu, &message(&emu, &url, "T", tagged.clone())).await;
    assert_eq!(first.status, IngestionStatus::Succeeded, "{first:#?}");
    let second = ingest(&emu, &message(&emu, &url, "T", tagged)).await;
    assert_eq!(second.status, IngestionStatus::Skipped, "{second:#?}");
    assert_eq!(
        second.error_code.as_deref(),
        Some("Skipped_IngestByTagAlreadyExists")
    );
    assert_eq!(emu.row_count("db1", "T"), 5);
    // Another table has no such tag.
    let other = json!({"AdditionalProperties": {"ingestIfNotExists": "[\"batch-7\"]"}});
    let third = ingest(&emu, &message(&emu, &url, "U", other)).await;
    assert_eq!(third.status, IngestionStatus::Succeeded, "{third:#?}");
    let failed = notifications(&emu, emu.failed_queue()).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["ErrorCode"], "Skipped_IngestByTagAlreadyExists");
}

#[tokio::test]
async fn slow_ingestion_fault_delays_each_message() {
    let emu = emulator(|_| {}).await;
    let (_, url) = upload("a.csv", CSV5).await;
    // Through the control API, like an out-of-process tool.
    let rsp = reqwest::Client::new()
        .post(format!("{}/faults", emu.control_url()))
        .json(&json!({"ingest_delay_ms": 1500}))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(emu.faults().ingest_delay(), Duration::from_millis(1500));
    let id = enqueue(&emu, &message(&emu, &url, "T", json!({}))).await;
    assert!(
        emu.wait_for_outcome(&id, Duration::from_millis(700))
            .await
            .is_none()
    );
    let o = emu.wait_for_outcome(&id, WAIT).await.unwrap();
    assert_eq!(o.status, IngestionStatus::Succeeded);
    emu.faults().reset();
    assert_eq!(emu.faults().ingest_delay(), Duration::ZERO);
}

#[tokio::test]
async fn worker_is_off_by_default_and_query_checks_the_token() {
    let emu = DmEmulator::start(Azurite::shared(), EmulatorConfig::default())
        .await
        .unwrap();
    assert!(!emu.ingest_worker());
    let (_, url) = upload("a.csv", CSV5).await;
    let id = enqueue(&emu, &message(&emu, &url, "T", json!({}))).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let queued = emu.receive_ingestion_messages().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].json.as_ref().unwrap()["Id"], id.as_str());
    assert!(emu.ingestion_outcomes().is_empty());

    let (status, _) = query(&emu, None, "db1", "T | count").await;
    assert_eq!(status, 401);
    let tok = token(&emu).await;
    let (status, body) = query(&emu, Some(&tok), "db1", "T | count").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["@type"],
        "Kusto.Data.Exceptions.SemanticException"
    );
    let (status, _) = query(&emu, Some(&tok), "db1", "T | take 3").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn storage_throttling_is_a_transient_failure() {
    let emu = emulator(|_| {}).await;
    let (container, url) = upload("a.csv", CSV5).await;
    // The fake storage listener answers `503 ServerBusy` for any blob it is asked for.
    let (_, sas) = url.split_once('?').unwrap();
    let busy = format!("{}/{DATA}/{container}/a.csv?{sas}", emu.fake_storage_url());
    let m = message(&emu, &busy, "T", json!({}));
    let o = ingest(&emu, &m).await;
    failed_with(&o, "Download_UnknownError", FailureStatus::Transient);
    let failed = notifications(&emu, emu.failed_queue()).await;
    assert_eq!(failed[0]["FailureStatus"], "Transient");
    assert_eq!(failed[0]["ShouldRetry"], true);
}
