//! The queued-ingestion backend (v1): per allowlisted DM, the ingestion resources and identity
//! token (cached, see [`cache`]), a pool of its queues ranked by health, and one base64 JSON
//! message per blob posted to one of them ([`sender`] holds the whole failover policy).

mod authorization;
mod cache;
mod connections;
mod message;
mod pool;
mod ranking;
mod resources;
mod sender;
mod status_table;
mod tracking;
mod upload;

pub(crate) use connections::StorageConnections;
pub(crate) use message::creation_time_now;
pub(crate) use ranking::AccountRanking;
pub(crate) use resources::{StorageRoot, sas_usable_for};
pub(crate) use upload::{refetched, upload as upload_data};

use crate::data::DataSource;
use crate::dm::{DmClient, DmError};
use crate::domain::BlobUri;
use crate::domain::{AllowedDms, DmEndpoint};
use crate::ingest::{
    Backend, Batch, BlobFailure, BlobJob, BlobOutcome, Counts, Deadline, FailureCode, Ingested,
    OperationId, PageRequest, StatusError, StatusPage, Tracked, UploadError,
};
use cache::{ResourceCache, Snapshot};
use futures::StreamExt;
use sender::DmQueues;
use status_table::StatusTable;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

pub(crate) struct QueuedBackend {
    /// One per allowlisted DM, created up front: the allowlist bounds the map, and the token can
    /// never be requested for a DM outside it. Each bounds its own posts in flight.
    dms: HashMap<DmEndpoint, DmQueues>,
    /// Blobs of one request in progress at once, so a request's memory does not grow with its
    /// blob count.
    per_request: usize,
    /// The process's HTTP client, for the status table.
    http: reqwest::Client,
    /// The same client for SDK clients (temporary storage).
    transport: azure_core::http::Transport,
}

impl QueuedBackend {
    /// `http` serves the status table and temporary storage; queue posts go on `connections`.
    pub(crate) fn new(
        allowed: &AllowedDms,
        client: Arc<DmClient>,
        http: reqwest::Client,
        connections: Arc<StorageConnections>,
        max_concurrency: usize,
    ) -> Self {
        let dms = allowed
            .iter()
            .map(|dm| {
                let cache = ResourceCache::new(dm.clone(), client.clone(), connections.clone());
                (dm.clone(), DmQueues::new(cache, max_concurrency))
            })
            .collect();
        Self {
            dms,
            per_request: max_concurrency,
            transport: crate::transport::azure_transport(&http),
            http,
        }
    }

    fn queues(&self, dm: &DmEndpoint) -> Result<&DmQueues, BlobFailure> {
        self.dms.get(dm).ok_or_else(|| {
            BlobFailure::new(
                FailureCode::DataManagementRejected,
                format!("{dm} is not an allowed Data Management endpoint"),
            )
        })
    }
}

/// Resources of `dm`, by `deadline`: a wait on another request's refresh counts against it too.
async fn snapshot(
    queues: &DmQueues,
    dm: &DmEndpoint,
    deadline: Deadline,
) -> Result<Arc<Snapshot>, BlobFailure> {
    tokio::time::timeout_at(deadline.instant(), queues.snapshot())
        .await
        .map_err(|_| {
            BlobFailure::new(
                FailureCode::DeadlineExceeded,
                format!(
                    "the DM at {dm} did not provide ingestion resources before the request's deadline"
                ),
            )
        })?
        .map_err(|e| dm_failure(&e))
}

impl Backend for QueuedBackend {
    async fn ingest(&self, batch: Batch<'_>) -> Result<Ingested, BlobFailure> {
        let Batch {
            dm,
            jobs,
            deadline,
            operation,
        } = batch;
        let queues = self.queues(dm)?;
        let snapshot = snapshot(queues, dm, deadline).await?;
        let tracking = match operation.filter(|_| jobs.iter().any(tracking::tracked)) {
            None => None,
            Some(operation) => Some(
                self.begin_tracking(&snapshot, &operation, jobs, deadline)
                    .await,
            ),
        };
        let connection = tracking
            .as_ref()
            .and_then(|t| t.as_ref().ok())
            .map(StatusTable::connection_string);
        let partition = operation.map(|o| o.to_string());
        let created_at = message::creation_time_now();
        // Blobs are started in order, `per_request` in flight, and finish in any order: with
        // in-order completion (`buffered`) one hung post at the front would hold the whole window
        // until the deadline. Indexing instead of `jobs.iter()` keeps the closure free of a
        // higher-ranked lifetime, which rustc cannot yet prove `Send` through
        // (rust-lang/rust#102211).
        let posts = (0..jobs.len()).map(|i| {
            let job = &jobs[i];
            let record = match (&tracking, tracking::tracked(job)) {
                (Some(Err(failure)), true) => Err(failure.clone()),
                (Some(Ok(_)), true) => Ok(connection.as_deref().zip(partition.as_deref())),
                _ => Ok(None),
            };
            let snapshot = snapshot.clone();
            let created_at = created_at.as_str();
            async move {
                let outcome = match record {
                    Err(failure) => BlobOutcome::Failed(failure),
                    Ok(record) => {
                        queues
                            .send(snapshot, job, created_at, record, deadline)
                            .await
                    }
                };
                (i, outcome)
            }
        });
        let mut finished: Vec<(usize, BlobOutcome)> = futures::stream::iter(posts)
            .buffer_unordered(self.per_request)
            .collect()
            .await;
        finished.sort_unstable_by_key(|(i, _)| *i);
        let outcomes: Vec<BlobOutcome> = finished.into_iter().map(|(_, o)| o).collect();
        let operation = match (tracking, operation) {
            (Some(Ok(table)), Some(partition)) => {
                tracking::record_failures(
                    &table, &self.http, &partition, jobs, &outcomes, deadline,
                )
                .await;
                Some(OperationId {
                    dm: dm.clone(),
                    tracked: Tracked::StatusTable {
                        table: table.public_url(),
                        partition,
                    },
                })
            }
            _ => None,
        };
        Ok(Ingested {
            outcomes,
            operation,
        })
    }

