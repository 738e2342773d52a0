//! The trigger end to end over a fake backend: envelope → events → routing → metadata → jobs.
//! Fixtures are shared with the black-box tests (tests/fixtures/eventgrid/).

use super::*;
use crate::domain::BlobUri;
use crate::ingest::{
    BlobFailure, BlobOutcome, FailureCode, Ingested, OperationId, PageRequest, StatusError,
    StatusPage,
};
use crate::settings::Settings;
use blob_store::{BlobProperties, MetadataError};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

const EVENT_GRID: &str = include_str!("../../tests/fixtures/eventgrid/blob-created.eventgrid.json");
const CLOUD_EVENTS: &str =
    include_str!("../../tests/fixtures/eventgrid/blob-created.cloudevents.json");
const ADLS: &str = include_str!("../../tests/fixtures/eventgrid/blob-created-adls.eventgrid.json");
const CREATE_FILE: &str =
    include_str!("../../tests/fixtures/eventgrid/create-file-adls.eventgrid.json");
const DELETED: &str = include_str!("../../tests/fixtures/eventgrid/blob-deleted.eventgrid.json");
const VALIDATION: &str =
    include_str!("../../tests/fixtures/eventgrid/subscription-validation.eventgrid.json");
const HOST_ENVELOPE: &str =
    include_str!("../../tests/fixtures/eventgrid/envelope.host-double-encoded.json");

enum IngestMode {
    Queue,
    Fail(BlobFailure),
    Outcomes(Vec<BlobOutcome>),
}

struct Fake {
    trigger: Trigger,
    metadata: HashMap<String, Result<BlobProperties, MetadataError>>,
    mode: IngestMode,
    /// Every job handed to `ingest`, whatever the outcome.
    jobs: Mutex<Vec<BlobJob>>,
    ingest_calls: Mutex<usize>,
    metadata_calls: Mutex<Vec<String>>,
}

impl Fake {
    fn new(routes: Value) -> Self {
        Self::with(&[("INGEST_ROUTES", &routes.to_string())])
    }

    fn with(pairs: &[(&str, &str)]) -> Self {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.insert(
            "KUSTO_INGEST_URI".into(),
            "https://ingest-test.westeurope.kusto.windows.net".into(),
        );
        let settings = Settings::from_lookup(|k| map.get(k).cloned()).expect("valid test settings");
        Self {
            trigger: Trigger::new(
                settings.routes,
                settings.default_properties,
                settings.read_blob_metadata,
                settings.dms.default_dm().clone(),
            ),
            metadata: HashMap::new(),
            mode: IngestMode::Queue,
            jobs: Mutex::new(Vec::new()),
            ingest_calls: Mutex::new(0),
            metadata_calls: Mutex::new(Vec::new()),
        }
    }

    fn metadata(mut self, url: &str, result: Result<BlobProperties, MetadataError>) -> Self {
        self.metadata.insert(url.to_owned(), result);
        self
    }

    fn mode(mut self, mode: IngestMode) -> Self {
        self.mode = mode;
        self
    }

    fn jobs(&self) -> Vec<BlobJob> {
        self.jobs.lock().unwrap().clone()
    }

    fn ingest_calls(&self) -> usize {
        *self.ingest_calls.lock().unwrap()
    }
}

/// The trigger over the fake, as the HTTP route calls it over the real services.
async fn handle(fake: &Fake, body: &[u8]) -> InvocationReply {
    let deadline = Deadline::after(std::time::Duration::from_secs(25));
    fake.trigger.handle(fake, fake, body, deadline).await
}

impl Backend for Fake {
    async fn ingest(&self, batch: Batch<'_>) -> Result<Ingested, BlobFailure> {
        let jobs = batch.jobs;
        *self.ingest_calls.lock().unwrap() += 1;
        self.jobs.lock().unwrap().extend(jobs.iter().cloned());
        let outcomes = match &self.mode {
            IngestMode::Queue => jobs.iter().map(|_| BlobOutcome::Queued).collect(),
            IngestMode::Fail(f) => return Err(f.clone()),
            IngestMode::Outcomes(o) => o.clone(),
        };
        Ok(Ingested {
            outcomes,
            operation: None,
        })
    }

