//! The emulator's queued-ingestion REST API (v2) against a real Azurite: configuration,
//! queued POSTs feeding the same ingestion worker as the queues, status reads, error shapes,
//! and a cluster without the API.

use std::time::{Duration, Instant};

use kusto_dev::dm::tables::KustoErrorBody;
use kusto_dev::{Azurite, DmEmulator, EmulatorConfig, RestV2Config};
use serde_json::{Value, json};

const DATA: &str = "datalake1";
const KUSTO: &str = "https://kusto.kusto.windows.net";
const CSV3: &[u8] = b"1,Ada\n2,Grace\n3,Alan\n";

async fn emulator(configure: impl FnOnce(&mut EmulatorConfig)) -> DmEmulator {
    let mut config = EmulatorConfig::default();
    configure(&mut config);
    DmEmulator::start(Azurite::shared(), config)
        .await
        .expect("emulator starts")
}

async fn upload(name: &str, bytes: &[u8]) -> String {
    let az = Azurite::shared();
    let container = format!("v2src{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    az.create_container(DATA, &container).await.unwrap();
    az.upload_blob(DATA, &container, name, bytes.to_vec(), &[])
        .await
        .unwrap();
    az.blob_sas_url(DATA, &container, name, "rd", Duration::from_secs(3600))
}

async fn call(
    emu: &DmEmulator,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    bearer: bool,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", emu.url()));
    if bearer {
        req = req.bearer_auth(emu.issue_token(KUSTO));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let rsp = req.send().await.unwrap();
    let status = rsp.status().as_u16();
    (status, rsp.json().await.unwrap_or(Value::Null))
}

async fn get(emu: &DmEmulator, path: &str) -> (u16, Value) {
    call(emu, reqwest::Method::GET, path, None, true).await
}

async fn post(emu: &DmEmulator, path: &str, body: Value) -> (u16, Value) {
    call(emu, reqwest::Method::POST, path, Some(body), true).await
}

#[tokio::test]
async fn configuration_has_the_documented_shape_and_working_containers() {
    let emu = emulator(|c| {
        c.rest_v2 = RestV2Config {
            preferred_ingestion_method: Some("V2".into()),
            max_blobs_per_batch: 7,
            refresh_interval: Duration::from_secs(90),
            ..RestV2Config::default()
        }
    })
    .await;
    let (status, v) = get(&emu, "/v1/rest/ingestion/configuration").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ingestionSettings"]["maxBlobsPerBatch"], 7);
    assert_eq!(v["ingestionSettings"]["preferredIngestionMethod"], "V2");
    assert_eq!(v["ingestionSettings"]["maxDataSize"], 6_442_450_944u64);
    assert_eq!(v["containerSettings"]["refreshInterval"], "00:01:30");
    assert_eq!(v["containerSettings"]["preferredUploadMethod"], "Storage");
    let containers = v["containerSettings"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), emu.temp_containers().len());
    // The container SAS lets a client write a blob there.
    let path = containers[0]["path"].as_str().unwrap();
    let (base, sas) = path.split_once('?').unwrap();
    let put = reqwest::Client::new()
        .put(format!("{base}/probe.csv?{sas}"))
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-version", "2021-08-06")
        .body("1,a\n")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let (status, v) = call(
        &emu,
        reqwest::Method::GET,
        "/v1/rest/ingestion/configuration",
        None,
        false,
    )
    .await;
    assert_eq!(status, 401);
    serde_json::from_value::<KustoErrorBody>(v).expect("Kusto error shape");
}

#[tokio::test]
async fn a_cluster_without_the_api_answers_404() {
    let emu = emulator(|c| c.rest_v2.enabled = false).await;
    let (status, _) = get(&emu, "/v1/rest/ingestion/configuration").await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &emu,
        "/v1/rest/ingestion/queued/db/T",
        json!({"blobs": [{"url": "https://a/b"}], "properties": {"format": "csv"}}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(emu.rest_v2_requests().is_empty());
}

#[tokio::test]
async fn queued_blobs_are_ingested_by_the_worker_and_tracked() {
    let emu = emulator(|c| c.ingest = true).await;
    let good = upload("good.csv", CSV3).await;
    let missing = upload("x.csv", CSV3).await.replace("x.csv", "none.csv");
    let ids = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let (status, v) = post(
        &emu,
        "/v1/rest/ingestion/queued/db1/People",
        json!({
            "timestamp": "2026-01-01T00:00:00Z",
            "blobs": [
                {"url": good, "sourceId": ids[0].to_string(), "rawSize": CSV3.len()},
                {"url": missing, "sourceId": ids[1].to_string()},
            ],
            "properties": {"format": "csv", "enableTracking": true, "tags": ["t1"]},
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let op = v["ingestionOperationId"].as_str().unwrap().to_string();
    assert!(!op.is_empty());

    let path = format!("/v1/rest/ingestion/queued/db1/People/{op}?details=true");
    let started = Instant::now();
    let v = loop {
        let (status, v) = get(&emu, &path).await;
        assert_eq!(status, 200, "{v}");
        if v["status"]["InProgress"] == 0 || started.elapsed() > Duration::from_secs(20) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["status"]["Succeeded"], 1, "{v}");
    assert_eq!(v["status"]["Failed"], 1, "{v}");
    let details = v["details"].as_array().unwrap();
    let failed = details.iter().find(|d| d["status"] == "Failed").unwrap();
    assert_eq!(failed["sourceId"], ids[1].to_string());
    // Its SAS was signed for another blob name, so storage refuses it.
    assert_eq!(failed["errorCode"], "Download_Forbidden");
    assert_eq!(failed["failureStatus"], "Permanent");
    assert!(!failed["url"].as_str().unwrap().contains('?'), "no SAS");
    assert_eq!(emu.row_count("db1", "People"), 3);

    // Without details=true only the counts; an unknown id or the wrong table is 404.
    let (_, v) = get(&emu, &format!("/v1/rest/ingestion/queued/db1/People/{op}")).await;
    assert!(v.get("details").is_none());
    let (status, v) = get(&emu, &format!("/v1/rest/ingestion/queued/db1/Other/{op}")).await;
    assert_eq!(status, 404);
    serde_json::from_value::<KustoErrorBody>(v).expect("Kusto error shape");
}

#[tokio::test]
async fn untracked_posts_answer_an_empty_id_and_bad_bodies_are_400() {
    let emu = emulator(|c| c.rest_v2.max_blobs_per_batch = 2).await;
    let (status, v) = post(
        &emu,
        "/v1/rest/ingestion/queued/db1/T",
        json!({"blobs": [{"url": "https://a.blob.core.windows.net/c/1.csv?sig=s"}],
               "properties": {"format": "csv"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"ingestionOperationId": ""}));
    // The blob went on a ready-for-aggregation queue as a v1 message.
    let messages = emu.receive_ingestion_messages().await.unwrap();
    assert_eq!(messages.len(), 1);
    let m = messages[0].json.as_ref().unwrap();
    assert_eq!(m["DatabaseName"], "db1");
    assert_eq!(m["TableName"], "T");
    assert_eq!(m["AdditionalProperties"]["format"], "csv");

    let three = json!({"blobs": [{"url": "https://a/1"}, {"url": "https://a/2"}, {"url": "https://a/3"}],
                       "properties": {"format": "csv"}});
    for body in [
        three,
        json!({"blobs": [{"url": "https://a/1"}], "properties": {}}),
        json!({"blobs": [], "properties": {"format": "csv"}}),
        json!([1, 2]),
    ] {
        let (status, v) = post(&emu, "/v1/rest/ingestion/queued/db1/T", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        let e: KustoErrorBody = serde_json::from_value(v).expect("Kusto error shape");
        assert!(e.error.permanent);
    }
    let posts = emu.rest_v2_requests();
    assert_eq!(posts.last().unwrap().status, 400);
    assert_eq!(posts[1].blobs, 3);
}

#[tokio::test]
async fn injected_failures_hit_only_posts_naming_the_blob() {
    let emu = emulator(|_| {}).await;
    emu.fail_rest_v2_blobs("poison", 503);
    let body = |name: &str| {
        json!({"blobs": [{"url": format!("https://a.blob.core.windows.net/c/{name}")}],
               "properties": {"format": "csv"}})
    };
    let (status, v) = post(&emu, "/v1/rest/ingestion/queued/db1/T", body("poison.csv")).await;
    assert_eq!(status, 503);
    serde_json::from_value::<KustoErrorBody>(v).expect("Kusto error shape");
    let (status, _) = post(&emu, "/v1/rest/ingestion/queued/db1/T", body("fine.csv")).await;
    assert_eq!(status, 200);
    assert_eq!(emu.receive_ingestion_messages().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_slow_down_or_oversized_dm_is_so_for_the_v2_endpoints_too() {
    let emu = emulator(|_| {}).await;
    let faults = emu.faults();

    faults.set_delay(Duration::from_millis(600));
    let started = Instant::now();
    let (status, _) = get(&emu, "/v1/rest/ingestion/configuration").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(600));
    faults.set_delay(Duration::ZERO);

    faults.set_down(true);
    let (status, v) = get(&emu, "/v1/rest/ingestion/configuration").await;
    assert_eq!(status, 503);
    serde_json::from_value::<KustoErrorBody>(v).expect("Kusto error shape");
    let (status, _) = post(
        &emu,
        "/v1/rest/ingestion/queued/db/T",
        json!({"blobs": [{"url": "https://a/b"}], "properties": {"format": "csv"}}),
    )
    .await;
    assert_eq!(status, 503);
    faults.set_down(false);

    // Padded to at least 1 MiB, streamed, and still the same configuration to a JSON reader.
    faults.set_oversized_answers(Some(1024 * 1024));
    let rsp = reqwest::Client::new()
        .get(format!("{}/v1/rest/ingestion/configuration", emu.url()))
        .bearer_auth(emu.issue_token(KUSTO))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(rsp.content_length().is_none(), "streamed");
    let body = rsp.bytes().await.unwrap();
    assert!(body.len() >= 1024 * 1024, "{} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).expect("still JSON");
    assert_eq!(v["ingestionSettings"]["maxBlobsPerBatch"], 20);
    assert!(v["containerSettings"]["containers"].is_array());
}

#[tokio::test]
async fn one_endpoint_can_be_slow_answer_oversized_or_lose_its_answers() {
    let emu = emulator(|c| c.ingest = true).await;
    let faults = emu.faults();
    let blob = upload("lost.csv", CSV3).await;
    let queued = json!({
        "blobs": [{"url": blob}],
        "properties": {"format": "csv", "enableTracking": true},
    });

    // Only the configuration is slow: the queued POST answers at once meanwhile.
    faults.set_rest_v2_delay(
        kusto_dev::RestV2Endpoint::Configuration,
        Duration::from_secs(60),
    );
    let slow = tokio::spawn({
        let (url, token) = (emu.url().to_string(), emu.issue_token(KUSTO));
        async move {
            reqwest::Client::new()
                .get(format!("{url}/v1/rest/ingestion/configuration"))
                .bearer_auth(token)
                .timeout(Duration::from_millis(500))
                .send()
                .await
        }
    });
    let (status, v) = post(&emu, "/v1/rest/ingestion/queued/db1/Lost", queued.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert!(slow.await.unwrap().unwrap_err().is_timeout());
    faults.set_rest_v2_delay(kusto_dev::RestV2Endpoint::Configuration, Duration::ZERO);
    let (status, _) = get(&emu, "/v1/rest/ingestion/configuration").await;
    assert_eq!(status, 200);

    // A lost answer: the POST is acted on (the blob is ingested), the connection drops unanswered.
    faults.lose_rest_v2_answers(kusto_dev::RestV2Endpoint::Queued, 1);
    let error = reqwest::Client::new()
        .post(format!("{}/v1/rest/ingestion/queued/db1/Lost", emu.url()))
        .bearer_auth(emu.issue_token(KUSTO))
        .json(&queued)
        .send()
        .await
        .expect_err("no answer");
    assert!(!error.is_connect(), "the request was sent: {error:?}");
    let logged = emu.rest_v2_requests();
    let last = logged.last().unwrap();
    assert!(
        last.answer_lost && last.status == 200 && last.blobs == 1,
        "{last:?}"
    );
    let started = Instant::now();
    while emu.row_count("db1", "Lost") < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "both POSTs ingested"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Used up: the next POST is answered.
    let (status, v) = post(&emu, "/v1/rest/ingestion/queued/db1/Lost", queued.clone()).await;
    assert_eq!(status, 200, "{v}");
    let op = v["ingestionOperationId"].as_str().unwrap().to_string();

    // Oversized: the POST and status answers are padded too, and still the same JSON.
    faults.set_oversized_answers(Some(1024 * 1024));
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/v1/rest/ingestion/queued/db1/Lost".to_owned(),
            Some(queued.clone()),
        ),
        (
            reqwest::Method::GET,
            format!("/v1/rest/ingestion/queued/db1/Lost/{op}"),
            None,
        ),
    ] {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", emu.url()))
            .bearer_auth(emu.issue_token(KUSTO));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let rsp = request.send().await.unwrap();
        assert_eq!(rsp.status(), 200);
        let body = rsp.bytes().await.unwrap();
        assert!(body.len() >= 1024 * 1024, "{path}: {} bytes", body.len());
        let v: Value = serde_json::from_slice(&body).expect("still JSON");
        assert!(
            v.get("ingestionOperationId").is_some() || v.get("status").is_some(),
            "{v}"
        );
    }
}
