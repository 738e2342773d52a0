//! Kusto v1 JSON ("Tables") responses and OneApi error bodies (reference §2.3–§2.5).
//! Typed structs keep the field order of the real service (`TableName`, `Columns`, `Rows`).

use serde::{Deserialize, Serialize};

/// `{"Tables":[…]}` — v1 response to a management command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V1Response {
    #[serde(rename = "Tables")]
    pub tables: Vec<V1Table>,
}

/// One table of a v1 response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V1Table {
    #[serde(rename = "TableName")]
    pub table_name: String,
    #[serde(rename = "Columns")]
    pub columns: Vec<V1Column>,
    #[serde(rename = "Rows")]
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// Column descriptor; the DM reports strings as `DataType: "String"`, `ColumnType: "string"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V1Column {
    #[serde(rename = "ColumnName")]
    pub column_name: String,
    #[serde(rename = "DataType")]
    pub data_type: String,
    #[serde(rename = "ColumnType")]
    pub column_type: String,
}

impl V1Column {
    fn string(name: &str) -> Self {
        V1Column {
            column_name: name.into(),
            data_type: "String".into(),
            column_type: "string".into(),
        }
    }
}

impl V1Table {
    /// A `Table_0` whose columns are all strings.
    pub fn strings(columns: &[&str], rows: Vec<Vec<String>>) -> Self {
        V1Table {
            table_name: "Table_0".into(),
            columns: columns.iter().map(|c| V1Column::string(c)).collect(),
            rows: rows
                .into_iter()
                .map(|r| r.into_iter().map(serde_json::Value::String).collect())
                .collect(),
        }
    }

    /// Rows as `column name -> string value` pairs (non-strings are rendered as JSON).
    pub fn records(&self) -> Vec<Vec<(String, String)>> {
        self.rows
            .iter()
            .map(|row| {
                self.columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| {
                        let s = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (c.column_name.clone(), s)
                    })
                    .collect()
            })
            .collect()
    }
}

/// `ResourceTypeName` of the rows padding an oversized `.get ingestion resources` answer
/// (`Faults::set_oversized_answers`); clients ignore resource types they do not know.
pub const PADDING_RESOURCE_TYPE: &str = "KustoDevPadding";

/// The `.get ingestion resources` table: `(ResourceTypeName, StorageRoot)` rows.
pub fn ingestion_resources(rows: Vec<(String, String)>) -> V1Response {
    V1Response {
        tables: vec![V1Table::strings(
            &["ResourceTypeName", "StorageRoot"],
            rows.into_iter().map(|(t, u)| vec![t, u]).collect(),
        )],
    }
}

/// The `.get kusto identity token` table: one `AuthorizationContext` row.
pub fn identity_token(authorization_context: &str) -> V1Response {
    V1Response {
        tables: vec![V1Table::strings(
            &["AuthorizationContext"],
            vec![vec![authorization_context.to_string()]],
        )],
    }
}

/// The answer to `T | count`: one `Count` column of type long.
pub fn count(n: u64) -> V1Response {
    V1Response {
        tables: vec![V1Table {
            table_name: "Table_0".into(),
            columns: vec![V1Column {
                column_name: "Count".into(),
                data_type: "Int64".into(),
                column_type: "long".into(),
            }],
            rows: vec![vec![n.into()]],
        }],
    }
}

/// `{"error": {...}}` OneApi error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KustoErrorBody {
    pub error: KustoError,
}

/// Fields read by the SDKs (PY `OneApiError.from_dict`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KustoError {
    pub code: String,
    pub message: String,
    #[serde(rename = "@type")]
    pub type_: String,
    #[serde(rename = "@message")]
    pub at_message: String,
    #[serde(rename = "@context", default)]
    pub context: serde_json::Value,
    #[serde(rename = "@permanent")]
    pub permanent: bool,
}

/// Request-specific `@context` values.
pub struct ErrorContext<'a> {
    pub activity_id: &'a str,
    pub client_request_id: Option<&'a str>,
}

fn body(
    code: &str,
    message: &str,
    type_: &str,
    at_message: String,
    permanent: bool,
    ctx: &ErrorContext<'_>,
) -> KustoErrorBody {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    KustoErrorBody {
        error: KustoError {
            code: code.into(),
            message: message.into(),
            type_: type_.into(),
            at_message,
            context: serde_json::json!({
                "timestamp": timestamp,
                "serviceAlias": "KUSTO-DEV-EMULATOR",
                "machineName": "KDM-EMULATOR",
                "processName": "kusto-dev",
                "clientRequestId": ctx.client_request_id.unwrap_or(""),
                "activityId": ctx.activity_id,
                "activityType": "DN.AdminCommand",
            }),
            permanent,
        },
    }
}

