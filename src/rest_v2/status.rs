//! Reading a tracked v2 operation back: one `GET {dm}/v1/rest/ingestion/queued/{db}/{table}/{id}
//! ?details=true` per DM operation, merged into one page. The docs and the OpenAPI description
//! spell the answer differently (docs/wire-facts.md); both spellings are read.

use crate::domain::redact_url;
use crate::ingest::{BlobState, BlobStatus, Counts};
use serde_json::{Map, Value};

/// A value under any of `names`, compared without case.
fn field<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn text(obj: &Map<String, Value>, names: &[&str]) -> Option<String> {
    field(obj, names).and_then(Value::as_str).map(str::to_owned)
}

fn state(raw: &str) -> Option<BlobState> {
    match raw.to_ascii_lowercase().as_str() {
        "queued" | "inprogress" | "pending" => Some(BlobState::InProgress),
        "succeeded" => Some(BlobState::Succeeded),
        "failed" => Some(BlobState::Failed),
        "canceled" | "cancelled" => Some(BlobState::Canceled),
        _ => None,
    }
}

/// One operation's answer.
#[derive(Debug, Default)]
pub(super) struct OperationStatus {
    pub(super) counts: Counts,
    pub(super) blobs: Vec<BlobStatus>,
    pub(super) start: Option<String>,
    pub(super) last: Option<String>,
}

pub(super) fn parse(body: &[u8]) -> Result<OperationStatus, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the operation status is not JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or("the operation status is not a JSON object")?;
    let count = |m: &Map<String, Value>, name: &str| {
        field(m, &[name])
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    };
    let counts = match field(obj, &["status"]).and_then(Value::as_object) {
        Some(m) => Counts {
            succeeded: count(m, "succeeded"),
            failed: count(m, "failed"),
            in_progress: count(m, "inProgress"),
            canceled: count(m, "canceled"),
        },
        None => Counts::default(),
    };
    let blobs = field(obj, &["details"])
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_object)
                .map(|d| {
                    let raw_status = text(d, &["status"]).unwrap_or_default();
                    BlobStatus {
                        source_id: text(d, &["sourceId"]).unwrap_or_default(),
                        // The docs' answer carries the URL; never pass a SAS on.
                        blob: text(d, &["url"])
                            .map(|u| redact_url(u.split(['?', ';']).next().unwrap_or_default()))
                            .unwrap_or_default(),
                        state: state(&raw_status),
                        raw_status,
                        error_code: text(d, &["errorCode"]),
                        failure_status: text(d, &["failureStatus"]),
                        details: text(d, &["details"]),
                        updated_on: text(d, &["lastUpdated", "lastUpdateTime"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(OperationStatus {
        counts,
        blobs,
        start: text(obj, &["startTime", "startedAt"]),
        last: text(obj, &["lastUpdated", "lastUpdateTime"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of `queued-ingest-status-http.md`.
    const DOC_EXAMPLE: &str = r#"{
      "startTime": "2025-10-01T12:00:00Z", "lastUpdated": "2025-10-01T12:30:00Z",
      "status": {"Succeeded": 1, "Failed": 1, "InProgress": 1, "Canceled": 0},
      "details": [
        {"sourceId": "123a6999-411e-4226-a333-w79992dd9b95", "url": "https://example.com/blob1.csv.gz?sig=secret",
         "status": "Failed", "startTime": "2025-10-01T12:00:00Z", "lastUpdated": "2025-10-01T12:15:00Z",
         "errorCode": "BadRequest_MissingMappingFailure", "failureStatus": "Permanent", "details": "Mapping not found"},
        {"url": "https://example.com/blob2.csv.gz", "status": "InProgress", "startTime": "2025-10-01T12:05:00Z",
         "lastUpdated": "2025-10-01T12:20:00Z"},
        {"url": "https://example.com/blob3.csv.gz", "status": "Succeeded", "startTime": "2025-10-01T12:00:00Z",
         "lastUpdated": "2025-10-01T12:10:00Z"}
      ]}"#;

    #[test]
    fn reads_the_documented_example() {
        let s = parse(DOC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            (s.counts.succeeded, s.counts.failed, s.counts.in_progress),
            (1, 1, 1)
        );
        assert_eq!(s.blobs.len(), 3);
        let failed = &s.blobs[0];
        assert_eq!(failed.state, Some(BlobState::Failed));
        assert_eq!(
            failed.error_code.as_deref(),
            Some("BadRequest_MissingMappingFailure")
        );
        assert_eq!(failed.blob, "https://example.com/blob1.csv.gz");
        assert_eq!(s.last.as_deref(), Some("2025-10-01T12:30:00Z"));
    }

    #[test]
    fn reads_the_openapi_spelling() {
        let s = parse(
            br#"{"startTime": "t0", "lastUpdated": "t1",
                 "status": {"succeeded": 2, "failed": 0, "inProgress": 1, "canceled": 0},
                 "details": [{"sourceId": "s", "status": "Queued", "startedAt": "t0", "lastUpdateTime": "t1"}]}"#,
        )
        .unwrap();
        assert_eq!((s.counts.succeeded, s.counts.in_progress), (2, 1));
        assert_eq!(s.blobs[0].state, Some(BlobState::InProgress));
        assert_eq!(s.blobs[0].updated_on.as_deref(), Some("t1"));
        assert!(parse(b"[]").is_err());
    }
}
