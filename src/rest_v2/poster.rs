//! The whole posting policy of the v2 backend: a batch's blobs grouped by target and ingestion
//! properties (one `properties` object per POST), split into POSTs of at most `maxBlobsPerBatch`,
//! posted concurrently within the request's deadline. Throttling (429) and 5xx are retried by
//! [`DmClient::call`] honouring `Retry-After`, never past the deadline. A POST that was sent and
//! whose answer was then lost (a dropped connection, a timeout) or could not be read (cut off, too
//! large, not the expected JSON) is not sent again (the DM may have queued it) and its blobs are
//! `Unknown`; one that was not sent or that the DM refused fails only its own blobs, with the
//! DM's reason.

use super::request;
use crate::dm::{Call, DmClient, DmError};
use crate::domain::DmEndpoint;
use crate::ingest::{
    BlobFailure, BlobJob, BlobOutcome, Deadline, FailureCode, RestV2Operation,
    UNKNOWN_OUTCOME_ADVICE,
};
use futures::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use std::sync::Arc;

/// Tracked POSTs one request may make: their ids make up the handler's operation id, which must
/// stay a usable URL path segment (`ingest::MAX_ID`). At the documented 20 blobs per POST this is
/// 800 tracked blobs per request.
pub(crate) const MAX_TRACKED_OPERATIONS: usize = 40;

/// What one request may send: blobs per POST, the DM's largest blob, POSTs in flight.
pub(super) struct Limits {
    pub(super) max_blobs: usize,
    pub(super) max_data_size: Option<u64>,
    pub(super) concurrency: usize,
}

/// Why `job` is not sent at all: its known uncompressed size is over the DM's `maxDataSize`
/// (unless its properties say `ignoreSizeLimit`, which is passed on for the DM to judge).
fn too_large(job: &BlobJob, max_data_size: Option<u64>) -> Option<BlobFailure> {
    let (size, max) = (job.raw_data_size?, max_data_size?);
    (size > max && !job.spec.ignore_size_limit).then(|| {
        BlobFailure::new(
            FailureCode::DataTooLarge,
            format!(
                "the blob's rawDataSize ({size} bytes) is over the {max} bytes the DM accepts for one ingestion \
                 (maxDataSize of its ingestion configuration); split it, or set ignoreSizeLimit to leave it to the DM"
            ),
        )
    })
}

/// One POST: indices into the batch's jobs, all with one target and one spec.
struct Post {
    indices: Vec<usize>,
    track: bool,
}

