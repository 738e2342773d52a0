//! Reading a queued ingestion message (reference §4) the way the DM does: base64 JSON,
//! keys case-insensitive (Python sends `BlobPath`, Java v1 `blobPath`), enums as numbers
//! or names, list properties as JSON-array strings or arrays.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::outcome::Failure;

/// `ReportLevel` (reference §4.5); absent = `FailuresOnly`, the .NET default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportLevel {
    FailuresOnly,
    DoNotReport,
    FailuresAndSuccesses,
}

/// `ReportMethod` (reference §4.5); absent = `Queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportMethod {
    Queue,
    Table,
    QueueAndTable,
}

/// `IngestionStatusInTable`: the status-table entity to update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusRow {
    /// Table URL with SAS (`TableConnectionString`).
    pub table_url: String,
    pub partition_key: String,
    pub row_key: String,
}

#[derive(Debug, Clone)]
pub(crate) struct IngestMessage {
    pub id: String,
    pub blob_path: String,
    pub database: String,
    pub table: String,
    pub retain_blob_on_success: bool,
    pub report_level: ReportLevel,
    pub report_method: ReportMethod,
    pub authorization_context: Option<String>,
    /// Lowercase; `csv` when absent.
    pub format: String,
    pub ignore_first_record: bool,
    pub tags: Vec<String>,
    pub ingest_if_not_exists: Vec<String>,
    pub status_row: Option<StatusRow>,
    /// The whole decoded JSON.
    pub json: Value,
}

impl IngestMessage {
    /// The `ingest-by:` values among `tags`.
    pub(crate) fn ingest_by_tags(&self) -> Vec<String> {
        self.tags
            .iter()
            .filter_map(|t| t.strip_prefix("ingest-by:"))
            .map(str::to_string)
            .collect()
    }

    pub(crate) fn reports_failures(&self) -> bool {
        self.report_level != ReportLevel::DoNotReport
    }

    pub(crate) fn reports_successes(&self) -> bool {
        self.report_level == ReportLevel::FailuresAndSuccesses
    }

    pub(crate) fn reports_to_queue(&self) -> bool {
        self.report_method != ReportMethod::Table
    }
}

/// Value of `name` in `obj`, exact key first, then ignoring ASCII case.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn string(obj: &Map<String, Value>, name: &str) -> Option<String> {
    match field(obj, name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn boolean(obj: &Map<String, Value>, name: &str) -> Option<bool> {
    match field(obj, name)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.trim().parse::<bool>().ok().or_else(|| {
            // Java v1 sends "True"/"False" in some versions.
            match s.trim().to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            }
        }),
        _ => None,
    }
}

/// A list property: a JSON-array string (`"[\"a\",\"b\"]"`, PY/JV/GO), a real array, or a
/// bare string (one value).
fn list(obj: &Map<String, Value>, name: &str) -> Vec<String> {
    let strings = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    match field(obj, name) {
        Some(Value::Array(items)) => strings(items),
        Some(Value::String(s)) if s.trim().is_empty() => Vec::new(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(items)) => strings(&items),
            _ => vec![s.clone()],
        },
        _ => Vec::new(),
    }
}

fn report_level(v: Option<&Value>) -> Option<ReportLevel> {
    Some(match v {
        None | Some(Value::Null) => ReportLevel::FailuresOnly,
        Some(Value::Number(n)) => match n.as_u64()? {
            0 => ReportLevel::FailuresOnly,
            1 => ReportLevel::DoNotReport,
            2 => ReportLevel::FailuresAndSuccesses,
            _ => return None,
        },
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "0" | "failuresonly" => ReportLevel::FailuresOnly,
            "1" | "none" | "donotreport" => ReportLevel::DoNotReport,
            "2" | "failuresandsuccesses" => ReportLevel::FailuresAndSuccesses,
            _ => return None,
        },
        Some(_) => return None,
    })
}

fn report_method(v: Option<&Value>) -> Option<ReportMethod> {
    Some(match v {
        None | Some(Value::Null) => ReportMethod::Queue,
        Some(Value::Number(n)) => match n.as_u64()? {
            0 => ReportMethod::Queue,
            1 => ReportMethod::Table,
            2 => ReportMethod::QueueAndTable,
            _ => return None,
        },
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "0" | "queue" => ReportMethod::Queue,
            "1" | "table" => ReportMethod::Table,
            "2" | "queueandtable" => ReportMethod::QueueAndTable,
            _ => return None,
        },
        Some(_) => return None,
    })
}

fn status_row(obj: &Map<String, Value>) -> Option<StatusRow> {
    let row = field(obj, "IngestionStatusInTable")?.as_object()?;
    Some(StatusRow {
        table_url: string(row, "TableConnectionString")?,
        partition_key: string(row, "PartitionKey")?,
        row_key: string(row, "RowKey")?,
    })
}

/// Decodes a queue `MessageText` into its JSON object.
pub(crate) fn decode(text: &str) -> Result<Value, Failure> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| {
            Failure::permanent(
                "BadRequest_CorruptedMessage",
                format!("the queue message is not base64: {e}"),
            )
        })?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::permanent(
            "BadRequest_CorruptedMessage",
            format!("the queue message is not JSON: {e}"),
        )
    })?;
    if json.is_object() {
        Ok(json)
    } else {
        Err(Failure::permanent(
            "BadRequest_CorruptedMessage",
            "the queue message is not a JSON object",
        ))
    }
}

