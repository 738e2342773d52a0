//! The DM's ingestion status table (`IngestionsStatusTable` of `.get ingestion resources`): an
//! Azure Table reached with the SAS the DM hands out. Tracked blobs get a `Pending` row before their
//! message is queued; the DM updates it once the blob is ingested. Rows of one operation share a
//! partition (`PartitionKey` = operation, `RowKey` = source id), so they are written in entity-group
//! transactions of up to 100 and read back as one partition. The row's fields are the ones the
//! official SDKs write (docs/wire-facts.md).

use crate::domain::{SourceId, clip, redact_url, scrub_secrets};
use crate::ingest::Deadline;
use crate::local::scheme_allowed;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use url::Url;
use uuid::Uuid;

/// An entity-group transaction holds at most 100 operations.
const MAX_BATCH: usize = 100;
/// Table service version (JSON payloads, `$batch`).
const TABLE_VERSION: &str = "2019-02-02";
/// One table call; a caller's deadline may cut it shorter.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A page of a partition read back.
pub(crate) const MAX_PAGE: usize = 1000;

/// The status table: its URL with the SAS, split into what each call needs.
#[derive(Clone)]
pub(crate) struct StatusTable {
    /// `https://acct.table.core.windows.net` (Azurite: `http://127.0.0.1:10002/acct`).
    account: String,
    name: String,
    /// The SAS query string.
    sas: String,
}

impl std::fmt::Debug for StatusTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatusTable({})", self.public_url())
    }
}

/// One row as the handler writes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StatusRow {
    pub(crate) partition_key: String,
    pub(crate) row_key: String,
    pub(crate) status: &'static str,
    pub(crate) ingestion_source_id: String,
    /// The blob URI without its SAS or credential suffix.
    pub(crate) ingestion_source_path: String,
    pub(crate) database: String,
    pub(crate) table: String,
    pub(crate) updated_on: String,
    pub(crate) details: String,
}

/// One row as read back (the DM may have added its fields).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct StoredRow {
    pub(crate) row_key: String,
    pub(crate) status: String,
    pub(crate) ingestion_source_id: String,
    pub(crate) ingestion_source_path: String,
    pub(crate) updated_on: Option<String>,
    #[serde(rename = "Timestamp")]
    pub(crate) timestamp: Option<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) failure_status: Option<String>,
    pub(crate) details: Option<String>,
}

/// A page of one partition.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) rows: Vec<StoredRow>,
    /// The service's continuation (`NextPartitionKey`, `NextRowKey`), when there are more rows.
    pub(crate) next: Option<(String, String)>,
}

/// Why a table call failed; never holds the SAS.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TableError {
    #[error("the status table refused the call (HTTP {status}{code})")]
    Refused { status: u16, code: String },
    #[error("the status table could not be reached: {0}")]
    Unavailable(String),
}

