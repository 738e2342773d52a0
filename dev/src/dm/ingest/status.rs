//! Updating the client's entity in the DM's status table (reference §4.6) when the message
//! carries `IngestionStatusInTable`: Insert-Or-Merge (`MERGE` without `If-Match`) with the
//! SAS of `TableConnectionString`, so the client's own columns (`IngestionSourcePath`, ...)
//! stay and a missing entity is created.

use serde_json::{Value, json};

use super::message::StatusRow;
use super::outcome::{FailureStatus, IngestionStatus};

const TABLE_VERSION: &str = "2019-02-02";

/// The DM-written columns.
pub(crate) struct StatusUpdate<'a> {
    pub status: IngestionStatus,
    pub operation_id: &'a str,
    pub activity_id: &'a str,
    pub error_code: Option<&'a str>,
    pub failure_status: Option<FailureStatus>,
    pub details: &'a str,
    pub updated_on: &'a str,
}

/// A key inside `(PartitionKey='…',RowKey='…')`: quotes doubled, then percent-encoded.
fn key(k: &str) -> String {
    url::form_urlencoded::byte_serialize(k.replace('\'', "''").as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn body(u: &StatusUpdate<'_>) -> Value {
    let mut v = json!({
        "Status": u.status.as_str(),
        "UpdatedOn": u.updated_on,
        "UpdatedOn@odata.type": "Edm.DateTime",
        "OperationId": u.operation_id,
        "OperationId@odata.type": "Edm.Guid",
        "ActivityId": u.activity_id,
        "ActivityId@odata.type": "Edm.Guid",
        "Details": u.details,
        "OriginatesFromUpdatePolicy": false,
    });
    if let Some(code) = u.error_code {
        v["ErrorCode"] = code.into();
    }
    if let Some(fs) = u.failure_status {
        v["FailureStatus"] = fs.as_str().into();
    }
    v
}

/// Merges the update into the entity; `Err` says why it could not.
pub(crate) async fn update(
    client: &reqwest::Client,
    row: &StatusRow,
    update: &StatusUpdate<'_>,
) -> Result<(), String> {
    let (base, sas) = row
        .table_url
        .split_once('?')
        .unwrap_or((row.table_url.as_str(), ""));
    let url = format!(
        "{}(PartitionKey='{}',RowKey='{}')?{sas}",
        base.trim_end_matches('/'),
        key(&row.partition_key),
        key(&row.row_key)
    );
    let merge = reqwest::Method::from_bytes(b"MERGE").map_err(|e| e.to_string())?;
    let rsp = client
        .request(merge, &url)
        .header("x-ms-version", TABLE_VERSION)
        .header("content-type", "application/json")
        .header("accept", "application/json;odata=nometadata")
        .header("dataserviceversion", "3.0;NetFx")
        .body(body(update).to_string())
        .send()
        .await
        .map_err(|e| format!("updating the status row: {e}"))?;
    let status = rsp.status().as_u16();
    if status == 204 {
        Ok(())
    } else {
        let text = rsp.text().await.unwrap_or_default();
        Err(format!(
            "updating the status row: HTTP {status} {}",
            text.chars().take(300).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_and_encoded() {
        assert_eq!(key("a'b c/d"), "a%27%27b%20c%2Fd");
        let u = StatusUpdate {
            status: IngestionStatus::Failed,
            operation_id: "o",
            activity_id: "a",
            error_code: Some("Download_SourceNotFound"),
            failure_status: Some(FailureStatus::Permanent),
            details: "d",
            updated_on: "t",
        };
        let b = body(&u);
        assert_eq!(b["Status"], "Failed");
        assert_eq!(b["FailureStatus"], "Permanent");
        assert_eq!(b["ErrorCode"], "Download_SourceNotFound");
    }
}
