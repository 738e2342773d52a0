//! Getting one blob's message onto one of a DM's queues: the queued backend's whole retry and
//! failover policy, in one place.
//!
//! - A message is tried on up to three distinct queues, the healthiest storage accounts first
//!   ([`QueuePool::candidates`]); every result feeds the account ranking.
//! - A queue that refuses its SAS (403) marks the snapshot stale, so its refresh starts at once. If
//!   no queue took the message, resources newer than the refused ones are fetched once (shared by
//!   every blob that failed on the same snapshot) and the message is tried once more with them.
//! - A message any queue would refuse (too large) fails at once.

use super::cache::{ResourceCache, Snapshot};
use super::message::{EncodeError, IngestionMessage};
use super::pool::PostError;
use super::ranking::AccountRanking;
use crate::dm::DmError;
use crate::ingest::{BlobFailure, BlobJob, BlobOutcome, FailureCode};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The queues of one DM: its cached resources and how its storage accounts have been doing.
pub(super) struct DmQueues {
    cache: ResourceCache,
    ranking: AccountRanking,
}

/// What one round of posting (one snapshot) came to.
enum Attempt {
    Done(BlobOutcome),
    /// Every queue tried refused or failed, and at least one refused the SAS.
    SasRefused(String),
}

impl DmQueues {
    pub(super) fn new(cache: ResourceCache) -> Self {
        Self {
            cache,
            ranking: AccountRanking::default(),
        }
    }

    /// Resources to post with (see [`ResourceCache::get`]).
    pub(super) async fn snapshot(&self) -> Result<Arc<Snapshot>, DmError> {
        self.cache.get().await
    }

    /// Queues one blob. `posts` bounds the posts in flight across all requests.
    pub(super) async fn send(
        &self,
        snapshot: Arc<Snapshot>,
        job: &BlobJob,
        created_at: &str,
        posts: &Semaphore,
    ) -> BlobOutcome {
        let refused = match self.attempt(&snapshot, job, created_at, posts).await {
            Attempt::Done(outcome) => return outcome,
            Attempt::SasRefused(reason) => reason,
        };
        tracing::warn!(blob = %job.blob, generation = snapshot.generation, reason = %refused, "queue refused the SAS; refetching ingestion resources");
        let fresh = match self.cache.replace(snapshot.generation).await {
            Ok(fresh) => fresh,
            Err(error) => {
                return failed(
                    FailureCode::QueueAuthorizationFailed,
                    format!(
                        "the queues refused their SAS and fresh resources could not be fetched: {error}"
                    ),
                );
            }
        };
        match self.attempt(&fresh, job, created_at, posts).await {
            Attempt::Done(outcome) => outcome,
            Attempt::SasRefused(reason) => failed(
                FailureCode::QueueAuthorizationFailed,
                format!("the ingestion queues refused their SAS even after a refresh ({reason})"),
            ),
        }
    }

    /// Encodes the message with `snapshot`'s identity token and posts it with failover.
    async fn attempt(
        &self,
        snapshot: &Snapshot,
        job: &BlobJob,
        created_at: &str,
        posts: &Semaphore,
    ) -> Attempt {
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
                tracing::warn!(blob = %job.blob, source_id = %job.source_id, %error, "message not sent");
                let code = match error {
                    EncodeError::TooLarge { .. } => FailureCode::MessageTooLarge,
                    EncodeError::Serialize(_) => FailureCode::MessageRejected,
                };
                return Attempt::Done(failed(code, error.to_string()));
            }
        };
        // A permit for the whole failover; the semaphore is never closed.
        let _permit = posts.acquire().await.ok();
        match self.post_with_failover(snapshot, job, text).await {
            Ok(()) => Attempt::Done(BlobOutcome::Queued),
            Err(PostError::AuthenticationFailed(reason)) => Attempt::SasRefused(reason),
            Err(PostError::Rejected(reason)) => Attempt::Done(failed(
                FailureCode::MessageRejected,
                format!("the ingestion queue rejected the message ({reason})"),
            )),
            Err(PostError::Unavailable(reason)) => Attempt::Done(failed(
                FailureCode::QueueUnavailable,
                format!("no ingestion queue accepted the message ({reason})"),
            )),
        }
    }

    /// Tries up to three distinct queues, best-ranked first, recording each result. A refused SAS
    /// outranks other failures in the result: it is the one a refresh can fix.
    async fn post_with_failover(
        &self,
        snapshot: &Snapshot,
        job: &BlobJob,
        text: String,
    ) -> Result<(), PostError> {
        let pool = &snapshot.pool;
        let mut last_error = PostError::Unavailable("no ingestion queue is known".to_owned());
        for index in pool.candidates(&self.ranking) {
            let account = pool.account(index);
            let error = match pool.post(index, text.clone()).await {
                Ok(()) => {
                    self.ranking.record(account, true);
                    tracing::debug!(blob = %job.blob, source_id = %job.source_id, database = %job.database, table = %job.table, queue_account = account, "queued");
                    return Ok(());
                }
                Err(error) => error,
            };
            self.ranking.record(account, false);
            tracing::warn!(blob = %job.blob, source_id = %job.source_id, queue = pool.describe(index), reason = error.message(), "queue post failed");
            match error {
                // Another queue may still take it; the refresh it calls for starts now, so the
                // next request gets working resources either way.
                PostError::AuthenticationFailed(_) => {
                    self.cache.invalidate(snapshot.generation);
                    last_error = error;
                }
                PostError::Unavailable(_)
                    if !matches!(last_error, PostError::AuthenticationFailed(_)) =>
                {
                    last_error = error;
                }
                PostError::Unavailable(_) => {}
                // Any queue would refuse this message.
                PostError::Rejected(_) => return Err(error),
            }
        }
        Err(last_error)
    }
}

fn failed(code: FailureCode, message: String) -> BlobOutcome {
    BlobOutcome::Failed(BlobFailure::new(code, message))
}
