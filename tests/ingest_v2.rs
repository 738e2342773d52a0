//! The queued-ingestion REST API (v2) backend, black box: the handler chooses it by
//! `KUSTO_INGEST_METHOD` or by the DM's configuration, batches blobs per `maxBlobsPerBatch`, fails
//! only the blobs of a failed batch, tracks through the same operations route, and uploads data
//! bodies to the configuration's containers. The emulator turns every v2 blob into a message on
//! its queues, so what was queued is read back the same way as for v1.

mod common;

use common::*;
use kusto_dev::{RestV2Config, RestV2Endpoint};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn blobs(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| app.blob_uri(&format!("{prefix}/{i}.csv")))
        .collect()
}

fn body(uris: &[String]) -> Value {
    request(uris.iter().map(|u| json!({ "blobUri": u })).collect())
}

/// Two CSV lines as a data body for `testdb.events`.
async fn post_small_csv(app: &TestApp) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/api/ingest/testdb/events?format=csv",
            app.address
        ))
        .header("x-functions-key", FUNCTION_KEY)
        .header("content-type", "text/csv")
        .body("1,a\n2,b\n")
        .send()
        .await
        .expect("POST reached the handler")
}

fn queued_posts(app: &TestApp) -> Vec<usize> {
    let mut sizes: Vec<usize> = app
        .dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.method == "POST" && r.status == 200)
        .map(|r| r.blobs)
        .collect();
    sizes.sort_unstable();
    sizes
}

fn resource_calls(app: &TestApp) -> usize {
    app.dm.command_count(".get ingestion resources")
}

#[tokio::test]
async fn v2_by_setting_posts_batches_of_max_blobs_per_batch() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.rest_v2.max_blobs_per_batch = 2)
        .start()
        .await;
    let uris = blobs(&app, "v2", 5);
    let mut request = body(&uris);
    request["tags"] = json!(["drop-by:x"]);
    let reply = app.post_ingest(&request).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["queued"], 5, "{}", reply.text);
    for (i, r) in reply.body["blobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["status"], "queued");
        assert_eq!(
            r["blobUri"],
            format!("{}?<redacted>", without_query(&uris[i]))
        );
    }
    assert_eq!(queued_posts(&app), vec![1, 2, 2]);
    assert_eq!(resource_calls(&app), 0, "v1 resources are never fetched");

    // What the DM queued from the POSTs: every blob once, with the request's properties.
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 5);
    for uri in &uris {
        let m = &message_for(&messages, uri).body;
        assert_eq!(m["DatabaseName"], "testdb");
        assert_eq!(m["TableName"], "events");
        assert_eq!(prop(m, "tags"), Some(&json!("[\"drop-by:x\"]")));
    }
    app.assert_no_secrets();
}

#[tokio::test]
async fn auto_follows_a_dm_that_prefers_v2() {
    let app = TestApp::builder()
        .emulator(|c| c.rest_v2.preferred_ingestion_method = Some("REST".into()))
        .start()
        .await;
    let reply = app.post_ingest(&body(&blobs(&app, "auto2", 3))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(queued_posts(&app), vec![3]);
    assert_eq!(resource_calls(&app), 0);
    // The configuration is cached: a second request asks only for the POST.
    let reply = app.post_ingest(&body(&blobs(&app, "auto2b", 1))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let configuration_reads = app
        .dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.path.ends_with("/configuration"))
        .count();
    assert_eq!(configuration_reads, 1);
}

#[tokio::test]
async fn auto_uses_v1_on_a_dm_without_the_api_or_preferring_v1() {
    for rest_v2 in [
        RestV2Config {
            enabled: false,
            ..RestV2Config::default()
        },
        RestV2Config::default(),
    ] {
        let enabled = rest_v2.enabled;
        let app = TestApp::builder()
            .emulator(move |c| c.rest_v2 = rest_v2)
            .start()
            .await;
        let uris = blobs(&app, "auto1", 2);
        let reply = app.post_ingest(&body(&uris)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        assert!(queued_posts(&app).is_empty(), "enabled={enabled}");
        assert!(resource_calls(&app) >= 1, "enabled={enabled}");
        let messages = app.drain_messages().await;
        assert_eq!(messages.len(), 2);
        // The handler's own v1 message: the authorization context of `.get kusto identity token`.
        let issued = app.dm.issued_authorization_contexts();
        for m in &messages {
            let context = prop(&m.body, "authorizationContext").and_then(Value::as_str);
            assert!(context.is_some_and(|c| issued.iter().any(|i| i == c)));
        }
    }
}

#[tokio::test]
async fn v2_on_a_dm_without_the_api_fails_clearly() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.rest_v2.enabled = false)
        .start()
        .await;
    let reply = app.post_ingest(&body(&blobs(&app, "none", 1))).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text);
    assert!(reply.text.contains("REST API (v2)"), "{}", reply.text);
    assert!(app.drain_messages().await.is_empty());
}

