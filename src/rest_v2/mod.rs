//! The queued-ingestion REST API backend (v2): per allowlisted DM, its ingestion configuration
//! ([`cache`], refreshed per its `refreshInterval`); blobs posted to
//! `POST /v1/rest/ingestion/queued/{db}/{table}` in batches ([`poster`] holds the whole policy);
//! tracked operations read back through the status endpoint ([`status`]); data bodies uploaded to
//! the configuration's containers with the same uploader as v1.

mod cache;
mod configuration;
mod poster;
mod request;
mod status;

pub(crate) use cache::Known;
pub(crate) use configuration::Preferred;

use crate::data::{DataError, DataSource};
use crate::dm::{Call, DmClient, DmError};
use crate::domain::{AllowedDms, BlobUri, DmEndpoint};
use crate::ingest::{
    Backend, Batch, BlobFailure, Deadline, FailureCode, Ingested, OperationId, PageRequest,
    StatusError, StatusPage, Tracked, UploadError,
};
use crate::queued::AccountRanking;
use cache::ConfigCache;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use std::collections::HashMap;
use std::sync::Arc;

/// One DM: its configuration, and the health of the accounts of its containers (for uploads).
struct Dm {
    configuration: ConfigCache,
    ranking: AccountRanking,
}

pub(crate) struct RestV2Backend {
    /// One per allowlisted DM, created up front: the allowlist bounds the map, and the token is
    /// never sent to a DM outside it.
    dms: HashMap<DmEndpoint, Dm>,
    client: Arc<DmClient>,
    /// POSTs of one request in flight at once.
    per_request: usize,
    /// The process's HTTP client for SDK clients (uploads, discards).
    transport: azure_core::http::Transport,
}

impl RestV2Backend {
    pub(crate) fn new(
        allowed: &AllowedDms,
        client: Arc<DmClient>,
        http: &reqwest::Client,
        max_concurrency: usize,
    ) -> Self {
        let dms = allowed
            .iter()
            .map(|dm| {
                let dm_state = Dm {
                    configuration: ConfigCache::new(dm.clone(), client.clone()),
                    ranking: AccountRanking::default(),
                };
                (dm.clone(), dm_state)
            })
            .collect();
        Self {
            dms,
            client,
            per_request: max_concurrency,
            transport: crate::transport::azure_transport(http),
        }
    }

    fn dm(&self, dm: &DmEndpoint) -> Result<&Dm, BlobFailure> {
        self.dms.get(dm).ok_or_else(|| {
            BlobFailure::new(
                FailureCode::DataManagementRejected,
                format!("{dm} is not an allowed Data Management endpoint"),
            )
        })
    }

    /// What `dm` says about its v2 API (the router asks this to choose a backend).
    pub(crate) async fn known(
        &self,
        dm: &DmEndpoint,
        deadline: Deadline,
    ) -> Result<Known, BlobFailure> {
        self.known_for(dm, deadline, Purpose::Post).await
    }

    async fn known_for(
        &self,
        dm: &DmEndpoint,
        deadline: Deadline,
        purpose: Purpose,
    ) -> Result<Known, BlobFailure> {
        let cache = &self.dm(dm)?.configuration;
        let known = match purpose {
            Purpose::Post => cache.get(deadline).await,
            Purpose::Upload => cache.get_for_upload(deadline).await,
        };
        known.map_err(|e| {
                // As v1 says when its resources do not come in time: the caller's own deadline
                // ended the wait, whatever the DM was doing meanwhile.
                if deadline.expired() && e.is_transient() {
                    BlobFailure::new(
                        FailureCode::DeadlineExceeded,
                        format!(
                            "the DM at {dm} did not provide its ingestion configuration before the request's deadline"
                        ),
                    )
                } else {
                    dm_failure(&e)
                }
            })
    }

    /// The configuration of a DM that has the v2 API; a clear failure for one that has not.
    async fn configuration(
        &self,
        dm: &DmEndpoint,
        deadline: Deadline,
        purpose: Purpose,
    ) -> Result<Arc<configuration::Configuration>, BlobFailure> {
        match self.known_for(dm, deadline, purpose).await? {
            Known::Supported(c) => Ok(c),
            Known::Absent => Err(BlobFailure::new(
                FailureCode::DataManagementRejected,
                format!(
                    "the DM at {dm} has no queued-ingestion REST API (v2): its configuration endpoint answered 404; \
                     set KUSTO_INGEST_METHOD to auto or v1 for this cluster"
                ),
            )),
        }
    }
}

