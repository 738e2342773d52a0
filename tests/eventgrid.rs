//! The Event Grid trigger, black box: the real handler binary, invoked exactly as the Functions host
//! invokes it (`POST /BlobCreated` with the `{"Data": …, "Metadata": …}` envelope), against Azurite
//! and the DM emulator; ingestion messages are read back from the Azurite queues.

mod common;
mod eventgrid_support;

use common::{DATA_ACCOUNT, Protocol, TestApp, prop};
use eventgrid_support::*;
use kusto_ingest_api::eventgrid::source_id_for;
use serde_json::{Value, json};

// Every test runs against both protocols (`name::v1`, `name::v2`).
both_protocols!(
    documented_payloads_in_every_schema_and_encoding_are_queued,
    metadata_overrides_the_rule_and_the_format_follows_the_blob_name,
    events_that_are_not_ingestible_are_acknowledged_and_never_queued,
    transient_failure_answers_500_and_redelivery_keeps_the_source_id,
    malformed_payloads_are_rejected_without_panic_or_queueing,
    without_rules_blob_metadata_names_the_destination,
);

const CSV: &[u8] = b"a,b\n1,2\n3,4\n";

/// A handler routing `container` by `rules`, reading blob metadata with a local SAS.
async fn start(protocol: Protocol, rules: Value) -> TestApp {
    let azurite = kusto_dev::Azurite::shared();
    TestApp::builder()
        .protocol(protocol)
        .env("INGEST_ROUTES", &rules.to_string())
        .env("INGEST_READ_BLOB_METADATA", "true")
        .env("INGEST_LOCAL_BLOB_SAS", &read_sas(azurite))
        .start()
        .await
}

async fn upload(
    app: &TestApp,
    container: &str,
    name: &str,
    bytes: &[u8],
    metadata: &[(&str, &str)],
) -> String {
    app.azurite
        .upload_blob(DATA_ACCOUNT, container, name, bytes.to_vec(), metadata)
        .await
        .expect("upload blob");
    app.azurite.blob_url(DATA_ACCOUNT, container, name)
}

fn message_with_id<'a>(messages: &'a [common::QueuedMessage], id: &str) -> &'a Value {
    let found: Vec<&Value> = messages
        .iter()
        .map(|m| &m.body)
        .filter(|b| b["Id"] == id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one message with Id {id} among {messages:#?}"
    );
    found[0]
}

async fn documented_payloads_in_every_schema_and_encoding_are_queued(protocol: Protocol) {
    let azurite = kusto_dev::Azurite::shared();
    let container = new_container(azurite, "landing").await;
    let app = start(
        protocol,
        json!([
            {"container": container, "prefix": "sales/", "database": "testdb", "table": "Sales",
             "properties": {"ignoreFirstRecord": true}}
        ]),
    )
    .await;
    let url = upload(&app, &container, "sales/2024/a.csv", CSV, &[]).await;

    let mut expected = Vec::new();
    let mut replies = Vec::new();
    for schema in [Schema::EventGrid, Schema::CloudEvents] {
        for encoding in ENCODINGS {
            for as_array in [false, true] {
                let id = uuid::Uuid::new_v4().to_string();
                let event = blob_created(
                    schema,
                    &id,
                    &app,
                    &container,
                    "sales/2024/a.csv",
                    CSV.len() as u64,
                );
                let value = if as_array { json!([event]) } else { event };
                let reply = post_blob_created(&app, envelope(encoding, &value)).await;
                let logs = reply_logs(&reply);
                assert_eq!(
                    reply.status, 200,
                    "{schema:?} {encoding:?} array={as_array}: {logs:#?}"
                );
                let source_id = source_id_for(&id).to_string();
                let line = logs
                    .iter()
                    .find(|l| l.starts_with("event ") && l.contains(": queued "))
                    .unwrap_or_else(|| panic!("no queued line: {logs:#?}"));
                assert!(line.contains(&url), "blob path in {line}");
                assert!(line.contains(&source_id), "source id in {line}");
                assert!(
                    line.contains(&format!(
                        "rule 1 (container '{container}', prefix 'sales/')"
                    )),
                    "route in {line}"
                );
                expected.push(source_id);
                replies.push(reply);
            }
        }
    }

    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), expected.len(), "{messages:#?}");
    for id in &expected {
        let m = message_with_id(&messages, id);
        assert_eq!(m["BlobPath"], json!(url));
        assert_eq!(m["DatabaseName"], "testdb");
        assert_eq!(m["TableName"], "Sales");
        assert_eq!(m["RawDataSize"], json!(CSV.len()));
        assert_eq!(prop(m, "format"), Some(&json!("csv")));
        assert_eq!(prop(m, "ignoreFirstRecord"), Some(&json!(true)));
    }
    let replies: Vec<&common::Reply> = replies.iter().collect();
    assert_no_sas(&app, &replies);
    app.assert_no_secrets();
}