#[tokio::test]
async fn a_failing_batch_fails_exactly_its_blobs() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.rest_v2.max_blobs_per_batch = 2)
        .start()
        .await;
    // Batches [0,1], [2,3], [4]: the DM refuses the one holding blob 2.
    app.dm.fail_rest_v2_blobs("mid/2.csv", 400);
    let uris = blobs(&app, "mid", 5);
    let reply = app.post_ingest(&body(&uris)).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.text);
    assert_eq!(reply.body["queued"], 3, "{}", reply.text);
    assert_eq!(reply.body["failed"], 2, "{}", reply.text);
    let results = reply.body["blobs"].as_array().unwrap();
    for (i, r) in results.iter().enumerate() {
        if i == 2 || i == 3 {
            assert_eq!(r["status"], "failed", "{r}");
            assert_eq!(r["error"]["code"], "DataManagementRejected", "{r}");
            assert!(
                r["error"]["message"].as_str().unwrap().contains("HTTP 400"),
                "{r}"
            );
        } else {
            assert_eq!(r["status"], "queued", "{r}");
        }
    }
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 3);
    for i in [0, 1, 4] {
        message_for(&messages, &uris[i]);
    }
}

#[tokio::test]
async fn a_throttled_batch_is_retried_within_the_deadline() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "3")
        .start()
        .await;
    // A DM that keeps answering 503 for this blob: retried until the deadline, then failed
    // as transient, while the other blob (its own POST: other properties) is queued.
    app.dm.fail_rest_v2_blobs("busy/0.csv", 503);
    let busy = app.blob_uri("busy/0.csv");
    let fine = app.blob_uri("fine/0.csv");
    let request = json!({"database": "testdb", "table": "events", "blobs": [
        {"blobUri": busy},
        {"blobUri": fine, "additionalProperties": {"tags": "[\"other\"]"}},
    ]});
    let started = Instant::now();
    let reply = app.post_ingest(&request).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.text);
    let results = reply.body["blobs"].as_array().unwrap();
    assert_eq!(results[0]["error"]["code"], "DataManagementUnavailable");
    assert_eq!(results[1]["status"], "queued");
    let attempts = app
        .dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.method == "POST" && r.status == 503)
        .count();
    assert!(attempts >= 2, "retried: {attempts}");
}

/// Statuses the emulator answered the handler's queued POSTs, in order.
fn post_statuses(app: &TestApp) -> Vec<u16> {
    app.dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn a_post_throttled_with_retry_after_is_sent_again_after_it_and_queued() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .start()
        .await;
    // Twice 429 with `Retry-After: 1`: without honouring it the client's own backoff would
    // have sent the POST again within about a second in all.
    app.dm
        .faults()
        .push_rest_v2_statuses(RestV2Endpoint::Queued, &[(429, Some(1)), (429, Some(1))]);
    let uris = blobs(&app, "throttled", 2);
    let started = Instant::now();
    let reply = app.post_ingest(&body(&uris)).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["queued"], 2, "{}", reply.text);
    assert_eq!(post_statuses(&app), vec![429, 429, 200]);
    assert!(
        elapsed >= Duration::from_secs(2),
        "waited Retry-After before each resend: {elapsed:?}"
    );
    assert_eq!(
        app.dm
            .faults()
            .pending_rest_v2_statuses(RestV2Endpoint::Queued),
        0
    );
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 2, "queued once each, not once per attempt");
    for uri in &uris {
        message_for(&messages, uri);
    }
}

