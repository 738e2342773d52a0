//! Under fault: deadlines, bounded waits on the DM and the identity endpoint, ambiguous outcomes
//! reported as such, refetch storms held back, and log and response hygiene. Each test injects the
//! fault in the DM emulator (or its fake storage endpoint) and drives the real handler binary.
//! Tests whose premise holds for either protocol run both ways (`both_protocols!`); those about
//! the v1 queues stay v1, and those answered at the HTTP edge or before the backend is asked
//! (body limits, connections, log hygiene, Event Grid metadata reads) need one protocol only.

mod common;
mod eventgrid_support;

use common::*;
use eventgrid_support::{Encoding, Schema, blob_created, envelope, post_blob_created, reply_logs};
use kusto_dev::BreakMode;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const RESOURCES: &str = ".get ingestion resources";

fn bodies(app: &TestApp, prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "blobUri": app.blob_uri(&format!("{prefix}/{i}.csv")) }))
        .collect()
}

/// Each blob's `status` and `error.code` (`-` when none).
fn statuses(reply: &Reply) -> Vec<(String, String)> {
    reply.body["blobs"]
        .as_array()
        .unwrap_or_else(|| panic!("per-blob results: {}", reply.text))
        .iter()
        .map(|b| {
            (
                b["status"].as_str().unwrap_or("?").to_owned(),
                b["error"]["code"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn hang_every_queue(f: &kusto_dev::Faults) {
    f.break_account("ingestacct1", BreakMode::Hang);
    f.break_account("ingestacct2", BreakMode::Hang);
}

/// What holds a request until its deadline: v1's queues never answer; a v2 request's calls all go
/// to the DM, which answers after a minute.
fn hang_the_backend(f: &kusto_dev::Faults, protocol: Protocol) {
    match protocol {
        Protocol::V1 => hang_every_queue(f),
        Protocol::V2 => f.set_delay(Duration::from_secs(60)),
    }
}

both_protocols!(
    blob_created_answers_before_event_grid_gives_up,
    a_dm_that_answers_after_a_minute_costs_a_request_its_deadline_only,
    a_token_endpoint_that_answers_after_a_minute_is_bounded_too,
    an_oversized_dm_answer_is_refused_not_buffered,
    requests_over_the_in_flight_limit_are_answered_503_at_once,
    a_hung_dm_or_its_queues_do_not_delay_requests_to_another_dm,
);

// v1 only: the premise is hung queues (v2's hung DM is the slow-DM test below).
#[tokio::test]
async fn every_queue_hanging_answers_by_the_request_deadline() {
    let app = TestApp::builder()
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "3")
        .faults(hang_every_queue)
        .start()
        .await;
    let started = Instant::now();
    let reply = app.post_ingest(&request(bodies(&app, "hang", 128))).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(6),
        "answered after {elapsed:?}, deadline 3 s"
    );
    assert_eq!(
        reply.status,
        StatusCode::MULTI_STATUS,
        "{:.600}",
        reply.text
    );
    assert_eq!(reply.body["queued"], 0);
    // Blobs whose post hung may be queued; blobs never posted are failed, transient.
    for (status, code) in statuses(&reply) {
        match status.as_str() {
            "unknown" => assert_eq!(code, "QueueOutcomeUnknown"),
            "failed" => assert_eq!(code, "DeadlineExceeded"),
            other => panic!("blob status {other} ({code})"),
        }
    }
    assert!(
        reply.body["unknown"].as_u64().unwrap_or(0) > 0,
        "{:.600}",
        reply.text
    );
    app.assert_no_secrets();
}

async fn blob_created_answers_before_event_grid_gives_up(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env(
            "INGEST_ROUTES",
            r#"[{"container": "landing", "database": "db", "table": "T"}]"#,
        )
        .env("INGEST_EVENT_DEADLINE_SECONDS", "2")
        .faults(move |f| hang_the_backend(f, protocol))
        .start()
        .await;
    let event = blob_created(Schema::EventGrid, "hang-1", &app, "landing", "a.csv", 10);
    let started = Instant::now();
    let reply = post_blob_created(&app, envelope(Encoding::HostDoubleEncoded, &event)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.text
    );
    let logs = reply_logs(&reply).join("\n");
    match protocol {
        Protocol::V1 => assert!(logs.contains("may have been queued"), "{logs}"),
        // Nothing was posted: the DM's configuration did not come before the deadline.
        Protocol::V2 => assert!(logs.contains("DeadlineExceeded"), "{logs}"),
    }
    assert!(logs.contains("Event Grid will redeliver"), "{logs}");
}

async fn a_dm_that_answers_after_a_minute_costs_a_request_its_deadline_only(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "3")
        .faults(|f| f.set_delay(Duration::from_secs(60)))
        .start()
        .await;
    let (a, b) = (
        request(bodies(&app, "slowdm-a", 2)),
        request(bodies(&app, "slowdm-b", 1)),
    );
    let started = Instant::now();
    let (first, second) = tokio::join!(app.post_ingest(&a), app.post_ingest(&b));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(6),
        "answered after {elapsed:?}"
    );
    for reply in [&first, &second] {
        reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "DeadlineExceeded");
        assert!(reply.headers.contains_key("retry-after"));
    }
}