async fn metadata_overrides_the_rule_and_the_format_follows_the_blob_name(protocol: Protocol) {
    let azurite = kusto_dev::Azurite::shared();
    let container = new_container(azurite, "typed").await;
    let app = start(
        protocol,
        json!([
            {"container": container, "prefix": "typed/", "database": "testdb", "table": "Typed",
             "format": "psv", "ingestionMappingReference": "ruleMapping"},
            {"container": container, "database": "testdb", "table": "Any"}
        ]),
    )
    .await;

    let plain = upload(
        &app,
        &container,
        "plain/events.json.gz",
        b"not really gzip",
        &[],
    )
    .await;
    let rule_only = upload(&app, &container, "typed/c.csv", CSV, &[]).await;
    let overridden = upload(
        &app,
        &container,
        "typed/b.csv",
        CSV,
        &[
            ("KustoTable", "FromMetadata"),
            ("kustoDataFormat", "json"),
            ("kustoIngestionMappingReference", "metaMapping"),
            ("kustoIgnoreFirstRecord", "true"),
            ("kustoExtentTags", "[\"drop-by:2024-03\"]"),
            ("kustoCreationTime", "2024-03-01T00:00:00Z"),
            ("rawSizeBytes", "123456"),
        ],
    )
    .await;

    let mut ids = Vec::new();
    for (i, name) in ["plain/events.json.gz", "typed/c.csv", "typed/b.csv"]
        .iter()
        .enumerate()
    {
        let id = format!("meta-{i}-{}", uuid::Uuid::new_v4());
        let event = blob_created(Schema::EventGrid, &id, &app, &container, name, 15);
        let reply = post_blob_created(&app, envelope(Encoding::HostDoubleEncoded, &event)).await;
        assert_eq!(reply.status, 200, "{:#?}", reply_logs(&reply));
        ids.push(source_id_for(&id).to_string());
    }
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 3, "{messages:#?}");

    let m = message_with_id(&messages, &ids[0]);
    assert_eq!(m["BlobPath"], json!(plain));
    assert_eq!(m["TableName"], "Any");
    assert_eq!(
        prop(m, "format"),
        Some(&json!("json")),
        "inferred from events.json.gz"
    );
    assert!(
        m.get("RawDataSize").is_none_or(Value::is_null),
        "compressed: no raw size, got {m}"
    );

    let m = message_with_id(&messages, &ids[1]);
    assert_eq!(m["BlobPath"], json!(rule_only));
    assert_eq!(m["TableName"], "Typed");
    assert_eq!(prop(m, "format"), Some(&json!("psv")));
    assert_eq!(common::mapping_reference(m), Some(&json!("ruleMapping")));
    assert_eq!(m["RawDataSize"], json!(15));

    let m = message_with_id(&messages, &ids[2]);
    assert_eq!(m["BlobPath"], json!(overridden));
    assert_eq!(m["DatabaseName"], "testdb");
    assert_eq!(m["TableName"], "FromMetadata");
    assert_eq!(prop(m, "format"), Some(&json!("json")));
    assert_eq!(common::mapping_reference(m), Some(&json!("metaMapping")));
    assert_eq!(prop(m, "ignoreFirstRecord"), Some(&json!(true)));
    assert_eq!(prop(m, "tags"), Some(&json!("[\"drop-by:2024-03\"]")));
    assert_eq!(
        prop(m, "creationTime"),
        Some(&json!("2024-03-01T00:00:00Z"))
    );
    assert_eq!(m["RawDataSize"], json!(123456));
    assert_no_sas(&app, &[]);
}

