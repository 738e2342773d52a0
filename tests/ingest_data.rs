//! `POST /api/ingest/{database}/{table}` with the data as the body, black box: streamed through
//! gzip into the DM's temporary containers (real Azurite), queued with its exact uncompressed size,
//! ingested by the emulator's worker; every bad input refused with nothing queued and nothing left
//! committed.

mod common;

use common::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use kusto_dev::BreakMode;
use reqwest::StatusCode;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

fn csv(lines: usize) -> Vec<u8> {
    (0..lines)
        .flat_map(|i| format!("{i},name-{i},{}\n", i * 7).into_bytes())
        .collect()
}

// Every test runs against both protocols (`name::v1`, `name::v2`): v2 uploads to the
// configuration's containers.
both_protocols!(
    a_csv_body_is_uploaded_queued_and_ingested,
    ndjson_and_gzip_bodies,
    bad_bodies_are_refused_with_nothing_queued_or_committed,
    a_refusing_temporary_account_fails_over_to_another,
    a_client_that_disconnects_mid_body_queues_nothing,
    a_200_mb_body_streams_in_bounded_memory,
    the_summary_line_names_the_accounts_that_took_the_data,
    a_refused_container_sas_is_replaced_without_waiting_for_the_refresh,
);

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

async fn post_data(
    app: &TestApp,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: reqwest::Body,
) -> Reply {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path_and_query}", app.address))
        .header("x-functions-key", FUNCTION_KEY);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request
        .body(body)
        .send()
        .await
        .expect("POST reached the handler");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Blobs committed in the DM's temporary containers.
async fn committed_temp_blobs(app: &TestApp) -> Vec<String> {
    let mut all = Vec::new();
    for (account, container) in app.dm.temp_containers() {
        all.extend(
            app.azurite
                .handle()
                .list_blobs(&account, &container)
                .await
                .unwrap_or_default(),
        );
    }
    all
}

