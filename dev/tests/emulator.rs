//! End-to-end tests of the DM emulator and the Azurite helpers against a real Azurite.

use std::time::{Duration, Instant};

use base64::Engine as _;
use kusto_dev::dm::tables::{KustoErrorBody, PADDING_RESOURCE_TYPE, V1Response};
use kusto_dev::{Azurite, BreakMode, DmEmulator, EmulatorConfig, FakeStorageCounts};
use serde_json::json;

const KUSTO: &str = "https://kusto.kusto.windows.net";

async fn emulator() -> DmEmulator {
    DmEmulator::start(Azurite::shared(), EmulatorConfig::default())
        .await
        .expect("emulator starts")
}

/// Gets a token exactly the way azure_identity's App Service credential does.
async fn token(emu: &DmEmulator, resource: &str) -> String {
    let mut url = url::Url::parse(emu.identity_endpoint()).unwrap();
    url.query_pairs_mut()
        .append_pair("api-version", "2019-08-01")
        .append_pair("resource", resource);
    let rsp = reqwest::Client::new()
        .get(url)
        .header("metadata", "true")
        .header("x-identity-header", emu.identity_header())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let v: serde_json::Value = rsp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

async fn mgmt(
    emu: &DmEmulator,
    bearer: Option<&str>,
    body: serde_json::Value,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/rest/mgmt", emu.url()))
        .header("accept", "application/json")
        .header("x-ms-client-request-id", "KPC.execute;test-1")
        .json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

fn get_resources() -> serde_json::Value {
    json!({"db": "NetDefaultDB", "csl": ".get ingestion resources"})
}

async fn put_message(url_with_sas: &str, text: &str) -> (u16, String) {
    try_put_message(url_with_sas, text, Duration::from_secs(30))
        .await
        .unwrap()
}

/// Put Message on a fresh connection with a client timeout; transport errors are returned.
async fn try_put_message(
    url_with_sas: &str,
    text: &str,
    timeout: Duration,
) -> reqwest::Result<(u16, String)> {
    let (base, sas) = url_with_sas.split_once('?').unwrap();
    let rsp = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .post(format!("{base}/messages?{sas}"))
        .header("content-type", "application/xml")
        .header("x-ms-version", "2025-07-05")
        .body(format!(
            "<?xml version='1.0' encoding='utf-8'?>\n<QueueMessage><MessageText>{text}</MessageText></QueueMessage>"
        ))
        .send()
        .await?;
    let status = rsp.status().as_u16();
    Ok((status, rsp.text().await?))
}

/// The ready-for-aggregation queue URLs of `account` among `.get ingestion resources` rows.
fn queue_urls(rows: &[(String, String)], account: &str) -> Vec<String> {
    rows.iter()
        .filter(|(k, u)| {
            k == "SecuredReadyForAggregationQueue" && u.contains(&format!("/{account}/"))
        })
        .map(|(_, u)| u.clone())
        .collect()
}

/// `(account, queue)` of a path-style queue URL.
fn account_and_queue(url: &str) -> (String, String) {
    let url = url::Url::parse(url).unwrap();
    let segments: Vec<&str> = url.path_segments().unwrap().collect();
    (segments[0].to_string(), segments[1].to_string())
}

async fn resources(emu: &DmEmulator, tok: &str) -> Vec<(String, String)> {
    let rsp = mgmt(emu, Some(tok), get_resources()).await;
    assert_eq!(rsp.status(), 200);
    let v: V1Response = rsp.json().await.unwrap();
    v.tables[0]
        .rows
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn azurite_sas_is_accepted_and_tampering_is_rejected() {
    let az = Azurite::shared();
    let acct = "ingestacct1";
    let queue = format!("sas{}", uuid::Uuid::new_v4().simple());
    az.create_queue(acct, &queue).await.unwrap();
    let url = az.queue_sas_url(acct, &queue, "a", Duration::from_secs(600));
    assert!(url.starts_with(&format!("{}/{queue}?", az.queue_endpoint(acct))));
    assert_eq!(put_message(&url, "aGVsbG8=").await.0, 201);
    assert_eq!(put_message(&url, "d29ybGQ=").await.0, 201);

    let tampered = format!(
        "{}?{}",
        url.split_once('?').unwrap().0,
        kusto_dev::sas::tamper_signature(url.split_once('?').unwrap().1)
    );
    let (status, body) = put_message(&tampered, "eA==").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AuthenticationFailed"), "{body}");

    // `a` does not allow reading.
    let peek = reqwest::get(format!(
        "{}/{queue}/messages?peekonly=true&{}",
        az.queue_endpoint(acct),
        url.split_once('?').unwrap().1
    ))
    .await
    .unwrap();
    assert_eq!(peek.status(), 403);

    assert_eq!(az.peek_messages(acct, &queue).await.unwrap().len(), 2);
    let texts = az.receive_all(acct, &queue).await.unwrap();
    assert_eq!(texts, ["aGVsbG8=", "d29ybGQ="]);
    assert!(az.receive_all(acct, &queue).await.unwrap().is_empty());
}

#[tokio::test]
async fn receive_all_drains_more_than_32_messages() {
    let az = Azurite::shared();
    let queue = format!("many{}", uuid::Uuid::new_v4().simple());
    az.create_queue("ingestacct2", &queue).await.unwrap();
    for i in 0..40 {
        az.put_message("ingestacct2", &queue, &format!("m{i}"))
            .await
            .unwrap();
    }
    let texts = az.receive_all("ingestacct2", &queue).await.unwrap();
    assert_eq!(texts.len(), 40);
}

#[tokio::test]
async fn blob_and_table_helpers_and_sas() {
    let az = Azurite::shared();
    let container = format!("c{}", uuid::Uuid::new_v4().simple());
    az.create_container("datalake1", &container).await.unwrap();
    az.upload_blob(
        "datalake1",
        &container,
        "dir/a b.csv",
        b"1,2\n".to_vec(),
        &[("kustoTable", "T1")],
    )
    .await
    .unwrap();
    assert_eq!(
        az.download_blob("datalake1", &container, "dir/a b.csv")
            .await
            .unwrap(),
        b"1,2\n"
    );
    assert_eq!(
        az.list_blobs("datalake1", &container).await.unwrap(),
        ["dir/a b.csv"]
    );

    // Blob SAS (sr=b, read).
    let url = az.blob_sas_url(
        "datalake1",
        &container,
        "dir/a b.csv",
        "r",
        Duration::from_secs(60),
    );
    let rsp = reqwest::get(&url).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers()
            .get("x-ms-meta-kustotable")
            .map(|v| v.to_str().unwrap()),
        Some("T1")
    );

    // Container SAS (sr=c, rw): upload a blob through it.
    let c_url = az.container_sas_url("datalake1", &container, "rw", Duration::from_secs(60));
    let (base, sas) = c_url.split_once('?').unwrap();
    let rsp = reqwest::Client::new()
        .put(format!("{base}/up.json?{sas}"))
        .header("x-ms-blob-type", "BlockBlob")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 201, "{}", rsp.text().await.unwrap());
    let bad = format!("{base}/up2.json?{}", kusto_dev::sas::tamper_signature(sas));
    let rsp = reqwest::Client::new()
        .put(bad)
        .header("x-ms-blob-type", "BlockBlob")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 403);

    // Table + table SAS (insert an entity).
    let table = format!("t{}", uuid::Uuid::new_v4().simple());
    az.create_table("ingestacct1", &table).await.unwrap();
    let t_url = az.table_sas_url("ingestacct1", &table, "raud", Duration::from_secs(60));
    let (base, sas) = t_url.split_once('?').unwrap();
    let rsp = reqwest::Client::new()
        .post(format!("{base}?{sas}"))
        .header("accept", "application/json;odata=nometadata")
        .header("content-type", "application/json")
        .body(json!({"PartitionKey": "p", "RowKey": "r", "Status": "Pending"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 201, "{}", rsp.text().await.unwrap());
    let rows = az.query_entities("ingestacct1", &table).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["Status"], "Pending");
}

#[tokio::test]
async fn ingestion_resources_v1_table_shape() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    let rsp = mgmt(&emu, Some(&tok), get_resources()).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(rsp.headers().contains_key("x-ms-activity-id"));
    assert_eq!(
        rsp.headers()["x-ms-client-request-id"],
        "KPC.execute;test-1"
    );
    let text = rsp.text().await.unwrap();
    assert!(text.starts_with(r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"ResourceTypeName","DataType":"String","ColumnType":"string"},{"ColumnName":"StorageRoot","DataType":"String","ColumnType":"string"}],"Rows":[["#), "{text}");
    let v: V1Response = serde_json::from_str(&text).unwrap();
    assert_eq!(v.tables.len(), 1);
    let t = &v.tables[0];
    assert_eq!(t.table_name, "Table_0");
    let count = |kind: &str| t.rows.iter().filter(|r| r[0] == kind).count();
    assert_eq!(count("SecuredReadyForAggregationQueue"), 4);
    assert_eq!(count("FailedIngestionsQueue"), 1);
    assert_eq!(count("SuccessfulIngestionsQueue"), 1);
    assert_eq!(count("TempStorage"), 2);
    assert_eq!(count("IngestionsStatusTable"), 1);

    let az = Azurite::shared();
    let mut accounts = std::collections::BTreeSet::new();
    for rec in t.records() {
        let url = &rec[1].1;
        match rec[0].1.as_str() {
            "SecuredReadyForAggregationQueue" => {
                assert!(url.contains("sp=a&") || url.ends_with("sp=a"), "{url}");
                assert!(url.contains("sv=2021-08-06"));
                let account = url::Url::parse(url)
                    .unwrap()
                    .path_segments()
                    .unwrap()
                    .next()
                    .unwrap()
                    .to_string();
                assert!(url.starts_with(&az.queue_endpoint(&account)));
                accounts.insert(account);
            }
            "TempStorage" => assert!(url.contains("sr=c") && url.contains("sp=rw"), "{url}"),
            // An account SAS for the table service: Azurite refuses a table SAS on `$batch`
            // (docs/wire-facts.md, "Entity-group transactions with a SAS").
            "IngestionsStatusTable" => assert!(
                url.contains("/ingestionsstatus")
                    && url.contains("ss=t")
                    && url.contains("sp=raud"),
                "{url}"
            ),
            _ => {}
        }
    }
    assert_eq!(accounts.len(), 2, "queues spread over two accounts");

    // `.show ingestion resources` (Java v1) is accepted too; counts are per command text.
    let rsp = mgmt(
        &emu,
        Some(&tok),
        json!({"csl": "  .SHOW ingestion   resources "}),
    )
    .await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(emu.command_count(".get ingestion resources"), 1);
    assert_eq!(emu.command_count(".show ingestion resources"), 1);
    let log = emu.mgmt_requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].db.as_deref(), Some("NetDefaultDB"));
    assert_eq!(
        log[0].client_request_id.as_deref(),
        Some("KPC.execute;test-1")
    );
    assert!(log[0].authorization_present);
    assert_eq!(log[0].header("authorization"), Some("<redacted>"));
    assert!(log[0].header_names().contains(&"x-ms-client-request-id"));
}

