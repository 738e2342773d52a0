//! Every error the HTTP edge returns, and its one mapping to a status and the Azure REST error shape
//! `{"error": {"code", "message", "target", "details"}}`.

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl ErrorDetail {
    pub fn new(code: &'static str, message: impl Into<String>, target: Option<String>) -> Self {
        Self {
            code,
            message: message.into(),
            target,
        }
    }
}

/// A request-level failure, before any blob was attempted.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// The body is not JSON.
    InvalidJson(String),
    /// One or more fields are missing or invalid; the first is the headline.
    InvalidFields(Vec<ErrorDetail>),
    TooManyBlobs {
        count: usize,
        max: usize,
    },
    BodyTooLarge {
        max: usize,
    },
    DmNotAllowed(String),
    NotFound,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidFields(_) => 400,
            ApiError::DmNotAllowed(_) => 403,
            ApiError::NotFound => 404,
            ApiError::TooManyBlobs { .. } | ApiError::BodyTooLarge { .. } => 413,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let (headline, details) = match self {
            ApiError::InvalidJson(reason) => (
                ErrorDetail::new(
                    "InvalidJson",
                    format!("The request body is not valid JSON: {reason}"),
                    None,
                ),
                vec![],
            ),
            ApiError::InvalidFields(errors) => {
                let first = errors
                    .first()
                    .cloned()
                    .unwrap_or_else(|| ErrorDetail::new("InvalidField", "invalid request", None));
                let headline = if errors.len() > 1 {
                    ErrorDetail {
                        message: format!(
                            "{} (and {} more problems, see details)",
                            first.message,
                            errors.len() - 1
                        ),
                        ..first
                    }
                } else {
                    first
                };
                (headline, errors.clone())
            }
            ApiError::TooManyBlobs { count, max } => (
                ErrorDetail::new(
                    "TooManyBlobs",
                    format!(
                        "The request lists {count} blobs; at most {max} are accepted per request (setting INGEST_MAX_BLOBS). Split it into several requests."
                    ),
                    Some("blobs".to_owned()),
                ),
                vec![],
            ),
            ApiError::BodyTooLarge { max } => (
                ErrorDetail::new(
                    "BodyTooLarge",
                    format!(
                        "The request body is larger than {max} bytes (setting INGEST_MAX_BODY_BYTES)."
                    ),
                    None,
                ),
                vec![],
            ),
            ApiError::DmNotAllowed(uri) => (
                ErrorDetail::new(
                    "DataManagementUriNotAllowed",
                    format!(
                        "'{uri}' is not an allowed Data Management endpoint; allowed endpoints are configured with KUSTO_INGEST_URI and KUSTO_ALLOWED_INGEST_URIS."
                    ),
                    Some("dataManagementUri".to_owned()),
                ),
                vec![],
            ),
            ApiError::NotFound => (ErrorDetail::new("NotFound", "No such route.", None), vec![]),
        };
        error_body(&headline, &details)
    }
}

pub fn error_body(headline: &ErrorDetail, details: &[ErrorDetail]) -> serde_json::Value {
    let mut error = serde_json::to_value(headline).unwrap_or_default();
    if !details.is_empty() {
        error["details"] = serde_json::to_value(details).unwrap_or_default();
    }
    serde_json::json!({ "error": error })
}

/// `Retry-After` in whole seconds, at least one.
pub fn retry_after_header(after: Duration) -> String {
    after.as_secs().max(1).to_string()
}
