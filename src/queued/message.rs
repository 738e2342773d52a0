//! The ingestion message the DM reads from its `SecuredReadyForAggregationQueue`: the Python SDK's
//! keys and order (reference §4.1–4.4), serialized with serde, then base64 of the UTF-8 JSON.

use super::authorization::AuthorizationContext;
use crate::dm::{APPLICATION_FOR_TRACING, CLIENT_VERSION_FOR_TRACING};
use crate::domain::{BlobUri, DatabaseName, SourceId, TableName};
use crate::properties::IngestionSpec;
use base64::Engine;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

/// Azure Queue Storage accepts message text up to 64 KiB.
pub(crate) const MAX_ENCODED_MESSAGE: usize = 64 * 1024;

/// Everything needed to describe one blob to the DM.
pub(crate) struct IngestionMessage<'a> {
    pub(crate) source_id: SourceId,
    pub(crate) blob: &'a BlobUri,
    pub(crate) raw_data_size: Option<u64>,
    pub(crate) database: &'a DatabaseName,
    pub(crate) table: &'a TableName,
    pub(crate) spec: &'a IngestionSpec,
    pub(crate) authorization_context: &'a AuthorizationContext,
    /// RFC 3339, shared by every message of one request.
    pub(crate) created_at: &'a str,
    /// Where the DM records the blob's outcome, when it is tracked.
    pub(crate) status_in_table: Option<StatusInTable<'a>>,
}

/// `IngestionStatusInTable`: the status table (URL with its SAS) and the row of this blob.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StatusInTable<'a> {
    pub(crate) table_connection_string: &'a str,
    pub(crate) partition_key: &'a str,
    pub(crate) row_key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Wire<'a> {
    blob_path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_data_size: Option<u64>,
    database_name: &'a str,
    table_name: &'a str,
    retain_blob_on_success: bool,
    flush_immediately: bool,
    ignore_size_limit: bool,
    report_level: u8,
    report_method: u8,
    source_message_creation_time: &'a str,
    id: String,
    application_for_tracing: &'a str,
    client_version_for_tracing: &'a str,
    additional_properties: Additional<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingestion_status_in_table: Option<StatusInTable<'a>>,
}

/// `authorizationContext` first, then the blob's properties in the order they were given.
struct Additional<'a> {
    authorization_context: &'a str,
    properties: &'a [(String, Value)],
}

impl Serialize for Additional<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.properties.len() + 1))?;
        map.serialize_entry("authorizationContext", self.authorization_context)?;
        for (key, value) in self.properties {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EncodeError {
    #[error(
        "the encoded ingestion message is {size} bytes, over the queue's {MAX_ENCODED_MESSAGE}-byte limit; shorten the blob's properties (an inline ingestionMapping is the usual cause) or use a mapping reference"
    )]
    TooLarge { size: usize },
    #[error("the ingestion message could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl IngestionMessage<'_> {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let wire = Wire {
            blob_path: self.blob.expose_with_credentials(),
            raw_data_size: self.raw_data_size.filter(|&n| n > 0),
            database_name: self.database.as_str(),
            table_name: self.table.as_str(),
            retain_blob_on_success: self.spec.retain_blob_on_success,
            flush_immediately: self.spec.flush_immediately,
            ignore_size_limit: self.spec.ignore_size_limit,
            report_level: self.spec.report_level as u8,
            report_method: self.spec.report_method as u8,
            source_message_creation_time: self.created_at,
            id: self.source_id.to_string(),
            application_for_tracing: APPLICATION_FOR_TRACING,
            client_version_for_tracing: CLIENT_VERSION_FOR_TRACING,
            additional_properties: Additional {
                authorization_context: self.authorization_context.expose(),
                properties: &self.spec.additional,
            },
            ingestion_status_in_table: self.status_in_table,
        };
        serde_json::to_vec(&wire)
    }

    /// The queue message text: base64 of the UTF-8 JSON, checked against the queue's size limit.
    pub(crate) fn encode(&self) -> Result<QueueText, EncodeError> {
        let json = self.to_json()?;
        let size = base64::encoded_len(json.len(), true).unwrap_or(usize::MAX);
        if size > MAX_ENCODED_MESSAGE {
            return Err(EncodeError::TooLarge { size });
        }
        Ok(QueueText::encode(&json))
    }
}

/// The text of one queue message: base64, so it goes into the Put Message XML body as it is, with
/// nothing to escape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueText(String);

