//! The v1 JSON "Tables" response format of `/v1/rest/mgmt` (reference §2.3–2.4) and the Kusto
//! ("OneApi") error body (§2.5).

use crate::domain::{clip, scrub_secrets};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub(crate) struct V1Response {
    #[serde(rename = "Tables")]
    pub(crate) tables: Vec<V1Table>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct V1Table {
    #[serde(rename = "TableName", default)]
    pub(crate) table_name: String,
    #[serde(rename = "Columns")]
    pub(crate) columns: Vec<V1Column>,
    #[serde(rename = "Rows")]
    pub(crate) rows: Vec<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct V1Column {
    #[serde(rename = "ColumnName")]
    pub(crate) column_name: String,
}

impl V1Response {
    /// The primary result: the first table, as the SDKs read it.
    pub(crate) fn primary(&self) -> Result<&V1Table, String> {
        self.tables
            .first()
            .ok_or_else(|| "the response has no table".to_owned())
    }
}

impl V1Table {
    pub(crate) fn column(&self, name: &str) -> Result<usize, String> {
        self.columns
            .iter()
            .position(|c| c.column_name.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("table '{}' has no column '{name}'", self.table_name))
    }

    /// The string in `row` at `column`, if that cell is a string.
    pub(crate) fn string_at(row: &[Value], column: usize) -> Option<&str> {
        row.get(column).and_then(Value::as_str)
    }
}

/// `{"error": {"code", "message", "@message", ...}}`; every field optional because only JSON
/// bodies of 4xx/5xx other than 401 are promised.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct KustoErrorBody {
    #[serde(default)]
    pub(crate) error: KustoError,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct KustoError {
    #[serde(default)]
    pub(crate) code: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(rename = "@message", default)]
    pub(crate) detail: Option<String>,
}

impl KustoErrorBody {
    /// A one-line summary of a DM error body, made safe to echo: secrets scrubbed, clipped,
    /// control characters escaped.
    pub(crate) fn summarize(body: &[u8]) -> String {
        clip(&scrub_secrets(&Self::summary(body)))
    }

    fn summary(body: &[u8]) -> String {
        match serde_json::from_slice::<KustoErrorBody>(body) {
            Ok(KustoErrorBody { error }) if error.code.is_some() || error.message.is_some() => {
                let mut parts: Vec<String> = Vec::new();
                if let Some(code) = error.code {
                    parts.push(code);
                }
                if let Some(message) = error.detail.or(error.message) {
                    parts.push(message);
                }
                parts.join(": ")
            }
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    "no details in the response body".to_owned()
                } else {
                    text.chars().take(300).collect()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_identity_token_table() {
        let body = r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"AuthorizationContext","DataType":"String","ColumnType":"string"}],"Rows":[["tok"]]}]}"#;
        let resp: V1Response = serde_json::from_str(body).unwrap();
        let table = resp.primary().unwrap();
        let col = table.column("AuthorizationContext").unwrap();
        assert_eq!(V1Table::string_at(&table.rows[0], col), Some("tok"));
    }

    #[test]
    fn summarizes_kusto_error_bodies() {
        let body = br#"{"error":{"code":"BadRequest","message":"Request is invalid and cannot be executed.","@type":"Kusto.Common.Svc.Exceptions.AdminCommandWrongEndpointException","@message":"Cannot get ingestion resources from this service endpoint.","@permanent":false}}"#;
        assert_eq!(
            KustoErrorBody::summarize(body),
            "BadRequest: Cannot get ingestion resources from this service endpoint."
        );
        assert_eq!(
            KustoErrorBody::summarize(b"  "),
            "no details in the response body"
        );
        assert_eq!(KustoErrorBody::summarize(b"oops"), "oops");
    }
}
