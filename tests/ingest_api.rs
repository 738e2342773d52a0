//! `POST /api/ingest` through the real handler: what lands on the queues, property precedence,
//! source ids, request validation and limits.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

// The tests that hold for either protocol run both ways (`name::v1`, `name::v2`). The others
// check the v1 queue message itself (its every field, its 64 KiB limit); v2's own message
// behaviour is in tests/ingest_v2.rs.
both_protocols!(
    readiness_probe_answers_200,
    logic_app_body_is_accepted_unchanged,
    precedence_is_blob_then_request_then_settings,
    callers_source_id_is_kept_and_others_get_new_guids,
    callers_authorization_context_is_replaced,
    malformed_json_is_invalid_json,
    missing_fields_are_named,
    empty_and_wrong_typed_fields_are_named,
    bad_blob_uris_are_named,
    bad_source_id_is_named,
    too_many_blobs_is_413,
    too_large_a_body_is_413,
    a_wrong_method_is_405_naming_the_allowed_ones,
    each_request_logs_one_summary_line_under_its_invocation_id,
);

fn parse_rfc3339(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

fn is_guid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::try_parse(s).is_ok())
}

/// Number of `AdditionalProperties` keys equal to `key` ignoring case.
fn key_count(message: &Value, key: &str) -> usize {
    message["AdditionalProperties"]
        .as_object()
        .map(|m| m.keys().filter(|k| k.eq_ignore_ascii_case(key)).count())
        .unwrap_or(0)
}

async fn readiness_probe_answers_200(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let resp = reqwest::get(format!("{}/", app.address)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_blob_is_queued_with_every_message_field() {
    let app = TestApp::start().await;
    let given_id = "0b9e3c4e-1f7a-4b53-9d2a-6f1e2d3c4b5a";
    let uris: Vec<String> = (0..5)
        .map(|i| app.blob_uri(&format!("in/file{i}.csv")))
        .collect();
    let blobs: Vec<Value> = uris
        .iter()
        .enumerate()
        .map(|(i, u)| match i {
            0 => json!({ "blobUri": u, "rawDataSize": 1234, "sourceId": given_id }),
            1 => json!({ "blobUri": u, "rawDataSize": 0 }),
            2 => json!({ "blobUri": u, "rawDataSize": 5_000_000_000u64 }),
            _ => json!({ "blobUri": u }),
        })
        .collect();
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let reply = app.post_ingest(&request(blobs)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "content-type: {:?}",
        reply.headers.get("content-type")
    );
    let body = &reply.body;
    assert_eq!(body["blobCount"], 5, "{body}");
    assert_eq!(body["queued"], 5, "{body}");
    assert_eq!(body["failed"], 0, "{body}");
    assert!(
        body.get("error").is_none(),
        "no top-level error when all queued: {body}"
    );
    let results = body["blobs"].as_array().expect("blobs array");
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["status"], "queued", "{r}");
        assert_eq!(
            r["blobUri"],
            format!("{}?<redacted>", without_query(&uris[i])),
            "blob results are in request order with the SAS redacted"
        );
        assert!(is_guid(&r["sourceId"]), "{r}");
        assert!(r.get("error").is_none(), "{r}");
    }
    assert_eq!(results[0]["sourceId"], given_id);

    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 5, "one message per blob: {messages:#?}");
    let contexts = app.dm.issued_authorization_contexts();
    assert!(
        !contexts.is_empty(),
        "the DM issued an authorization context"
    );
    for (i, uri) in uris.iter().enumerate() {
        let m = &message_for(&messages, uri).body;
        assert_eq!(m["BlobPath"], *uri, "BlobPath is the full URI with its SAS");
        assert!(uri.contains("sig="), "test blob URIs carry a SAS");
        match i {
            0 => assert_eq!(m["RawDataSize"], 1234),
            2 => assert_eq!(m["RawDataSize"], 5_000_000_000u64),
            // 0 means unknown to Kusto (the SDKs omit it); a missing size is left out.
            1 => assert!(
                m.get("RawDataSize").is_none() || m["RawDataSize"] == 0,
                "RawDataSize 0: {m}"
            ),
            _ => assert!(
                m.get("RawDataSize").is_none(),
                "RawDataSize only when given: {m}"
            ),
        }
        assert_eq!(m["DatabaseName"], "testdb");
        assert_eq!(m["TableName"], "events");
        assert_eq!(m["RetainBlobOnSuccess"], true);
        assert_eq!(m["FlushImmediately"], false);
        assert_eq!(m["IgnoreSizeLimit"], false);
        assert_eq!(m["ReportLevel"], 0, "FailuresOnly by default");
        assert_eq!(m["ReportMethod"], 0, "Queue");
        let created = parse_rfc3339(
            m["SourceMessageCreationTime"]
                .as_str()
                .expect("creation time string"),
        );
        assert!(
            created >= before
                && created <= time::OffsetDateTime::now_utc() + time::Duration::seconds(5),
            "SourceMessageCreationTime is now: {created}"
        );
        assert!(is_guid(&m["Id"]), "{m}");
        assert_eq!(
            m["Id"], results[i]["sourceId"],
            "message Id = response sourceId"
        );
        assert!(
            m["ApplicationForTracing"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{m}"
        );
        assert!(
            m["ClientVersionForTracing"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{m}"
        );
        let authz = m["AdditionalProperties"]["authorizationContext"]
            .as_str()
            .expect("authorizationContext string");
        assert!(
            contexts.iter().any(|c| c == authz),
            "authorizationContext is the DM's"
        );
        assert_eq!(key_count(m, "authorizationContext"), 1);
        assert_eq!(m["AdditionalProperties"]["format"], "csv", "default format");
        assert!(mapping_reference(m).is_none());
        assert!(
            prop(m, "ingestionMappingType").is_none(),
            "no mapping type without a mapping: {m}"
        );
    }
    app.assert_no_secrets();
}

async fn logic_app_body_is_accepted_unchanged(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let a = app.blob_uri("employees/a.csv");
    let b = app.blob_uri("employees/b.csv");
    // The body the Logic App sends: per-blob additionalProperties with the Logic App's spelling.
    let body = json!({
        "database": "myingest",
        "table": "employees",
        "blobs": [
            { "blobUri": a, "rawDataSize": 100,
              "additionalProperties": { "format": "csv", "mappingReference": "employeeCsvMapping", "ignoreFirstRecord": "true" } },
            { "blobUri": b,
              "additionalProperties": { "format": "csv", "mappingReference": "employeeCsvMapping", "ignoreFirstRecord": "true" } }
        ]
    });
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["queued"], 2);
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 2);
    for uri in [&a, &b] {
        let m = &message_for(&messages, uri).body;
        assert_eq!(m["DatabaseName"], "myingest");
        assert_eq!(m["TableName"], "employees");
        assert_eq!(prop(m, "format"), Some(&json!("csv")));
        assert_eq!(
            mapping_reference(m),
            Some(&json!("employeeCsvMapping")),
            "{m}"
        );
        assert_eq!(prop(m, "ingestionMappingType"), Some(&json!("Csv")), "{m}");
        assert_eq!(
            prop(m, "ignoreFirstRecord"),
            Some(&json!("true")),
            "the string stays a string: {m}"
        );
        assert_eq!(key_count(m, "ignoreFirstRecord"), 1);
    }
    app.assert_no_secrets();
}