async fn a_csv_body_is_uploaded_queued_and_ingested(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .emulator(|c| c.ingest = true)
        .start()
        .await;
    let data = csv(500);
    let reply = post_data(
        &app,
        "/api/ingest/testdb/events?tracking=true&tags=source:upload",
        &[("Content-Type", "text/csv")],
        data.clone().into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let source_id = reply.body["blobs"][0]["sourceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reply.body["operationId"].is_string());
    let outcome = app
        .dm
        .wait_for_outcome(&source_id, Duration::from_secs(30))
        .await
        .expect("the emulator ingested it");
    assert_eq!(outcome.rows, 500, "{outcome:?}");
    assert_eq!(app.dm.row_count("testdb", "events"), 500);
    let message = &outcome.message;
    assert_eq!(message["RawDataSize"], data.len() as u64);
    assert_eq!(message["RetainBlobOnSuccess"], false);
    let path = message["BlobPath"].as_str().unwrap();
    assert!(
        path.contains(&format!("testdb__events__{source_id}__csv.gz")),
        "{path}"
    );
    assert!(outcome.blob_deleted, "the DM deletes the temporary blob");
    app.assert_no_secrets();
}

async fn ndjson_and_gzip_bodies(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .emulator(|c| c.ingest = true)
        .start()
        .await;
    let ndjson: Vec<u8> = (0..40)
        .flat_map(|i| format!("{{\"id\":{i},\"v\":\"x\"}}\n").into_bytes())
        .collect();
    let reply = post_data(
        &app,
        "/api/ingest/testdb/json",
        &[("Content-Type", "application/x-ndjson")],
        ndjson.clone().into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);

    let data = csv(300);
    let reply = post_data(
        &app,
        "/api/ingest/testdb/zipped?format=csv",
        &[("Content-Encoding", "gzip")],
        gzip(&data).into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let zipped_id = reply.body["blobs"][0]["sourceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let outcome = app
        .dm
        .wait_for_outcome(&zipped_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        outcome.message["RawDataSize"],
        data.len() as u64,
        "uncompressed size"
    );
    assert_eq!(outcome.rows, 300);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.dm.row_count("testdb", "json"), 40);
}

/// Path and query, headers, body, expected status and error code.
type BadCase = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    StatusCode,
    &'static str,
);

async fn bad_bodies_are_refused_with_nothing_queued_or_committed(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_MAX_DATA_BYTES", "100000")
        .start()
        .await;
    let cases: Vec<BadCase> = vec![
        (
            "/api/ingest/testdb/t?format=csv",
            vec![],
            vec![],
            StatusCode::BAD_REQUEST,
            "EmptyBody",
        ),
        (
            "/api/ingest/testdb/t?format=xlsx",
            vec![],
            csv(3),
            StatusCode::BAD_REQUEST,
            "InvalidField",
        ),
        (
            "/api/ingest/testdb/t",
            vec![("Content-Type", "application/octet-stream")],
            csv(3),
            StatusCode::BAD_REQUEST,
            "InvalidField",
        ),
        (
            "/api/ingest/testdb/t?format=csv",
            vec![("Content-Encoding", "gzip")],
            {
                let z = gzip(&csv(2000));
                z[..z.len() / 2].to_vec()
            },
            StatusCode::BAD_REQUEST,
            "InvalidGzip",
        ),
        (
            "/api/ingest/testdb/t?format=csv",
            vec![],
            csv(10_000),
            StatusCode::PAYLOAD_TOO_LARGE,
            "BodyTooLarge",
        ),
    ];
    for (path, headers, body, status, code) in cases {
        let reply = post_data(&app, path, &headers, body.into()).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text);
        assert_eq!(reply.error_code(), code, "{path}: {}", reply.text);
    }
    // A body over the limit without a Content-Length is stopped as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..30).map(|_| Ok(csv(300))).collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let reply = post_data(&app, "/api/ingest/testdb/t?format=csv", &[], stream).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );

    assert!(app.drain_messages().await.is_empty());
    assert!(committed_temp_blobs(&app).await.is_empty());
}

async fn a_refusing_temporary_account_fails_over_to_another(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(|f| f.break_account("ingestacct1", BreakMode::ServerBusy))
        .start()
        .await;
    for i in 0..4 {
        let reply = post_data(
            &app,
            &format!("/api/ingest/testdb/t{i}?format=csv"),
            &[],
            csv(10).into(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    }
    let blobs = committed_temp_blobs(&app).await;
    assert_eq!(blobs.len(), 4, "{blobs:?}");

    app.dm
        .faults()
        .break_account("ingestacct2", BreakMode::ServerBusy);
    let fresh = TestApp::builder()
        .protocol(protocol)
        .faults(|f| {
            f.break_account("ingestacct1", BreakMode::ServerBusy);
            f.break_account("ingestacct2", BreakMode::ServerBusy);
        })
        .start()
        .await;
    let reply = post_data(
        &fresh,
        "/api/ingest/testdb/t?format=csv",
        &[],
        csv(10).into(),
    )
    .await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UploadUnavailable");
    assert!(reply.headers.contains_key("retry-after"));
}

async fn a_refused_container_sas_is_replaced_without_waiting_for_the_refresh(protocol: Protocol) {
    // Every temporary container's SAS is refused (a revoked or rotated key), as are the fresh
    // ones fetched for it, until the accounts heal.
    let app = TestApp::builder().protocol(protocol).start().await;
    let accounts: Vec<String> = app
        .dm
        .temp_containers()
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    for account in &accounts {
        app.dm
            .faults()
            .break_account(account, BreakMode::BadSignature);
    }
    let path = "/api/ingest/testdb/t?format=csv";
    let refused = post_data(&app, path, &[], csv(10).into()).await;
    refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UploadUnavailable");
    assert!(refused.text.contains("403"), "{}", refused.text);
    for account in &accounts {
        app.dm.faults().heal_account(account);
    }
    // The cached credentials are the refused ones, and the next scheduled refresh is far off:
    // the upload that finds them refused fetches fresh ones (once the 5 s refetch hold is over)
    // and stores the data with those.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let reply = post_data(&app, path, &[], csv(10).into()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(committed_temp_blobs(&app).await.len(), 1);
}

async fn a_client_that_disconnects_mid_body_queues_nothing(protocol: Protocol) {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::builder().protocol(protocol).start().await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /api/ingest/testdb/t?format=csv HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
        )
        .await
        .unwrap();
    stream.write_all(&csv(5000)[..50_000]).await.unwrap();
    drop(stream);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(app.drain_messages().await.is_empty());
    assert!(committed_temp_blobs(&app).await.is_empty());
}

#[cfg(target_os = "linux")]
async fn a_200_mb_body_streams_in_bounded_memory(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_MAX_DATA_BYTES", "300000000")
        .start()
        .await;
    const CHUNK: usize = 1024 * 1024;
    let line = b"2026-12-01T00:00:00Z,some-host,some-metric,12345.678\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(CHUNK).collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..200).map(|_| Ok(chunk.clone())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let reply = post_data(&app, "/api/ingest/testdb/big?format=csv", &[], body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:.300}", reply.text);
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body["RawDataSize"], (200 * CHUNK) as u64);
    let peak = peak_rss_kib(app.pid());
    assert!(
        peak < 64 * 1024,
        "handler peak RSS {peak} KiB for a 200 MB body"
    );
}

async fn the_summary_line_names_the_accounts_that_took_the_data(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let invocation = "0c1d2e3f-4a5b-4c6d-8e7f-901234567890";
    let reply = post_data(
        &app,
        "/api/ingest/testdb/logged?format=csv",
        &[("X-Azure-Functions-InvocationId", invocation)],
        csv(5).into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let line = app
        .logs()
        .into_iter()
        .find(|l| l.contains("request done") && l.contains(invocation))
        .unwrap_or_else(|| panic!("no summary line:\n{}", app.log_text()));
    for field in [
        "route=data",
        "blobs=1",
        "queued=1",
        "status=202",
        "raw_bytes=",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    // The temporary container's account and the queue's (both ingestacct1/2 here).
    let accounts = line
        .split("accounts=")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert!(
        accounts.split(',').all(|a| a.starts_with("ingestacct")) && !accounts.is_empty(),
        "{line}"
    );
}