async fn a_token_endpoint_that_answers_after_a_minute_is_bounded_too(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "4")
        .faults(|f| f.set_token_delay(Duration::from_secs(60)))
        .start()
        .await;
    let started = Instant::now();
    let reply = app
        .post_ingest(&request(bodies(&app, "slowtoken", 1)))
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(7),
        "answered after {elapsed:?}"
    );
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
}

async fn an_oversized_dm_answer_is_refused_not_buffered(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(|f| f.set_oversized_answers(Some(8 * 1024 * 1024)))
        .start()
        .await;
    let reply = app.post_ingest(&request(bodies(&app, "huge", 1))).await;
    reply.assert_error(StatusCode::BAD_GATEWAY, "DataManagementRejected");
    assert!(reply.text.contains("larger than"), "{}", reply.text);
}

// v1 only: the premise is a lost Put Message answer (a lost v2 POST answer is
// IngestionOutcomeUnknown, see the poster).
#[tokio::test]
async fn an_answer_lost_after_the_queue_stored_the_message_is_unknown_not_failed() {
    let app = TestApp::builder()
        .faults(|f| {
            f.break_account("ingestacct1", BreakMode::ResetAfterEnqueue);
            f.break_account("ingestacct2", BreakMode::ResetAfterEnqueue);
        })
        .start()
        .await;
    let blobs = bodies(&app, "lost", 4);
    let reply = app.post_ingest(&request(blobs.clone())).await;
    assert_eq!(
        reply.status,
        StatusCode::MULTI_STATUS,
        "{:.600}",
        reply.text
    );
    assert_eq!(reply.body["failed"], 0, "{:.600}", reply.text);
    assert_eq!(reply.body["unknown"], 4, "{:.600}", reply.text);
    for (status, code) in statuses(&reply) {
        assert_eq!(
            (status.as_str(), code.as_str()),
            ("unknown", "QueueOutcomeUnknown")
        );
    }
    let message = reply.body["blobs"][0]["error"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("idempotent"), "says what to do: {message}");
    // They really were queued (more than once: the answer was lost every time).
    let messages = app.drain_messages().await;
    for blob in &blobs {
        let uri = without_query(blob["blobUri"].as_str().unwrap_or_default());
        let copies = messages
            .iter()
            .filter(|m| {
                m.body["BlobPath"]
                    .as_str()
                    .is_some_and(|p| without_query(p) == uri)
            })
            .count();
        assert!(copies >= 1, "{uri} was not queued at all");
    }
    app.assert_no_secrets();
}