#[tokio::test]
async fn typed_request_fields_become_message_fields() {
    let app = TestApp::start().await;
    let uri = app.blob_uri("typed/a.json");
    let body = json!({
        "database": "db1",
        "table": "t1",
        "flushImmediately": true,
        "format": "json",
        "ingestionMappingReference": "jsonMap",
        "ignoreFirstRecord": true,
        "creationTime": "2017-02-13T11:09:36.7992775Z",
        "tags": ["source:api", "drop-by:x"],
        "ingestIfNotExists": ["2017-02-13"],
        "reportLevel": "failuresAndSuccesses",
        "reportMethod": "queue",
        "retainBlobOnSuccess": false,
        "additionalProperties": { "zipPattern": "*.json" },
        "blobs": [ { "blobUri": uri, "rawDataSize": 10 } ]
    });
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0].body;
    assert_eq!(m["FlushImmediately"], true);
    assert_eq!(m["RetainBlobOnSuccess"], false);
    assert_eq!(m["ReportLevel"], 2);
    assert_eq!(m["ReportMethod"], 0);
    assert_eq!(prop(m, "format"), Some(&json!("json")));
    assert_eq!(mapping_reference(m), Some(&json!("jsonMap")));
    assert_eq!(prop(m, "ingestionMappingType"), Some(&json!("Json")));
    let ifr = prop(m, "ignoreFirstRecord").expect("ignoreFirstRecord");
    assert!(ifr == &json!(true) || ifr == &json!("true"), "{ifr}");
    assert_eq!(
        prop(m, "creationTime"),
        Some(&json!("2017-02-13T11:09:36.7992775Z"))
    );
    // The DM parses these from strings holding a JSON array.
    let tags = prop(m, "tags")
        .and_then(Value::as_str)
        .expect("tags is a string");
    assert_eq!(
        serde_json::from_str::<Value>(tags).unwrap(),
        json!(["source:api", "drop-by:x"])
    );
    let iine = prop(m, "ingestIfNotExists")
        .and_then(Value::as_str)
        .expect("ingestIfNotExists is a string");
    assert_eq!(
        serde_json::from_str::<Value>(iine).unwrap(),
        json!(["2017-02-13"])
    );
    assert_eq!(prop(m, "zipPattern"), Some(&json!("*.json")));
    // Message-level fields are not duplicated into AdditionalProperties.
    for key in [
        "flushImmediately",
        "retainBlobOnSuccess",
        "reportLevel",
        "reportMethod",
        "database",
        "table",
        "blobs",
    ] {
        assert!(
            prop(m, key).is_none(),
            "{key} leaked into AdditionalProperties: {m}"
        );
    }
}