impl QueueText {
    pub(crate) fn encode(bytes: &[u8]) -> Self {
        Self(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 3339 UTC timestamp for `SourceMessageCreationTime`.
pub(crate) fn creation_time_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::PropertyBag;
    use serde_json::json;

    fn spec(props: Value) -> IngestionSpec {
        let Value::Object(map) = props else {
            unreachable!("object")
        };
        PropertyBag::from_map(map).parse().unwrap().spec()
    }

    fn decode(text: &str) -> Value {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn message_matches_the_python_sdk_shape() {
        // Reference §4.3, first example: same keys, same order, same encodings.
        let blob = BlobUri::parse(
            "https://acct.blob.core.windows.net/container/MyDb__MyTable__guid__data.json.gz?sv=2018-03-28&sig=XXX",
        )
        .unwrap();
        let db = DatabaseName::parse("MyDb").unwrap();
        let table = TableName::parse("MyTable").unwrap();
        let spec = spec(json!({"ingestionMappingReference": "MyMapping", "format": "multijson"}));
        let auth = AuthorizationContext::new("<authorization-context-token>");
        let msg = IngestionMessage {
            source_id: SourceId::parse("11111111-2222-4333-8444-555555555555").unwrap(),
            blob: &blob,
            raw_data_size: Some(1_048_576),
            database: &db,
            table: &table,
            spec: &spec,
            authorization_context: &auth,
            created_at: "2024-05-01T12:48:09.964774Z",
            status_in_table: None,
        };
        let json = String::from_utf8(msg.to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"BlobPath":"https://acct.blob.core.windows.net/container/MyDb__MyTable__guid__data.json.gz?sv=2018-03-28&sig=XXX","#,
                r#""RawDataSize":1048576,"DatabaseName":"MyDb","TableName":"MyTable","RetainBlobOnSuccess":true,"#,
                r#""FlushImmediately":false,"IgnoreSizeLimit":false,"ReportLevel":0,"ReportMethod":0,"#,
                r#""SourceMessageCreationTime":"2024-05-01T12:48:09.964774Z","Id":"11111111-2222-4333-8444-555555555555","#,
                r#""ApplicationForTracing":"kusto-ingest-api","ClientVersionForTracing":"Kusto.IngestApi:{0.1.0}|Runtime.{rust}","#,
                r#""AdditionalProperties":{"authorizationContext":"<authorization-context-token>","#,
                r#""ingestionMappingReference":"MyMapping","format":"multijson","ingestionMappingType":"Json"}}"#
            )
        );
        assert_eq!(
            decode(msg.encode().unwrap().as_str()),
            serde_json::from_str::<Value>(&json).unwrap()
        );
    }

    #[test]
    fn unknown_size_is_left_out() {
        let blob = BlobUri::parse("https://a.blob.core.windows.net/c/b.csv").unwrap();
        let (db, table) = (
            DatabaseName::parse("d").unwrap(),
            TableName::parse("t").unwrap(),
        );
        let spec = spec(json!({}));
        let auth = AuthorizationContext::new("tok");
        for size in [None, Some(0)] {
            let msg = IngestionMessage {
                source_id: SourceId::new_random(),
                blob: &blob,
                raw_data_size: size,
                database: &db,
                table: &table,
                spec: &spec,
                authorization_context: &auth,
                created_at: "t",
                status_in_table: None,
            };
            assert!(
                decode(msg.encode().unwrap().as_str())
                    .get("RawDataSize")
                    .is_none()
            );
        }
    }

    #[test]
    fn a_tracked_message_names_its_status_row() {
        let blob = BlobUri::parse("https://a.blob.core.windows.net/c/b.csv").unwrap();
        let (db, table) = (
            DatabaseName::parse("d").unwrap(),
            TableName::parse("t").unwrap(),
        );
        let spec = spec(json!({"reportMethod": "table"}));
        let auth = AuthorizationContext::new("tok");
        let msg = IngestionMessage {
            source_id: SourceId::parse("11111111-2222-4333-8444-555555555555").unwrap(),
            blob: &blob,
            raw_data_size: None,
            database: &db,
            table: &table,
            spec: &spec,
            authorization_context: &auth,
            created_at: "t",
            status_in_table: Some(StatusInTable {
                table_connection_string: "https://s.table.core.windows.net/st?sig=x",
                partition_key: "p",
                row_key: "11111111-2222-4333-8444-555555555555",
            }),
        };
        let json = decode(msg.encode().unwrap().as_str());
        assert_eq!(json["ReportMethod"], 1);
        assert_eq!(json["ReportLevel"], 2);
        assert_eq!(
            json["IngestionStatusInTable"],
            json!({"TableConnectionString": "https://s.table.core.windows.net/st?sig=x",
                   "PartitionKey": "p", "RowKey": "11111111-2222-4333-8444-555555555555"})
        );
    }

    #[test]
    fn oversized_message_is_refused() {
        let blob = BlobUri::parse("https://a.blob.core.windows.net/c/b.csv").unwrap();
        let (db, table) = (
            DatabaseName::parse("d").unwrap(),
            TableName::parse("t").unwrap(),
        );
        let spec = spec(json!({"ingestionMapping": "x".repeat(50_000)}));
        let auth = AuthorizationContext::new("tok");
        let msg = IngestionMessage {
            source_id: SourceId::new_random(),
            blob: &blob,
            raw_data_size: None,
            database: &db,
            table: &table,
            spec: &spec,
            authorization_context: &auth,
            created_at: "t",
            status_in_table: None,
        };
        assert!(
            matches!(msg.encode(), Err(EncodeError::TooLarge { size }) if size > MAX_ENCODED_MESSAGE)
        );
    }
}