#[tokio::test]
async fn issued_queue_sas_works_against_azurite_and_faults_break_it() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    let rows = resources(&emu, &tok).await;
    let queues: Vec<&String> = rows
        .iter()
        .filter(|(k, _)| k == "SecuredReadyForAggregationQueue")
        .map(|(_, u)| u)
        .collect();
    for q in &queues {
        let (status, body) = put_message(q, "eyJhIjoxfQ==").await;
        assert_eq!(status, 201, "{q}: {body}");
        assert!(body.contains("<QueueMessagesList>"));
    }
    let msgs = emu.receive_ingestion_messages().await.unwrap();
    assert_eq!(msgs.len(), queues.len());
    assert_eq!(msgs[0].json, Some(json!({"a": 1})));

    let faults = emu.faults();
    faults.break_account("ingestacct1", BreakMode::BadSignature);
    faults.break_account("ingestacct2", BreakMode::ServerBusy);
    let rows = resources(&emu, &tok).await;
    for (kind, url) in rows
        .iter()
        .filter(|(k, _)| k == "SecuredReadyForAggregationQueue")
    {
        let (status, body) = put_message(url, "eA==").await;
        if url.contains("/ingestacct1/") && !url.starts_with(emu.fake_storage_url()) {
            assert_eq!(status, 403, "{kind} {url}: {body}");
            assert!(body.contains("AuthenticationFailed"), "{body}");
        } else {
            assert!(url.starts_with(emu.fake_storage_url()), "{url}");
            assert!(url.contains("/ingestacct2/"), "{url}");
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("<Code>ServerBusy</Code>"), "{body}");
        }
    }
    assert_eq!(emu.server_busy_count(), 2);
    faults.heal_account("ingestacct1");
    faults.heal_account("ingestacct2");
    let rows = resources(&emu, &tok).await;
    for (_, url) in rows
        .iter()
        .filter(|(k, _)| k == "SecuredReadyForAggregationQueue")
    {
        assert_eq!(put_message(url, "eA==").await.0, 201);
    }
}

