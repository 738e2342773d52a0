//! The one object both triggers use: turns validated blob jobs into ingestion messages on the
//! DM's queues, and says for each blob whether it was queued.

use crate::config::{DmEndpoint, Settings};
use crate::dm::{DmClient, DmError, RetryPolicy};
use crate::domain::{BlobUri, DatabaseName, SourceId, TableName};
use crate::identity::Identity;
use crate::message::{IngestionMessage, creation_time_now};
use crate::properties::IngestionSpec;
use crate::queue_pool::PostError;
use crate::resource_cache::{ResourceCache, Snapshot};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// One blob to queue, fully validated.
#[derive(Debug, Clone)]
pub struct BlobJob {
    pub blob: BlobUri,
    pub source_id: SourceId,
    /// Uncompressed size in bytes, when known.
    pub raw_data_size: Option<u64>,
    pub database: DatabaseName,
    pub table: TableName,
    /// Shared by every blob of a request that adds no properties of its own.
    pub spec: Arc<IngestionSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BlobOutcome {
    Queued,
    Failed(BlobFailure),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlobFailure {
    pub code: &'static str,
    pub message: String,
    /// Whether trying again later may succeed.
    pub transient: bool,
}

/// A failure that stops a whole request before any blob is attempted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Dm(#[from] DmError),
    #[error("could not get a managed-identity token for Storage: {0}")]
    StorageIdentity(String),
}

impl IngestError {
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Dm(DmError::Identity(_)) | IngestError::StorageIdentity(_) => {
                "IdentityUnavailable"
            }
            IngestError::Dm(e) if e.is_transient() => "DataManagementUnavailable",
            IngestError::Dm(DmError::Unauthorized { .. }) => "DataManagementUnauthorized",
            IngestError::Dm(_) => "DataManagementRejected",
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            IngestError::Dm(e) => e.is_transient(),
            IngestError::StorageIdentity(_) => true,
        }
    }

    /// How long a caller should wait before trying again, for transient failures.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Dm(e) if e.is_transient() => {
                Some(e.retry_after().unwrap_or(Duration::from_secs(10)))
            }
            IngestError::StorageIdentity(_) => Some(Duration::from_secs(10)),
            IngestError::Dm(_) => None,
        }
    }
}

/// The requested DM is not on the allowlist.
#[derive(Debug, thiserror::Error)]
#[error("dataManagementUri '{0}' is not an allowed Data Management endpoint")]
pub struct DmNotAllowed(pub String);

pub struct Ingestor {
    settings: Arc<Settings>,
    /// The process's HTTP client (see `transport`), also used for Get Blob Properties.
    http: reqwest::Client,
    identity: Identity,
    /// One cache per allowlisted DM, created up front: the allowlist bounds the map, and the
    /// token can never be requested for a DM outside it.
    caches: HashMap<DmEndpoint, ResourceCache>,
    /// Bounds queue posts in flight across all requests.
    posts: Semaphore,
}

