//! Getting one blob's message onto one of a DM's queues: the queued backend's whole retry and
//! failover policy, in one place.
//!
//! - A message is tried on up to three distinct queues, the healthiest storage accounts first
//!   ([`QueuePool::candidates`]); every result feeds the account ranking.
//! - A queue that refuses its SAS (403) marks the snapshot stale, so its refresh starts at once. If
//!   no queue took the message, resources newer than the refused ones are fetched once (shared by
//!   every blob that failed on the same snapshot) and the message is tried once more with them.
//! - A message any queue would refuse (too large) fails at once.
//! - Every wait draws from the request's deadline; a blob not tried by then is `DeadlineExceeded`.
//! - A post whose answer was lost may have stored the message. The blob is still tried elsewhere
//!   (a duplicate is tolerable, a loss is not), and if no queue confirms it, its outcome is
//!   `Unknown`, never `Failed`.

use super::cache::{ResourceCache, Snapshot};
use super::message::{EncodeError, IngestionMessage, QueueText, StatusInTable};
use super::pool::PostError;
use super::ranking::AccountRanking;
use crate::dm::DmError;
use crate::dm::refresh::RefetchError;
use crate::ingest::{
    BlobFailure, BlobJob, BlobOutcome, Deadline, FailureCode, UNKNOWN_OUTCOME_ADVICE,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The queues of one DM: its cached resources, how its storage accounts have been doing, and its
/// own bound on posts in flight, so that hung queues of one DM cannot hold up another DM.
pub(super) struct DmQueues {
    cache: ResourceCache,
    ranking: AccountRanking,
    posts: Semaphore,
}

/// One blob on its way: what every attempt needs, and what they learnt.
struct Delivery<'a> {
    job: &'a BlobJob,
    created_at: &'a str,
    /// The status table (URL with SAS) and partition of a tracked blob.
    record: Option<(&'a str, &'a str)>,
    deadline: Deadline,
    /// Why a post's outcome is unknown, if one's is: the message may be stored.
    unknown: Option<String>,
}

/// What one round of posting (one snapshot) came to.
enum Attempt {
    Done(BlobOutcome),
    /// Every queue tried refused or failed, and at least one refused the SAS.
    SasRefused(String),
}

impl DmQueues {
    pub(super) fn new(cache: ResourceCache, max_posts: usize) -> Self {
        Self {
            cache,
            ranking: AccountRanking::default(),
            posts: Semaphore::new(max_posts),
        }
    }

    /// How this DM's storage accounts have been doing (queues and uploads alike).
    pub(super) fn ranking(&self) -> &AccountRanking {
        &self.ranking
    }

    /// Resources to post with (see [`ResourceCache::get`]).
    pub(super) async fn snapshot(&self) -> Result<Arc<Snapshot>, DmError> {
        self.cache.get().await
    }

    /// Resources newer than generation `rejected`, whose SAS storage refused (see
    /// [`ResourceCache::replace`]).
    pub(super) async fn replace(&self, rejected: u64) -> Result<Arc<Snapshot>, RefetchError> {
        self.cache.replace(rejected).await
    }

    /// Queues one blob; a tracked one with its status row (`record`: table URL with SAS and
    /// partition).
    pub(super) async fn send(
        &self,
        snapshot: Arc<Snapshot>,
        job: &BlobJob,
        created_at: &str,
        record: Option<(&str, &str)>,
        deadline: Deadline,
    ) -> BlobOutcome {
        let mut delivery = Delivery {
            job,
            created_at,
            record,
            deadline,
            unknown: None,
        };
        let outcome = self.deliver(snapshot, &mut delivery).await;
        match (outcome, delivery.unknown) {
            (BlobOutcome::Failed(failure), Some(reason)) if failure.is_transient() => {
                tracing::warn!(blob = %job.blob, source_id = %job.source_id, %reason, "queue outcome unknown");
                BlobOutcome::Unknown(BlobFailure::new(
                    FailureCode::QueueOutcomeUnknown,
                    format!(
                        "the message may have been queued: a queue may have stored it, but its answer was lost ({reason}), and no other queue took it ({}). {UNKNOWN_OUTCOME_ADVICE}",
                        failure.message
                    ),
                ))
            }
            (outcome, _) => outcome,
        }
    }

