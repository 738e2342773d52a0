//! What a tracked operation looks like from outside a backend: its id, and a page of its blobs'
//! states, shaped after the queued-ingestion REST API's status answer.

use crate::domain::DmEndpoint;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Names a tracked operation without server state: the DM and where the backend that tracked it
/// reads it back. Encoded as base64url JSON. The DM must still be on the allowlist when the id is
/// read (and, for a status table, the table must be one that DM hands out), so an id can never
/// send the app's token or a request anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OperationId {
    pub(crate) dm: DmEndpoint,
    pub(crate) tracked: Tracked,
}

/// Where a tracked operation's blobs are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tracked {
    /// v1: rows in the DM's status table, one partition per operation.
    StatusTable {
        /// The status table's URL without its SAS.
        table: String,
        partition: Uuid,
    },
    /// v2: the DM's own operations, one per batch posted: `(database, table, operation id)`.
    RestV2(Vec<RestV2Operation>),
}

/// One operation of the REST v2 API: the status endpoint is per database and table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestV2Operation {
    #[serde(rename = "d")]
    pub(crate) database: String,
    #[serde(rename = "t")]
    pub(crate) table: String,
    #[serde(rename = "o")]
    pub(crate) id: String,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    dm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ops: Vec<RestV2Operation>,
}

/// The longest id accepted. A status-table id is ~200 characters; a v2 one grows with its
/// operations, which the v2 backend bounds (`rest_v2::MAX_TRACKED_OPERATIONS`) to stay under this.
pub(crate) const MAX_ID: usize = 8 * 1024;

impl OperationId {
    pub(crate) fn encode(&self) -> String {
        let wire = match &self.tracked {
            Tracked::StatusTable { table, partition } => Wire {
                v: 1,
                dm: self.dm.to_string(),
                t: Some(table.clone()),
                p: Some(*partition),
                ops: Vec::new(),
            },
            Tracked::RestV2(ops) => Wire {
                v: 2,
                dm: self.dm.to_string(),
                t: None,
                p: None,
                ops: ops.clone(),
            },
        };
        // Serializing strings and UUIDs cannot fail; an empty id would be refused on read.
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
        let tracked = match wire.v {
            1 => Tracked::StatusTable {
                table: wire.t?,
                partition: wire.p?,
            },
            2 if !wire.ops.is_empty() => Tracked::RestV2(wire.ops),
            _ => return None,
        };
        Some(Self {
            dm: DmEndpoint::parse(&wire.dm).ok()?,
            tracked,
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
            tracked: Tracked::StatusTable {
                table: "https://acct.table.core.windows.net/status1".into(),
                partition: Uuid::new_v4(),
            },
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
        let v2 = OperationId {
            dm: DmEndpoint::parse("https://ingest-a.kusto.windows.net").unwrap(),
            tracked: Tracked::RestV2(vec![RestV2Operation {
                database: "db".into(),
                table: "T".into(),
                id: "op-1".into(),
            }]),
        };
        assert_eq!(OperationId::parse(&v2.encode()), Some(v2));
        let empty = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"v":2,"dm":"https://ingest-a.kusto.windows.net"}"#);
        assert_eq!(OperationId::parse(&empty), None);
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
