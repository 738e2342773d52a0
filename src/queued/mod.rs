//! The queued-ingestion backend (v1): per allowlisted DM, the ingestion resources and identity
//! token (cached, see [`cache`]), a pool of its queues ranked by health, and one base64 JSON
//! message per blob posted to one of them ([`sender`] holds the whole failover policy).

mod authorization;
mod cache;
mod message;
mod pool;
mod ranking;
mod resources;
mod sender;

use crate::dm::{DmClient, DmError};
use crate::domain::{AllowedDms, DmEndpoint};
use crate::ingest::{Backend, BlobFailure, BlobJob, BlobOutcome, Deadline, FailureCode};
use cache::ResourceCache;
use futures::StreamExt;
use sender::DmQueues;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) struct QueuedBackend {
    /// One per allowlisted DM, created up front: the allowlist bounds the map, and the token can
    /// never be requested for a DM outside it. Each bounds its own posts in flight.
    dms: HashMap<DmEndpoint, DmQueues>,
    /// Blobs of one request in progress at once, so a request's memory does not grow with its
    /// blob count.
    per_request: usize,
}

impl QueuedBackend {
    pub(crate) fn new(
        allowed: &AllowedDms,
        client: Arc<DmClient>,
        http: reqwest::Client,
        max_concurrency: usize,
    ) -> Self {
        let dms = allowed
            .iter()
            .map(|dm| {
                let cache = ResourceCache::new(dm.clone(), client.clone(), http.clone());
                (dm.clone(), DmQueues::new(cache, max_concurrency))
            })
            .collect();
        Self {
            dms,
            per_request: max_concurrency,
        }
    }
}

impl Backend for QueuedBackend {
    async fn ingest(
        &self,
        dm: &DmEndpoint,
        jobs: &[BlobJob],
        deadline: Deadline,
    ) -> Result<Vec<BlobOutcome>, BlobFailure> {
        let Some(queues) = self.dms.get(dm) else {
            return Err(BlobFailure::new(
                FailureCode::DataManagementRejected,
                format!("{dm} is not an allowed Data Management endpoint"),
            ));
        };
        // A wait on another request's refresh counts against this request's deadline too.
        let snapshot = tokio::time::timeout_at(deadline.instant(), queues.snapshot())
            .await
            .map_err(|_| {
                BlobFailure::new(
                    FailureCode::DeadlineExceeded,
                    format!(
                        "the DM at {dm} did not provide ingestion resources before the request's deadline"
                    ),
                )
            })?
            .map_err(|e| dm_failure(&e))?;
        let created_at = message::creation_time_now();
        // Blobs are taken in order, `per_request` at a time. Indexing instead of `jobs.iter()`
        // keeps the closure free of a higher-ranked lifetime, which rustc cannot yet prove `Send`
        // through (rust-lang/rust#102211).
        let posts =
            (0..jobs.len()).map(|i| queues.send(snapshot.clone(), &jobs[i], &created_at, deadline));
        Ok(futures::stream::iter(posts)
            .buffered(self.per_request)
            .collect()
            .await)
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
