//! Caller authorization: a function-key holder can ingest only into the allowed targets, from the
//! allowed storage, without credential suffixes unless allowed, and — behind App Service
//! Authentication — only what the caller's app roles grant. Every refusal is a 403 naming the rule,
//! given before the DM or a queue is asked anything. And idempotent requests.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::json;

// Every test runs against both protocols (`name::v1`, `name::v2`).
both_protocols!(
    targets_outside_the_allowlist_are_refused,
    blobs_from_other_storage_and_credential_suffixes_are_refused,
    app_roles_of_the_caller_decide_what_it_may_ingest,
    idempotent_requests_tag_each_blob_so_a_retry_is_ingested_once,
);

const RESOURCES: &str = ".get ingestion resources";
const IDENTITY: &str = ".get kusto identity token";

fn assert_refused_before_any_dm_call(app: &TestApp, reply: &Reply, code: &str, setting: &str) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    assert_eq!(reply.error_code(), code, "{}", reply.text);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(setting),
        "names the rule: {}",
        reply.text
    );
    assert_eq!(app.dm.command_count(RESOURCES), 0);
    assert_eq!(app.dm.command_count(IDENTITY), 0);
}

/// `host:port/account` of the Azurite blobs the tests use.
fn data_source(app: &TestApp) -> String {
    let uri = app.blob_uri("x.csv");
    let location = uri.split_once("://").map_or(uri.as_str(), |(_, r)| r);
    let mut parts = location.splitn(3, '/');
    format!(
        "{}/{}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    )
}

async fn targets_outside_the_allowlist_are_refused(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_ALLOWED_TARGETS", "testdb.events, sales.*")
        .start()
        .await;
    let mut body = request(vec![json!({ "blobUri": app.blob_uri("a.csv") })]);
    body["table"] = json!("secrets");
    let reply = app.post_ingest(&body).await;
    assert_refused_before_any_dm_call(&app, &reply, "TargetNotAllowed", "INGEST_ALLOWED_TARGETS");

    let reply = app
        .post_ingest(&request(vec![json!({ "blobUri": app.blob_uri("a.csv") })]))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
}

async fn blobs_from_other_storage_and_credential_suffixes_are_refused(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let allowed = data_source(&app);
    drop(app);
    let app = TestApp::builder()
        .protocol(protocol)
        .env("INGEST_ALLOWED_BLOB_SOURCES", &allowed)
        .start()
        .await;
    let reply = app
        .post_ingest(&request(vec![
            json!({ "blobUri": app.blob_uri("ok.csv") }),
            json!({ "blobUri": "https://elsewhere.blob.core.windows.net/c/a.csv?sig=x" }),
        ]))
        .await;
    assert_refused_before_any_dm_call(
        &app,
        &reply,
        "BlobSourceNotAllowed",
        "INGEST_ALLOWED_BLOB_SOURCES",
    );
    assert_eq!(reply.error_target(), "blobs[1].blobUri");

    // The cluster would read this one with its own identity: off once sources are limited.
    let plain = app.blob_uri("mi.csv");
    let suffixed = format!("{};managed_identity=system", without_query(&plain));
    let reply = app
        .post_ingest(&request(vec![json!({ "blobUri": suffixed })]))
        .await;
    assert_refused_before_any_dm_call(
        &app,
        &reply,
        "BlobCredentialNotAllowed",
        "INGEST_ALLOW_BLOB_CREDENTIALS",
    );
    app.assert_no_secrets();
}

fn principal(roles: &[&str]) -> String {
    let claims: Vec<_> = roles
        .iter()
        .map(|r| json!({"typ": "roles", "val": r}))
        .chain([json!({"typ": "name", "val": "etl-app"})])
        .collect();
    let json =
        json!({"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": claims});
    base64::engine::general_purpose::STANDARD.encode(json.to_string())
}

async fn app_roles_of_the_caller_decide_what_it_may_ingest(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env(
            "INGEST_CALLER_ROLES",
            r#"{"Ingest.Events": {"targets": ["testdb.events"]}, "Ingest.Sales": {"targets": ["sales.*"]}}"#,
        )
        .start()
        .await;
    let body = request(vec![json!({ "blobUri": app.blob_uri("a.csv") })]);

    let reply = app.post_ingest(&body).await;
    assert_refused_before_any_dm_call(
        &app,
        &reply,
        "CallerNotAuthenticated",
        "INGEST_CALLER_ROLES",
    );

    let sales = principal(&["Ingest.Sales"]);
    let reply = app
        .post_ingest_with(&body, &[("X-MS-CLIENT-PRINCIPAL", &sales)])
        .await;
    assert_refused_before_any_dm_call(&app, &reply, "CallerNotAllowed", "INGEST_CALLER_ROLES");

    let events = principal(&["Reader", "Ingest.Events"]);
    let reply = app
        .post_ingest_with(&body, &[("X-MS-CLIENT-PRINCIPAL", &events)])
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
}

async fn idempotent_requests_tag_each_blob_so_a_retry_is_ingested_once(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let uri = app.blob_uri("once.csv");
    let source_id = "0b6f5c3e-1f2a-4b3c-8d4e-5f6a7b8c9d0e";
    let mut body = request(vec![json!({ "blobUri": uri, "sourceId": source_id })]);
    body["idempotent"] = json!(true);
    body["tags"] = json!(["team:a"]);
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let messages = app.drain_messages().await;
    let message = &message_for(&messages, &uri).body;
    assert_eq!(
        prop(message, "tags"),
        Some(&json!(format!("[\"team:a\",\"ingest-by:{source_id}\"]")))
    );
    assert_eq!(
        prop(message, "ingestIfNotExists"),
        Some(&json!(format!("[\"{source_id}\"]")))
    );

    // Without a caller-chosen source id there is nothing to recognise a retry by.
    let mut body = request(vec![json!({ "blobUri": uri })]);
    body["idempotent"] = json!(true);
    let reply = app.post_ingest(&body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!(reply.error_target(), "blobs[0].sourceId");
}