#[tokio::test]
async fn short_sas_lifetime_expires() {
    let emu = emulator().await;
    emu.faults().set_sas_lifetime(Duration::from_secs(2));
    let tok = token(&emu, KUSTO).await;
    let rows = resources(&emu, &tok).await;
    let q = &rows[0].1;
    assert_eq!(put_message(q, "eA==").await.0, 201);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, body) = put_message(q, "eA==").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AuthenticationFailed"), "{body}");
}

#[tokio::test]
async fn auth_is_enforced() {
    let emu = emulator().await;
    let expect_401 = |rsp: reqwest::Response| async move {
        assert_eq!(rsp.status(), 401);
        let e: KustoErrorBody = rsp.json().await.unwrap();
        assert_eq!(e.error.code, "Unauthorized");
        assert!(e.error.permanent);
        e.error.at_message
    };
    expect_401(mgmt(&emu, None, get_resources()).await).await;
    expect_401(mgmt(&emu, Some("not-a-token"), get_resources()).await).await;
    let wrong = token(&emu, "https://storage.azure.com").await;
    let msg = expect_401(mgmt(&emu, Some(&wrong), get_resources()).await).await;
    assert!(msg.contains("audience"), "{msg}");

    // Expired token.
    emu.faults().set_token_lifetime(Duration::from_millis(300));
    let short = token(&emu, "https://api.kusto.windows.net/").await;
    assert_eq!(
        mgmt(&emu, Some(&short), get_resources()).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let msg = expect_401(mgmt(&emu, Some(&short), get_resources()).await).await;
    assert!(msg.contains("expired"), "{msg}");

    // Own URL and help.kusto are accepted audiences.
    emu.faults().set_token_lifetime(Duration::from_secs(60));
    for aud in [
        emu.url().to_string(),
        "https://help.kusto.windows.net".into(),
    ] {
        let t = token(&emu, &aud).await;
        assert_eq!(mgmt(&emu, Some(&t), get_resources()).await.status(), 200);
    }
    assert_eq!(emu.command_count(".get ingestion resources"), 3);
    assert_eq!(emu.mgmt_requests().len(), 7);
    assert!(!emu.mgmt_requests()[0].authorization_present);
}

#[tokio::test]
async fn unknown_command_and_bad_body_are_400() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    let rsp = mgmt(&emu, Some(&tok), json!({"csl": ".show tables"})).await;
    assert_eq!(rsp.status(), 400);
    let e: KustoErrorBody = rsp.json().await.unwrap();
    assert_eq!(e.error.code, "BadRequest_SyntaxError");
    assert_eq!(e.error.type_, "Kusto.Data.Exceptions.SyntaxException");
    assert!(e.error.at_message.contains(".show tables"));

    let rsp = reqwest::Client::new()
        .post(format!("{}/v1/rest/mgmt", emu.url()))
        .bearer_auth(&tok)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 400);
    let e: KustoErrorBody = rsp.json().await.unwrap();
    assert_eq!(e.error.code, "BadRequest");
    assert_eq!(emu.command_count(".show tables"), 1);
}

