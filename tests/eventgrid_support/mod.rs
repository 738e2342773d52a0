//! Helpers for the Event Grid black-box tests: BlobCreated events built from the fixtures, the
//! envelope encodings the Functions host uses, and `POST /BlobCreated` exactly as the host sends it.
#![allow(dead_code)]

use crate::common::{DATA_ACCOUNT, HOST_USER_AGENT, Reply, TestApp};
use kusto_dev::sas::{SasWindow, account_sas};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eventgrid")
}

/// The first event of a fixture file (each holds an array, as Event Grid delivers them).
pub fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    value[0].clone()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    EventGrid,
    CloudEvents,
}

/// How the event value sits in `Data.event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON object (or array).
    Object,
    /// A JSON string holding the event.
    String,
    /// What the host really sends: indented JSON text with CRLF, serialized once more.
    HostDoubleEncoded,
}

pub const ENCODINGS: [Encoding; 3] = [
    Encoding::Object,
    Encoding::String,
    Encoding::HostDoubleEncoded,
];

/// A BlobCreated event of the documented shape for a blob in the data account.
pub fn blob_created(
    schema: Schema,
    id: &str,
    app: &TestApp,
    container: &str,
    name: &str,
    length: u64,
) -> Value {
    let url = app.azurite.blob_url(DATA_ACCOUNT, container, name);
    let mut event = match schema {
        Schema::EventGrid => fixture("blob-created.eventgrid.json"),
        Schema::CloudEvents => fixture("blob-created.cloudevents.json"),
    };
    let subject = match schema {
        Schema::EventGrid => format!("/blobServices/default/containers/{container}/blobs/{name}"),
        // The CloudEvents samples write the subject without the leading slash.
        Schema::CloudEvents => format!("blobServices/default/containers/{container}/blobs/{name}"),
    };
    event["id"] = json!(id);
    event["subject"] = json!(subject);
    event["data"]["url"] = json!(url);
    event["data"]["contentLength"] = json!(length);
    event
}

/// The invocation body the host POSTs for `value` (one event or an array).
pub fn envelope(encoding: Encoding, value: &Value) -> Vec<u8> {
    let event = match encoding {
        Encoding::Object => value.clone(),
        Encoding::String => Value::String(value.to_string()),
        Encoding::HostDoubleEncoded => {
            let indented = serde_json::to_string_pretty(value)
                .expect("serialize")
                .replace('\n', "\r\n");
            Value::String(serde_json::to_string(&Value::String(indented)).expect("serialize"))
        }
    };
    serde_json::to_vec(&json!({
        "Data": { "event": event },
        "Metadata": { "sys": { "MethodName": "BlobCreated", "UtcNow": "2024-03-05T10:15:31Z", "RandGuid": uuid::Uuid::new_v4().to_string() } }
    }))
    .expect("serialize")
}

/// `POST /BlobCreated` with the headers the Functions host sends.
pub async fn post_blob_created(app: &TestApp, body: Vec<u8>) -> Reply {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client");
    let resp = client
        .post(format!("{}/BlobCreated", app.address))
        .header(
            "X-Azure-Functions-InvocationId",
            uuid::Uuid::new_v4().to_string(),
        )
        .header("X-Azure-Functions-HostVersion", "4.1037.0")
        .header("User-Agent", HOST_USER_AGENT)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /BlobCreated reached the handler");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// The `Logs` of an invocation reply, checking the documented shape on the way.
pub fn reply_logs(reply: &Reply) -> Vec<String> {
    let obj = reply
        .body
        .as_object()
        .unwrap_or_else(|| panic!("reply is not a JSON object: {}", reply.text));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["Logs", "Outputs", "ReturnValue"], "{}", reply.text);
    assert_eq!(reply.body["Outputs"], json!({}));
    assert_eq!(reply.body["ReturnValue"], Value::Null);
    reply.body["Logs"]
        .as_array()
        .expect("Logs is an array")
        .iter()
        .map(|l| l.as_str().expect("log line is a string").to_owned())
        .collect()
}

/// A fresh container in the data account, for routing rules known before the handler starts.
pub async fn new_container(app_azurite: &kusto_dev::Azurite, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    app_azurite
        .create_container(DATA_ACCOUNT, &name)
        .await
        .expect("create container");
    name
}

/// An account SAS of the data account that can read blob properties (`INGEST_LOCAL_BLOB_SAS`).
pub fn read_sas(azurite: &kusto_dev::Azurite) -> String {
    let key = azurite.account_key(DATA_ACCOUNT).expect("data account key");
    account_sas(
        DATA_ACCOUNT,
        key,
        "b",
        "o",
        "r",
        SasWindow::from_now(Duration::from_secs(3600)),
    )
}

/// No SAS signature in the reply or the handler's log.
pub fn assert_no_sas(app: &TestApp, replies: &[&Reply]) {
    for reply in replies {
        assert!(
            crate::common::sas_signatures(&reply.text).is_empty(),
            "reply leaks a SAS: {}",
            reply.text
        );
    }
    for line in app.logs() {
        assert!(
            crate::common::sas_signatures(&line).is_empty(),
            "log leaks a SAS: {line}"
        );
    }
}