#[tokio::test]
async fn throttling_past_the_deadline_fails_the_blobs_transient_with_retry_after() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "3")
        .start()
        .await;
    let faults = app.dm.faults();
    faults.push_rest_v2_statuses(RestV2Endpoint::Queued, &[(429, Some(1)); 50]);
    let uris = blobs(&app, "throttled", 2);
    let started = Instant::now();
    let reply = app.post_ingest(&body(&uris)).await;
    let elapsed = started.elapsed();
    // README "Backends": retried until the deadline; nothing queued and trying again may work:
    // 503 with the DM's Retry-After, each blob failed as DataManagementUnavailable.
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "{:?}",
        reply.headers
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "within the deadline: {elapsed:?}"
    );
    assert_eq!(reply.body["failed"], 2, "{}", reply.text);
    for r in reply.body["blobs"].as_array().unwrap() {
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error"]["code"], "DataManagementUnavailable", "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("429"),
            "{r}"
        );
    }
    let attempts = post_statuses(&app);
    assert!(
        attempts.len() >= 2 && attempts.iter().all(|&s| s == 429),
        "retried, never accepted: {attempts:?}"
    );
    assert!(app.drain_messages().await.is_empty());

    // The throttling ends: the caller's retry goes through.
    faults.clear_rest_v2_statuses(RestV2Endpoint::Queued);
    let reply = app.post_ingest(&body(&uris)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(app.drain_messages().await.len(), 2);
}

#[tokio::test]
async fn throttling_that_outlasts_the_retries_is_answered_long_before_the_deadline() {
    // README "Backends": at most 4 attempts, each after the DM's Retry-After; a caller with the
    // default 60 s deadline is not held for all of it.
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .start()
        .await;
    app.dm
        .faults()
        .push_rest_v2_statuses(RestV2Endpoint::Queued, &[(429, Some(1)); 50]);
    let started = Instant::now();
    let reply = app.post_ingest(&body(&blobs(&app, "outlasts", 1))).await;
    let elapsed = started.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(post_statuses(&app), vec![429; 4]);
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(10),
        "three waits of Retry-After: {elapsed:?}"
    );
}

#[tokio::test]
async fn auto_uses_v1_when_the_configuration_cannot_be_read() {
    // A DM that prefers v2 but whose configuration endpoint fails (5xx, not 404) for the
    // handler's first requests: nothing is known, so v1, and the blobs are still queued.
    let app = TestApp::builder()
        .emulator(|c| c.rest_v2.preferred_ingestion_method = Some("V2".into()))
        .faults(|f| f.push_rest_v2_statuses(RestV2Endpoint::Configuration, &[(503, None); 50]))
        .start()
        .await;
    let uris = blobs(&app, "noconfig", 2);
    let reply = app.post_ingest(&body(&uris)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["queued"], 2, "{}", reply.text);
    let configuration: Vec<u16> = app
        .dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.path.ends_with("/configuration"))
        .map(|r| r.status)
        .collect();
    assert!(
        !configuration.is_empty() && configuration.iter().all(|&s| s == 503),
        "{configuration:?}"
    );
    assert!(post_statuses(&app).is_empty(), "no v2 POST");
    assert!(resource_calls(&app) >= 1, "v1 resources fetched");
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 2);
    let issued = app.dm.issued_authorization_contexts();
    for uri in &uris {
        let m = &message_for(&messages, uri).body;
        // The handler's own v1 message, not one the emulator made from a v2 POST.
        let context = prop(m, "authorizationContext").and_then(Value::as_str);
        assert!(
            context.is_some_and(|c| issued.iter().any(|i| i == c)),
            "{m}"
        );
    }
}