async fn precedence_is_blob_then_request_then_settings(protocol: Protocol) {
    let defaults = json!({
        "format": "psv",
        "zipPattern": "*.default",
        "tags": ["from-settings"],
        "settingsOnly": "s"
    });
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_DEFAULT_PROPERTIES", &defaults.to_string())
        .start()
        .await;
    let plain = app.blob_uri("p/plain.csv");
    let overridden = app.blob_uri("p/overridden.csv");
    let body = json!({
        "database": "db",
        "table": "t",
        "format": "tsv",
        "ingestionMappingReference": "requestMap",
        "additionalProperties": {
            "FORMAT": "scsv",
            "ZipPattern": "*.request",
            "requestOnly": "r"
        },
        "blobs": [
            { "blobUri": plain },
            { "blobUri": overridden,
              "additionalProperties": {
                  "Format": "json",
                  "zippattern": "*.blob",
                  "mappingReference": "blobMap",
                  "TAGS": ["from-blob"],
                  "blobOnly": "b"
              } }
        ]
    });
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 2);

    let m = &message_for(&messages, &plain).body;
    assert_eq!(
        prop(m, "format"),
        Some(&json!("tsv")),
        "typed field beats request additionalProperties: {m}"
    );
    assert_eq!(
        prop(m, "zipPattern"),
        Some(&json!("*.request")),
        "request beats settings: {m}"
    );
    let tags = prop(m, "tags")
        .and_then(Value::as_str)
        .expect("tags string");
    assert_eq!(
        serde_json::from_str::<Value>(tags).unwrap(),
        json!(["from-settings"])
    );
    assert_eq!(prop(m, "settingsOnly"), Some(&json!("s")));
    assert_eq!(prop(m, "requestOnly"), Some(&json!("r")));
    assert_eq!(mapping_reference(m), Some(&json!("requestMap")));
    assert_eq!(prop(m, "blobOnly"), None);

    let m = &message_for(&messages, &overridden).body;
    assert_eq!(
        prop(m, "format"),
        Some(&json!("json")),
        "blob beats request: {m}"
    );
    assert_eq!(prop(m, "zipPattern"), Some(&json!("*.blob")), "{m}");
    let tags = prop(m, "tags")
        .and_then(Value::as_str)
        .expect("tags string");
    assert_eq!(
        serde_json::from_str::<Value>(tags).unwrap(),
        json!(["from-blob"])
    );
    assert_eq!(
        mapping_reference(m),
        Some(&json!("blobMap")),
        "alias replaces the request's: {m}"
    );
    assert_eq!(prop(m, "ingestionMappingType"), Some(&json!("Json")), "{m}");
    assert_eq!(prop(m, "settingsOnly"), Some(&json!("s")));
    assert_eq!(prop(m, "requestOnly"), Some(&json!("r")));
    assert_eq!(prop(m, "blobOnly"), Some(&json!("b")));

    for msg in &messages {
        for key in ["format", "zipPattern", "tags"] {
            assert_eq!(
                key_count(&msg.body, key),
                1,
                "{key} appears once, whatever its case: {}",
                msg.body
            );
        }
    }
}

