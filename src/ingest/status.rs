//! What a tracked operation looks like from outside a backend: its id, and a page of its blobs'
//! states, shaped after the queued-ingestion REST API's status answer.

use crate::domain::DmEndpoint;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Names a tracked operation without server state: the DM, where its status rows live, and its
/// partition. Encoded as base64url JSON. The DM must still be on the allowlist when the id is read,
/// and the table must be one that DM hands out, so an id can never send the app's token or a
/// request anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OperationId {
    pub(crate) dm: DmEndpoint,
    /// The status table's URL without its SAS.
    pub(crate) table: String,
    pub(crate) partition: Uuid,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    dm: String,
    t: String,
    p: Uuid,
}

/// The longest id accepted; real ones are ~200 characters.
const MAX_ID: usize = 1024;

impl OperationId {
    pub(crate) fn encode(&self) -> String {
        let wire = Wire {
            v: 1,
            dm: self.dm.to_string(),
            t: self.table.clone(),
            p: self.partition,
        };
        // Serializing two strings and a UUID cannot fail; an empty id would be refused on read.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// `None` when `raw` is not an id this service made.
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        if raw.is_empty() || raw.len() > MAX_ID {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .ok()?;
        let wire: Wire = serde_json::from_slice(&json).ok()?;
        if wire.v != 1 {
            return None;
        }
        Some(Self {
            dm: DmEndpoint::parse(&wire.dm).ok()?,
            table: wire.t,
            partition: wire.p,
        })
    }
}

/// A blob's state, as the REST v2 status API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum BlobState {
    InProgress,
    Succeeded,
    Failed,
    Canceled,
}

/// One blob of an operation.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlobStatus {
    pub(crate) source_id: String,
    /// Without SAS or credential suffix.
    pub(crate) blob: String,
    pub(crate) state: Option<BlobState>,
    /// The DM's own word (`Pending`, `Succeeded`, `Skipped`, …).
    pub(crate) raw_status: String,
    pub(crate) error_code: Option<String>,
    pub(crate) failure_status: Option<String>,
    pub(crate) details: Option<String>,
    pub(crate) updated_on: Option<String>,
}

/// Blobs per state over the whole operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Counts {
    pub(crate) succeeded: usize,
    pub(crate) failed: usize,
    pub(crate) in_progress: usize,
    pub(crate) canceled: usize,
}

impl Counts {
    pub(crate) fn add(&mut self, state: BlobState) {
        match state {
            BlobState::InProgress => self.in_progress += 1,
            BlobState::Succeeded => self.succeeded += 1,
            BlobState::Failed => self.failed += 1,
            BlobState::Canceled => self.canceled += 1,
        }
    }

    /// The operation's state: in progress while any blob is; otherwise how it ended.
    pub(crate) fn overall(&self) -> &'static str {
        let done = self.succeeded + self.failed + self.canceled;
        if self.in_progress > 0 || done == 0 {
            "InProgress"
        } else if self.succeeded == done {
            "Succeeded"
        } else if self.succeeded == 0 {
            "Failed"
        } else {
            "PartiallySucceeded"
        }
    }
}

/// A page of an operation's blobs, with the counts over all of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusPage {
    pub(crate) counts: Counts,
    pub(crate) blobs: Vec<BlobStatus>,
    /// Where the next page starts, when there is one (opaque to callers).
    pub(crate) continuation: Option<String>,
    pub(crate) first_update: Option<String>,
    pub(crate) last_update: Option<String>,
}

/// Which page of an operation to read.
#[derive(Debug, Clone, Default)]
pub(crate) struct PageRequest {
    pub(crate) top: usize,
    pub(crate) after: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_round_trip_and_refuse_garbage() {
        let id = OperationId {
            dm: DmEndpoint::parse("https://ingest-a.kusto.windows.net").unwrap(),
            table: "https://acct.table.core.windows.net/status1".into(),
            partition: Uuid::new_v4(),
        };
        let encoded = id.encode();
        assert!(
            encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(OperationId::parse(&encoded), Some(id));
        for bad in ["", "nope", "%%%", &"a".repeat(2000)] {
            assert_eq!(OperationId::parse(bad), None, "{bad:.20}");
        }
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"v":1,"dm":"ftp://x","t":"t","p":"00000000-0000-0000-0000-000000000000"}"#);
        assert_eq!(OperationId::parse(&forged), None);
    }

    #[test]
    fn overall_state() {
        let counts = |s, f, p| Counts {
            succeeded: s,
            failed: f,
            in_progress: p,
            canceled: 0,
        };
        assert_eq!(counts(3, 0, 0).overall(), "Succeeded");
        assert_eq!(counts(0, 2, 0).overall(), "Failed");
        assert_eq!(counts(2, 1, 0).overall(), "PartiallySucceeded");
        assert_eq!(counts(2, 1, 1).overall(), "InProgress");
    }
}
