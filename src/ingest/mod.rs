//! The seam every way of ingesting plugs into. A trigger (the HTTP API, Event Grid) parses its
//! input into [`BlobJob`]s and hands a batch for one DM to a [`Backend`]; the backend answers one
//! [`BlobOutcome`] per job, in order, or one [`BlobFailure`] for the whole batch when nothing could
//! be tried. How a backend gets messages to the cluster (v1 queues, another API) is its own
//! business, retries and failover included.

mod deadline;
mod failure;
mod status;

pub(crate) use deadline::Deadline;
pub(crate) use failure::{BlobFailure, DEFAULT_RETRY_AFTER, FailureCode, UNKNOWN_OUTCOME_ADVICE};
pub(crate) use status::{
    BlobState, BlobStatus, Counts, OperationId, PageRequest, RestV2Operation, StatusPage, Tracked,
};

use crate::domain::{BlobUri, DatabaseName, DmEndpoint, SourceId, TableName};
use crate::properties::IngestionSpec;
use std::future::Future;
use std::sync::Arc;
use uuid::Uuid;

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

/// One batch of blobs for one DM.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch<'a> {
    /// Allowlisted.
    pub(crate) dm: &'a DmEndpoint,
    pub(crate) jobs: &'a [BlobJob],
    /// Every wait (the DM, a permit, a queue, the status table) draws from it; a blob not tried by
    /// then is `DeadlineExceeded`.
    pub(crate) deadline: Deadline,
    /// The operation the tracked jobs (`spec.report_method` not `Queue`) are recorded under.
    pub(crate) operation: Option<Uuid>,
}

/// What became of a batch: one outcome per job, in order, and the id to look the tracked ones up
/// by.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ingested {
    pub(crate) outcomes: Vec<BlobOutcome>,
    pub(crate) operation: Option<OperationId>,
}

/// Why an operation's status could not be read.
#[derive(Debug, Clone)]
pub(crate) enum StatusError {
    /// No such operation here (its table is not one the DM hands out, or it has no rows).
    NotFound(String),
    Unavailable(BlobFailure),
}

/// Why a data body was not stored.
#[derive(Debug, Clone)]
pub(crate) enum UploadError {
    /// The body itself (empty, too large, broken gzip, the client went away).
    Data(crate::data::DataError),
    /// The storage refused or could not be reached.
    Storage(BlobFailure),
}

/// A way of getting blobs ingested by a cluster.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Ingests a batch: one outcome per job, or one failure for all of them when none could be
    /// tried (no resources, no identity).
    fn ingest(
        &self,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<Ingested, BlobFailure>> + Send;

    /// Stores a data body for ingestion through `dm` as blob `name`: the blob's URI, with the
    /// credentials the cluster reads it with. Nothing is left committed when this fails.
    fn upload(
        &self,
        dm: &DmEndpoint,
        name: &str,
        data: &mut dyn crate::data::DataSource,
        deadline: Deadline,
    ) -> impl Future<Output = Result<BlobUri, UploadError>> + Send;

    /// Deletes an uploaded blob whose ingestion was not queued (best effort).
    fn discard(&self, blob: &BlobUri) -> impl Future<Output = ()> + Send;

    /// A page of a tracked operation's blobs. `operation.dm` is allowlisted.
    fn status(
        &self,
        operation: &OperationId,
        page: &PageRequest,
        deadline: Deadline,
    ) -> impl Future<Output = Result<StatusPage, StatusError>> + Send;
}