#[tokio::test]
async fn identity_token_command() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    let rsp = mgmt(
        &emu,
        Some(&tok),
        json!({"db": "NetDefaultDB", "csl": ".get kusto identity token"}),
    )
    .await;
    assert_eq!(rsp.status(), 200);
    let v: V1Response = rsp.json().await.unwrap();
    assert_eq!(v.tables.len(), 1);
    assert_eq!(v.tables[0].columns.len(), 1);
    assert_eq!(v.tables[0].columns[0].column_name, "AuthorizationContext");
    assert_eq!(v.tables[0].rows.len(), 1);
    let ctx = v.tables[0].rows[0][0].as_str().unwrap();
    assert!(ctx.starts_with("emu-authz-"));
    assert_eq!(emu.issued_authorization_contexts(), [ctx]);
}

#[tokio::test]
async fn injected_statuses_then_real_answer() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    emu.faults()
        .push_statuses(&[(429, Some(7)), (503, None), (500, None)]);
    let r = mgmt(&emu, Some(&tok), get_resources()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let e: KustoErrorBody = r.json().await.unwrap();
    assert_eq!(
        e.error.type_,
        "Kusto.DataNode.Exceptions.ControlCommandThrottledException"
    );
    assert!(!e.error.permanent);
    let r = mgmt(&emu, Some(&tok), get_resources()).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());
    let e: KustoErrorBody = r.json().await.unwrap();
    assert!(!e.error.permanent);
    assert_eq!(mgmt(&emu, Some(&tok), get_resources()).await.status(), 500);
    assert_eq!(mgmt(&emu, Some(&tok), get_resources()).await.status(), 200);
    assert_eq!(emu.command_count(".get ingestion resources"), 4);
    let statuses: Vec<u16> = emu.mgmt_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 503, 500, 200]);

    emu.faults().set_down(true);
    assert_eq!(mgmt(&emu, Some(&tok), get_resources()).await.status(), 503);
    emu.faults().set_down(false);
    assert_eq!(emu.command_count(".get ingestion resources"), 4);

    emu.faults().set_delay(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    assert_eq!(mgmt(&emu, Some(&tok), get_resources()).await.status(), 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn token_endpoint_protocol() {
    let emu = emulator().await;
    let client = reqwest::Client::new();
    let url = format!(
        "{}?api-version=2019-08-01&resource=https%3A%2F%2Fapi.kusto.windows.net&client_id=abc",
        emu.identity_endpoint()
    );
    let rsp = client
        .get(&url)
        .header("metadata", "true")
        .header("X-IDENTITY-HEADER", emu.identity_header())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let v: serde_json::Value = rsp.json().await.unwrap();
    assert!(
        v["access_token"]
            .as_str()
            .unwrap()
            .starts_with("emu-token-")
    );
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["resource"], "https://api.kusto.windows.net");
    let exp: i64 = v["expires_on"]
        .as_str()
        .expect("expires_on is a string")
        .parse()
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((exp - now - 3600).abs() <= 2, "{exp} vs {now}");

    // Wrong secret, missing resource, missing api-version → 400 with error JSON.
    for (u, secret) in [
        (url.clone(), "wrong"),
        (
            format!("{}?api-version=2019-08-01", emu.identity_endpoint()),
            emu.identity_header(),
        ),
        (
            format!("{}?resource=x", emu.identity_endpoint()),
            emu.identity_header(),
        ),
    ] {
        let rsp = client
            .get(&u)
            .header("X-IDENTITY-HEADER", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 400, "{u}");
        let v: serde_json::Value = rsp.json().await.unwrap();
        assert!(v["error"].is_string());
    }
    emu.faults().fail_token_endpoint(Some(500));
    let rsp = client
        .get(&url)
        .header("X-IDENTITY-HEADER", emu.identity_header())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 500);
    emu.faults().fail_token_endpoint(None);

    let log = emu.token_requests();
    assert_eq!(log.len(), 5);
    assert_eq!(
        log[0].resource.as_deref(),
        Some("https://api.kusto.windows.net")
    );
    assert_eq!(log[0].client_id.as_deref(), Some("abc"));
    assert!(log[0].metadata_header && log[0].identity_header_ok);
    assert!(!log[1].identity_header_ok);
}