/// Statuses of the configuration GETs the DM answered, in order.
fn configuration_statuses(app: &TestApp) -> Vec<u16> {
    app.dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.path.ends_with("/configuration"))
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn auto_keeps_v2_while_a_configuration_refresh_fails() {
    // The DM prefers v2 and asks to be asked again after 30 s, the shortest refresh the handler
    // takes (src/rest_v2/configuration.rs): this test waits that long once.
    let app = TestApp::builder()
        .emulator(|c| {
            c.rest_v2.preferred_ingestion_method = Some("V2".into());
            c.rest_v2.refresh_interval = Duration::from_secs(30);
        })
        .start()
        .await;
    let reply = app.post_ingest(&body(&blobs(&app, "fresh", 1))).await;
    let first_read = Instant::now();
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(queued_posts(&app), vec![1]);

    // The refresh that falls due fails on every attempt: the configuration once read still says
    // v2, so the blobs go on being posted, not queued through v1.
    let faults = app.dm.faults();
    faults.push_rest_v2_statuses(RestV2Endpoint::Configuration, &[(503, None); 200]);
    tokio::time::sleep(Duration::from_secs(31).saturating_sub(first_read.elapsed())).await;
    let uris = blobs(&app, "stale", 2);
    let reply = app.post_ingest(&body(&uris)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    // The refresh runs behind the request: wait for the DM to have answered it.
    let refreshed = Instant::now() + Duration::from_secs(30);
    while configuration_statuses(&app).len() < 2 && Instant::now() < refreshed {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses = configuration_statuses(&app);
    assert!(
        statuses.len() > 1 && statuses[1..].iter().all(|&s| s == 503),
        "a refresh was tried and failed: {statuses:?}"
    );
    assert_eq!(queued_posts(&app), vec![1, 2], "posted through v2");
    assert_eq!(resource_calls(&app), 0, "never fell back to v1");
    let messages = app.drain_messages().await;
    for uri in &uris {
        message_for(&messages, uri);
    }

    // The DM heals: once the failure hold is over, the next request refreshes the configuration
    // and still posts through v2.
    faults.clear_rest_v2_statuses(RestV2Endpoint::Configuration);
    let healed = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let reply = app.post_ingest(&body(&blobs(&app, "healed", 1))).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        if configuration_statuses(&app).last() == Some(&200) {
            break;
        }
        assert!(
            Instant::now() < healed,
            "no successful refresh 20 s after the DM healed: {:?}",
            configuration_statuses(&app)
        );
    }
    assert_eq!(resource_calls(&app), 0, "never fell back to v1");
    assert!(queued_posts(&app).len() >= 3);
}

#[tokio::test]
async fn v2_tracking_reads_back_through_the_operations_route() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| {
            c.ingest = true;
            c.rest_v2.max_blobs_per_batch = 1;
        })
        .start()
        .await;
    let good = app.upload_blob("t/good.csv", b"a,b\n1,2\n3,4\n").await;
    let missing = app.blob_uri("t/missing.csv");
    let mut request = request(vec![json!({"blobUri": good}), json!({"blobUri": missing})]);
    request["tracking"] = json!(true);
    let reply = app.post_ingest(&request).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let operation = reply.body["operationId"].as_str().expect("operationId");
    // One handler operation over two v2 operations (one blob per batch).
    assert_eq!(queued_posts(&app), vec![1, 1]);

    let started = Instant::now();
    let status = loop {
        let status = app
            .get(&format!("/api/ingest/operations/{operation}"))
            .await;
        assert_eq!(status.status, StatusCode::OK, "{}", status.text);
        if status.body["state"] != "InProgress" || started.elapsed() > Duration::from_secs(30) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        status.body["state"], "PartiallySucceeded",
        "{}",
        status.text
    );
    assert_eq!(status.body["status"]["Succeeded"], 1);
    assert_eq!(status.body["status"]["Failed"], 1);
    let details = status.body["details"].as_array().unwrap();
    let failed = details.iter().find(|d| d["status"] == "Failed").unwrap();
    assert_eq!(failed["blob"], without_query(&missing));
    assert!(
        failed["errorCode"]
            .as_str()
            .unwrap()
            .starts_with("Download_")
    );
    assert_eq!(app.dm.row_count("testdb", "events"), 3);
    app.assert_no_secrets();
}