    async fn deliver(&self, snapshot: Arc<Snapshot>, delivery: &mut Delivery<'_>) -> BlobOutcome {
        let refused = match self.attempt(&snapshot, delivery).await {
            Attempt::Done(outcome) => return outcome,
            Attempt::SasRefused(reason) => reason,
        };
        let job = delivery.job;
        tracing::warn!(blob = %job.blob, generation = snapshot.generation, reason = %refused, "queue refused the SAS; refetching ingestion resources");
        let fresh = match tokio::time::timeout_at(
            delivery.deadline.instant(),
            self.cache.replace(snapshot.generation),
        )
        .await
        {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(error)) => {
                return BlobOutcome::Failed(
                    BlobFailure::new(
                        FailureCode::QueueAuthorizationFailed,
                        format!("the ingestion queues refused their SAS ({refused}); {error}"),
                    )
                    .retry_after(error.retry_after()),
                );
            }
            Err(_) => return deadline_passed(),
        };
        match self.attempt(&fresh, delivery).await {
            Attempt::Done(outcome) => outcome,
            Attempt::SasRefused(reason) => failed(
                FailureCode::QueueAuthorizationFailed,
                format!("the ingestion queues refused their SAS even after a refresh ({reason})"),
            ),
        }
    }

    /// Encodes the message with `snapshot`'s identity token and posts it with failover.
    async fn attempt(&self, snapshot: &Snapshot, delivery: &mut Delivery<'_>) -> Attempt {
        let job = delivery.job;
        // A permit for the whole failover, taken before the message is encoded: a request's
        // blobs all wait here at once, and their texts would otherwise wait with them.
        let Ok(permit) =
            tokio::time::timeout_at(delivery.deadline.instant(), self.posts.acquire()).await
        else {
            return Attempt::Done(deadline_passed());
        };
        // The semaphore is never closed; without a permit the post still goes.
        let _permit = permit.ok();
        let row_key = job.source_id.to_string();
        let message = IngestionMessage {
            source_id: job.source_id,
            blob: &job.blob,
            raw_data_size: job.raw_data_size,
            database: &job.database,
            table: &job.table,
            spec: &job.spec,
            authorization_context: &snapshot.authorization_context,
            created_at: delivery.created_at,
            status_in_table: delivery.record.map(|(table, partition)| StatusInTable {
                table_connection_string: table,
                partition_key: partition,
                row_key: &row_key,
            }),
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
        // Boxed: a blob waiting for its permit then holds a small future, not room for a post in
        // flight (a request's whole window of blobs waits at once).
        match Box::pin(self.post_with_failover(snapshot, delivery, text)).await {
            Ok(()) => Attempt::Done(BlobOutcome::Queued),
            Err(PostError::AuthenticationFailed(reason)) => Attempt::SasRefused(reason),
            Err(PostError::Rejected(reason)) => Attempt::Done(failed(
                FailureCode::MessageRejected,
                format!("the ingestion queue rejected the message ({reason})"),
            )),
            Err(PostError::Unavailable(_) | PostError::Unknown(_))
                if delivery.deadline.remaining() < MIN_POST_WINDOW =>
            {
                Attempt::Done(deadline_passed())
            }
            Err(PostError::Unavailable(reason) | PostError::Unknown(reason)) => {
                Attempt::Done(failed(
                    FailureCode::QueueUnavailable,
                    format!("no ingestion queue accepted the message ({reason})"),
                ))
            }
        }
    }

    /// Tries up to three distinct queues, best-ranked first, recording each result. A refused SAS
    /// outranks other failures in the result: it is the one a refresh can fix.
    async fn post_with_failover(
        &self,
        snapshot: &Snapshot,
        delivery: &mut Delivery<'_>,
        text: QueueText,
    ) -> Result<(), PostError> {
        let job = delivery.job;
        let pool = &snapshot.pool;
        let mut last_error = PostError::Unavailable("no ingestion queue is known".to_owned());
        for index in pool.candidates(&self.ranking) {
            // A post started this close to the deadline could only end `unknown` (stored, answer
            // never seen); not sending it keeps the outcome certain.
            if delivery.deadline.remaining() < MIN_POST_WINDOW {
                break;
            }
            let account = pool.account(index);
            let error = match pool.post(index, &text, delivery.deadline).await {
                Ok(()) => {
                    self.ranking.record(account, true);
                    crate::request_log::account_used(account);
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
                PostError::Unavailable(_) | PostError::Unknown(_) => {
                    if let PostError::Unknown(reason) = &error {
                        delivery.unknown = Some(reason.clone());
                    }
                    if !matches!(last_error, PostError::AuthenticationFailed(_)) {
                        last_error = error;
                    }
                }
                // Any queue would refuse this message.
                PostError::Rejected(_) => return Err(error),
            }
        }
        Err(last_error)
    }
}

/// Least time left for a queue post to be worth starting: a healthy post answers in a few ms.
const MIN_POST_WINDOW: Duration = Duration::from_millis(25);

fn failed(code: FailureCode, message: String) -> BlobOutcome {
    BlobOutcome::Failed(BlobFailure::new(code, message))
}

fn deadline_passed() -> BlobOutcome {
    failed(
        FailureCode::DeadlineExceeded,
        "the request's deadline passed before the blob could be queued (setting INGEST_REQUEST_DEADLINE_SECONDS; BlobCreated invocations: INGEST_EVENT_DEADLINE_SECONDS)".to_owned(),
    )
}
