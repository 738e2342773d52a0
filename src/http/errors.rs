//! Every error the HTTP edge returns, and its one mapping to a status, `Retry-After` and the Azure
//! REST error shape `{"error": {"code", "message", "target", "details"}}`. Per-blob failures
//! ([`BlobFailure`]) are mapped here too.

use crate::authorization::Denial;
use crate::ingest::BlobFailure;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ErrorDetail {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
}

impl ErrorDetail {
    pub(crate) fn new(
        code: &'static str,
        message: impl Into<String>,
        target: Option<String>,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            target,
        }
    }

    /// A blob failure as an error: its code and message.
    pub(crate) fn failure(failure: &BlobFailure) -> Self {
        Self::new(failure.code.as_str(), failure.message.clone(), None)
    }
}

/// A request-level failure, before any blob was attempted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ApiError {
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
    /// The caller may not ingest this (see `authorization`).
    Forbidden(Denial),
    NotFound,
    /// The route exists, not with this method; `Allow` lists those it has.
    MethodNotAllowed {
        allow: &'static str,
    },
    /// The client stopped sending its body.
    BodyTimeout(Duration),
    /// A data body over `INGEST_MAX_DATA_BYTES`.
    DataTooLarge {
        max: u64,
    },
    /// A data body over what the DM accepts for one ingestion (REST v2 `maxDataSize`).
    DataOverDmLimit {
        max: u64,
    },
    /// A data body that cannot be ingested: its code and why.
    InvalidData(&'static str, String),
    /// As many requests as allowed are in flight already.
    Busy,
}

impl ApiError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidFields(_) => 400,
            ApiError::DmNotAllowed(_) | ApiError::Forbidden(_) => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::BodyTimeout(_) => 408,
            ApiError::DataTooLarge { .. } | ApiError::DataOverDmLimit { .. } => 413,
            ApiError::InvalidData(..) => 400,
            ApiError::Busy => 503,
            ApiError::TooManyBlobs { .. } | ApiError::BodyTooLarge { .. } => 413,
        }
    }

    /// The error's headline: its `error.code` and `error.message`.
    pub(crate) fn headline(&self) -> ErrorDetail {
        match self {
            ApiError::InvalidJson(reason) => ErrorDetail::new(
                "InvalidJson",
                format!("The request body is not valid JSON: {reason}"),
                None,
            ),
            ApiError::InvalidFields(errors) => {
                let first = errors
                    .first()
                    .cloned()
                    .unwrap_or_else(|| ErrorDetail::new("InvalidField", "invalid request", None));
                if errors.len() > 1 {
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
                }
            }
            ApiError::TooManyBlobs { count, max } => ErrorDetail::new(
                "TooManyBlobs",
                format!(
                    "The request lists {count} blobs; at most {max} are accepted per request (setting INGEST_MAX_BLOBS). Split it into several requests."
                ),
                Some("blobs".to_owned()),
            ),
            ApiError::BodyTooLarge { max } => ErrorDetail::new(
                "BodyTooLarge",
                format!(
                    "The request body is larger than {max} bytes (setting INGEST_MAX_BODY_BYTES)."
                ),
                None,
            ),
            ApiError::DmNotAllowed(uri) => ErrorDetail::new(
                "DataManagementUriNotAllowed",
                format!(
                    "'{uri}' is not an allowed Data Management endpoint; allowed endpoints are configured with KUSTO_INGEST_URI and KUSTO_ALLOWED_INGEST_URIS."
                ),
                Some("dataManagementUri".to_owned()),
            ),
            ApiError::Forbidden(denial) => {
                ErrorDetail::new(denial.code, denial.message.clone(), denial.target.clone())
            }
            ApiError::NotFound => ErrorDetail::new("NotFound", "No such route.", None),
            ApiError::MethodNotAllowed { allow } => ErrorDetail::new(
                "MethodNotAllowed",
                format!("This route answers {allow} only."),
                None,
            ),
            ApiError::BodyTimeout(after) => ErrorDetail::new(
                "RequestTimeout",
                format!(
                    "The request body stopped arriving: nothing came for {} s.",
                    after.as_secs()
                ),
                None,
            ),
            ApiError::DataTooLarge { max } => ErrorDetail::new(
                "BodyTooLarge",
                format!("The data is larger than {max} bytes (setting INGEST_MAX_DATA_BYTES)."),
                None,
            ),
            ApiError::DataOverDmLimit { max } => ErrorDetail::new(
                "DataTooLarge",
                format!(
                    "The data is larger than {max} bytes uncompressed, the most the DM accepts for one ingestion (maxDataSize of its ingestion configuration); nothing was queued."
                ),
                None,
            ),
            ApiError::InvalidData(code, message) => ErrorDetail::new(code, message.clone(), None),
            ApiError::Busy => ErrorDetail::new(
                "ServerBusy",
                "The handler is serving as many requests as it allows (setting INGEST_MAX_REQUESTS); try again shortly.",
                None,
            ),
        }
    }

    fn details(&self) -> &[ErrorDetail] {
        match self {
            ApiError::InvalidFields(errors) => errors,
            _ => &[],
        }
    }
}

/// `{"error": {...headline, "details": [...]}}`.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    #[serde(flatten)]
    headline: &'a ErrorDetail,
    #[serde(skip_serializing_if = "<[ErrorDetail]>::is_empty")]
    details: &'a [ErrorDetail],
}

impl<'a> ErrorBody<'a> {
    pub(crate) fn new(headline: &'a ErrorDetail, details: &'a [ErrorDetail]) -> Self {
        Self {
            error: ErrorObject { headline, details },
        }
    }
}

/// The HTTP answer: status, `Retry-After`, JSON body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: String,
}

impl Reply {
    /// `body` serialized; a body that cannot be serialized is a 500 with a fixed error, never an
    /// empty answer under the intended status.
    pub(crate) fn json<T: Serialize>(status: u16, retry_after: Option<Duration>, body: &T) -> Self {
        match serde_json::to_string(body) {
            Ok(body) => Self {
                status,
                retry_after,
                body,
            },
            Err(error) => {
                tracing::error!(%error, status, "response body could not be serialized");
                Self {
                    status: 500,
                    retry_after: None,
                    body: String::from(
                        "{\"error\":{\"code\":\"InternalError\",\"message\":\"the response could not be serialized\"}}",
                    ),
                }
            }
        }
    }

    /// `Retry-After` in whole seconds, at least one.
    pub(crate) fn retry_after_header(&self) -> Option<String> {
        self.retry_after
            .map(|after| after.as_secs().max(1).to_string())
    }
}

/// How long a caller is asked to wait when the handler is busy.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        let headline = error.headline();
        let retry_after = matches!(error, ApiError::Busy).then_some(BUSY_RETRY_AFTER);
        Reply::json(
            error.status(),
            retry_after,
            &ErrorBody::new(&headline, error.details()),
        )
    }
}

/// Status and `Retry-After` of an answer in which no blob was queued: 503 and the longest retry hint
/// when trying again may help, otherwise 502 when the whole batch failed on our side (the DM
/// refused) and 400 when every blob was refused on its own.
pub(crate) fn nothing_queued<'a>(
    failures: impl IntoIterator<Item = &'a BlobFailure>,
    whole_batch: bool,
) -> (u16, Option<Duration>) {
    let retry_after = failures
        .into_iter()
        .filter(|f| f.is_transient())
        .filter_map(|f| f.retry_after)
        .max();
    match retry_after {
        Some(after) => (503, Some(after)),
        None if whole_batch => (502, None),
        None => (400, None),
    }
}
