//! `POST /api/ingest`: the body parsed into blob jobs for one allowlisted DM, handed to the
//! backend, and answered with one result per blob.

mod parse;

use super::errors::{ApiError, ErrorDetail, Reply, nothing_queued};
use super::results;
use crate::authorization::{Caller, Denial, Policy, Request};
use crate::domain::{AllowedDms, DmEndpoint};
use crate::ingest::{
    Backend, Batch, BlobFailure, BlobJob, BlobOutcome, Deadline, Ingested, OperationId,
};
use crate::properties::Properties;
use crate::request_log as summary;
use uuid::Uuid;

/// One request as the route read it.
pub(crate) struct Incoming {
    pub(crate) body: bytes::Bytes,
    /// `X-MS-CLIENT-PRINCIPAL`, set by App Service Authentication.
    pub(crate) principal: Option<String>,
}

/// What the route needs besides the backend.
pub(crate) struct IngestApi {
    dms: AllowedDms,
    max_blobs: usize,
    /// `INGEST_DEFAULT_PROPERTIES`, under every request's own.
    defaults: Properties,
    authorization: Policy,
}

impl IngestApi {
    pub(crate) fn new(
        dms: AllowedDms,
        max_blobs: usize,
        defaults: Properties,
        authorization: Policy,
    ) -> Self {
        Self {
            dms,
            max_blobs,
            defaults,
            authorization,
        }
    }

    /// Handles one request body end to end, by `deadline`. The body is dropped once parsed.
    pub(crate) async fn handle<B: Backend>(
        &self,
        backend: &B,
        request: Incoming,
        deadline: Deadline,
    ) -> Reply {
        let Incoming { body, principal } = request;
        let parsed = parse::parse(&body, self.max_blobs, &self.defaults);
        drop(body);
        let request = match parsed {
            Ok(request) => request,
            Err(error) => {
                tracing::info!(
                    status = error.status(),
                    error = error.headline().code,
                    "rejected ingest request"
                );
                return error.into();
            }
        };
        if let Err(denial) = self.authorize(principal.as_deref(), &request.jobs) {
            tracing::warn!(code = denial.code, reason = %denial.message, "refused an ingest request");
            return ApiError::Forbidden(denial).into();
        }
        let dm = match self.dms.resolve(request.data_management_uri.as_deref()) {
            Ok(dm) => dm,
            Err(not_allowed) => {
                tracing::warn!(requested = %not_allowed.0, "rejected a dataManagementUri outside the allowlist");
                return ApiError::DmNotAllowed(not_allowed.0).into();
            }
        };
        let jobs = request.jobs;
        let tracked = jobs.iter().any(|job| job.spec.report_method.tracked());
        let batch = Batch {
            dm: &dm,
            jobs: &jobs,
            deadline,
            operation: tracked.then(Uuid::new_v4),
        };
        let Ingested {
            outcomes,
            operation,
        } = match backend.ingest(batch).await {
            Ok(ingested) => ingested,
            Err(failure) => return refused_whole(&dm, &jobs, failure),
        };
        if let Some(operation) = &operation {
            summary::record("operation_id", operation.encode());
            tracing::info!(operation_id = %operation.encode(), dm = %dm, blobs = jobs.len(), "tracked operation");
        }
        answer(&dm, &jobs, &outcomes, operation.as_ref())
    }

    /// Checks the caller may ingest every job, before the DM or a queue is asked anything.
    fn authorize(&self, principal: Option<&str>, jobs: &[BlobJob]) -> Result<(), Denial> {
        let caller = if self.authorization.needs_caller() {
            Caller::from_principal(principal).map_err(|message| Denial {
                code: "CallerNotAuthenticated",
                message,
                target: None,
            })?
        } else {
            None
        };
        self.authorization.check(
            caller.as_ref(),
            jobs.iter().enumerate().map(|(index, job)| Request {
                index,
                database: &job.database,
                table: &job.table,
                blob: &job.blob,
            }),
        )
    }
}

/// The answer for a batch the backend took: 202 when every blob was queued, 207 when some were
/// (or may have been), the first failure's status when none was.
fn answer(
    dm: &DmEndpoint,
    jobs: &[BlobJob],
    outcomes: &[BlobOutcome],
    operation: Option<&OperationId>,
) -> Reply {
    let (queued, unknown) = results::record_outcomes(dm, jobs.len(), outcomes);
    // Any blob that may or may not be queued needs the caller to read the per-blob results.
    let (status, retry_after, headline) = if queued == jobs.len() {
        (202, None, None)
    } else if queued > 0 || unknown > 0 {
        (207, None, None)
    } else {
        let failures = outcomes.iter().filter_map(|o| match o {
            BlobOutcome::Failed(f) => Some(f),
            BlobOutcome::Queued | BlobOutcome::Unknown(_) => None,
        });
        let headline = failures.clone().next().map(|f| ErrorDetail {
            message: format!("No blob was queued: {}", f.message),
            ..ErrorDetail::failure(f)
        });
        let (status, retry_after) = nothing_queued(failures, false);
        (status, retry_after, headline)
    };
    results::Answer::new(jobs, outcomes)
        .error(headline.as_ref())
        .operation(operation)
        .reply(status, retry_after)
}

/// The answer when the backend could not take the batch at all (its DM unreachable, say): every
/// blob failed for the same reason.
fn refused_whole(dm: &DmEndpoint, jobs: &[BlobJob], failure: BlobFailure) -> Reply {
    let (status, retry_after) = nothing_queued([&failure], true);
    let headline = ErrorDetail::failure(&failure);
    let outcomes = vec![BlobOutcome::Failed(failure); jobs.len()];
    results::record_outcomes(dm, jobs.len(), &outcomes);
    results::Answer::new(jobs, &outcomes)
        .error(Some(&headline))
        .reply(status, retry_after)
}