/// Groups `jobs` (in order) into POSTs of at most `max_blobs` blobs, leaving out those `send`
/// refuses.
fn plan(jobs: &[BlobJob], max_blobs: usize, send: impl Fn(usize) -> bool) -> Vec<Post> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, job) in jobs.iter().enumerate().filter(|(i, _)| send(*i)) {
        let same = |g: &Vec<usize>| {
            let first = &jobs[g[0]];
            first.database == job.database
                && first.table == job.table
                && (Arc::ptr_eq(&first.spec, &job.spec) || first.spec == job.spec)
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(group) => group.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
        .into_iter()
        .flat_map(|group| {
            let track = jobs[group[0]].spec.report_method.tracked();
            group
                .chunks(max_blobs.max(1))
                .map(|chunk| Post {
                    indices: chunk.to_vec(),
                    track,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    ingestion_operation_id: Option<String>,
}

/// What became of every job, and the DM's operations for the tracked ones.
pub(super) struct Posted {
    pub(super) outcomes: Vec<BlobOutcome>,
    pub(super) operations: Vec<RestV2Operation>,
}

pub(super) async fn post_all(
    client: &DmClient,
    dm: &DmEndpoint,
    jobs: &[BlobJob],
    limits: &Limits,
    deadline: Deadline,
) -> Posted {
    let mut outcomes = vec![BlobOutcome::Queued; jobs.len()];
    for (outcome, job) in outcomes.iter_mut().zip(jobs) {
        if let Some(failure) = too_large(job, limits.max_data_size) {
            *outcome = BlobOutcome::Failed(failure);
        }
    }
    let max_blobs = limits.max_blobs;
    let posts = plan(jobs, max_blobs, |i| {
        matches!(outcomes[i], BlobOutcome::Queued)
    });
    let tracked_posts = posts.iter().filter(|p| p.track).count();
    let timestamp = crate::queued::creation_time_now();
    let timestamp = timestamp.as_str();
    // Indexing instead of iterating keeps the closure free of a higher-ranked lifetime rustc
    // cannot yet prove `Send` through (rust-lang/rust#102211), as in `queued`.
    let calls = (0..posts.len()).map(|n| {
        let post = &posts[n];
        async move {
            if post.track && tracked_posts > MAX_TRACKED_OPERATIONS {
                let failure = BlobFailure::new(
                    FailureCode::DataManagementRejected,
                    format!(
                        "a tracked request may span at most {MAX_TRACKED_OPERATIONS} REST v2 operations \
                         ({max_blobs} blobs each); this one needs {tracked_posts}: split it or do not track it"
                    ),
                );
                return (post, Err(PostFailure::Failed(failure)));
            }
            (post, post_one(client, dm, jobs, post, timestamp, deadline).await)
        }
    });
    let finished: Vec<(&Post, Result<Option<RestV2Operation>, PostFailure>)> =
        futures::stream::iter(calls)
            .buffer_unordered(limits.concurrency.max(1))
            .collect()
            .await;
    let mut operations = Vec::new();
    for (post, result) in finished {
        match result {
            Ok(operation) => operations.extend(operation),
            Err(failure) => {
                let outcome = match failure {
                    PostFailure::Unknown(f) => BlobOutcome::Unknown(f),
                    PostFailure::Failed(f) => BlobOutcome::Failed(f),
                };
                for &i in &post.indices {
                    outcomes[i] = outcome.clone();
                }
            }
        }
    }
    Posted {
        outcomes,
        operations,
    }
}

enum PostFailure {
    /// The DM may have queued the blobs: the answer was lost.
    Unknown(BlobFailure),
    Failed(BlobFailure),
}

impl From<BlobFailure> for PostFailure {
    fn from(f: BlobFailure) -> Self {
        PostFailure::Failed(f)
    }
}

async fn post_one(
    client: &DmClient,
    dm: &DmEndpoint,
    jobs: &[BlobJob],
    post: &Post,
    timestamp: &str,
    deadline: Deadline,
) -> Result<Option<RestV2Operation>, PostFailure> {
    let members: Vec<&BlobJob> = post.indices.iter().map(|&i| &jobs[i]).collect();
    let first = members[0];
    if deadline.expired() {
        return Err(BlobFailure::new(
            FailureCode::DeadlineExceeded,
            "the request's deadline passed before the blob's batch was posted",
        )
        .into());
    }
    let properties = request::properties(&first.spec, post.track);
    let segment = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let call = Call {
        method: reqwest::Method::POST,
        url: format!(
            "{dm}/v1/rest/ingestion/queued/{}/{}",
            segment(first.database.as_str()),
            segment(first.table.as_str())
        ),
        body: Some(request::body(&members, &properties, timestamp)),
        what: "queued ingestion",
    };
    let answer = client
        .call(dm, &call, Some(deadline.instant()), false)
        .await
        .map_err(|e| failure(&e))?;
    let answer = serde_json::from_slice::<Answer>(&answer).map_err(|e| {
        PostFailure::Unknown(BlobFailure::new(
            FailureCode::IngestionOutcomeUnknown,
            format!(
                "the DM at {dm} accepted the batch but its answer is not the expected JSON ({e}); \
                 the DM may have queued the blob. {UNKNOWN_OUTCOME_ADVICE}"
            ),
        ))
    })?;
    let id = answer.ingestion_operation_id.filter(|id| !id.is_empty());
    match (post.track, id) {
        (true, Some(id)) => Ok(Some(RestV2Operation {
            database: first.database.to_string(),
            table: first.table.to_string(),
            id,
        })),
        (true, None) => {
            // Queued, but the DM gave nothing to look the blobs up by: say so in the logs; the
            // caller's operation then covers the other batches only.
            tracing::warn!(dm = %dm, database = %first.database, table = %first.table, blobs = members.len(), "the DM queued a tracked batch but returned no ingestionOperationId");
            Ok(None)
        }
        (false, _) => Ok(None),
    }
}

/// What a failed POST means for its blobs.
fn failure(error: &DmError) -> PostFailure {
    let code = match error {
        // Sent, and then the answer was lost, cut off or too large to read (the client reads a
        // refusal's status even when its body is unreadable, so these follow an acceptance or
        // nothing): the DM may have queued the blobs.
        DmError::Unanswered { .. } | DmError::InvalidResponse { .. } => {
            return PostFailure::Unknown(BlobFailure::new(
                FailureCode::IngestionOutcomeUnknown,
                format!("{error}; the DM may have queued the blob. {UNKNOWN_OUTCOME_ADVICE}"),
            ));
        }
        DmError::Identity(_) => FailureCode::IdentityUnavailable,
        e if e.is_transient() => FailureCode::DataManagementUnavailable,
        DmError::Unauthorized { .. } => FailureCode::DataManagementUnauthorized,
        _ => FailureCode::DataManagementRejected,
    };
    PostFailure::Failed(BlobFailure::new(code, error.to_string()).retry_after(error.retry_after()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BlobUri, DatabaseName, SourceId, TableName};
    use crate::properties::PropertyBag;

    fn job(table: &str, spec: &Arc<crate::properties::IngestionSpec>) -> BlobJob {
        BlobJob {
            blob: BlobUri::parse("https://a.blob.core.windows.net/c/b.csv").unwrap(),
            source_id: SourceId::new_random(),
            raw_data_size: None,
            database: DatabaseName::parse("db").unwrap(),
            table: TableName::parse(table).unwrap(),
            spec: spec.clone(),
        }
    }

    #[test]
    fn posts_group_by_target_and_spec_and_respect_the_batch_size() {
        let csv = Arc::new(PropertyBag::new().parse().unwrap().spec());
        let mut bag = PropertyBag::new();
        bag.set("format", serde_json::Value::String("json".into()));
        let json = Arc::new(bag.parse().unwrap().spec());
        let jobs = vec![
            job("A", &csv),
            job("A", &csv),
            job("B", &csv),
            job("A", &json),
            job("A", &csv),
        ];
        let posts: Vec<Vec<usize>> = plan(&jobs, 2, |_| true)
            .into_iter()
            .map(|p| p.indices)
            .collect();
        assert_eq!(posts, vec![vec![0, 1], vec![4], vec![2], vec![3]]);
        let posts: Vec<Vec<usize>> = plan(&jobs, 2, |i| i != 1)
            .into_iter()
            .map(|p| p.indices)
            .collect();
        assert_eq!(posts, vec![vec![0, 4], vec![2], vec![3]]);
    }

    #[test]
    fn a_blob_over_max_data_size_is_not_sent() {
        let csv = Arc::new(PropertyBag::new().parse().unwrap().spec());
        let mut big = job("A", &csv);
        big.raw_data_size = Some(1001);
        let failure = too_large(&big, Some(1000)).expect("too large");
        assert_eq!(failure.code, FailureCode::DataTooLarge);
        assert!(!failure.is_transient());
        assert!(failure.message.contains("1000"), "{}", failure.message);
        assert!(too_large(&big, Some(1001)).is_none());
        assert!(too_large(&big, None).is_none(), "no limit announced");
        big.raw_data_size = None;
        assert!(too_large(&big, Some(1)).is_none(), "unknown size");
        let mut bag = PropertyBag::new();
        bag.set("ignoreSizeLimit", serde_json::Value::Bool(true));
        let mut ignored = job("A", &Arc::new(bag.parse().unwrap().spec()));
        ignored.raw_data_size = Some(5000);
        assert!(too_large(&ignored, Some(1000)).is_none());
    }
}