    async fn upload(
        &self,
        _dm: &DmEndpoint,
        _name: &str,
        _data: &mut dyn crate::data::DataSource,
        _deadline: Deadline,
    ) -> Result<BlobUri, crate::ingest::UploadError> {
        unreachable!("the trigger never uploads data")
    }

    async fn discard(&self, _blob: &BlobUri) {}

    async fn status(
        &self,
        _operation: &OperationId,
        _page: &PageRequest,
        _deadline: Deadline,
    ) -> Result<StatusPage, StatusError> {
        Err(StatusError::NotFound("the fake tracks nothing".into()))
    }
}

impl BlobMetadata for Fake {
    async fn blob_properties(&self, blob: &BlobUri) -> Result<BlobProperties, MetadataError> {
        let url = blob.without_credentials();
        self.metadata_calls.lock().unwrap().push(url.to_owned());
        self.metadata
            .get(url)
            .cloned()
            .unwrap_or_else(|| Ok(BlobProperties::default()))
    }
}

fn props(pairs: &[(&str, &str)]) -> BlobProperties {
    BlobProperties {
        metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        content_length: None,
    }
}

fn fixture_event(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap();
    v[0].clone()
}

/// The envelope as the Functions host sends it: the event as indented JSON text, serialized again.
fn host_envelope(event: &Value) -> Vec<u8> {
    let indented = serde_json::to_string_pretty(event)
        .unwrap()
        .replace('\n', "\r\n");
    let once = serde_json::to_string(&Value::String(indented)).unwrap();
    serde_json::to_vec(
        &json!({"Data": {"event": once}, "Metadata": {"sys": {"MethodName": "BlobCreated"}}}),
    )
    .unwrap()
}

fn object_envelope(event: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"Data": {"event": event}, "Metadata": {}})).unwrap()
}

/// A BlobCreated event (Event Grid schema) for `container`/`path` on a production-style URL.
fn blob_event(id: &str, container: &str, path: &str, length: u64) -> Value {
    let mut e = fixture_event(EVENT_GRID);
    e["id"] = json!(id);
    e["subject"] = json!(format!(
        "/blobServices/default/containers/{container}/blobs/{path}"
    ));
    e["data"]["url"] = json!(format!(
        "https://examplestorage.blob.core.windows.net/{container}/{path}"
    ));
    e["data"]["contentLength"] = json!(length);
    e
}

fn logs(reply: &InvocationReply) -> Vec<String> {
    reply.body["Logs"]
        .as_array()
        .expect("Logs is an array")
        .iter()
        .map(|l| l.as_str().expect("log lines are strings").to_owned())
        .collect()
}

fn log_text(reply: &InvocationReply) -> String {
    logs(reply).join("\n")
}

fn additional(job: &BlobJob, key: &str) -> Option<Value> {
    job.spec
        .additional
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.clone())
}

fn landing() -> Value {
    json!([{"container": "landing", "database": "db", "table": "Events"}])
}

fn test_container() -> Value {
    json!([{"container": "test-container", "database": "db", "table": "Files"}])
}

#[tokio::test]
async fn documented_event_grid_example_is_queued() {
    let fake = Fake::new(test_container());
    let reply = handle(&fake, &object_envelope(&fixture_event(EVENT_GRID))).await;
    assert_eq!(reply.status, 200, "{}", log_text(&reply));
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    // Routed by the subject's container; ingested from data.url.
    assert_eq!(
        job.blob.expose_with_credentials(),
        "https://examplestorage.blob.core.windows.net/testcontainer/new-file.txt"
    );
    assert_eq!(job.database.as_str(), "db");
    assert_eq!(job.table.as_str(), "Files");
    assert_eq!(job.raw_data_size, Some(524288));
    assert_eq!(additional(job, "format"), Some(json!("txt")));
    let id = "6b1a2c3d-001e-0042-7d1a-6f9e2a000001";
    assert_eq!(job.source_id, source_id_for(id));
    let text = log_text(&reply);
    assert!(
        text.starts_with("BlobCreated: 1 event(s): 1 queued, 0 skipped"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "event {id}: queued https://examplestorage.blob.core.windows.net/testcontainer/new-file.txt into db.Files (format txt, rule 1 (container 'test-container'), source id {})",
        job.source_id
    )), "{text}");
}