/// 401 (the real DM's 401 body is not guaranteed JSON; the emulator sends a OneApi one).
pub fn unauthorized(detail: &str, ctx: &ErrorContext<'_>) -> KustoErrorBody {
    body(
        "Unauthorized",
        "The caller is not authorized to perform this operation.",
        "Kusto.Common.Svc.Exceptions.UnauthorizedOperationException",
        format!("Unauthorized: {detail}"),
        true,
        ctx,
    )
}

/// 400 for a body that is not `{"csl": "...", "db": ...}` JSON.
pub fn bad_request(detail: &str, ctx: &ErrorContext<'_>) -> KustoErrorBody {
    body(
        "BadRequest",
        "Request is invalid and cannot be executed.",
        "Kusto.Common.Svc.Exceptions.BadRequestException",
        format!("Bad request: {detail}"),
        true,
        ctx,
    )
}

/// 400 for a command the DM does not know (reference §2.5).
pub fn syntax_error(csl: &str, ctx: &ErrorContext<'_>) -> KustoErrorBody {
    body(
        "BadRequest_SyntaxError",
        "Request is invalid and cannot be executed.",
        "Kusto.Data.Exceptions.SyntaxException",
        format!("Syntax error: Query could not be parsed: . Query: '{csl}'"),
        true,
        ctx,
    )
}

/// 400 for a query naming a table or database that does not exist, or one the emulator
/// cannot run (it knows `T | count` only).
pub fn semantic_error(detail: &str, ctx: &ErrorContext<'_>) -> KustoErrorBody {
    body(
        "General_BadRequest",
        "Request is invalid and cannot be executed.",
        "Kusto.Data.Exceptions.SemanticException",
        format!("Semantic error: {detail}"),
        true,
        ctx,
    )
}

/// 429 `ControlCommandThrottledException` (reference §2.5, request-rate-limit policy).
pub fn throttled(command: &str, ctx: &ErrorContext<'_>) -> KustoErrorBody {
    body(
        "TooManyRequests",
        "Request was throttled.",
        "Kusto.DataNode.Exceptions.ControlCommandThrottledException",
        format!(
            "The management command was aborted due to throttling. Retrying after some backoff \
             might succeed. CommandType: '{}', Capacity: 80, Origin: \
             'RequestRateLimitPolicy/WorkloadGroup/default'.",
            command_type(command)
        ),
        false,
        ctx,
    )
}

/// 429 on a v2 REST endpoint: the throttling body of management commands (the only one the
/// references show; none documents v2 errors, see docs/wire-facts.md), naming no command.
pub fn throttled_request(ctx: &ErrorContext<'_>) -> KustoErrorBody {
    body(
        "TooManyRequests",
        "Request was throttled.",
        "Kusto.DataNode.Exceptions.ControlCommandThrottledException",
        "The request was aborted due to throttling. Retrying after some backoff might succeed. \
         Origin: 'RequestRateLimitPolicy/WorkloadGroup/default'."
            .to_owned(),
        false,
        ctx,
    )
}

/// Any other injected status (5xx, 403, ...): a transient service error body.
pub fn service_error(status: u16, ctx: &ErrorContext<'_>) -> KustoErrorBody {
    let (code, type_, permanent) = match status {
        403 => (
            "Forbidden",
            "Kusto.Common.Svc.Exceptions.UnauthorizedOperationException",
            true,
        ),
        404 => (
            "NotFound",
            "Kusto.Common.Svc.Exceptions.EntityNotFoundException",
            true,
        ),
        400..=499 => (
            "BadRequest",
            "Kusto.Common.Svc.Exceptions.BadRequestException",
            true,
        ),
        503 => (
            "ServiceUnavailable",
            "Kusto.Common.Svc.Exceptions.ServiceUnavailableException",
            false,
        ),
        504 => (
            "Timeout",
            "Kusto.Common.Svc.Exceptions.TimeoutException",
            false,
        ),
        _ => (
            "InternalServiceError",
            "Kusto.Common.Svc.Exceptions.InternalServiceErrorException",
            false,
        ),
    };
    body(
        code,
        "Service error (injected by kusto-dev DM emulator).",
        type_,
        format!("Injected HTTP {status}"),
        permanent,
        ctx,
    )
}

fn command_type(command: &str) -> &'static str {
    let c = command.to_ascii_lowercase();
    if c.contains("identity token") {
        "KustoIdentityTokenGetCommand"
    } else if c.contains("ingestion resources") {
        "IngestionResourcesGetCommand"
    } else {
        "AdminCommand"
    }
}