impl Ingestor {
    pub fn new(settings: Arc<Settings>) -> Result<Self, String> {
        let http = crate::transport::http_client()?;
        let identity = Identity::from_settings(&settings, &http)?;
        let client = Arc::new(DmClient::new(
            http.clone(),
            identity.clone(),
            settings.token_scope.clone(),
            RetryPolicy::default(),
        ));
        let transport = crate::transport::azure_transport(&http);
        let caches = settings
            .allowed_dms
            .iter()
            .map(|dm| {
                (
                    dm.clone(),
                    ResourceCache::new(dm.clone(), client.clone(), transport.clone()),
                )
            })
            .collect();
        Ok(Self {
            http,
            posts: Semaphore::new(settings.max_concurrency),
            settings,
            identity,
            caches,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn default_dm(&self) -> &DmEndpoint {
        &self.settings.default_dm
    }

    /// The DM a request named (the default when none), if it is allowlisted.
    pub fn resolve_dm(&self, requested: Option<&str>) -> Result<DmEndpoint, DmNotAllowed> {
        let Some(raw) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(self.settings.default_dm.clone());
        };
        let not_allowed = || DmNotAllowed(crate::domain::redact_url(raw));
        let dm = DmEndpoint::parse(raw).map_err(|_| not_allowed())?;
        if self.caches.contains_key(&dm) {
            Ok(dm)
        } else {
            Err(not_allowed())
        }
    }

    /// A bearer token for Storage (reading blob properties with the app's identity).
    pub async fn storage_token(&self) -> Result<String, IngestError> {
        self.identity
            .token(STORAGE_SCOPE)
            .await
            .map_err(IngestError::StorageIdentity)
    }

    /// Queues every job; the outcomes are in the order of `jobs`. Fails as a whole only when no
    /// resources can be had from the DM.
    pub async fn ingest(
        &self,
        dm: &DmEndpoint,
        jobs: &[BlobJob],
    ) -> Result<Vec<BlobOutcome>, IngestError> {
        let cache = self.caches.get(dm).ok_or_else(|| DmError::Rejected {
            endpoint: dm.to_string(),
            status: 403,
            message: "not an allowed Data Management endpoint".to_owned(),
        })?;
        let snapshot = cache.get().await?;
        let created_at = creation_time_now();
        // At most `max_concurrency` blobs of one request are in progress at once (in order), so a
        // request's memory does not grow with its blob count; `posts` bounds all requests together.
        // Indexing instead of `jobs.iter()` keeps the closure free of a higher-ranked lifetime,
        // which rustc cannot yet prove `Send` through (rust-lang/rust#102211).
        let posts =
            (0..jobs.len()).map(|i| self.queue_one(cache, snapshot.clone(), &jobs[i], &created_at));
        let outcomes = futures::stream::iter(posts)
            .buffered(self.settings.max_concurrency)
            .collect()
            .await;
        Ok(outcomes)
    }

    async fn queue_one(
        &self,
        cache: &ResourceCache,
        snapshot: Arc<Snapshot>,
        job: &BlobJob,
        created_at: &str,
    ) -> BlobOutcome {
        let mut snapshot = snapshot;
        let mut refetched = false;
        loop {
            let message = IngestionMessage {
                source_id: job.source_id,
                blob: &job.blob,
                raw_data_size: job.raw_data_size,
                database: &job.database,
                table: &job.table,
                spec: &job.spec,
                authorization_context: &snapshot.authorization_context,
                created_at,
            };
            let text = match message.encode() {
                Ok(text) => text,
                Err(error) => {
                    tracing::warn!(blob = %job.blob, source_id = %job.source_id, %error, "message too large");
                    return BlobOutcome::Failed(BlobFailure {
                        code: "MessageTooLarge",
                        message: error.to_string(),
                        transient: false,
                    });
                }
            };
            match self.post_with_failover(cache, &snapshot, job, text).await {
                Ok(()) => return BlobOutcome::Queued,
                Err(PostError::AuthenticationFailed(reason)) if !refetched => {
                    // The SAS was rejected: fetch fresh resources once and try again with them.
                    tracing::warn!(blob = %job.blob, generation = snapshot.generation, %reason, "queue refused the SAS; refetching ingestion resources");
                    refetched = true;
                    match cache.replace(snapshot.generation).await {
                        Ok(fresh) => snapshot = fresh,
                        Err(error) => {
                            return BlobOutcome::Failed(BlobFailure {
                                code: "QueueAuthorizationFailed",
                                message: format!(
                                    "the queues refused their SAS and fresh resources could not be fetched: {error}"
                                ),
                                transient: true,
                            });
                        }
                    }
                }
                Err(PostError::AuthenticationFailed(reason)) => {
                    return BlobOutcome::Failed(BlobFailure {
                        code: "QueueAuthorizationFailed",
                        message: format!(
                            "the ingestion queues refused their SAS even after a refresh ({reason})"
                        ),
                        transient: true,
                    });
                }
                Err(PostError::Rejected(reason)) => {
                    return BlobOutcome::Failed(BlobFailure {
                        code: "MessageRejected",
                        message: format!("the ingestion queue rejected the message ({reason})"),
                        transient: false,
                    });
                }
                Err(PostError::Unavailable(reason)) => {
                    return BlobOutcome::Failed(BlobFailure {
                        code: "QueueUnavailable",
                        message: format!("no ingestion queue accepted the message ({reason})"),
                        transient: true,
                    });
                }
            }
        }
    }

    /// Tries up to three distinct queues, best-ranked first, recording each result.
    async fn post_with_failover(
        &self,
        cache: &ResourceCache,
        snapshot: &Snapshot,
        job: &BlobJob,
        text: String,
    ) -> Result<(), PostError> {
        let Ok(_permit) = self.posts.acquire().await else {
            return Err(PostError::Unavailable(
                "the handler is shutting down".to_owned(),
            ));
        };
        let pool = &snapshot.pool;
        let mut last_error = PostError::Unavailable("no ingestion queue is known".to_owned());
        for index in pool.candidates(&cache.ranking) {
            let account = pool.account(index);
            match pool.post(index, text.clone()).await {
                Ok(()) => {
                    cache.ranking.record(account, true);
                    tracing::debug!(blob = %job.blob, source_id = %job.source_id, database = %job.database, table = %job.table, queue_account = account, "queued");
                    return Ok(());
                }
                Err(error) => {
                    cache.ranking.record(account, false);
                    tracing::warn!(blob = %job.blob, source_id = %job.source_id, queue = pool.describe(index), reason = error.message(), "queue post failed");
                    match error {
                        // Another queue may still take it; the refresh it calls for is started now
                        // so the next request gets working resources either way.
                        PostError::AuthenticationFailed(_) => {
                            cache.invalidate(snapshot.generation);
                            last_error = error;
                        }
                        PostError::Unavailable(_)
                            if !matches!(last_error, PostError::AuthenticationFailed(_)) =>
                        {
                            last_error = error
                        }
                        PostError::Unavailable(_) => {}
                        // Any queue would refuse this message.
                        PostError::Rejected(_) => return Err(error),
                    }
                }
            }
        }
        Err(last_error)
    }
}
