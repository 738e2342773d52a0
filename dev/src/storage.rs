//! Endpoints, credentials and REST helpers for a running Azurite.
//!
//! Every helper builds its own `reqwest::Client`: tests run many tokio runtimes and a
//! pooled connection dies with the runtime that opened it, so no client is ever kept
//! in a static or shared across calls.

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::sas::{self, SasWindow};
use crate::xml;

/// `x-ms-version` sent on every storage call (Azurite runs with `--skipApiVersionCheck`).
const STORAGE_VERSION: &str = "2021-08-06";

/// One storage account configured in Azurite (`AZURITE_ACCOUNTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageAccount {
    pub name: String,
    /// Base64 account key.
    pub key: String,
}

/// A message taken off a queue with Get Messages: invisible until its visibility timeout
/// ends, unless deleted with its pop receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DequeuedMessage {
    pub id: String,
    pub pop_receipt: String,
    /// Raw `MessageText` (base64 of the JSON for Kusto clients).
    pub text: String,
    /// How often the message has been dequeued, this time included.
    pub dequeue_count: u32,
}

/// Cloneable description of a running Azurite: ports, accounts and keys, plus REST
/// helpers (create queue/container/table, SAS URLs, peek/receive messages, upload blobs).
/// [`crate::azurite::Azurite`] derefs to this.
#[derive(Debug, Clone)]
pub struct AzuriteHandle {
    pub(crate) host: String,
    pub(crate) blob_port: u16,
    pub(crate) queue_port: u16,
    pub(crate) table_port: u16,
    pub(crate) accounts: Vec<StorageAccount>,
}

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::http("build reqwest client", e))
}