#[tokio::test]
async fn data_bodies_go_to_the_configurations_containers() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.ingest = true)
        .start()
        .await;
    let data = b"id,name\n1,a\n2,b\n3,c\n".to_vec();
    let reply = reqwest::Client::new()
        .post(format!(
            "{}/api/ingest/testdb/uploaded?format=csv",
            app.address
        ))
        .header("x-functions-key", FUNCTION_KEY)
        .header("content-type", "text/csv")
        .body(data)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(queued_posts(&app), vec![1]);
    let source_id = body["blobs"][0]["sourceId"].as_str().unwrap();
    let outcome = app
        .dm
        .wait_for_outcome(source_id, Duration::from_secs(30))
        .await
        .expect("the emulator ingested it");
    assert_eq!(outcome.rows, 4, "{outcome:?}");
    let path = outcome.message["BlobPath"].as_str().unwrap();
    assert!(
        app.dm
            .temp_containers()
            .iter()
            .any(|(_, container)| path.contains(container.as_str())),
        "{path}"
    );
    assert_eq!(resource_calls(&app), 0);
}

/// `maxDataSize` of the emulator's configuration in the tests below.
const SMALL_MAX_DATA_SIZE: u64 = 1000;

#[tokio::test]
async fn a_blob_larger_than_max_data_size_fails_permanent_and_is_not_posted() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.rest_v2.max_data_size = SMALL_MAX_DATA_SIZE)
        .start()
        .await;
    let uris = blobs(&app, "sizes", 3);
    let mixed = request(vec![
        json!({"blobUri": uris[0], "rawDataSize": 5000}),
        json!({"blobUri": uris[1], "rawDataSize": SMALL_MAX_DATA_SIZE}),
        json!({"blobUri": uris[2]}),
    ]);
    let reply = app.post_ingest(&mixed).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.text);
    let results = reply.body["blobs"].as_array().unwrap();
    assert_eq!(results[0]["status"], "failed", "{}", reply.text);
    assert_eq!(results[0]["error"]["code"], "DataTooLarge");
    let message = results[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1000") && message.contains("maxDataSize"),
        "names the limit: {message}"
    );
    // At the limit, or of unknown size: sent.
    assert_eq!(results[1]["status"], "queued");
    assert_eq!(results[2]["status"], "queued");
    assert_eq!(
        queued_posts(&app),
        vec![2],
        "the large blob was never posted"
    );

    // Only too large blobs: permanent, so 400 and no Retry-After.
    let reply = app
        .post_ingest(&request(vec![
            json!({"blobUri": app.blob_uri("big.csv"), "rawDataSize": 5000}),
        ]))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert!(!reply.headers.contains_key("retry-after"));
    assert_eq!(reply.body["blobs"][0]["error"]["code"], "DataTooLarge");
    assert_eq!(queued_posts(&app), vec![2]);
    // `ignoreSizeLimit` leaves the judgement to the DM (and is passed on to it).
    let reply = app
        .post_ingest(&json!({"database": "testdb", "table": "events",
            "additionalProperties": {"ignoreSizeLimit": true},
            "blobs": [{"blobUri": app.blob_uri("big.csv"), "rawDataSize": 5000}]}))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(queued_posts(&app), vec![1, 2]);
}

#[tokio::test]
async fn a_data_body_larger_than_max_data_size_is_413_and_nothing_is_queued() {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.rest_v2.max_data_size = SMALL_MAX_DATA_SIZE)
        .start()
        .await;
    let rows: String = (0..500).map(|i| format!("{i},name{i}\n")).collect();
    assert!(rows.len() as u64 > SMALL_MAX_DATA_SIZE);
    let mut gzipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzipped, rows.as_bytes()).unwrap();
    let gzipped = gzipped.finish().unwrap();
    // Plain, and gzip-compressed (smaller than the limit as sent, larger uncompressed).
    for (body, encoding) in [(rows.clone().into_bytes(), None), (gzipped, Some("gzip"))] {
        let mut post = reqwest::Client::new()
            .post(format!(
                "{}/api/ingest/testdb/events?format=csv",
                app.address
            ))
            .header("x-functions-key", FUNCTION_KEY)
            .header("content-type", "text/csv");
        if let Some(encoding) = encoding {
            post = post.header("content-encoding", encoding);
        }
        let reply = post.body(body).send().await.unwrap();
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{encoding:?}: {body}"
        );
        assert_eq!(body["error"]["code"], "DataTooLarge", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("1000") && message.contains("maxDataSize"),
            "{message}"
        );
    }
    assert!(queued_posts(&app).is_empty(), "nothing posted");
    for (account, container) in app.dm.temp_containers() {
        let committed = app
            .azurite
            .list_blobs(&account, &container)
            .await
            .expect("list a temporary container");
        assert!(committed.is_empty(), "left behind: {committed:?}");
    }

    // Within the limit, the same route queues.
    let reply = post_small_csv(&app).await;
    assert_eq!(reply.status(), StatusCode::ACCEPTED);
    assert_eq!(queued_posts(&app), vec![1]);
}