async fn callers_source_id_is_kept_and_others_get_new_guids(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let mine = "6F9619FF-8B86-4011-B42D-00C04FC964FF";
    let uris: Vec<String> = (0..3)
        .map(|i| app.blob_uri(&format!("ids/{i}.csv")))
        .collect();
    let body = request(vec![
        json!({ "blobUri": uris[0], "sourceId": mine }),
        json!({ "blobUri": uris[1] }),
        json!({ "blobUri": uris[2] }),
    ]);
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let results = reply.body["blobs"].as_array().expect("blobs").clone();
    let ids: Vec<String> = results
        .iter()
        .map(|r| {
            r["sourceId"]
                .as_str()
                .expect("sourceId")
                .to_ascii_lowercase()
        })
        .collect();
    assert_eq!(
        ids[0],
        mine.to_ascii_lowercase(),
        "the caller's GUID is kept"
    );
    assert!(ids.iter().all(|id| uuid::Uuid::try_parse(id).is_ok()));
    assert_ne!(ids[1], ids[2]);
    assert_ne!(ids[1], ids[0]);

    let messages = app.drain_messages().await;
    for (i, uri) in uris.iter().enumerate() {
        let m = &message_for(&messages, uri).body;
        assert_eq!(
            m["Id"].as_str().expect("Id").to_ascii_lowercase(),
            ids[i],
            "message Id equals the response's sourceId"
        );
    }

    // The same blob posted again without an id gets a fresh one.
    let again = app
        .post_ingest(&request(vec![json!({ "blobUri": uris[1] })]))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_ne!(
        again.body["blobs"][0]["sourceId"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase(),
        ids[1]
    );
}

async fn callers_authorization_context_is_replaced(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let uri = app.blob_uri("authz/a.csv");
    let body = json!({
        "database": "db", "table": "t",
        "additionalProperties": { "AuthorizationContext": "caller-request-context" },
        "blobs": [ { "blobUri": uri, "additionalProperties": { "authorizationContext": "caller-blob-context" } } ]
    });
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0].body;
    assert_eq!(key_count(m, "authorizationContext"), 1, "{m}");
    let authz = prop(m, "authorizationContext")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        app.dm
            .issued_authorization_contexts()
            .iter()
            .any(|c| c == authz),
        "the DM's context, not the caller's"
    );
    assert!(!m.to_string().contains("caller-"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// Validation: 400 / 413 naming the field, nothing queued.

async fn assert_rejected(
    app: &TestApp,
    body: &Value,
    status: StatusCode,
    code: &str,
    target: &str,
) {
    let reply = app.post_ingest(body).await;
    assert_eq!(reply.status, status, "body {body} → {}", reply.text);
    assert!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "errors are JSON: {:?}",
        reply.headers
    );
    assert_eq!(reply.error_code(), code, "body {body} → {}", reply.text);
    assert_eq!(reply.error_target(), target, "body {body} → {}", reply.text);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error.message: {}",
        reply.text
    );
}

async fn malformed_json_is_invalid_json(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let raws: [&[u8]; 4] = [
        b"{\"database\": \"db\", \"table\": ",
        b"not json at all",
        b"",
        b"{\"database\": \"db\"}}",
    ];
    for raw in raws {
        let reply = app.post_raw(raw.to_vec(), "application/json").await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{raw:?} → {}",
            reply.text
        );
        assert_eq!(
            reply.error_code(),
            "InvalidJson",
            "{raw:?} → {}",
            reply.text
        );
    }
    assert!(app.drain_messages().await.is_empty());
}

async fn missing_fields_are_named(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let uri = app.blob_uri("m/a.csv");
    let cases = [
        (
            json!({ "table": "t", "blobs": [{ "blobUri": uri }] }),
            "database",
        ),
        (
            json!({ "database": "d", "blobs": [{ "blobUri": uri }] }),
            "table",
        ),
        (json!({ "database": "d", "table": "t" }), "blobs"),
        (
            json!({ "database": "d", "table": "t", "blobs": [{ "rawDataSize": 1 }] }),
            "blobs[0].blobUri",
        ),
        (
            json!({ "database": "d", "table": "t", "blobs": [{ "blobUri": uri }, { "sourceId": "6F9619FF-8B86-4011-B42D-00C04FC964FF" }] }),
            "blobs[1].blobUri",
        ),
    ];
    for (body, target) in &cases {
        assert_rejected(&app, body, StatusCode::BAD_REQUEST, "MissingField", target).await;
    }
    assert!(app.drain_messages().await.is_empty());
}