    async fn upload(
        &self,
        dm: &DmEndpoint,
        name: &str,
        data: &mut dyn DataSource,
        deadline: Deadline,
    ) -> Result<BlobUri, UploadError> {
        let queues = self.queues(dm).map_err(UploadError::Storage)?;
        let snapshot = snapshot(queues, dm, deadline)
            .await
            .map_err(UploadError::Storage)?;
        let fresh = || {
            upload::refetched(deadline, "ingestion resources", async {
                let fresh = queues.replace(snapshot.generation).await?;
                Ok(fresh.temp_containers.clone())
            })
        };
        upload::upload(
            &snapshot.temp_containers,
            fresh,
            queues.ranking(),
            &self.transport,
            name,
            data,
            deadline,
        )
        .await
    }

    async fn discard(&self, blob: &BlobUri) {
        discard(&self.transport, blob).await;
    }

    async fn status(
        &self,
        operation: &OperationId,
        page: &PageRequest,
        deadline: Deadline,
    ) -> Result<StatusPage, StatusError> {
        let Tracked::StatusTable {
            table: status_table,
            partition,
        } = &operation.tracked
        else {
            return Err(StatusError::NotFound(
                "the operation was not tracked through the queues (v1)".to_owned(),
            ));
        };
        let queues = self
            .queues(&operation.dm)
            .map_err(StatusError::Unavailable)?;
        let snapshot = snapshot(queues, &operation.dm, deadline)
            .await
            .map_err(StatusError::Unavailable)?;
        // Only a table the DM hands out is ever read, with the SAS it hands out.
        let Some(table) = snapshot
            .status_table
            .as_ref()
            .filter(|t| &t.public_url() == status_table)
        else {
            return Err(StatusError::NotFound(
                "the DM no longer hands out this operation's status table".to_owned(),
            ));
        };
        let read = tracking::read(table, &self.http, partition, page, deadline)
            .await
            .map_err(|e| {
                StatusError::Unavailable(BlobFailure::new(
                    FailureCode::TrackingUnavailable,
                    format!("the status table could not be read: {e}"),
                ))
            })?;
        if read.counts == Counts::default() && read.blobs.is_empty() {
            return Err(StatusError::NotFound(
                "no blob is recorded under this operation".to_owned(),
            ));
        }
        Ok(read)
    }
}

impl QueuedBackend {
    /// The status table, once the tracked jobs' `Pending` rows are written; otherwise the failure
    /// of every tracked job (they are not queued).
    async fn begin_tracking(
        &self,
        snapshot: &Snapshot,
        operation: &Uuid,
        jobs: &[BlobJob],
        deadline: Deadline,
    ) -> Result<StatusTable, BlobFailure> {
        let Some(table) = snapshot.status_table.clone() else {
            return Err(BlobFailure::new(
                FailureCode::TrackingUnavailable,
                "the blob is to be tracked, but the DM hands out no status table; it was not queued",
            ));
        };
        tracking::begin(&table, &self.http, operation, jobs, deadline)
            .await
            .map_err(|e| tracking::not_recorded(&e))?;
        Ok(table)
    }
}

/// Deletes an uploaded blob whose ingestion was not queued (best effort): its URI carries the
/// SAS it was written with.
pub(crate) async fn discard(transport: &azure_core::http::Transport, blob: &BlobUri) {
    let Ok(url) = url::Url::parse(blob.expose_with_credentials()) else {
        return;
    };
    let options = azure_storage_blob::BlobClientOptions {
        client_options: crate::transport::sdk_options(transport),
        ..azure_storage_blob::BlobClientOptions::default()
    };
    let Ok(client) = azure_storage_blob::BlobClient::new(url, None, Some(options)) else {
        return;
    };
    let deleted =
        tokio::time::timeout(std::time::Duration::from_secs(10), client.delete(None)).await;
    if !matches!(deleted, Ok(Ok(_))) {
        tracing::warn!(blob = %blob, "could not delete an uploaded blob that was not queued; storage expires it with the container's lifecycle");
    }
}

/// What a failed DM call means for the blobs that needed it.
fn dm_failure(error: &DmError) -> BlobFailure {
    let code = match error {
        DmError::Identity(_) => FailureCode::IdentityUnavailable,
        e if e.is_transient() => FailureCode::DataManagementUnavailable,
        DmError::Unauthorized { .. } => FailureCode::DataManagementUnauthorized,
        _ => FailureCode::DataManagementRejected,
    };
    BlobFailure::new(code, error.to_string()).retry_after(error.retry_after())
}