impl StatusTable {
    /// The `IngestionsStatusTable` storage root of `.get ingestion resources`.
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw)
            .map_err(|e| format!("status table URI {} is not a URL: {e}", redact_url(raw)))?;
        if !scheme_allowed(&url) {
            return Err(format!(
                "status table URI {} must use https",
                redact_url(raw)
            ));
        }
        let path = url.path().trim_end_matches('/');
        let Some((account_path, name)) = path.rsplit_once('/').filter(|(_, n)| !n.is_empty())
        else {
            return Err(format!(
                "status table URI {} names no table",
                redact_url(raw)
            ));
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "status table URI {} names no table",
                redact_url(raw)
            ));
        }
        let origin = url.origin().ascii_serialization();
        Ok(Self {
            account: format!("{origin}{account_path}"),
            name: name.to_owned(),
            sas: url.query().unwrap_or_default().to_owned(),
        })
    }

    /// The table's URL without its SAS: what an operation id names.
    pub(crate) fn public_url(&self) -> String {
        format!("{}/{}", self.account, self.name)
    }

    /// The table's URL with its SAS: what the ingestion message carries.
    pub(crate) fn connection_string(&self) -> String {
        format!("{}/{}?{}", self.account, self.name, self.sas)
    }

    /// Inserts or replaces `rows` (one partition), in transactions of up to 100.
    pub(crate) async fn upsert(
        &self,
        http: &reqwest::Client,
        rows: &[StatusRow],
        deadline: Deadline,
    ) -> Result<(), TableError> {
        let batches = rows
            .chunks(MAX_BATCH)
            .map(|chunk| self.batch(http, chunk, deadline));
        for result in futures::future::join_all(batches).await {
            result?;
        }
        Ok(())
    }

    /// One entity-group transaction: `$batch` with one changeset of `InsertOrReplace`s.
    async fn batch(
        &self,
        http: &reqwest::Client,
        rows: &[StatusRow],
        deadline: Deadline,
    ) -> Result<(), TableError> {
        let boundary = format!("batch_{}", Uuid::new_v4().simple());
        let body = self.batch_body(&boundary, rows)?;
        let request = http
            .post(format!("{}/$batch?{}", self.account, self.sas))
            .header("x-ms-version", TABLE_VERSION)
            .header("DataServiceVersion", "3.0")
            .header(
                "Content-Type",
                format!("multipart/mixed; boundary={boundary}"),
            )
            .body(body);
        let (status, code, text) = send(request, deadline).await?;
        // A failed changeset answers 202 with the failing operation's status inside.
        let inner_failure = text
            .lines()
            .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
            .find(|s| !s.starts_with('2'));
        match (status, inner_failure) {
            (202, None) => Ok(()),
            (202, Some(line)) => Err(TableError::Refused {
                status: line
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(400),
                code: format!(", {}", clip(line)),
            }),
            (status, _) => Err(TableError::Refused { status, code }),
        }
    }

    fn batch_body(&self, boundary: &str, rows: &[StatusRow]) -> Result<Bytes, TableError> {
        let changeset = format!("changeset_{}", Uuid::new_v4().simple());
        let mut body =
            format!("--{boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n");
        for row in rows {
            let entity = serde_json::to_string(row).map_err(|e| {
                TableError::Unavailable(format!("a row could not be serialized: {e}"))
            })?;
            let url = format!(
                "{}/{}(PartitionKey='{}',RowKey='{}')",
                self.account,
                self.name,
                quote_key(&row.partition_key),
                quote_key(&row.row_key)
            );
            body.push_str(&format!(
                "--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
                 PUT {url} HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json;odata=nometadata\r\n\
                 DataServiceVersion: 3.0\r\n\r\n{entity}\r\n"
            ));
        }
        body.push_str(&format!("--{changeset}--\r\n--{boundary}--\r\n"));
        Ok(Bytes::from(body))
    }

    /// Up to `top` rows of `partition`, from the service's continuation `next` when continuing.
    pub(crate) async fn read(
        &self,
        http: &reqwest::Client,
        partition: &str,
        top: usize,
        next: Option<&(String, String)>,
        deadline: Deadline,
    ) -> Result<Page, TableError> {
        let filter = format!("PartitionKey eq '{}'", quote_key(partition));
        let mut url = Url::parse(&format!("{}/{}()?{}", self.account, self.name, self.sas))
            .map_err(|e| TableError::Unavailable(e.to_string()))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("$filter", &filter);
            query.append_pair("$top", &top.min(MAX_PAGE).to_string());
            if let Some((next_partition, next_row)) = next {
                query.append_pair("NextPartitionKey", next_partition);
                query.append_pair("NextRowKey", next_row);
            }
        }
        let request = http
            .get(url)
            .header("x-ms-version", TABLE_VERSION)
            .header("Accept", "application/json;odata=nometadata");
        let (status, code, text, next) = send_with_continuation(request, deadline).await?;
        if status != 200 {
            return Err(TableError::Refused { status, code });
        }
        #[derive(Deserialize)]
        struct Value {
            value: Vec<StoredRow>,
        }
        let parsed: Value = serde_json::from_str(&text)
            .map_err(|e| TableError::Unavailable(format!("unexpected answer: {e}")))?;
        Ok(Page {
            rows: parsed.value,
            next,
        })
    }
}

/// A key inside an OData key literal: quotes doubled.
fn quote_key(key: &str) -> String {
    key.replace('\'', "''")
}