#[tokio::test]
async fn documented_cloud_events_example_is_queued() {
    let fake = Fake::new(test_container());
    let reply = handle(&fake, &object_envelope(&fixture_event(CLOUD_EVENTS))).await;
    assert_eq!(reply.status, 200, "{}", log_text(&reply));
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].source_id,
        source_id_for("9c8d7e6f-201e-0042-7d1a-6f9e2a000002")
    );
    assert_eq!(jobs[0].table.as_str(), "Files");
}

#[tokio::test]
async fn every_envelope_encoding_gives_the_same_job() {
    let event = fixture_event(EVENT_GRID);
    let bodies: Vec<Vec<u8>> = vec![
        object_envelope(&event),
        serde_json::to_vec(&json!({"Data": {"event": event.to_string()}})).unwrap(),
        host_envelope(&event),
        HOST_ENVELOPE.as_bytes().to_vec(),
        // Arrays of one, in each encoding.
        object_envelope(&json!([event.clone()])),
        serde_json::to_vec(&json!({"Data": {"event": json!([event.clone()]).to_string()}}))
            .unwrap(),
        host_envelope(&json!([event.clone()])),
    ];
    let mut seen = Vec::new();
    for body in bodies {
        let fake = Fake::new(test_container());
        let reply = handle(&fake, &body).await;
        assert_eq!(reply.status, 200, "{}", log_text(&reply));
        let jobs = fake.jobs();
        assert_eq!(jobs.len(), 1, "{}", log_text(&reply));
        seen.push((
            jobs[0].source_id,
            jobs[0].blob.clone(),
            jobs[0].spec.clone(),
        ));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test]
async fn arrays_are_queued_in_one_call() {
    let fake = Fake::new(landing());
    let events = json!([
        blob_event("a1", "landing", "one.csv", 10),
        fixture_event(CLOUD_EVENTS),
        blob_event("a2", "landing", "two.json", 20),
        fixture_event(VALIDATION),
    ]);
    let reply = handle(&fake, &host_envelope(&events)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(fake.ingest_calls(), 1);
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].source_id, source_id_for("a1"));
    assert_eq!(jobs[1].source_id, source_id_for("a2"));
    assert!(
        logs(&reply)[0].starts_with("BlobCreated: 4 event(s): 2 queued, 2 skipped, 0 rejected")
    );
}

