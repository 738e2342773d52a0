//! Success and failure notifications (reference §5): base64 JSON on the DM's
//! `SuccessfulIngestionsQueue` / `FailedIngestionsQueue`.

use base64::Engine as _;
use serde_json::{Value, json};

use super::outcome::{FailureStatus, IngestionOutcome};

/// `2024-05-01T12:40:00.1234567Z`: 7 fractional digits, as in the DOC diagnostic-log
/// examples (the exact queue format is unconfirmed, reference §5).
pub(crate) fn timestamp(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

/// The success message.
pub(crate) fn success(o: &IngestionOutcome, activity_id: &str, at: &str) -> Value {
    json!({
        "OperationId": o.operation_id,
        "Database": o.database,
        "Table": o.table,
        "SucceededOn": at,
        "IngestionSourceId": o.source_id,
        "IngestionSourcePath": o.source_path,
        "RootActivityId": activity_id,
    })
}

/// The failure message (also used for skipped ingestions).
pub(crate) fn failure(o: &IngestionOutcome, activity_id: &str, at: &str) -> Value {
    let status = o.failure_status.unwrap_or(FailureStatus::Permanent);
    json!({
        "OperationId": o.operation_id,
        "Database": o.database,
        "Table": o.table,
        "FailedOn": at,
        "IngestionSourceId": o.source_id,
        "IngestionSourcePath": o.source_path,
        "Details": o.details,
        "ErrorCode": o.error_code.clone().unwrap_or_default(),
        "FailureStatus": status.as_str(),
        "RootActivityId": activity_id,
        "OriginatesFromUpdatePolicy": false,
        "ShouldRetry": status == FailureStatus::Transient,
    })
}

/// Queue `MessageText` of a notification.
pub(crate) fn encode(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_seven_digits() {
        let t = time::macros::datetime!(2024-05-01 12:40:00.5 UTC);
        assert_eq!(timestamp(t), "2024-05-01T12:40:00.5000000Z");
    }
}