// v1 only: the premise is the queue SAS the v1 resources hand out.
#[tokio::test]
async fn a_refused_sas_is_refetched_at_most_once_per_hold_not_per_request() {
    let app = TestApp::builder()
        .faults(|f| {
            f.break_account("ingestacct1", BreakMode::BadSignature);
            f.break_account("ingestacct2", BreakMode::BadSignature);
        })
        .start()
        .await;
    for i in 0..20 {
        let reply = app
            .post_ingest(&request(bodies(&app, &format!("storm{i}"), 1)))
            .await;
        reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "QueueAuthorizationFailed");
        assert!(reply.headers.contains_key("retry-after"));
    }
    let fetches = app.dm.command_count(RESOURCES);
    assert!(
        fetches <= 2,
        "20 requests refused by storage cost {fetches} resource fetches"
    );
}

#[tokio::test]
async fn a_data_management_uri_cannot_forge_log_lines_or_echo_a_password() {
    let app = TestApp::start().await;
    let forged = "https://user:hunter2@evil.example.com/\nERROR forged line".to_owned()
        + &"x".repeat(100_000);
    let body = json!({
        "database": "db", "table": "t", "dataManagementUri": forged,
        "blobs": [{"blobUri": app.blob_uri("a.csv")}]
    });
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{:.300}", reply.text);
    assert!(!reply.text.contains("hunter2"), "{:.300}", reply.text);
    assert!(
        reply.text.len() < 4_000,
        "echo is clipped: {} bytes",
        reply.text.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for line in app.logs() {
        assert!(!line.contains("hunter2"), "{line:.300}");
        assert!(
            !line.starts_with("ERROR forged"),
            "forged log line: {line:.300}"
        );
        assert!(line.len() < 4_000, "log line of {} bytes", line.len());
    }
}

#[tokio::test]
async fn an_over_limit_content_length_is_refused_before_the_body_is_read() {
    let app = TestApp::builder()
        .env("INGEST_MAX_BODY_BYTES", "1000")
        .start()
        .await;
    // Declare a large body and send none of it: the answer must not wait for it.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"POST /api/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n",
        )
        .await
        .expect("send headers");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed() {
    let app = TestApp::start().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let mut half = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    half.write_all(b"POST /api/ingest HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request");
    let mut buf = [0u8; 256];
    for (name, stream) in [("idle", &mut idle), ("half-sent", &mut half)] {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection is still open after 20 s"));
        // Closed (0 bytes or a reset), possibly after a 408.
        if let Ok(n) = read {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{name}: {text}");
        }
    }
    // And the handler still serves.
    let reply = app
        .post_ingest(&request(bodies(&app, "after-idle", 1)))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
}

async fn requests_over_the_in_flight_limit_are_answered_503_at_once(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_MAX_REQUESTS", "2")
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "4")
        .faults(move |f| hang_the_backend(f, protocol))
        .start()
        .await;
    // Two requests hang on the queues (v2: the DM) until their deadline and hold both slots.
    let held = tokio::spawn({
        let body = request(bodies(&app, "held", 1));
        let address = app.address.clone();
        async move {
            let client = reqwest::Client::new();
            let post = |body: Value| {
                client
                    .post(format!("{address}/api/ingest"))
                    .json(&body)
                    .send()
            };
            let _ = tokio::join!(post(body.clone()), post(body));
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = Instant::now();
    let reply = app.post_ingest(&request(bodies(&app, "third", 1))).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "ServerBusy");
    assert!(reply.headers.contains_key("retry-after"));
    let _ = held.await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_body_of_tiny_json_values_costs_memory_in_proportion_to_its_size() {
    let app = TestApp::start().await;
    // 8 MB of one-byte values (just under the 8 MiB limit): as one JSON tree, ~200 MiB.
    let tiny = format!("[{}1]", "1,".repeat(4_000_000));
    let body = format!(
        r#"{{"database": "db", "table": "t", "tags": {tiny}, "blobs": [{{"blobUri": "{}"}}]}}"#,
        app.blob_uri("tiny.csv")
    );
    let before = peak_rss_kib(app.pid());
    let reply = app.post_raw(body.into_bytes(), "application/json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:.300}", reply.text);
    assert_eq!(reply.error_target(), "tags");
    let grown = peak_rss_kib(app.pid()).saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "peak RSS grew by {grown} KiB for an 8 MiB body"
    );
}

async fn a_hung_dm_or_its_queues_do_not_delay_requests_to_another_dm(protocol: Protocol) {
    let azurite = kusto_dev::Azurite::shared();
    let hung = kusto_dev::DmEmulator::start(azurite, kusto_dev::EmulatorConfig::default())
        .await
        .expect("start a second DM emulator");
    hang_the_backend(&hung.faults(), protocol);
    let app = TestApp::builder()
        .protocol(protocol)
        .env("KUSTO_ALLOWED_INGEST_URIS", hung.url())
        .env("INGEST_MAX_CONCURRENCY", "4")
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "20")
        .start()
        .await;
    hung.trust_tokens_of(&app.dm);

    // Fill the hung DM's posts (4 at a time, each waiting 10 s for an answer).
    let mut flood = request(bodies(&app, "flood", 16));
    flood["dataManagementUri"] = json!(hung.url());
    let flooding = tokio::spawn({
        let address = app.address.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{address}/api/ingest?code={FUNCTION_KEY}"))
                .json(&flood)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match protocol {
        Protocol::V1 => assert!(
            hung.fake_storage_requests("ingestacct1") + hung.fake_storage_requests("ingestacct2")
                > 0
        ),
        // Still waiting for the hung DM's configuration.
        Protocol::V2 => assert!(!flooding.is_finished()),
    }

    let started = Instant::now();
    let reply = app.post_ingest(&request(bodies(&app, "healthy", 1))).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert!(
        elapsed < Duration::from_secs(2),
        "the healthy DM's request took {elapsed:?}"
    );
    flooding.abort();
}

#[tokio::test]
async fn metadata_reads_of_one_invocation_run_concurrently_within_its_deadline() {
    let azurite = kusto_dev::Azurite::shared();
    let app = TestApp::builder()
        .env(
            "INGEST_ROUTES",
            r#"[{"container": "landing", "database": "db", "table": "T"}]"#,
        )
        .env("INGEST_READ_BLOB_METADATA", "true")
        .env("INGEST_EVENT_DEADLINE_SECONDS", "4")
        .faults(|f| f.break_account("hungblobs", BreakMode::Hang))
        .start()
        .await;
    let _ = azurite;
    // Three events whose blobs live on a storage endpoint that never answers.
    let events: Vec<Value> = (0..3)
        .map(|i| {
            let mut event = blob_created(
                Schema::EventGrid,
                &format!("slow-{i}"),
                &app,
                "landing",
                "a.csv",
                10,
            );
            event["data"]["url"] = json!(format!(
                "{}/hungblobs/landing/{i}.csv",
                app.dm.fake_storage_url().trim_end_matches('/')
            ));
            event
        })
        .collect();
    let started = Instant::now();
    let reply = post_blob_created(&app, envelope(Encoding::Object, &json!(events))).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(7),
        "answered after {elapsed:?}"
    );
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.text
    );
    assert_eq!(
        app.dm.fake_storage_requests("hungblobs"),
        3,
        "all three read at once"
    );
}

#[tokio::test]
async fn sigterm_does_not_wait_for_a_half_sent_request() {
    use tokio::io::AsyncWriteExt;
    let mut app = TestApp::start().await;
    let mut half = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    half.write_all(b"POST /api/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"da")
        .await
        .expect("half a request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &app.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = app
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the handler exits although a client never finishes its request");
    assert!(exit.success(), "{exit}");
}