/// Reads the fields of a decoded message. Missing names fail with the codes of DOC
/// `error-codes.md` (`BadRequest_EmptyBlobUri`, `BadRequest_EmptyDatabaseName`,
/// `BadRequest_InvalidOrEmptyTableName`); unreadable enums with `BadRequest_MalformedIngestionProperty`.
pub(crate) fn read(json: Value) -> (IngestMessage, Result<(), Failure>) {
    let empty = Map::new();
    let obj = json.as_object().unwrap_or(&empty);
    let props = field(obj, "AdditionalProperties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let level = report_level(field(obj, "ReportLevel"));
    let method = report_method(field(obj, "ReportMethod"));
    let message = IngestMessage {
        id: string(obj, "Id").unwrap_or_default(),
        blob_path: string(obj, "BlobPath").unwrap_or_default(),
        database: string(obj, "DatabaseName").unwrap_or_default(),
        table: string(obj, "TableName").unwrap_or_default(),
        // DOC kusto-ingest-client-rest.md: the DM deletes the blob unless told otherwise.
        retain_blob_on_success: boolean(obj, "RetainBlobOnSuccess").unwrap_or(false),
        report_level: level.unwrap_or(ReportLevel::FailuresOnly),
        report_method: method.unwrap_or(ReportMethod::Queue),
        authorization_context: string(props, "authorizationContext"),
        format: string(props, "format")
            .map(|f| f.trim().to_ascii_lowercase())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "csv".into()),
        ignore_first_record: boolean(props, "ignoreFirstRecord").unwrap_or(false),
        tags: list(props, "tags"),
        ingest_if_not_exists: list(props, "ingestIfNotExists"),
        status_row: status_row(obj),
        json: json.clone(),
    };
    let check = if message.blob_path.trim().is_empty() {
        Err(Failure::permanent(
            "BadRequest_EmptyBlobUri",
            "the message has no BlobPath",
        ))
    } else if message.database.trim().is_empty() {
        Err(Failure::permanent(
            "BadRequest_EmptyDatabaseName",
            "the message has no DatabaseName",
        ))
    } else if message.table.trim().is_empty() {
        Err(Failure::permanent(
            "BadRequest_InvalidOrEmptyTableName",
            "the message has no TableName",
        ))
    } else if level.is_none() || method.is_none() {
        Err(Failure::permanent(
            "BadRequest_MalformedIngestionProperty",
            "ReportLevel or ReportMethod is not one of the known values",
        ))
    } else {
        Ok(())
    };
    (message, check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_python_and_java_casing() {
        let (py, ok) = read(json!({
            "Id": "1", "BlobPath": "http://b", "DatabaseName": "db", "TableName": "t",
            "ReportLevel": 2, "ReportMethod": 0,
            "AdditionalProperties": {"authorizationContext": "a", "format": "JSON",
                "tags": "[\"x\",\"ingest-by:b7\"]", "ingestIfNotExists": "[\"b7\"]",
                "ignoreFirstRecord": true}
        }));
        assert!(ok.is_ok());
        assert_eq!(py.format, "json");
        assert_eq!(py.report_level, ReportLevel::FailuresAndSuccesses);
        assert_eq!(py.ingest_by_tags(), ["b7"]);
        assert_eq!(py.ingest_if_not_exists, ["b7"]);
        assert!(py.ignore_first_record && !py.retain_blob_on_success);

        let (jv, ok) = read(json!({
            "id": "1", "blobPath": "http://b", "databaseName": "db", "tableName": "t",
            "reportLevel": "FailuresOnly", "reportMethod": "QueueAndTable",
            "retainBlobOnSuccess": true,
            "additionalProperties": {"authorizationContext": "a", "ignoreFirstRecord": "true"},
            "IngestionStatusInTable": {"TableConnectionString": "http://t?sig=1",
                "PartitionKey": "p", "RowKey": "r"}
        }));
        assert!(ok.is_ok());
        assert_eq!(jv.format, "csv");
        assert_eq!(jv.report_method, ReportMethod::QueueAndTable);
        assert!(jv.retain_blob_on_success && jv.ignore_first_record);
        assert_eq!(jv.status_row.unwrap().row_key, "r");
    }

    #[test]
    fn missing_names_have_their_codes() {
        let (_, r) = read(json!({"BlobPath": "x", "DatabaseName": "db"}));
        assert_eq!(r.unwrap_err().code, "BadRequest_InvalidOrEmptyTableName");
        let (_, r) = read(json!({"DatabaseName": "db", "TableName": "t"}));
        assert_eq!(r.unwrap_err().code, "BadRequest_EmptyBlobUri");
        let (_, r) = read(
            json!({"BlobPath": "x", "DatabaseName": "db", "TableName": "t",
            "ReportLevel": 7}),
        );
        assert_eq!(r.unwrap_err().code, "BadRequest_MalformedIngestionProperty");
        assert_eq!(
            decode("not base64!").unwrap_err().code,
            "BadRequest_CorruptedMessage"
        );
    }
}