/// A storage request carrying the API version every call sends.
fn storage_request(method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder> {
    Ok(client()?
        .request(method, url)
        .header("x-ms-version", STORAGE_VERSION))
}

/// Sends `request` and returns the body when the status is one of `ok`.
async fn call(op: &str, request: reqwest::RequestBuilder, ok: &[u16]) -> Result<String> {
    let rsp = request.send().await.map_err(|e| Error::http(op, e))?;
    expect(op, rsp, ok).await
}

async fn expect(op: &str, rsp: reqwest::Response, ok: &[u16]) -> Result<String> {
    let status = rsp.status().as_u16();
    let body = rsp.text().await.map_err(|e| Error::http(op, e))?;
    if ok.contains(&status) {
        Ok(body)
    } else {
        Err(Error::Storage {
            op: op.to_string(),
            status,
            body,
        })
    }
}

impl AzuriteHandle {
    /// Names of the configured accounts, in configuration order.
    pub fn accounts(&self) -> Vec<String> {
        self.accounts.iter().map(|a| a.name.clone()).collect()
    }

    /// The account's base64 key.
    pub fn account_key(&self, account: &str) -> Result<&str> {
        self.accounts
            .iter()
            .find(|a| a.name == account)
            .map(|a| a.key.as_str())
            .ok_or_else(|| Error::UnknownAccount(account.to_string()))
    }

    fn key_or_panic(&self, account: &str) -> &str {
        match self.account_key(account) {
            Ok(k) => k,
            Err(e) => panic!("{e}; configured: {:?}", self.accounts()),
        }
    }

    pub fn blob_port(&self) -> u16 {
        self.blob_port
    }
    pub fn queue_port(&self) -> u16 {
        self.queue_port
    }
    pub fn table_port(&self) -> u16 {
        self.table_port
    }

    /// `http://127.0.0.1:<queue port>/<account>` (path-style, as Azurite serves it).
    pub fn queue_endpoint(&self, account: &str) -> String {
        format!("http://{}:{}/{account}", self.host, self.queue_port)
    }
    /// `http://127.0.0.1:<blob port>/<account>`.
    pub fn blob_endpoint(&self, account: &str) -> String {
        format!("http://{}:{}/{account}", self.host, self.blob_port)
    }
    /// `http://127.0.0.1:<table port>/<account>`.
    pub fn table_endpoint(&self, account: &str) -> String {
        format!("http://{}:{}/{account}", self.host, self.table_port)
    }

    /// Azure Storage connection string for `account` (explicit endpoints, path-style).
    pub fn connection_string(&self, account: &str) -> Result<String> {
        let key = self.account_key(account)?;
        Ok(format!(
            "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};\
             BlobEndpoint={};QueueEndpoint={};TableEndpoint={};",
            self.blob_endpoint(account),
            self.queue_endpoint(account),
            self.table_endpoint(account)
        ))
    }

    /// All-powerful account SAS used by the helpers' own management calls.
    fn admin_sas(&self, account: &str) -> Result<String> {
        let key = self.account_key(account)?;
        Ok(sas::account_sas(
            account,
            key,
            "bqt",
            "sco",
            "rwdlacup",
            SasWindow::from_now(Duration::from_secs(3600)),
        ))
    }

    // ----- SAS URLs ---------------------------------------------------------------

    /// Service SAS URL for a queue: `http://127.0.0.1:P/<account>/<queue>?sv=…&sp=<permissions>&sig=…`.
    /// `expiry` is the lifetime from now (`st` is 5 minutes in the past).
    /// Panics if `account` is not configured in this Azurite.
    pub fn queue_sas_url(
        &self,
        account: &str,
        queue: &str,
        permissions: &str,
        expiry: Duration,
    ) -> String {
        let q = sas::queue_sas(
            account,
            self.key_or_panic(account),
            queue,
            permissions,
            SasWindow::from_now(expiry),
        );
        format!("{}/{queue}?{q}", self.queue_endpoint(account))
    }

    /// Service SAS URL for one blob (`sr=b`). Panics on an unknown account.
    pub fn blob_sas_url(
        &self,
        account: &str,
        container: &str,
        name: &str,
        permissions: &str,
        expiry: Duration,
    ) -> String {
        let q = sas::blob_sas(
            account,
            self.key_or_panic(account),
            container,
            Some(name),
            permissions,
            SasWindow::from_now(expiry),
        );
        format!("{}?{q}", self.blob_url(account, container, name))
    }

    /// Service SAS URL for a container (`sr=c`). Panics on an unknown account.
    pub fn container_sas_url(
        &self,
        account: &str,
        container: &str,
        permissions: &str,
        expiry: Duration,
    ) -> String {
        let q = sas::blob_sas(
            account,
            self.key_or_panic(account),
            container,
            None,
            permissions,
            SasWindow::from_now(expiry),
        );
        format!("{}/{container}?{q}", self.blob_endpoint(account))
    }

    /// Service SAS URL for a table (`tn=<table>`). Panics on an unknown account.
    pub fn table_sas_url(
        &self,
        account: &str,
        table: &str,
        permissions: &str,
        expiry: Duration,
    ) -> String {
        let q = sas::table_sas(
            account,
            self.key_or_panic(account),
            table,
            permissions,
            SasWindow::from_now(expiry),
        );
        format!("{}/{table}?{q}", self.table_endpoint(account))
    }

    /// Blob URL without SAS; each path segment of `name` is percent-encoded.
    pub fn blob_url(&self, account: &str, container: &str, name: &str) -> String {
        let encoded: Vec<String> = name
            .split('/')
            .map(|seg| {
                url::form_urlencoded::byte_serialize(seg.as_bytes())
                    .collect::<String>()
                    .replace('+', "%20")
            })
            .collect();
        format!(
            "{}/{container}/{}",
            self.blob_endpoint(account),
            encoded.join("/")
        )
    }

    // ----- queues -----------------------------------------------------------------

    /// Creates a queue (idempotent).
    pub async fn create_queue(&self, account: &str, queue: &str) -> Result<()> {
        let url = format!(
            "{}/{queue}?{}",
            self.queue_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("create queue {account}/{queue}");
        call(
            &op,
            storage_request(reqwest::Method::PUT, &url)?.header("content-length", "0"),
            &[201, 204],
        )
        .await
        .map(|_| ())
    }

    /// Deletes a queue (missing queue is fine).
    pub async fn delete_queue(&self, account: &str, queue: &str) -> Result<()> {
        let url = format!(
            "{}/{queue}?{}",
            self.queue_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("delete queue {account}/{queue}");
        call(
            &op,
            storage_request(reqwest::Method::DELETE, &url)?,
            &[204, 404],
        )
        .await
        .map(|_| ())
    }

    /// Puts one message (the text is sent as-is; Kusto messages are base64 JSON).
    pub async fn put_message(&self, account: &str, queue: &str, text: &str) -> Result<()> {
        let url = format!(
            "{}/{queue}/messages?{}",
            self.queue_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("put message {account}/{queue}");
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>{}</MessageText></QueueMessage>",
            xml::escape(text)
        );
        call(
            &op,
            storage_request(reqwest::Method::POST, &url)?
                .header("content-type", "application/xml")
                .body(body),
            &[201],
        )
        .await
        .map(|_| ())
    }

    /// Raw `MessageText` of the visible messages without dequeuing them.
    /// Azure caps Peek Messages at 32, so at most 32 texts are returned.
    pub async fn peek_messages(&self, account: &str, queue: &str) -> Result<Vec<String>> {
        let url = format!(
            "{}/{queue}/messages?peekonly=true&numofmessages=32&{}",
            self.queue_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("peek messages {account}/{queue}");
        let body = call(&op, storage_request(reqwest::Method::GET, &url)?, &[200]).await?;
        Ok(xml::elements(&body, "MessageText"))
    }

    /// Dequeues and deletes every visible message (32 per call until the queue is
    /// empty) and returns their raw `MessageText` (callers base64-decode).
    pub async fn receive_all(&self, account: &str, queue: &str) -> Result<Vec<String>> {
        let client = client()?;
        let mut texts = Vec::new();
        loop {
            let messages = self
                .receive_with(&client, account, queue, 32, Duration::from_secs(60))
                .await?;
            if messages.is_empty() {
                return Ok(texts);
            }
            for m in messages {
                self.delete_message_with(&client, account, queue, &m)
                    .await?;
                texts.push(m.text);
            }
        }
    }

    /// Get Messages: dequeues up to `max` (1..=32) visible messages, hidden for
    /// `visibility` afterwards unless deleted with [`AzuriteHandle::delete_message`].
    pub async fn receive_messages(
        &self,
        account: &str,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<DequeuedMessage>> {
        self.receive_with(&client()?, account, queue, max, visibility)
            .await
    }

    /// Deletes a dequeued message (its pop receipt must still be current).
    pub async fn delete_message(
        &self,
        account: &str,
        queue: &str,
        message: &DequeuedMessage,
    ) -> Result<()> {
        self.delete_message_with(&client()?, account, queue, message)
            .await
    }

    /// [`AzuriteHandle::receive_messages`] on a caller's client (long-lived pollers).
    pub(crate) async fn receive_with(
        &self,
        client: &reqwest::Client,
        account: &str,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<DequeuedMessage>> {
        let url = format!(
            "{}/{queue}/messages?numofmessages={}&visibilitytimeout={}&{}",
            self.queue_endpoint(account),
            max.clamp(1, 32),
            visibility.as_secs().max(1),
            self.admin_sas(account)?
        );
        let op = format!("receive messages {account}/{queue}");
        let request = client.get(url).header("x-ms-version", STORAGE_VERSION);
        let body = call(&op, request, &[200]).await?;
        xml::blocks(&body, "QueueMessage")
            .into_iter()
            .map(|m| {
                let (Some(id), Some(pop_receipt)) =
                    (xml::first(m, "MessageId"), xml::first(m, "PopReceipt"))
                else {
                    return Err(Error::Storage {
                        op: op.clone(),
                        status: 200,
                        body: format!("message without id/pop receipt: {m}"),
                    });
                };
                Ok(DequeuedMessage {
                    id,
                    pop_receipt,
                    text: xml::first(m, "MessageText").unwrap_or_default(),
                    dequeue_count: xml::first(m, "DequeueCount")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                })
            })
            .collect()
    }

    /// [`AzuriteHandle::delete_message`] on a caller's client.
    pub(crate) async fn delete_message_with(
        &self,
        client: &reqwest::Client,
        account: &str,
        queue: &str,
        message: &DequeuedMessage,
    ) -> Result<()> {
        let receipt: String =
            url::form_urlencoded::byte_serialize(message.pop_receipt.as_bytes()).collect();
        let url = format!(
            "{}/{queue}/messages/{}?popreceipt={receipt}&{}",
            self.queue_endpoint(account),
            message.id,
            self.admin_sas(account)?
        );
        let op = format!("delete message {account}/{queue}/{}", message.id);
        let request = client.delete(url).header("x-ms-version", STORAGE_VERSION);
        call(&op, request, &[204]).await.map(|_| ())
    }

    // ----- blobs ------------------------------------------------------------------

    /// Creates a blob container (idempotent).
    pub async fn create_container(&self, account: &str, container: &str) -> Result<()> {
        let url = format!(
            "{}/{container}?restype=container&{}",
            self.blob_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("create container {account}/{container}");
        // 409 ContainerAlreadyExists is fine: creation is idempotent here.
        call(
            &op,
            storage_request(reqwest::Method::PUT, &url)?.header("content-length", "0"),
            &[201, 409],
        )
        .await
        .map(|_| ())
    }

    /// Uploads a block blob with the given metadata (`x-ms-meta-<name>`).
    pub async fn upload_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
        bytes: impl Into<Vec<u8>>,
        metadata: &[(&str, &str)],
    ) -> Result<()> {
        let url = format!(
            "{}?{}",
            self.blob_url(account, container, name),
            self.admin_sas(account)?
        );
        let op = format!("upload blob {account}/{container}/{name}");
        let mut req = storage_request(reqwest::Method::PUT, &url)?
            .header("x-ms-blob-type", "BlockBlob")
            .header("content-type", "application/octet-stream");
        for (k, v) in metadata {
            req = req.header(format!("x-ms-meta-{k}"), *v);
        }
        let bytes = bytes.into();
        if bytes.is_empty() {
            // An empty body is sent without Content-Length, which Azurite answers 400.
            req = req.header("content-length", "0");
        }
        call(&op, req.body(bytes), &[201]).await.map(|_| ())
    }

    /// Downloads a blob's content.
    pub async fn download_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
    ) -> Result<Vec<u8>> {
        let url = format!(
            "{}?{}",
            self.blob_url(account, container, name),
            self.admin_sas(account)?
        );
        let op = format!("download blob {account}/{container}/{name}");
        let rsp = client()?
            .get(&url)
            .header("x-ms-version", STORAGE_VERSION)
            .send()
            .await
            .map_err(|e| Error::http(&op, e))?;
        let status = rsp.status().as_u16();
        let bytes = rsp.bytes().await.map_err(|e| Error::http(&op, e))?;
        if status == 200 {
            Ok(bytes.to_vec())
        } else {
            Err(Error::Storage {
                op,
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
    }

    /// Deletes a blob; `Ok(false)` when it did not exist.
    pub async fn delete_blob(&self, account: &str, container: &str, name: &str) -> Result<bool> {
        let url = format!(
            "{}?{}",
            self.blob_url(account, container, name),
            self.admin_sas(account)?
        );
        let op = format!("delete blob {account}/{container}/{name}");
        let rsp = storage_request(reqwest::Method::DELETE, &url)?
            .send()
            .await
            .map_err(|e| Error::http(&op, e))?;
        let status = rsp.status().as_u16();
        expect(&op, rsp, &[202, 404]).await?;
        Ok(status == 202)
    }

    /// Names of the blobs in a container (first 5000).
    pub async fn list_blobs(&self, account: &str, container: &str) -> Result<Vec<String>> {
        let url = format!(
            "{}/{container}?restype=container&comp=list&{}",
            self.blob_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("list blobs {account}/{container}");
        let body = call(&op, storage_request(reqwest::Method::GET, &url)?, &[200]).await?;
        Ok(xml::blocks(&body, "Blob")
            .into_iter()
            .filter_map(|b| xml::first(b, "Name"))
            .collect())
    }

    // ----- tables -----------------------------------------------------------------

    /// Creates a table (idempotent).
    pub async fn create_table(&self, account: &str, table: &str) -> Result<()> {
        let url = format!(
            "{}/Tables?{}",
            self.table_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("create table {account}/{table}");
        // 409 TableAlreadyExists is fine: creation is idempotent here.
        call(
            &op,
            storage_request(reqwest::Method::POST, &url)?
                .header("accept", "application/json;odata=nometadata")
                .header("content-type", "application/json")
                .header("prefer", "return-no-content")
                .body(serde_json::json!({ "TableName": table }).to_string()),
            &[201, 204, 409],
        )
        .await
        .map(|_| ())
    }

    /// All entities of a table (first page, up to 1000), as JSON objects.
    pub async fn query_entities(&self, account: &str, table: &str) -> Result<Vec<Value>> {
        let url = format!(
            "{}/{table}()?{}",
            self.table_endpoint(account),
            self.admin_sas(account)?
        );
        let op = format!("query entities {account}/{table}");
        let body = call(
            &op,
            storage_request(reqwest::Method::GET, &url)?
                .header("accept", "application/json;odata=nometadata"),
            &[200],
        )
        .await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| Error::Storage {
            op: op.clone(),
            status: 200,
            body: format!("not JSON ({e}): {body}"),
        })?;
        Ok(v.get("value")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}