async fn events_that_are_not_ingestible_are_acknowledged_and_never_queued(protocol: Protocol) {
    let azurite = kusto_dev::Azurite::shared();
    let container = new_container(azurite, "skips").await;
    let app = start(
        protocol,
        json!([{"container": container, "database": "testdb", "table": "T"}]),
    )
    .await;
    // "empty.csv" needs no blob: a zero contentLength is skipped before any storage call.
    upload(
        &app,
        &container,
        "dir/marker",
        b"-",
        &[("hdi_isfolder", "true")],
    )
    .await;
    upload(
        &app,
        &container,
        "bad-meta.csv",
        CSV,
        &[("kustoIgnoreFirstRecord", "perhaps")],
    )
    .await;
    upload(&app, &container, "ok.csv", CSV, &[]).await;

    let event = |id: &str, name: &str, len: u64| {
        blob_created(Schema::EventGrid, id, &app, &container, name, len)
    };
    let mut create_file = fixture("create-file-adls.eventgrid.json");
    create_file["subject"] = json!(format!(
        "/blobServices/default/containers/{container}/blobs/ok.csv"
    ));
    let mut put_block = event("s-api", "ok.csv", 12);
    put_block["data"]["api"] = json!("PutBlock");
    let mut folder = event("s-folder", "dir/", 0);
    folder["data"]["url"] = json!(format!(
        "{}/",
        app.azurite.blob_url(DATA_ACCOUNT, &container, "dir")
    ));

    let cases: Vec<(&str, Value)> = vec![
        ("api 'CreateFile'", create_file),
        ("api 'PutBlock'", put_block),
        ("the blob is empty", event("s-empty", "empty.csv", 0)),
        ("it is a folder", folder),
        (
            "it is a folder (hdi_isfolder)",
            event("s-hdi", "dir/marker", 1),
        ),
        (
            "no INGEST_ROUTES rule matches",
            blob_created(
                Schema::CloudEvents,
                "s-route",
                &app,
                "other-container",
                "ok.csv",
                12,
            ),
        ),
        (
            "the blob no longer exists",
            event("s-gone", "missing.csv", 12),
        ),
        (
            "kustoIgnoreFirstRecord",
            event("s-meta", "bad-meta.csv", 12),
        ),
        (
            "type 'Microsoft.Storage.BlobDeleted'",
            fixture("blob-deleted.eventgrid.json"),
        ),
        (
            "type 'Microsoft.EventGrid.SubscriptionValidationEvent'",
            fixture("subscription-validation.eventgrid.json"),
        ),
    ];
    let mut replies = Vec::new();
    for (expected, event) in cases {
        for encoding in ENCODINGS {
            let reply = post_blob_created(&app, envelope(encoding, &event)).await;
            let logs = reply_logs(&reply);
            assert_eq!(reply.status, 200, "{expected}: {logs:#?}");
            let line = logs
                .iter()
                .find(|l| l.starts_with("event ") && l.contains(": skipped"))
                .unwrap_or_else(|| panic!("{expected}: {logs:#?}"));
            assert!(line.contains(expected), "expected {expected:?} in {line}");
            replies.push(reply);
        }
    }
    assert!(
        app.drain_messages().await.is_empty(),
        "a skipped event was queued"
    );
    let replies: Vec<&common::Reply> = replies.iter().collect();
    assert_no_sas(&app, &replies);
}

async fn transient_failure_answers_500_and_redelivery_keeps_the_source_id(protocol: Protocol) {
    let azurite = kusto_dev::Azurite::shared();
    let container = new_container(azurite, "retry").await;
    let app = start(
        protocol,
        json!([{"container": container, "database": "testdb", "table": "T"}]),
    )
    .await;
    let url = upload(&app, &container, "r.csv", CSV, &[]).await;
    let event = blob_created(
        Schema::EventGrid,
        "redelivered-event-1",
        &app,
        &container,
        "r.csv",
        CSV.len() as u64,
    );
    let body = envelope(Encoding::HostDoubleEncoded, &event);
    let source_id = source_id_for("redelivered-event-1").to_string();

    app.dm.faults().set_down(true);
    let reply = post_blob_created(&app, body.clone()).await;
    let logs = reply_logs(&reply);
    assert_eq!(reply.status, 500, "{logs:#?}");
    assert!(logs[0].contains("1 to retry"), "{logs:#?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("Event Grid will redeliver it")),
        "{logs:#?}"
    );
    assert!(app.drain_messages().await.is_empty());

    // Event Grid redelivers until it succeeds (the handler holds a DM failure for a few seconds
    // before asking again): once the DM is back the event is queued under the same source id.
    app.dm.faults().set_down(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = post_blob_created(&app, body.clone()).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 500, "{:#?}", reply_logs(&reply));
        assert!(
            std::time::Instant::now() < deadline,
            "still failing: {:#?}",
            reply_logs(&reply)
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // A duplicate delivery (at-least-once) carries the same id again.
    let reply = post_blob_created(&app, envelope(Encoding::Object, &event)).await;
    assert_eq!(reply.status, 200, "{:#?}", reply_logs(&reply));
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 2, "{messages:#?}");
    for m in &messages {
        assert_eq!(m.body["Id"], json!(source_id));
        assert_eq!(m.body["BlobPath"], json!(url));
    }
}

