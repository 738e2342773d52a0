//! Which backend a DM gets (`KUSTO_INGEST_METHOD`): always v1, always v2, or — `auto` — what
//! each DM's ingestion configuration prefers. A DM without the v2 API (404) or whose configuration
//! cannot be read gets v1, as the Spark connector does (Azure/azure-kusto-spark
//! `IngestV2ConfigurationProvider.scala`): v1 is what every cluster speaks. The triggers see one
//! `Backend`; tracked operations and uploaded blobs go back to the backend that made them.
//!
//! In `auto`, a DM not known yet is asked for its configuration first and only then, if it gets
//! v1, for v1's resources: a DM that prefers v2 is never asked for v1 resources it will not use.
//! So a cold first request costs one DM round trip more in `auto` than in `v1` (the configuration
//! GET, then the two v1 commands side by side); once cached, the choice costs nothing.

use crate::data::DataSource;
use crate::domain::{BlobUri, DmEndpoint};
use crate::ingest::{
    Backend, Batch, BlobFailure, Deadline, Ingested, OperationId, PageRequest, StatusError,
    StatusPage, Tracked, UploadError,
};
use crate::queued::QueuedBackend;
use crate::rest_v2::{Known, Preferred, RestV2Backend};
use crate::settings::IngestMethod;

pub(crate) struct Router {
    method: IngestMethod,
    v1: QueuedBackend,
    v2: RestV2Backend,
}

#[derive(Clone, Copy)]
enum Choice {
    V1,
    V2,
}

impl Router {
    pub(crate) fn new(method: IngestMethod, v1: QueuedBackend, v2: RestV2Backend) -> Self {
        Self { method, v1, v2 }
    }

    async fn choose(&self, dm: &DmEndpoint, deadline: Deadline) -> Choice {
        match self.method {
            IngestMethod::V1 => Choice::V1,
            IngestMethod::V2 => Choice::V2,
            IngestMethod::Auto => match self.v2.known(dm, deadline).await {
                Ok(Known::Supported(c)) if c.preferred == Preferred::V2 => Choice::V2,
                Ok(_) => Choice::V1,
                Err(failure) => {
                    tracing::warn!(dm = %dm, error = %failure.message, "ingestion configuration unavailable; using queued ingestion (v1)");
                    Choice::V1
                }
            },
        }
    }
}

impl Backend for Router {
    async fn ingest(&self, batch: Batch<'_>) -> Result<Ingested, BlobFailure> {
        match self.choose(batch.dm, batch.deadline).await {
            Choice::V1 => self.v1.ingest(batch).await,
            Choice::V2 => self.v2.ingest(batch).await,
        }
    }

    async fn upload(
        &self,
        dm: &DmEndpoint,
        name: &str,
        data: &mut dyn DataSource,
        deadline: Deadline,
    ) -> Result<BlobUri, UploadError> {
        // The same choice `ingest` makes next for this DM (the configuration is cached), so the
        // blob lands in the storage of the protocol that queues it.
        match self.choose(dm, deadline).await {
            Choice::V1 => self.v1.upload(dm, name, data, deadline).await,
            Choice::V2 => self.v2.upload(dm, name, data, deadline).await,
        }
    }

    async fn discard(&self, blob: &BlobUri) {
        // Deleting a blob needs only its URI and SAS, which either backend can do.
        self.v1.discard(blob).await;
    }

    async fn status(
        &self,
        operation: &OperationId,
        page: &PageRequest,
        deadline: Deadline,
    ) -> Result<StatusPage, StatusError> {
        // The id says which protocol tracked it, whatever the setting is now.
        match operation.tracked {
            Tracked::StatusTable { .. } => self.v1.status(operation, page, deadline).await,
            Tracked::RestV2(_) => self.v2.status(operation, page, deadline).await,
        }
    }
}
