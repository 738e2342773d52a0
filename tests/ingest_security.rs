//! Where the app's token may go, what never leaks (SAS signatures, tokens), and start-up
//! refusing bad settings.

mod common;

use common::*;
use kusto_dev::BreakMode;
use reqwest::StatusCode;
use serde_json::json;

// These run against both protocols (`name::v1`, `name::v2`); the others check v1 failures.
both_protocols!(
    non_allowlisted_dm_is_403_and_no_token_is_requested,
    default_dm_named_explicitly_is_allowed,
    token_is_requested_for_the_kusto_scope_with_the_configured_identity,
    no_sas_signature_or_token_in_responses_or_logs,
);

/// The leak detector itself must find what it looks for.
#[test]
fn secret_scanner_finds_sas_signatures() {
    assert_eq!(
        sas_signatures("GET http://h/a/b.csv?sv=1&sig=AbC%2B&se=2 done"),
        vec!["AbC%2B".to_owned()]
    );
    assert_eq!(
        sas_signatures(r#"{"u":"https://h/c/b?SIG=x1"}"#),
        vec!["x1".to_owned()]
    );
    assert!(sas_signatures("https://h/c/b.csv?<redacted>").is_empty());
    assert!(sas_signatures("sig=<redacted> and nosig=abc and design=x").is_empty());
}

async fn non_allowlisted_dm_is_403_and_no_token_is_requested(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .env(
            "KUSTO_ALLOWED_INGEST_URIS",
            "https://ingest-other.westeurope.kusto.windows.net",
        )
        .start()
        .await;
    let uri = app.blob_uri("allow/a.csv");
    for dm in [
        "https://ingest-evil.westeurope.kusto.windows.net",
        "https://ingest-other.westeurope.kusto.windows.net.evil.example.com",
        "https://ingest-other.westeurope.kusto.windows.net@evil.example.com",
        "https://evil.example.com/?x=https://ingest-other.westeurope.kusto.windows.net",
        "http://ingest-other.westeurope.kusto.windows.net",
        "http://127.0.0.1:9",
    ] {
        let mut body = request(vec![json!({ "blobUri": uri })]);
        body["dataManagementUri"] = json!(dm);
        let reply = app.post_ingest(&body).await;
        assert!(
            reply.status == StatusCode::FORBIDDEN
                || (reply.status == StatusCode::BAD_REQUEST
                    && reply.error_code() == "InvalidField"),
            "{dm} → {} {}",
            reply.status,
            reply.text
        );
        if reply.status == StatusCode::FORBIDDEN {
            assert_eq!(
                reply.error_code(),
                "DataManagementUriNotAllowed",
                "{dm} → {}",
                reply.text
            );
        }
        assert_eq!(
            reply.error_target(),
            "dataManagementUri",
            "{dm} → {}",
            reply.text
        );
    }
    // The plainly foreign one must be a 403 (it is a valid URL, just not ours).
    let mut body = request(vec![json!({ "blobUri": uri })]);
    body["dataManagementUri"] = json!("https://ingest-evil.westeurope.kusto.windows.net");
    assert_eq!(app.post_ingest(&body).await.status, StatusCode::FORBIDDEN);

    assert!(
        app.dm.token_requests().is_empty(),
        "no token may be requested for a refused DM: {:#?}",
        app.dm.token_requests()
    );
    assert!(
        app.dm.mgmt_requests().is_empty(),
        "{:#?}",
        app.dm.mgmt_requests()
    );
    assert!(app.drain_messages().await.is_empty());
    app.assert_no_secrets();
}

async fn default_dm_named_explicitly_is_allowed(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let uri = app.blob_uri("explicit/a.csv");
    // Same endpoint, different spelling: trailing slash, upper-case host.
    let spelled = format!("{}/", app.dm.url()).replace("http://", "HTTP://");
    for dm in [app.dm.url().to_owned(), spelled] {
        let mut body = request(vec![json!({ "blobUri": uri })]);
        body["dataManagementUri"] = json!(dm);
        let reply = app.post_ingest(&body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{dm} → {}", reply.text);
    }
    assert_eq!(app.drain_messages().await.len(), 2);
}

async fn token_is_requested_for_the_kusto_scope_with_the_configured_identity(protocol: Protocol) {
    let client_id = "7d9e2c1a-3b4f-4a5e-8c6d-9e0f1a2b3c4d";
    let app = TestApp::builder()
        .protocol(protocol)
        .env("AZURE_CLIENT_ID", client_id)
        .start()
        .await;
    let reply = app
        .post_ingest(&request(vec![
            json!({ "blobUri": app.blob_uri("tok/a.csv") }),
        ]))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let tokens = app.dm.token_requests();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(t.status, 200, "{t:?}");
        assert!(t.identity_header_ok, "{t:?}");
        assert_eq!(
            t.resource.as_deref().map(|r| r.trim_end_matches('/')),
            Some("https://kusto.kusto.windows.net"),
            "{t:?}"
        );
        assert_eq!(
            t.client_id.as_deref(),
            Some(client_id),
            "user-assigned identity: {t:?}"
        );
    }
    for r in app.dm.mgmt_requests() {
        assert!(r.authorization_present, "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
    }
    app.assert_no_secrets();
}

async fn no_sas_signature_or_token_in_responses_or_logs(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let good = app.blob_uri("secret/good.csv");
    assert!(
        !sas_signatures(&good).is_empty(),
        "test URIs carry a SAS signature"
    );

    // Success.
    let reply = app
        .post_ingest(&request(vec![json!({ "blobUri": good, "rawDataSize": 1 })]))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    // Validation errors about a blob whose URI carries a SAS.
    let reply = app
        .post_ingest(&request(vec![
            json!({ "blobUri": good, "rawDataSize": "x" }),
        ]))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let reply = app
        .post_ingest(&request(vec![json!({
            "blobUri": "http://acct.blob.core.windows.net/c/a.csv?sv=2021-08-06&sig=LEAKEDSIGNATURE%3D"
        })]))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert!(!reply.text.contains("LEAKEDSIGNATURE"), "{}", reply.text);
    let reply = app
        .post_ingest(&request(vec![json!({
            "blobUri": good, "sourceId": "nope"
        })]))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    // A per-blob failure next to a success.
    let reply = app
        .post_ingest(&request(vec![
            json!({ "blobUri": app.blob_uri("secret/huge.csv"),
                    "additionalProperties": { "big": "y".repeat(70 * 1024) } }),
            json!({ "blobUri": app.blob_uri("secret/ok.csv") }),
        ]))
        .await;
    assert_eq!(reply.status.as_u16(), 207, "{}", reply.text);

    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 2);
    assert!(
        !app.log_text().is_empty(),
        "the handler logs something at debug level"
    );
    app.assert_no_secrets();
    for text in app.logs() {
        assert!(
            !text.contains("LEAKEDSIGNATURE"),
            "log leaks a signature: {text}"
        );
    }
}

#[tokio::test]
async fn no_secrets_leak_when_queues_and_dm_fail() {
    // Queue posts fail with 403 (bad signature) and 503 (busy); the error paths must not echo
    // the queue SAS the DM handed out.
    let app = TestApp::builder()
        .faults(|f| {
            f.break_account("ingestacct1", BreakMode::BadSignature);
            f.break_account("ingestacct2", BreakMode::ServerBusy);
        })
        .start()
        .await;
    let reply = app
        .post_ingest(&request(vec![
            json!({ "blobUri": app.blob_uri("fail/a.csv") }),
        ]))
        .await;
    assert!(!reply.status.is_success(), "{}", reply.text);
    assert_eq!(reply.body["failed"], 1, "{}", reply.text);
    assert!(
        app.log_text().contains("ingestacct1") || app.log_text().contains("ingestacct2"),
        "the queue failures are logged (so this test checks something)"
    );
    app.assert_no_secrets();
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let dm = "https://ingest-x.westeurope.kusto.windows.net";
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[], "KUSTO_INGEST_URI"),
        (&[("KUSTO_INGEST_URI", "not a url")], "KUSTO_INGEST_URI"),
        (
            &[("KUSTO_INGEST_URI", "http://ingest-x.kusto.windows.net")],
            "KUSTO_INGEST_URI",
        ),
        (
            &[("KUSTO_INGEST_URI", dm), ("INGEST_MAX_BLOBS", "lots")],
            "INGEST_MAX_BLOBS",
        ),
        (
            &[("KUSTO_INGEST_URI", dm), ("INGEST_MAX_BODY_BYTES", "-5")],
            "INGEST_MAX_BODY_BYTES",
        ),
        (
            &[
                ("KUSTO_INGEST_URI", dm),
                ("INGEST_DEFAULT_PROPERTIES", "[1, 2]"),
            ],
            "INGEST_DEFAULT_PROPERTIES",
        ),
        (
            &[
                ("KUSTO_INGEST_URI", dm),
                ("KUSTO_ALLOWED_INGEST_URIS", "http://evil.example.com"),
            ],
            "KUSTO_ALLOWED_INGEST_URIS",
        ),
    ];
    for (env, name) in cases {
        let (status, output) = run_to_exit(env);
        assert!(
            !status.success(),
            "{env:?} must stop start-up; output:\n{output}"
        );
        assert!(
            output.contains(name),
            "{env:?}: the message names {name}; output:\n{output}"
        );
    }
}
