//! The whole posting policy of the v2 backend: a batch's blobs grouped by target and ingestion
//! properties (one `properties` object per POST), split into POSTs of at most `maxBlobsPerBatch`,
//! posted concurrently within the request's deadline. Throttling (429) and 5xx are retried by
//! [`DmClient::call`] honouring `Retry-After`, never past the deadline; a POST whose answer was
//! lost is not sent again (the DM may have queued it) and its blobs are `Unknown`. A failed POST
//! fails only its own blobs, with the DM's reason.

use super::request;
use crate::dm::{Call, DmClient, DmError};
use crate::domain::DmEndpoint;
use crate::ingest::{BlobFailure, BlobJob, BlobOutcome, Deadline, FailureCode, RestV2Operation};
use futures::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use std::sync::Arc;

/// Tracked POSTs one request may make: their ids make up the handler's operation id, which must
/// stay a usable URL path segment (`ingest::MAX_ID`). At the documented 20 blobs per POST this is
/// 800 tracked blobs per request.
pub(crate) const MAX_TRACKED_OPERATIONS: usize = 40;

/// One POST: indices into the batch's jobs, all with one target and one spec.
struct Post {
    indices: Vec<usize>,
    track: bool,
}

/// Groups `jobs` (in order) into POSTs of at most `max_blobs` blobs.
fn plan(jobs: &[BlobJob], max_blobs: usize) -> Vec<Post> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
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
    max_blobs: usize,
    concurrency: usize,
    deadline: Deadline,
) -> Posted {
    let posts = plan(jobs, max_blobs);
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
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut outcomes = vec![BlobOutcome::Queued; jobs.len()];
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
    let id = serde_json::from_slice::<Answer>(&answer)
        .ok()
        .and_then(|a| a.ingestion_operation_id)
        .filter(|id| !id.is_empty());
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
        DmError::Unanswered { .. } => {
            return PostFailure::Unknown(BlobFailure::new(
                FailureCode::IngestionOutcomeUnknown,
                format!("{error}; the DM may have queued the blob"),
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
        let posts: Vec<Vec<usize>> = plan(&jobs, 2).into_iter().map(|p| p.indices).collect();
        assert_eq!(posts, vec![vec![0, 1], vec![4], vec![2], vec![3]]);
    }
}