#[tokio::test]
async fn a_data_upload_after_the_containers_sas_expired_gets_a_fresh_configuration() {
    // The configuration asks for a refresh after an hour, but its container SAS lasts 2 s.
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .faults(|f| f.set_sas_lifetime(Duration::from_secs(2)))
        .start()
        .await;
    let first = post_small_csv(&app).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = post_small_csv(&app).await;
    let status = second.status();
    let text = second.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(queued_posts(&app), vec![1, 1]);
    let configuration_reads = app
        .dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/ingestion/configuration"))
        .count();
    assert!(configuration_reads >= 2, "{configuration_reads}");
}

#[tokio::test]
async fn a_data_body_announced_larger_than_max_data_size_is_413_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.rest_v2.max_data_size = SMALL_MAX_DATA_SIZE)
        .start()
        .await;
    // 5,000 bytes announced, 100 sent: only an answer from the announced size can come now.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/ingest/testdb/events?format=csv HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         x-functions-key: {FUNCTION_KEY}\r\nContent-Type: text/csv\r\nContent-Length: 5000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[b'1'; 100]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&answer).contains("maxDataSize") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "no answer while the body was incomplete: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("DataTooLarge"), "{answer}");
    assert!(queued_posts(&app).is_empty(), "nothing posted");
}

#[test]
fn a_bad_method_stops_start_up_naming_the_setting() {
    let (status, output) = run_to_exit(&[
        ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
        ("KUSTO_INGEST_METHOD", "queues"),
    ]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("KUSTO_INGEST_METHOD"), "{output}");
    assert!(output.contains("'queues'"), "{output}");
}