#[tokio::test]
async fn empty_array_is_acknowledged() {
    let fake = Fake::new(landing());
    let reply = handle(&fake, &object_envelope(&json!([]))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(fake.ingest_calls(), 0);
}

fn skip_metadata_url(path: &str) -> String {
    format!("https://examplestorage.blob.core.windows.net/landing/{path}")
}

/// Every reason an event is skipped, with the words its log line must hold.
fn skip_cases() -> Vec<(Value, &'static str)> {
    let url = skip_metadata_url;
    let mut api = blob_event("s1", "landing", "a.csv", 5);
    api["data"]["api"] = json!("PutBlock");
    let mut folder_url = blob_event("s2", "landing", "dir", 5);
    folder_url["data"]["url"] = json!(url("dir/"));
    let mut untrusted = blob_event("s3", "landing", "u.csv", 5);
    untrusted["data"]["url"] = json!("https://files.example.com/landing/u.csv");

    vec![
        (
            fixture_event(DELETED),
            "type 'Microsoft.Storage.BlobDeleted' is not Microsoft.Storage.BlobCreated",
        ),
        (
            fixture_event(VALIDATION),
            "type 'Microsoft.EventGrid.SubscriptionValidationEvent'",
        ),
        (
            fixture_event(CREATE_FILE),
            "api 'CreateFile' is not one of PutBlob, PutBlockList, FlushWithClose, CopyBlob",
        ),
        (api, "api 'PutBlock'"),
        (blob_event("s4", "landing", "dir/sub/", 0), "it is a folder"),
        (folder_url, "it is a folder"),
        (
            blob_event("s5", "landing", "empty.csv", 0),
            "the blob is empty (contentLength 0)",
        ),
        (
            blob_event("s6", "elsewhere", "a.csv", 5),
            "no INGEST_ROUTES rule matches",
        ),
        (
            blob_event("s7", "landing", "gone.csv", 5),
            "the blob no longer exists",
        ),
        (
            blob_event("s8", "landing", "dirmarker", 5),
            "it is a folder (hdi_isfolder)",
        ),
        (
            blob_event("s9", "landing", "badmeta.csv", 5),
            "blob metadata kustoIgnoreFirstRecord: 'maybe' must be true or false",
        ),
        (
            blob_event("s10", "landing", "otherdb.csv", 5),
            "kustoDatabase 'other' differs from the rule's database 'db'",
        ),
        (
            blob_event("s11", "landing", "badtable.csv", 5),
            "blob metadata kustoTable: table name must not contain control characters",
        ),
        (
            untrusted,
            "blob metadata is read only from Azure Storage endpoints",
        ),
    ]
}

/// A fake with the metadata the skip cases read.
fn fake_for_skip_cases(pairs: &[(&str, &str)]) -> Fake {
    let url = skip_metadata_url;
    let mut fake = Fake::with(pairs)
        .metadata(&url("gone.csv"), Err(MetadataError::NotFound))
        .metadata(&url("dirmarker"), Ok(props(&[("hdi_isfolder", "true")])))
        .metadata(
            &url("badmeta.csv"),
            Ok(props(&[("kustoIgnoreFirstRecord", "maybe")])),
        )
        .metadata(
            &url("otherdb.csv"),
            Ok(props(&[("kustoDatabase", "other")])),
        )
        .metadata(
            &url("badtable.csv"),
            Ok(props(&[("kustoTable", "a\u{7}b")])),
        );
    // The untrusted host goes through the real host check.
    fake.metadata.insert(
        "https://files.example.com/landing/u.csv".into(),
        blob_store::auth_for(
            &BlobUri::parse("https://files.example.com/landing/u.csv").unwrap(),
            &crate::local::LocalBlobAccess::default(),
        )
        .map(|_| BlobProperties::default()),
    );
    fake
}

#[tokio::test]
async fn every_skip_reason_is_acknowledged_and_logged() {
    let routes = json!([
        {"container": "landing", "database": "db", "table": "Events"},
        {"container": "test-container", "database": "db", "table": "Files"},
        {"container": "lake", "database": "db", "table": "Lake"}
    ]);
    let with_metadata = [
        ("INGEST_ROUTES", routes.to_string()),
        ("INGEST_READ_BLOB_METADATA", "true".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = with_metadata
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    for (event, expected) in skip_cases() {
        let fake = fake_for_skip_cases(&pairs);
        let reply = handle(&fake, &host_envelope(&event)).await;
        let text = log_text(&reply);
        assert_eq!(reply.status, 200, "{text}");
        assert_eq!(fake.ingest_calls(), 0, "{expected}: {text}");
        assert!(text.contains("skipped"), "{text}");
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
        assert!(logs(&reply)[0].contains("1 skipped"), "{text}");
    }
}

#[tokio::test]
async fn adls_flush_with_close_is_ingested_through_the_blob_endpoint() {
    let fake = Fake::new(
        json!([{"container": "lake", "prefix": "raw/", "database": "db", "table": "Lake"}]),
    );
    let reply = handle(&fake, &host_envelope(&fixture_event(ADLS))).await;
    assert_eq!(reply.status, 200, "{}", log_text(&reply));
    let jobs = fake.jobs();
    assert_eq!(
        jobs[0].blob.expose_with_credentials(),
        "https://examplelake.blob.core.windows.net/lake/raw/2024/03/05/events.json"
    );
    assert_eq!(additional(&jobs[0], "format"), Some(json!("json")));
}

async fn job_for(fake: &Fake, event: &Value) -> BlobJob {
    let reply = handle(fake, &host_envelope(event)).await;
    assert_eq!(reply.status, 200, "{}", log_text(&reply));
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1, "{}", log_text(&reply));
    jobs.into_iter().next().unwrap()
}

/// Settings with a typed rule, a multi-database rule, metadata reading and defaults.
fn precedence_fake() -> Fake {
    let routes = json!([
        {"container": "landing", "prefix": "typed/", "database": "db", "table": "Typed", "format": "psv",
         "ingestionMappingReference": "ruleMap", "properties": {"ignoreFirstRecord": false, "tags": ["rule"]}},
        {"container": "landing", "database": "db", "table": "Events", "databaseRouting": "multi"}
    ]);
    let defaults = json!({"format": "tsv", "tags": ["default"], "flushImmediately": true});
    let settings = [
        ("INGEST_ROUTES", routes.to_string()),
        ("INGEST_READ_BLOB_METADATA", "true".to_owned()),
        ("INGEST_DEFAULT_PROPERTIES", defaults.to_string()),
    ];
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Fake::with(&pairs)
}

#[tokio::test]
async fn format_comes_from_metadata_then_rule_then_blob_name_then_defaults() {
    // Blob name beats the settings default; other defaults stay.
    let fake = precedence_fake();
    let job = job_for(&fake, &blob_event("f1", "landing", "a.parquet", 5)).await;
    assert_eq!(additional(&job, "format"), Some(json!("parquet")));
    assert_eq!(additional(&job, "tags"), Some(json!("[\"default\"]")));
    assert!(job.spec.flush_immediately);

    // No extension: the settings default.
    let fake = precedence_fake();
    let job = job_for(&fake, &blob_event("f2", "landing", "noext", 5)).await;
    assert_eq!(additional(&job, "format"), Some(json!("tsv")));

    // The rule beats the blob name and the defaults.
    let fake = precedence_fake();
    let job = job_for(&fake, &blob_event("f3", "landing", "typed/a.csv", 5)).await;
    assert_eq!(additional(&job, "format"), Some(json!("psv")));
    assert_eq!(
        additional(&job, "ingestionMappingReference"),
        Some(json!("ruleMap"))
    );
    assert_eq!(additional(&job, "ignoreFirstRecord"), Some(json!(false)));
    assert_eq!(additional(&job, "tags"), Some(json!("[\"rule\"]")));
    assert_eq!(job.table.as_str(), "Typed");
}

#[tokio::test]
async fn metadata_beats_the_rule() {
    let url = |p: &str| format!("https://examplestorage.blob.core.windows.net/landing/{p}");
    // Metadata beats the rule.
    let fake = precedence_fake().metadata(
        &url("typed/b.csv"),
        Ok(props(&[
            ("kustoDataFormat", "JSON"),
            ("KUSTOINGESTIONMAPPINGREFERENCE", "blobMap"),
            ("kustoIgnoreFirstRecord", "true"),
            ("kustoExtentTags", "x,drop-by:y"),
            ("kustoCreationTime", "2024-01-31T12:00:00Z"),
            ("kustoTable", "FromMeta"),
            ("kustoDatabase", "db"),
        ])),
    );
    let job = job_for(&fake, &blob_event("f4", "landing", "typed/b.csv", 5)).await;
    assert_eq!(additional(&job, "format"), Some(json!("json")));
    assert_eq!(
        additional(&job, "ingestionMappingReference"),
        Some(json!("blobMap"))
    );
    assert_eq!(
        additional(&job, "ingestionMappingType"),
        Some(json!("Json"))
    );
    assert_eq!(additional(&job, "ignoreFirstRecord"), Some(json!(true)));
    assert_eq!(
        additional(&job, "tags"),
        Some(json!("[\"x\",\"drop-by:y\"]"))
    );
    assert_eq!(
        additional(&job, "creationTime"),
        Some(json!("2024-01-31T12:00:00Z"))
    );
    assert_eq!(job.table.as_str(), "FromMeta");
    assert_eq!(job.database.as_str(), "db");

    // kustoDatabase is honoured where the rule allows it.
    let fake = precedence_fake().metadata(&url("c.csv"), Ok(props(&[("kustoDatabase", "other")])));
    let job = job_for(&fake, &blob_event("f5", "landing", "c.csv", 5)).await;
    assert_eq!(job.database.as_str(), "other");
    assert_eq!(
        *fake.metadata_calls.lock().unwrap(),
        vec![url("c.csv")],
        "metadata is read from the blob URL"
    );
}

#[tokio::test]
async fn metadata_is_not_read_unless_enabled() {
    let fake = Fake::new(landing()).metadata(
        "https://examplestorage.blob.core.windows.net/landing/a.csv",
        Ok(props(&[("kustoTable", "Nope")])),
    );
    let job = job_for(&fake, &blob_event("m1", "landing", "a.csv", 5)).await;
    assert_eq!(job.table.as_str(), "Events");
    assert!(fake.metadata_calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn raw_data_size() {
    let settings = [
        ("INGEST_ROUTES", landing().to_string()),
        ("INGEST_READ_BLOB_METADATA", "true".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = |p: &str| format!("https://examplestorage.blob.core.windows.net/landing/{p}");

    let fake = Fake::with(&pairs);
    assert_eq!(
        job_for(&fake, &blob_event("r1", "landing", "a.csv", 500))
            .await
            .raw_data_size,
        Some(500)
    );
    let fake = Fake::with(&pairs);
    let job = job_for(&fake, &blob_event("r2", "landing", "a.csv.gz", 500)).await;
    assert_eq!(job.raw_data_size, None);
    assert_eq!(additional(&job, "format"), Some(json!("csv")));
    let fake =
        Fake::with(&pairs).metadata(&url("b.csv.gz"), Ok(props(&[("rawSizeBytes", "123456")])));
    assert_eq!(
        job_for(&fake, &blob_event("r3", "landing", "b.csv.gz", 500))
            .await
            .raw_data_size,
        Some(123456)
    );
    let mut no_length = blob_event("r4", "landing", "c.csv", 1);
    no_length["data"]
        .as_object_mut()
        .unwrap()
        .remove("contentLength");
    let fake = Fake::with(&pairs);
    assert_eq!(job_for(&fake, &no_length).await.raw_data_size, None);
}

#[tokio::test]
async fn blob_identity_is_appended_for_the_dm_and_kept_out_of_logs() {
    let fake = Fake::new(
        json!([{"container": "landing", "database": "db", "table": "T", "blobIdentity": "system"}]),
    );
    let reply = handle(
        &fake,
        &host_envelope(&blob_event("i1", "landing", "a.csv", 5)),
    )
    .await;
    let job = &fake.jobs()[0];
    assert_eq!(
        job.blob.expose_with_credentials(),
        "https://examplestorage.blob.core.windows.net/landing/a.csv;managed_identity=system"
    );
    assert!(!log_text(&reply).contains("managed_identity"));
}

#[tokio::test]
async fn failures_on_our_side_answer_500_so_event_grid_redelivers() {
    let event = blob_event("t1", "landing", "a.csv", 5);
    // Transient or not, a failure on our side is redelivered.
    let failure = |code| BlobFailure::new(code, "the DM at https://ingest-x could not be reached");

    for code in [
        FailureCode::DataManagementUnavailable,
        FailureCode::DataManagementRejected,
    ] {
        let fake = Fake::new(landing()).mode(IngestMode::Fail(failure(code)));
        let reply = handle(&fake, &host_envelope(&event)).await;
        assert_eq!(reply.status, 500);
        let text = log_text(&reply);
        assert!(text.contains("event t1: not queued"), "{text}");
        assert!(text.contains(code.as_str()), "{text}");
        assert!(
            text.contains("answering 500 so that Event Grid redelivers"),
            "{text}"
        );
        assert_eq!(reply.body["Outputs"], json!({}));
    }

    let fake = Fake::new(landing()).mode(IngestMode::Outcomes(vec![BlobOutcome::Failed(
        BlobFailure::new(
            FailureCode::QueueUnavailable,
            "no ingestion queue accepted the message",
        ),
    )]));
    let reply = handle(&fake, &host_envelope(&event)).await;
    assert_eq!(reply.status, 500);
    assert!(log_text(&reply).contains("QueueUnavailable"));

    // A message no queue will ever accept: acknowledged, reported.
    let fake = Fake::new(landing()).mode(IngestMode::Outcomes(vec![BlobOutcome::Failed(
        BlobFailure::new(FailureCode::MessageTooLarge, "too large"),
    )]));
    let reply = handle(&fake, &host_envelope(&event)).await;
    assert_eq!(reply.status, 200);
    assert!(
        log_text(&reply).contains("cannot be queued (MessageTooLarge: too large); not retried")
    );

    // Storage unavailable while reading metadata: nothing queued, 500.
    let settings = [
        ("INGEST_ROUTES", landing().to_string()),
        ("INGEST_READ_BLOB_METADATA", "true".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for error in [
        MetadataError::Unavailable("HTTP 503".into()),
        MetadataError::Refused {
            status: 403,
            code: String::new(),
        },
        MetadataError::Token("identity endpoint unreachable".into()),
    ] {
        let fake = Fake::with(&pairs).metadata(
            "https://examplestorage.blob.core.windows.net/landing/a.csv",
            Err(error),
        );
        let reply = handle(
            &fake,
            &host_envelope(&json!([event, blob_event("t2", "landing", "ok.csv", 5)])),
        )
        .await;
        assert_eq!(reply.status, 500, "{}", log_text(&reply));
        assert_eq!(
            fake.ingest_calls(),
            0,
            "nothing is queued when the delivery will be redelivered"
        );
        assert!(
            log_text(&reply).contains("event t2: not queued yet"),
            "{}",
            log_text(&reply)
        );
    }
}

#[tokio::test]
async fn redelivery_carries_the_same_source_id() {
    let event = fixture_event(EVENT_GRID);
    let fake = Fake::new(test_container());
    handle(&fake, &host_envelope(&event)).await;
    handle(&fake, &object_envelope(&event)).await;
    handle(&fake, HOST_ENVELOPE.as_bytes()).await;
    let ids: Vec<SourceId> = fake.jobs().iter().map(|j| j.source_id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| *id == ids[0]));
    // Fixed namespace: the derivation never changes between releases.
    assert_eq!(
        source_id_for("6b1a2c3d-001e-0042-7d1a-6f9e2a000001"),
        ids[0]
    );
    assert_eq!(
        source_id_for("e1").to_string(),
        Uuid::new_v5(&SOURCE_ID_NAMESPACE, b"e1")
            .hyphenated()
            .to_string()
    );
    assert_ne!(source_id_for("e1"), source_id_for("e2"));
}

/// Bodies that must be rejected without queueing anything.
fn malformed_corpus() -> Vec<(String, Vec<u8>)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eventgrid/malformed");
    let mut corpus: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("malformed corpus directory")
        .map(|e| {
            let path = e.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    assert!(corpus.len() >= 10);
    let huge_subject = {
        let mut e = blob_event("h1", "landing", "a.csv", 5);
        e["subject"] = json!(format!(
            "/blobServices/default/containers/landing/blobs/{}x.csv",
            "a/".repeat(300_000)
        ));
        host_envelope(&e)
    };
    let huge_url = {
        let mut e = blob_event("h2", "landing", "a.csv", 5);
        e["data"]["url"] = json!(format!(
            "https://examplestorage.blob.core.windows.net/landing/{}.csv",
            "b".repeat(20_000)
        ));
        host_envelope(&e)
    };
    let deep = format!(
        "{{\"Data\":{{\"event\":{}{}}}}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    )
    .into_bytes();
    let deep_string = {
        let mut v = blob_event("h3", "landing", "a.csv", 5);
        for _ in 0..8 {
            v = Value::String(v.to_string());
        }
        serde_json::to_vec(&json!({"Data": {"event": v}})).unwrap()
    };
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    corpus.extend([
        ("huge subject".to_owned(), huge_subject),
        ("huge url".to_owned(), huge_url),
        ("deep nesting".to_owned(), deep),
        ("encoded 8 times".to_owned(), deep_string),
        ("binary".to_owned(), binary),
    ]);
    // Every truncation of a real host envelope.
    let full = host_envelope(&blob_event("tr", "landing", "a.csv", 5));
    for cut in 0..full.len() {
        corpus.push((format!("truncated at {cut}"), full[..cut].to_vec()));
    }
    corpus
}

#[tokio::test]
async fn malformed_payloads_are_rejected_with_200_and_never_queue() {
    for (name, body) in malformed_corpus() {
        let fake = Fake::new(landing());
        let reply = handle(&fake, &body).await;
        let text = log_text(&reply);
        assert_eq!(reply.status, 200, "{name}: {text}");
        assert_eq!(fake.ingest_calls(), 0, "{name} queued something: {text}");
        assert!(text.contains("rejected"), "{name}: {text}");
        assert!(
            text.len() < 16 * 1024,
            "{name}: log lines must not echo huge input ({} bytes)",
            text.len()
        );
        assert_eq!(reply.body["ReturnValue"], Value::Null);
    }
}

#[tokio::test]
async fn mutated_payloads_never_panic() {
    let full = host_envelope(&blob_event("mu", "landing", "a.csv", 5));
    let fake = Fake::new(landing());
    for at in 0..full.len() {
        for byte in [b'"', b'\\', b'{', b']', b'0', 0xff] {
            let mut body = full.clone();
            body[at] = byte;
            let reply = handle(&fake, &body).await;
            assert!(reply.status == 200 || reply.status == 500);
        }
    }
}

#[tokio::test]
async fn reply_has_the_invocation_result_shape() {
    let fake = Fake::new(landing());
    let reply = handle(
        &fake,
        &host_envelope(&blob_event("x1", "landing", "a.csv", 5)),
    )
    .await;
    let obj = reply.body.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["Logs", "Outputs", "ReturnValue"]);
    assert_eq!(reply.body["Outputs"], json!({}));
    assert_eq!(reply.body["ReturnValue"], Value::Null);
}

#[test]
fn clip_bounds_and_escapes() {
    assert_eq!(crate::domain::clip("a\nb\u{1b}"), "a\\nb\\u{1b}");
    let long = crate::domain::clip(&"x".repeat(10_000));
    assert_eq!(long.chars().count(), 257);
}

#[test]
fn a_bad_rule_stops_start_up_naming_the_setting_and_the_rule() {
    let routes = json!([
        {"container": "landing", "database": "db", "table": "T"},
        {"container": "x", "database": "db", "table": "T"}
    ]);
    let map: HashMap<&str, String> = HashMap::from([
        (
            "KUSTO_INGEST_URI",
            "https://ingest-test.westeurope.kusto.windows.net".to_owned(),
        ),
        ("INGEST_ROUTES", routes.to_string()),
    ]);
    let error = Settings::from_lookup(|k| map.get(k).cloned()).unwrap_err();
    assert_eq!(error.name, "INGEST_ROUTES");
    assert!(
        error.to_string().starts_with("setting INGEST_ROUTES: rule 2 (container 'x'): container 'x' is not a valid container name"),
        "{error}"
    );
}