async fn malformed_payloads_are_rejected_without_panic_or_queueing(protocol: Protocol) {
    let azurite = kusto_dev::Azurite::shared();
    let container = new_container(azurite, "landing").await;
    let app = start(
        protocol,
        json!([{"container": container, "database": "testdb", "table": "T"}]),
    )
    .await;

    let mut corpus: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixtures_dir().join("malformed"))
        .expect("malformed corpus")
        .map(|entry| {
            let path = entry.expect("dir entry").path();
            (
                path.display().to_string(),
                std::fs::read(&path).expect("read fixture"),
            )
        })
        .collect();
    let mut huge_subject = blob_created(Schema::EventGrid, "huge", &app, &container, "a.csv", 1);
    huge_subject["subject"] = json!(format!(
        "/blobServices/default/containers/{container}/blobs/{}a.csv",
        "d/".repeat(200_000)
    ));
    corpus.push((
        "huge subject".into(),
        envelope(Encoding::HostDoubleEncoded, &huge_subject),
    ));
    let mut no_url = blob_created(Schema::CloudEvents, "no-url", &app, &container, "a.csv", 1);
    no_url["data"]
        .as_object_mut()
        .expect("data object")
        .remove("url");
    corpus.push((
        "missing data.url".into(),
        envelope(Encoding::String, &no_url),
    ));
    let mut wrong_types = blob_created(Schema::EventGrid, "types", &app, &container, "a.csv", 1);
    wrong_types["data"]["contentLength"] = json!({"bytes": 1});
    corpus.push((
        "wrong types".into(),
        envelope(Encoding::Object, &json!([wrong_types])),
    ));
    let full = envelope(
        Encoding::HostDoubleEncoded,
        &blob_created(Schema::EventGrid, "t", &app, &container, "a.csv", 1),
    );
    for cut in [1, full.len() / 3, full.len() / 2, full.len() - 2] {
        corpus.push((format!("truncated at {cut}"), full[..cut].to_vec()));
    }
    corpus.push((
        "deep nesting".into(),
        format!(
            "{{\"Data\":{{\"event\":{}{}}}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
        .into_bytes(),
    ));

    for (name, body) in corpus {
        let reply = post_blob_created(&app, body).await;
        let logs = reply_logs(&reply);
        assert_eq!(reply.status, 200, "{name}: {logs:#?}");
        assert!(
            logs.iter().any(|l| l.contains("rejected")),
            "{name}: {logs:#?}"
        );
        assert!(
            reply.text.len() < 16 * 1024,
            "{name}: reply echoes the input ({} bytes)",
            reply.text.len()
        );
    }
    // Still alive and nothing queued.
    let probe = reqwest::get(format!("{}/", app.address))
        .await
        .expect("GET /");
    assert_eq!(probe.status(), 200);
    assert!(app.drain_messages().await.is_empty());
    assert!(!app.log_text().contains("panicked"), "{}", app.log_text());
}

async fn without_rules_blob_metadata_names_the_destination(protocol: Protocol) {
    let azurite = kusto_dev::Azurite::shared();
    let container = new_container(azurite, "norules").await;
    // No rules, and metadata reading left at its default: without rules it is read anyway.
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_ROUTES", "")
        .env("INGEST_LOCAL_BLOB_SAS", &read_sas(azurite))
        .start()
        .await;
    let named = upload(
        &app,
        &container,
        "in/a.csv",
        CSV,
        &[("kustoDatabase", "metadb"), ("kustoTable", "MetaTable")],
    )
    .await;
    upload(
        &app,
        &container,
        "in/b.csv",
        CSV,
        &[("kustoTable", "OnlyTable")],
    )
    .await;
    upload(&app, &container, "in/c.csv", CSV, &[]).await;

    let mut ids = Vec::new();
    for name in ["in/a.csv", "in/b.csv", "in/c.csv"] {
        let id = format!("norules-{}", uuid::Uuid::new_v4());
        let event = blob_created(Schema::EventGrid, &id, &app, &container, name, 15);
        let reply = post_blob_created(&app, envelope(Encoding::HostDoubleEncoded, &event)).await;
        assert_eq!(reply.status, 200, "{:#?}", reply_logs(&reply));
        ids.push((
            source_id_for(&id).to_string(),
            reply_logs(&reply).join("\n"),
        ));
    }
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let m = message_with_id(&messages, &ids[0].0);
    assert_eq!(m["BlobPath"], json!(named));
    assert_eq!(m["DatabaseName"], "metadb");
    assert_eq!(m["TableName"], "MetaTable");
    assert_eq!(prop(m, "format"), Some(&json!("csv")), "from the blob name");
    for (_, logs) in &ids[1..] {
        assert!(
            logs.contains("does not name both kustoDatabase and kustoTable"),
            "{logs}"
        );
    }
}