#[tokio::test]
async fn a_hung_configuration_refresh_holds_up_no_request() {
    // Refresh after 30 s, the shortest the handler takes: this test waits that long once.
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .emulator(|c| c.rest_v2.refresh_interval = Duration::from_secs(30))
        .start()
        .await;
    let reply = app.post_ingest(&body(&blobs(&app, "warm", 1))).await;
    let first_read = Instant::now();
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);

    // From now on the configuration endpoint takes the request and does not answer; the
    // queued POST still does.
    let faults = app.dm.faults();
    faults.set_rest_v2_delay(RestV2Endpoint::Configuration, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_secs(31).saturating_sub(first_read.elapsed())).await;
    let mut uris = Vec::new();
    for round in 0..3 {
        let batch = blobs(&app, &format!("due{round}"), 2);
        // Bounded well below the 20 s a DM call may take in all, which a request waiting for the
        // refresh would have spent before falling back to its copy.
        let reply = tokio::time::timeout(Duration::from_secs(15), app.post_ingest(&body(&batch)))
            .await
            .expect("answered while the configuration refresh hangs");
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        assert_eq!(reply.body["queued"], 2, "{}", reply.text);
        uris.extend(batch);
    }
    assert_eq!(
        configuration_statuses(&app),
        vec![200],
        "the requests were answered while the refresh was still waiting for the DM"
    );
    let messages = app.drain_messages().await;
    for uri in &uris {
        message_for(&messages, uri);
    }

    // The endpoint answers again: the refresh, retried after its attempt timed out, gets it.
    faults.set_rest_v2_delay(RestV2Endpoint::Configuration, Duration::ZERO);
    let refreshed = Instant::now() + Duration::from_secs(45);
    while configuration_statuses(&app) != vec![200, 200] {
        assert!(
            Instant::now() < refreshed,
            "no refresh after the endpoint healed: {:?}",
            configuration_statuses(&app)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn outcomes(reply: &Reply) -> Vec<(String, String)> {
    reply.body["blobs"]
        .as_array()
        .map(|blobs| {
            blobs
                .iter()
                .map(|b| {
                    (
                        b["status"].as_str().unwrap_or_default().to_owned(),
                        b["error"]["code"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A v2 app whose configuration is already read, so a fault set afterwards hits the POSTs only.
async fn warm_v2_app() -> TestApp {
    let app = TestApp::builder()
        .env("KUSTO_INGEST_METHOD", "v2")
        .start()
        .await;
    let reply = app.post_ingest(&body(&blobs(&app, "warm", 1))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    app.drain_messages().await;
    app
}

#[tokio::test]
async fn a_post_whose_connection_drops_after_sending_is_unknown_not_failed() {
    let app = warm_v2_app().await;
    app.dm
        .faults()
        .lose_rest_v2_answers(RestV2Endpoint::Queued, 1);
    let uris = blobs(&app, "dropped", 2);
    let reply = app.post_ingest(&body(&uris)).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.text);
    assert_eq!(reply.body["failed"], 0, "{}", reply.text);
    assert_eq!(reply.body["unknown"], 2, "{}", reply.text);
    for outcome in outcomes(&reply) {
        assert_eq!(
            outcome,
            ("unknown".into(), "IngestionOutcomeUnknown".into())
        );
    }
    let posts: Vec<_> = app
        .dm
        .rest_v2_requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "not sent again: {posts:?}");
    assert!(posts[1].answer_lost);
    // The DM did queue them: unknown was the honest answer.
    let messages = app.drain_messages().await;
    for uri in &uris {
        message_for(&messages, uri);
    }
    app.assert_no_secrets();
}

#[tokio::test]
async fn a_post_accepted_with_an_unreadable_answer_is_unknown_not_failed() {
    let app = warm_v2_app().await;
    // The configuration stays cached (refreshInterval 1 h); the POST's 200 is over the 1 MiB
    // the handler reads of a DM answer.
    app.dm.faults().set_oversized_answers(Some(2 * 1024 * 1024));
    let uris = blobs(&app, "oversized", 2);
    let reply = app.post_ingest(&body(&uris)).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.text);
    assert_eq!(reply.body["unknown"], 2, "{}", reply.text);
    for outcome in outcomes(&reply) {
        assert_eq!(
            outcome,
            ("unknown".into(), "IngestionOutcomeUnknown".into())
        );
    }
    let messages = app.drain_messages().await;
    for uri in &uris {
        message_for(&messages, uri);
    }
    // A POST the DM refuses is still failed, whatever its body: refused means not queued.
    app.dm.faults().set_oversized_answers(None);
    app.dm
        .faults()
        .push_rest_v2_statuses(RestV2Endpoint::Queued, &[(400, None)]);
    let reply = app.post_ingest(&body(&blobs(&app, "refused", 1))).await;
    assert_eq!(
        outcomes(&reply),
        vec![("failed".into(), "DataManagementRejected".into())],
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn a_status_read_whose_answer_is_lost_or_unreadable_is_unavailable_then_answers() {
    let app = warm_v2_app().await;
    let mut tracked = body(&blobs(&app, "tracked", 1));
    tracked["tracking"] = json!(true);
    let reply = app.post_ingest(&tracked).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let operation = reply.body["operationId"].as_str().expect("operationId");
    let path = format!("/api/ingest/operations/{operation}");
    let faults = app.dm.faults();

    // Every read's connection drops after the request: a status read is safe to repeat, and
    // still unavailable when each attempt is lost.
    faults.lose_rest_v2_answers(RestV2Endpoint::Status, 100);
    let reply = app.get(&path).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "DataManagementUnavailable");
    faults.reset();

    faults.set_oversized_answers(Some(2 * 1024 * 1024));
    let reply = app.get(&path).await;
    assert!(reply.status.is_server_error(), "{}", reply.text);
    assert!(reply.text.contains("larger than"), "{}", reply.text);
    faults.reset();

    let reply = app.get(&path).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    app.assert_no_secrets();
}