async fn empty_and_wrong_typed_fields_are_named(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let uri = app.blob_uri("w/a.csv");
    let ok_blob = json!({ "blobUri": uri });
    let with = |patch: Value| {
        let mut body = request(vec![ok_blob.clone()]);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (with(json!({ "database": "" })), "database"),
        (with(json!({ "database": "   " })), "database"),
        (with(json!({ "database": 42 })), "database"),
        (with(json!({ "table": "" })), "table"),
        (with(json!({ "table": ["t"] })), "table"),
        (with(json!({ "blobs": [] })), "blobs"),
        (with(json!({ "blobs": "x" })), "blobs"),
        (with(json!({ "blobs": [ok_blob.clone(), 7] })), "blobs[1]"),
        (
            with(json!({ "flushImmediately": "maybe" })),
            "flushImmediately",
        ),
        (
            with(json!({ "retainBlobOnSuccess": 3 })),
            "retainBlobOnSuccess",
        ),
        (with(json!({ "format": "xlsx" })), "format"),
        (with(json!({ "reportLevel": "sometimes" })), "reportLevel"),
        (with(json!({ "reportMethod": "email" })), "reportMethod"),
        (with(json!({ "tags": [1, 2] })), "tags"),
        (with(json!({ "creationTime": "yesterday" })), "creationTime"),
        (
            with(json!({ "additionalProperties": "x" })),
            "additionalProperties",
        ),
        (
            with(json!({ "additionalProperties": { "format": "xlsx" } })),
            "additionalProperties.format",
        ),
        (
            with(json!({ "blobs": [{ "blobUri": uri, "rawDataSize": "big" }] })),
            "blobs[0].rawDataSize",
        ),
        (
            with(json!({ "blobs": [{ "blobUri": uri, "rawDataSize": -1 }] })),
            "blobs[0].rawDataSize",
        ),
        (
            with(json!({ "blobs": [{ "blobUri": 5 }] })),
            "blobs[0].blobUri",
        ),
        (
            with(json!({ "blobs": [{ "blobUri": "" }] })),
            "blobs[0].blobUri",
        ),
        (
            with(
                json!({ "blobs": [ok_blob.clone(), { "blobUri": uri, "additionalProperties": { "format": "xlsx" } }] }),
            ),
            "blobs[1].additionalProperties.format",
        ),
        (
            with(
                json!({ "blobs": [{ "blobUri": uri, "additionalProperties": { "flushImmediately": "perhaps" } }] }),
            ),
            "blobs[0].additionalProperties.flushImmediately",
        ),
        (
            with(json!({ "blobs": [{ "blobUri": uri, "additionalProperties": [1] }] })),
            "blobs[0].additionalProperties",
        ),
    ];
    for (body, target) in &cases {
        assert_rejected(&app, body, StatusCode::BAD_REQUEST, "InvalidField", target).await;
    }
    assert!(app.drain_messages().await.is_empty());
    app.assert_no_secrets();
}

async fn bad_blob_uris_are_named(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let good = app.blob_uri("u/good.csv");
    for bad in [
        "not a url",
        "ftp://acct.blob.core.windows.net/c/a.csv",
        "http://acct.blob.core.windows.net/c/a.csv?sv=2021&sig=SECRETSIGNATURE1",
        "https://acct.blob.core.windows.net/",
        "https://acct.blob.core.windows.net/container-only",
        " https://acct.blob.core.windows.net/c/a.csv",
        "https://user:pw@acct.blob.core.windows.net/c/a.csv",
        "/c/a.csv",
    ] {
        let body = request(vec![json!({ "blobUri": good }), json!({ "blobUri": bad })]);
        assert_rejected(
            &app,
            &body,
            StatusCode::BAD_REQUEST,
            "InvalidField",
            "blobs[1].blobUri",
        )
        .await;
    }
    assert!(app.drain_messages().await.is_empty());
    app.assert_no_secrets();
}

async fn bad_source_id_is_named(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let uri = app.blob_uri("s/a.csv");
    for bad in [json!("not-a-guid"), json!("1234"), json!(12), json!("")] {
        let body = request(vec![json!({ "blobUri": uri, "sourceId": bad })]);
        assert_rejected(
            &app,
            &body,
            StatusCode::BAD_REQUEST,
            "InvalidField",
            "blobs[0].sourceId",
        )
        .await;
    }
    assert!(app.drain_messages().await.is_empty());
}

