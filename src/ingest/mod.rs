//! The seam every way of ingesting plugs into. A trigger (the HTTP API, Event Grid) parses its
//! input into [`BlobJob`]s and hands a batch for one DM to a [`Backend`]; the backend answers one
//! [`BlobOutcome`] per job, in order, or one [`BlobFailure`] for the whole batch when nothing could
//! be tried. How a backend gets messages to the cluster (v1 queues, another API) is its own
//! business, retries and failover included.

mod deadline;
mod failure;

pub(crate) use deadline::Deadline;
pub(crate) use failure::{BlobFailure, FailureCode};

use crate::domain::{BlobUri, DatabaseName, DmEndpoint, SourceId, TableName};
use crate::properties::IngestionSpec;
use std::future::Future;
use std::sync::Arc;

/// One blob to ingest, fully validated.
#[derive(Debug, Clone)]
pub(crate) struct BlobJob {
    pub(crate) blob: BlobUri,
    pub(crate) source_id: SourceId,
    /// Uncompressed size in bytes, when known.
    pub(crate) raw_data_size: Option<u64>,
    pub(crate) database: DatabaseName,
    pub(crate) table: TableName,
    /// Shared by every blob of a request that adds no properties of its own.
    pub(crate) spec: Arc<IngestionSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BlobOutcome {
    /// The cluster has the blob's ingestion request.
    Queued,
    /// The cluster may have it: a queue may have taken the message but its answer was lost. The
    /// failure (code `QueueOutcomeUnknown`) says what happened.
    Unknown(BlobFailure),
    Failed(BlobFailure),
}

/// A way of getting blobs ingested by a cluster.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Ingests `jobs` through the allowlisted `dm`: one outcome per job, in the order of `jobs`,
    /// or one failure for all of them when none could be tried (no resources, no identity).
    /// Returns by `deadline`: every wait (the DM, a permit, a queue) draws from it, and a blob not
    /// tried by then is `DeadlineExceeded`.
    fn ingest(
        &self,
        dm: &DmEndpoint,
        jobs: &[BlobJob],
        deadline: Deadline,
    ) -> impl Future<Output = Result<Vec<BlobOutcome>, BlobFailure>> + Send;
}