#[tokio::test]
async fn stop_and_restart_dm() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(format!("{}/v1/rest/mgmt", emu.url()))
            .bearer_auth(&tok)
            .json(&get_resources())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    emu.stop_dm().unwrap();
    assert!(!emu.faults().dm_running());
    // A pooled keep-alive connection may fail mid-request (closed by the stop);
    // a fresh connection is refused.
    assert!(send().await.is_err());
    let err = reqwest::Client::new()
        .post(format!("{}/v1/rest/mgmt", emu.url()))
        .bearer_auth(&tok)
        .json(&get_resources())
        .send()
        .await
        .expect_err("DM is stopped");
    assert!(err.is_connect(), "{err:?}");
    // Token endpoint stays up.
    token(&emu, KUSTO).await;
    emu.start_dm().unwrap();
    assert_eq!(send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn null_queue_counts_messages() {
    let emu = DmEmulator::start(
        Azurite::shared(),
        EmulatorConfig {
            null_queue: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tok = token(&emu, KUSTO).await;
    let rows = resources(&emu, &tok).await;
    for (_, url) in rows
        .iter()
        .filter(|(k, _)| k == "SecuredReadyForAggregationQueue")
    {
        assert!(url.starts_with(emu.fake_storage_url()), "{url}");
        let (status, body) = put_message(url, "eA==").await;
        assert_eq!(status, 201);
        assert!(body.contains("<QueueMessagesList><QueueMessage><MessageId>"));
    }
    // Explicit /null/ path, several requests on one keep-alive connection.
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let rsp = client
            .post(format!("{}/null/a/q/messages", emu.fake_storage_url()))
            .body("<QueueMessage><MessageText>x</MessageText></QueueMessage>")
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 201);
        assert!(rsp.text().await.unwrap().contains("<MessageId>"));
    }
    assert_eq!(emu.null_queue_count(), 7);
}

#[tokio::test]
async fn control_api() {
    let emu = emulator().await;
    let client = reqwest::Client::new();
    let ctl = emu.control_url();
    let rsp = client
        .post(format!("{ctl}/faults"))
        .json(&json!({"push_statuses": [[429, 3]], "break_account": {"account": "ingestacct2", "mode": "ServerBusy"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(emu.faults().pending_statuses(), 1);
    assert_eq!(
        emu.faults().broken("ingestacct2"),
        Some(BreakMode::ServerBusy)
    );

    let rsp = client
        .post(format!("{ctl}/faults"))
        .json(&json!({"dm": "stop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(!emu.faults().dm_running());
    let rsp = client
        .post(format!("{ctl}/faults"))
        .json(&json!({"dm": "start", "reset": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(emu.faults().dm_running());
    assert_eq!(emu.faults().pending_statuses(), 0);

    let tok = token(&emu, KUSTO).await;
    assert_eq!(mgmt(&emu, Some(&tok), get_resources()).await.status(), 200);
    let v: serde_json::Value = client
        .get(format!("{ctl}/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["mgmt"][0]["command"], ".get ingestion resources");
    assert_eq!(v["token"].as_array().unwrap().len(), 1);
    // The control API is served on the DM listener too.
    let v: serde_json::Value = client
        .get(format!("{}/_emulator/state", emu.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["dm_url"], emu.url());
    let rsp = client
        .post(format!("{ctl}/faults"))
        .json(&json!({"bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 400);
}

#[test]
fn emulator_works_without_a_caller_runtime_after_start() {
    // Start on a throwaway runtime, then use the emulator from plain threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let emu = rt.block_on(emulator());
    drop(rt);
    let rsp = std::net::TcpStream::connect(emu.url().trim_start_matches("http://"));
    assert!(rsp.is_ok());
    emu.stop_dm().unwrap();
    assert!(std::net::TcpStream::connect(emu.url().trim_start_matches("http://")).is_err());
    drop(emu);
}

#[tokio::test]
async fn config_is_validated() {
    let az = Azurite::shared();
    let one = EmulatorConfig {
        accounts: vec!["ingestacct1".into()],
        ..Default::default()
    };
    assert!(DmEmulator::start(az, one).await.is_err());
    let bad = EmulatorConfig {
        queue_prefix: "Bad_Prefix".into(),
        ..Default::default()
    };
    assert!(DmEmulator::start(az, bad).await.is_err());
    let unknown = EmulatorConfig {
        accounts: vec!["ingestacct1".into(), "nope".into()],
        ..Default::default()
    };
    assert!(DmEmulator::start(az, unknown).await.is_err());
}

#[tokio::test]
async fn hang_never_answers_while_other_accounts_are_served() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    emu.faults().break_account("ingestacct1", BreakMode::Hang);
    emu.faults()
        .break_account("ingestacct2", BreakMode::ServerBusy);
    let rows = resources(&emu, &tok).await;
    let hung = queue_urls(&rows, "ingestacct1");
    let busy = queue_urls(&rows, "ingestacct2");
    assert_eq!((hung.len(), busy.len()), (2, 2));
    assert!(hung[0].starts_with(emu.fake_storage_url()), "{}", hung[0]);

    let t0 = Instant::now();
    let url = hung[0].clone();
    let hanging =
        tokio::spawn(async move { try_put_message(&url, "eA==", Duration::from_secs(1)).await });
    // Wait until the hanging request has been read, then use the same listener for
    // the other account: it answers at once.
    while emu.fake_storage_requests("ingestacct1") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = put_message(&busy[0], "eA==").await;
    assert_eq!(status, 503, "{body}");
    assert!(!hanging.is_finished(), "the hung request got an answer");

    let err = hanging
        .await
        .unwrap()
        .expect_err("a hung request is never answered");
    assert!(err.is_timeout(), "{err:?}");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        emu.fake_storage_counts("ingestacct1"),
        FakeStorageCounts {
            hang: 1,
            ..Default::default()
        }
    );
    assert_eq!(emu.fake_storage_requests("ingestacct1"), 1);
    assert_eq!(emu.fake_storage_counts("ingestacct2").server_busy, 1);
    assert_eq!(emu.server_busy_count(), 1);
    assert!(emu.receive_ingestion_messages().await.unwrap().is_empty());
}

#[tokio::test]
async fn reset_after_enqueue_enqueues_then_drops_the_connection() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    emu.faults()
        .break_account("ingestacct1", BreakMode::ResetAfterEnqueue);
    let rows = resources(&emu, &tok).await;
    let url = &queue_urls(&rows, "ingestacct1")[0];
    assert!(url.starts_with(emu.fake_storage_url()), "{url}");
    let (account, queue) = account_and_queue(url);

    let text = base64::engine::general_purpose::STANDARD.encode(r#"{"answer":"lost"}"#);
    let err = try_put_message(url, &text, Duration::from_secs(10))
        .await
        .expect_err("the answer is lost");
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    assert!(err.is_request(), "{err:?}");

    // The message is in the real queue all the same.
    assert_eq!(
        emu.azurite().peek_messages(&account, &queue).await.unwrap(),
        [text]
    );
    let msgs = emu.receive_ingestion_messages().await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!((&msgs[0].account, &msgs[0].queue), (&account, &queue));
    assert_eq!(msgs[0].json, Some(json!({"answer": "lost"})));
    assert_eq!(
        emu.fake_storage_counts(&account),
        FakeStorageCounts {
            reset_after_enqueue: 1,
            enqueued: 1,
            ..Default::default()
        }
    );

    // When Azurite refuses the message, its answer is passed on (nothing enqueued).
    let missing = url.replace(&format!("/{queue}?"), "/nosuchqueue?");
    let (status, body) = put_message(&missing, "eA==").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("QueueNotFound"), "{body}");
    let counts = emu.fake_storage_counts(&account);
    assert_eq!((counts.reset_after_enqueue, counts.enqueued), (2, 1));
}

#[tokio::test]
async fn reset_drops_the_connection_without_enqueuing() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    emu.faults().break_account("ingestacct2", BreakMode::Reset);
    let rows = resources(&emu, &tok).await;
    let urls = queue_urls(&rows, "ingestacct2");
    for url in &urls {
        assert!(url.starts_with(emu.fake_storage_url()), "{url}");
        let err = try_put_message(url, "eA==", Duration::from_secs(10))
            .await
            .expect_err("reset without an answer");
        assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    }
    // The account's TempStorage container is reset too.
    let (_, container) = rows
        .iter()
        .find(|(k, u)| k == "TempStorage" && u.contains("/ingestacct2/"))
        .unwrap();
    assert!(container.starts_with(emu.fake_storage_url()), "{container}");
    let (base, sas) = container.split_once('?').unwrap();
    let err = reqwest::Client::new()
        .put(format!("{base}/b.json?{sas}"))
        .header("x-ms-blob-type", "BlockBlob")
        .body("{}")
        .send()
        .await
        .expect_err("reset");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(
        emu.fake_storage_counts("ingestacct2"),
        FakeStorageCounts {
            reset: 3,
            ..Default::default()
        }
    );
    assert!(emu.receive_ingestion_messages().await.unwrap().is_empty());

    // Healed, the stale URL answers 503 ServerBusy like any stale fake URL.
    emu.faults().heal_account("ingestacct2");
    assert_eq!(put_message(&urls[0], "eA==").await.0, 503);
    assert_eq!(emu.fake_storage_counts("ingestacct2").server_busy, 1);
    emu.clear_logs();
    assert_eq!(emu.fake_storage_requests("ingestacct2"), 0);
}

#[tokio::test]
async fn token_delay_delays_the_identity_endpoint_only() {
    let emu = emulator().await;
    let delay = Duration::from_millis(700);
    emu.faults().set_token_delay(delay);
    assert_eq!(emu.faults().token_delay(), delay);
    let t0 = Instant::now();
    let tok = token(&emu, KUSTO).await;
    assert!(t0.elapsed() >= delay, "{:?}", t0.elapsed());
    let t0 = Instant::now();
    assert_eq!(mgmt(&emu, Some(&tok), get_resources()).await.status(), 200);
    assert!(
        t0.elapsed() < delay,
        "the DM is not delayed: {:?}",
        t0.elapsed()
    );
    emu.faults().set_token_delay(Duration::ZERO);
    let t0 = Instant::now();
    token(&emu, KUSTO).await;
    assert!(t0.elapsed() < delay, "{:?}", t0.elapsed());
}

#[tokio::test]
async fn oversized_answer_is_a_padded_v1_table() {
    let emu = emulator().await;
    let tok = token(&emu, KUSTO).await;
    let min = 3 * 1024 * 1024 + 17;
    emu.faults().set_oversized_answers(Some(min));
    assert_eq!(emu.faults().oversized_answers(), Some(min));
    let rsp = mgmt(&emu, Some(&tok), get_resources()).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(
        rsp.headers().get("content-length").is_none(),
        "streamed chunked"
    );
    let text = rsp.text().await.unwrap();
    assert!(text.len() >= min, "{} bytes", text.len());
    assert!(text.len() < min + 64 * 1024, "{} bytes", text.len());
    let v: V1Response = serde_json::from_str(&text).unwrap();
    assert_eq!(v.tables.len(), 1);
    let t = &v.tables[0];
    assert_eq!(t.table_name, "Table_0");
    let columns: Vec<&str> = t.columns.iter().map(|c| c.column_name.as_str()).collect();
    assert_eq!(columns, ["ResourceTypeName", "StorageRoot"]);
    let count = |kind: &str| t.rows.iter().filter(|r| r[0] == kind).count();
    assert_eq!(count("SecuredReadyForAggregationQueue"), 4);
    assert_eq!(count("TempStorage"), 2);
    // The 9 real rows come first, then only padding.
    assert!(t.rows[..9].iter().all(|r| r[0] != PADDING_RESOURCE_TYPE));
    assert!(t.rows[9..].iter().all(|r| r[0] == PADDING_RESOURCE_TYPE));
    assert!(t.rows.len() > 9);

    // Other commands are not padded; `None` restores normal answers.
    let rsp = mgmt(
        &emu,
        Some(&tok),
        json!({"csl": ".get kusto identity token"}),
    )
    .await;
    assert!(rsp.text().await.unwrap().len() < 1000);
    emu.faults().set_oversized_answers(None);
    let rsp = mgmt(&emu, Some(&tok), get_resources()).await;
    assert!(rsp.headers().contains_key("content-length"));
    let v: V1Response = rsp.json().await.unwrap();
    assert_eq!(v.tables[0].rows.len(), 9);
}

#[tokio::test]
async fn control_api_sets_the_new_faults() {
    let emu = emulator().await;
    let client = reqwest::Client::new();
    let ctl = emu.control_url();
    let post = |body: serde_json::Value| {
        let client = client.clone();
        let url = format!("{ctl}/faults");
        async move {
            let rsp = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(rsp.status(), 200);
            rsp.json::<serde_json::Value>().await.unwrap()
        }
    };
    for mode in ["Hang", "Reset", "ResetAfterEnqueue"] {
        let v = post(json!({"break_account": {"account": "ingestacct1", "mode": mode}})).await;
        assert_eq!(v["faults"]["broken"]["ingestacct1"], mode);
    }
    assert_eq!(
        emu.faults().broken("ingestacct1"),
        Some(BreakMode::ResetAfterEnqueue)
    );
    let v = post(json!({"token_delay_ms": 250, "oversized_answers": 100000})).await;
    assert_eq!(emu.faults().token_delay(), Duration::from_millis(250));
    assert_eq!(emu.faults().oversized_answers(), Some(100_000));
    assert_eq!(v["faults"]["token_delay_ms"], 250);
    assert_eq!(v["faults"]["oversized_answers"], 100_000);

    // Counters per account in the state.
    post(json!({"break_account": {"account": "ingestacct2", "mode": "Reset"}})).await;
    let url = format!(
        "{}/ingestacct2/somequeue?sv=x&sig=y",
        emu.fake_storage_url()
    );
    assert!(
        try_put_message(&url, "eA==", Duration::from_secs(10))
            .await
            .is_err()
    );
    let v: serde_json::Value = client
        .get(format!("{ctl}/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["fake_storage"]["ingestacct2"]["reset"], 1);

    let v = post(json!({"token_delay_ms": 0, "oversized_answers": 0})).await;
    assert_eq!(emu.faults().token_delay(), Duration::ZERO);
    assert_eq!(emu.faults().oversized_answers(), None);
    assert!(v["faults"]["oversized_answers"].is_null());
    let rsp = client.post(format!("{ctl}/reset")).send().await.unwrap();
    assert_eq!(rsp.status(), 200);
    let v: serde_json::Value = rsp.json().await.unwrap();
    assert_eq!(v["fake_storage"], json!({}));
    assert_eq!(emu.faults().broken("ingestacct2"), None);
}

/// The fake storage listener speaks enough HTTP/1.1 and says what it does not support.
#[tokio::test]
async fn fake_storage_http_edges() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let emu = DmEmulator::start(
        Azurite::shared(),
        EmulatorConfig {
            null_queue: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let addr = emu
        .fake_storage_url()
        .trim_start_matches("http://")
        .to_string();
    let exchange = |request: String| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            // Every case below ends with the listener closing the connection.
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let body = "<QueueMessage><MessageText>x</MessageText></QueueMessage>";
    let closing = exchange(format!(
        "POST /null/a/q/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await;
    assert!(closing.starts_with("HTTP/1.1 201 Created\r\n"), "{closing}");
    assert!(closing.contains("connection: close\r\n"), "{closing}");
    assert!(closing.ends_with("</QueueMessagesList>"), "{closing}");

    let chunked = exchange(
        "POST /null/a/q/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            .into(),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 400 "), "{chunked}");
    assert!(chunked.contains("Content-Length"), "{chunked}");

    let garbage = exchange("hello\r\n\r\n".into()).await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    assert_eq!(emu.null_queue_count(), 1);
}