impl Backend for RestV2Backend {
    async fn ingest(&self, batch: Batch<'_>) -> Result<Ingested, BlobFailure> {
        let Batch {
            dm, jobs, deadline, ..
        } = batch;
        let config = self.configuration(dm, deadline, Purpose::Post).await?;
        let limits = poster::Limits {
            max_blobs: config.max_blobs_per_batch,
            max_data_size: config.max_data_size,
            concurrency: self.per_request,
        };
        let posted = poster::post_all(&self.client, dm, jobs, &limits, deadline).await;
        let operation = (!posted.operations.is_empty()).then(|| OperationId {
            dm: dm.clone(),
            tracked: Tracked::RestV2(posted.operations),
        });
        Ok(Ingested {
            outcomes: posted.outcomes,
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
        let config = self
            .configuration(dm, deadline, Purpose::Upload)
            .await
            .map_err(UploadError::Storage)?;
        let state = self.dm(dm).map_err(UploadError::Storage)?;
        if let Some(max) = config.max_data_size
            && data.announced_raw_size().is_some_and(|n| n > max)
        {
            return Err(UploadError::Data(DataError::OverDmLimit { max }));
        }
        let mut limited;
        let data: &mut dyn DataSource = match config.max_data_size {
            Some(max) => {
                limited = WithinDmLimit { inner: data, max };
                &mut limited
            }
            None => data,
        };
        let fresh = || {
            crate::queued::refetched(deadline, "ingestion configuration", async {
                let fresh = state.configuration.replace(&config).await?;
                Ok(fresh.containers.clone())
            })
        };
        crate::queued::upload_data(
            &config.containers,
            fresh,
            &state.ranking,
            &self.transport,
            name,
            data,
            deadline,
        )
        .await
    }

    async fn discard(&self, blob: &BlobUri) {
        crate::queued::discard(&self.transport, blob).await;
    }

    async fn status(
        &self,
        operation: &OperationId,
        page: &PageRequest,
        deadline: Deadline,
    ) -> Result<StatusPage, StatusError> {
        let Tracked::RestV2(operations) = &operation.tracked else {
            return Err(StatusError::NotFound(
                "the operation was not tracked through the REST v2 API".to_owned(),
            ));
        };
        let dm = &operation.dm;
        self.dm(dm).map_err(StatusError::Unavailable)?;
        let segment = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let reads = operations.iter().map(|op| {
            let call = Call {
                method: reqwest::Method::GET,
                url: format!(
                    "{dm}/v1/rest/ingestion/queued/{}/{}/{}?details=true",
                    segment(&op.database),
                    segment(&op.table),
                    segment(&op.id)
                ),
                body: None,
                what: "queued ingestion status",
            };
            async move {
                let body = self
                    .client
                    .call(dm, &call, Some(deadline.instant()), true)
                    .await?;
                status::parse(&body).map_err(|reason| DmError::InvalidResponse {
                    endpoint: dm.to_string(),
                    reason,
                })
            }
        });
        let answers = futures::future::join_all(reads).await;
        let mut all = StatusPage::default();
        for answer in answers {
            let op = match answer {
                Ok(op) => op,
                Err(DmError::Rejected { status: 404, .. }) => {
                    return Err(StatusError::NotFound(
                        "the DM does not know this operation (any more)".to_owned(),
                    ));
                }
                Err(e) => return Err(StatusError::Unavailable(dm_failure(&e))),
            };
            all.counts.succeeded += op.counts.succeeded;
            all.counts.failed += op.counts.failed;
            all.counts.in_progress += op.counts.in_progress;
            all.counts.canceled += op.counts.canceled;
            all.blobs.extend(op.blobs);
            // RFC 3339 UTC times order as text.
            if let Some(start) = op.start
                && all.first_update.as_ref().is_none_or(|f| &start < f)
            {
                all.first_update = Some(start);
            }
            if let Some(last) = op.last
                && all.last_update.as_ref().is_none_or(|l| &last > l)
            {
                all.last_update = Some(last);
            }
        }
        // Pages are offsets into the merged details: every read asks the DM again, so a
        // continuation is where the previous page ended.
        let start = page
            .after
            .as_deref()
            .and_then(|a| a.parse::<usize>().ok())
            .unwrap_or(0)
            .min(all.blobs.len());
        let end = start.saturating_add(page.top.max(1)).min(all.blobs.len());
        all.continuation = (end < all.blobs.len()).then(|| end.to_string());
        all.blobs = all.blobs.drain(start..end).collect();
        Ok(all)
    }
}

/// What a configuration is wanted for: uploading data also needs its containers' SAS to work.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Post,
    Upload,
}

/// A data body refused as soon as more of it has arrived (uncompressed) than the DM's
/// `maxDataSize` (one announced larger is refused before this is built): before its blob is
/// committed, so nothing is queued and nothing is left behind.
struct WithinDmLimit<'a> {
    inner: &'a mut dyn DataSource,
    max: u64,
}

impl DataSource for WithinDmLimit<'_> {
    fn next_chunk(
        &mut self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<bytes::Bytes>, DataError>> + Send + '_>,
    > {
        Box::pin(async move {
            let chunk = self.inner.next_chunk().await?;
            if self.inner.raw_size() > self.max {
                return Err(DataError::OverDmLimit { max: self.max });
            }
            Ok(chunk)
        })
    }

    fn raw_size(&self) -> u64 {
        self.inner.raw_size()
    }

    fn announced_raw_size(&self) -> Option<u64> {
        self.inner.announced_raw_size()
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
