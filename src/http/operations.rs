//! `GET /api/ingest/operations/{operationId}`: a tracked operation's state, counts per state and
//! its blobs, a page at a time, shaped after the queued-ingestion REST API's status answer.

use super::errors::{ErrorBody, ErrorDetail, Reply};
use crate::domain::AllowedDms;
use crate::ingest::{Backend, BlobStatus, Counts, Deadline, OperationId, PageRequest, StatusError};
use base64::Engine;
use serde::Serialize;
use std::time::Duration;

/// Blobs per page unless `$top` says otherwise.
const DEFAULT_TOP: usize = 1000;

/// Where a tracked operation's status is read.
pub(crate) fn status_uri(operation_id: &str) -> String {
    format!("/api/ingest/operations/{operation_id}")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody<'a> {
    operation_id: &'a str,
    /// `InProgress`, `Succeeded`, `Failed` or `PartiallySucceeded`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_updated: Option<&'a str>,
    status: Counts,
    details: Vec<BlobDetail<'a>>,
    /// Pass as `continuation` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    continuation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
}

/// One blob: the REST v2 fields (`url`, `lastUpdated`), with `blob` and `updatedOn` as well.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlobDetail<'a> {
    source_id: &'a str,
    url: &'a str,
    blob: &'a str,
    status: &'static str,
    /// The DM's own status word (`Pending`, `Skipped`, …).
    table_status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_updated: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_on: Option<&'a str>,
}

fn detail(blob: &BlobStatus) -> BlobDetail<'_> {
    BlobDetail {
        source_id: &blob.source_id,
        url: &blob.blob,
        blob: &blob.blob,
        status: match blob.state {
            Some(crate::ingest::BlobState::Succeeded) => "Succeeded",
            Some(crate::ingest::BlobState::Failed) => "Failed",
            Some(crate::ingest::BlobState::Canceled) => "Canceled",
            Some(crate::ingest::BlobState::InProgress) | None => "InProgress",
        },
        table_status: &blob.raw_status,
        error_code: blob.error_code.as_deref(),
        failure_status: blob.failure_status.as_deref(),
        details: blob.details.as_deref(),
        last_updated: blob.updated_on.as_deref(),
        updated_on: blob.updated_on.as_deref(),
    }
}

fn error(status: u16, code: &'static str, message: String, retry: Option<Duration>) -> Reply {
    let detail = ErrorDetail::new(code, message, None);
    Reply::json(status, retry, &ErrorBody::new(&detail, &[]))
}

/// Reads one page of a tracked operation. `query` is the raw query string (`$top`,
/// `continuation`).
pub(crate) async fn handle<B: Backend>(
    backend: &B,
    dms: &AllowedDms,
    raw_id: &str,
    query: &str,
    deadline: Deadline,
) -> Reply {
    let Some(operation) = OperationId::parse(raw_id) else {
        return error(
            400,
            "InvalidOperationId",
            "This is not an operation id this service issued.".to_owned(),
            None,
        );
    };
    // A forged id naming another DM never gets a token sent anywhere.
    if dms.resolve(Some(&operation.dm.to_string())).is_err() {
        return error(
            404,
            "OperationNotFound",
            "No such operation.".to_owned(),
            None,
        );
    }
    let page = match page_request(query) {
        Ok(page) => page,
        Err(message) => return error(400, "InvalidQuery", message, None),
    };
    match backend.status(&operation, &page, deadline).await {
        Ok(result) => {
            let continuation = result.continuation.as_deref().map(encode_continuation);
            let body = StatusBody {
                operation_id: raw_id,
                state: result.counts.overall(),
                start_time: result.first_update.as_deref(),
                last_updated: result.last_update.as_deref(),
                status: result.counts,
                details: result.blobs.iter().map(detail).collect(),
                next_link: continuation
                    .as_ref()
                    .map(|c| format!("{}?$top={}&continuation={c}", status_uri(raw_id), page.top)),
                continuation,
            };
            Reply::json(200, None, &body)
        }
        Err(StatusError::NotFound(reason)) => error(404, "OperationNotFound", reason, None),
        Err(StatusError::Unavailable(failure)) => error(
            503,
            failure.code.as_str(),
            failure.message,
            Some(
                failure
                    .retry_after
                    .unwrap_or(crate::ingest::DEFAULT_RETRY_AFTER),
            ),
        ),
    }
}

fn page_request(query: &str) -> Result<PageRequest, String> {
    let mut page = PageRequest {
        top: DEFAULT_TOP,
        after: None,
    };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "$top" | "top" => {
                page.top = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=DEFAULT_TOP).contains(n))
                    .ok_or_else(|| format!("$top must be an integer from 1 to {DEFAULT_TOP}"))?;
            }
            "continuation" => {
                page.after =
                    Some(decode_continuation(&value).ok_or_else(|| {
                        "continuation is not a token this service issued".to_owned()
                    })?);
            }
            _ => {}
        }
    }
    Ok(page)
}

fn encode_continuation(after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

/// A continuation holds the last source id (a GUID) of the previous page.
fn decode_continuation(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    uuid::Uuid::try_parse(&text).ok().map(|_| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_requests() {
        assert_eq!(page_request("").unwrap().top, DEFAULT_TOP);
        assert_eq!(page_request("$top=50").unwrap().top, 50);
        assert!(page_request("$top=0").is_err());
        assert!(page_request("$top=5000").is_err());
        let id = uuid::Uuid::new_v4().to_string();
        let token = encode_continuation(&id);
        assert_eq!(
            page_request(&format!("continuation={token}"))
                .unwrap()
                .after,
            Some(id)
        );
        assert!(page_request("continuation=bm9wZQ").is_err());
    }
}