async fn too_many_blobs_is_413(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_MAX_BLOBS", "3")
        .start()
        .await;
    let blobs: Vec<Value> = (0..4)
        .map(|i| json!({ "blobUri": app.blob_uri(&format!("many/{i}.csv")) }))
        .collect();
    assert_rejected(
        &app,
        &request(blobs.clone()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "TooManyBlobs",
        "blobs",
    )
    .await;
    assert!(app.drain_messages().await.is_empty());
    // The limit itself is allowed.
    let reply = app.post_ingest(&request(blobs[..3].to_vec())).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(app.drain_messages().await.len(), 3);
}

async fn too_large_a_body_is_413(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_MAX_BODY_BYTES", "4096")
        .start()
        .await;
    let small = request(vec![json!({ "blobUri": app.blob_uri("big/a.csv") })]);
    let mut large = small.clone();
    large["additionalProperties"] = json!({ "padding": "p".repeat(8192) });
    let reply = app.post_ingest(&large).await;
    reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "BodyTooLarge");
    assert!(app.drain_messages().await.is_empty());
    let reply = app.post_ingest(&small).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(app.drain_messages().await.len(), 1);
}

#[tokio::test]
async fn message_over_64_kib_fails_only_that_blob() {
    let app = TestApp::start().await;
    let huge = app.blob_uri("huge/a.csv");
    let fine = app.blob_uri("huge/b.csv");
    let body = request(vec![
        json!({ "blobUri": huge, "additionalProperties": { "bigProperty": "x".repeat(60 * 1024) } }),
        json!({ "blobUri": fine }),
    ]);
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status.as_u16(), 207, "{}", reply.text);
    assert_eq!(reply.body["blobCount"], 2);
    assert_eq!(reply.body["queued"], 1);
    assert_eq!(reply.body["failed"], 1);
    let results = reply.body["blobs"].as_array().unwrap();
    assert_eq!(results[0]["status"], "failed", "{}", results[0]);
    assert_eq!(
        results[0]["error"]["code"], "MessageTooLarge",
        "{}",
        results[0]
    );
    assert!(
        results[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(results[1]["status"], "queued");
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body["BlobPath"], fine);
    app.assert_no_secrets();
}

async fn a_wrong_method_is_405_naming_the_allowed_ones(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    for (path, allow) in [
        ("/api/ingest", "POST"),
        ("/api/ingest/db/table", "POST"),
        ("/BlobCreated", "POST"),
    ] {
        let reply = app.get(path).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{path}: {}",
            reply.text
        );
        assert_eq!(reply.headers["allow"], allow, "{path}");
        assert_eq!(reply.error_code(), "MethodNotAllowed", "{path}");
    }
    let reply = app.get("/api/nowhere").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
}

async fn each_request_logs_one_summary_line_under_its_invocation_id(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let invocation = "7d1b1f6e-3c55-4a5e-9a43-0f3f0a7f2b11";
    let reply = app
        .post_ingest_with(
            &request(vec![
                json!({ "blobUri": app.blob_uri("logged/a.csv") }),
                json!({ "blobUri": app.blob_uri("logged/b.csv") }),
            ]),
            &[("X-Azure-Functions-InvocationId", invocation)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let found = app
            .logs()
            .into_iter()
            .find(|l| l.contains("request done") && l.contains(invocation));
        match found {
            Some(line) => break line,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            None => panic!("no summary line for {invocation}:\n{}", app.log_text()),
        }
    };
    for field in [
        "route=ingest",
        "blobs=2",
        "queued=2",
        "failed=0",
        "unknown=0",
        "status=202",
        "elapsed_ms=",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    assert!(line.contains(&format!("dm={}", app.dm.url())), "{line}");
    // The id is the caller's header: escaped and clipped in the log.
    let forged = format!("x\tFAKE{}", "y".repeat(1000));
    app.post_ingest_with(
        &request(vec![json!({ "blobUri": app.blob_uri("logged/c.csv") })]),
        &[("X-Azure-Functions-InvocationId", forged.as_str())],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = app.log_text();
    assert!(logs.contains("x\\tFAKE"), "{logs}");
    assert!(!logs.contains(&"y".repeat(300)), "{logs}");
}

#[tokio::test]
async fn a_request_head_of_tens_of_kib_is_read() {
    let app = TestApp::start().await;
    let uri = app.blob_uri("head/a.csv");
    let body = request(vec![json!({ "blobUri": uri })]);
    // A connection reads into at most 64 KiB, and a head is always read when it fits: App Service
    // adds headers of a few KiB (X-MS-CLIENT-PRINCIPAL); 48 KiB of them are read as usual.
    let large = "p".repeat(48 * 1024);
    let reply = app.post_ingest_with(&body, &[("x-padding", &large)]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(app.drain_messages().await.len(), 1);
}