async fn send(
    request: reqwest::RequestBuilder,
    deadline: Deadline,
) -> Result<(u16, String, String), TableError> {
    send_with_continuation(request, deadline)
        .await
        .map(|(status, code, text, _)| (status, code, text))
}

/// Status, `x-ms-error-code`, body (capped) and the continuation of one table call.
async fn send_with_continuation(
    request: reqwest::RequestBuilder,
    deadline: Deadline,
) -> Result<(u16, String, String, Option<(String, String)>), TableError> {
    let exchange = async {
        let response = request.send().await.map_err(|e| {
            TableError::Unavailable(scrub_secrets(&crate::domain::describe_error(
                &e.without_url(),
            )))
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let code = header("x-ms-error-code")
            .map(|c| format!(", {}", clip(&c)))
            .unwrap_or_default();
        let next = header("x-ms-continuation-NextPartitionKey")
            .zip(header("x-ms-continuation-NextRowKey"));
        let body = crate::transport::read_capped(response, 16 * 1024 * 1024)
            .await
            .map_err(|e| TableError::Unavailable(e.to_string()))?;
        Ok((
            status,
            code,
            String::from_utf8_lossy(&body).into_owned(),
            next,
        ))
    };
    tokio::time::timeout(deadline.cap(CALL_TIMEOUT), exchange)
        .await
        .unwrap_or_else(|_| Err(TableError::Unavailable("no answer in time".to_owned())))
}

/// The time now, as the table's `UpdatedOn` (RFC 3339).
pub(crate) fn now() -> String {
    super::message::creation_time_now()
}

/// A row for `job`, with `status` and `details`.
pub(crate) fn row(
    operation: &Uuid,
    source_id: SourceId,
    job: &crate::ingest::BlobJob,
    status: &'static str,
    details: String,
    updated_on: &str,
) -> StatusRow {
    StatusRow {
        partition_key: operation.to_string(),
        row_key: source_id.to_string(),
        status,
        ingestion_source_id: source_id.to_string(),
        ingestion_source_path: job.blob.without_credentials().to_owned(),
        database: job.database.to_string(),
        table: job.table.to_string(),
        updated_on: updated_on.to_owned(),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_azure_and_azurite_table_urls() {
        let t = StatusTable::parse(
            "https://acct.table.core.windows.net/ingestionsstatus20221101?sv=1&tn=ingestionsstatus20221101&sig=S",
        )
        .unwrap();
        assert_eq!(
            t.public_url(),
            "https://acct.table.core.windows.net/ingestionsstatus20221101"
        );
        assert!(t.connection_string().ends_with("&sig=S"));
        assert!(!format!("{t:?}").contains("sig"));
        let t = StatusTable::parse("http://127.0.0.1:10002/acct1/status1?sig=S").unwrap();
        assert_eq!(t.public_url(), "http://127.0.0.1:10002/acct1/status1");
        for bad in [
            "http://evil.example.com/acct/t?sig=S",
            "https://acct.table.core.windows.net/?sig=S",
            "https://acct.table.core.windows.net/a-b?sig=S",
        ] {
            assert!(StatusTable::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batch_body_is_one_changeset_of_puts() {
        let t = StatusTable::parse("https://acct.table.core.windows.net/st?sig=S").unwrap();
        let row = StatusRow {
            partition_key: "p".into(),
            row_key: "r'1".into(),
            status: "Pending",
            ingestion_source_id: "r".into(),
            ingestion_source_path: "https://a/c/b.csv".into(),
            database: "db".into(),
            table: "t".into(),
            updated_on: "2024-01-01T00:00:00Z".into(),
            details: String::new(),
        };
        let body = t.batch_body("batch_x", &[row.clone(), row]).unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.starts_with("--batch_x\r\nContent-Type: multipart/mixed; boundary=changeset_")
        );
        assert_eq!(
            text.matches("PUT https://acct.table.core.windows.net/st(PartitionKey='p',RowKey='r''1') HTTP/1.1")
                .count(),
            2
        );
        assert!(text.contains(r#""Status":"Pending","IngestionSourceId":"r""#));
        assert!(
            !text.contains("sig=S"),
            "the SAS goes on the $batch URL only"
        );
        assert!(text.ends_with("--batch_x--\r\n"));
    }
}
