//! The HTTP surface the Functions host talks to: the readiness probe, the forwarded
//! `POST /api/ingest`, `POST /api/ingest/{database}/{table}` (data), `GET
//! /api/ingest/operations/{id}`, and the `POST /BlobCreated` invocation.

mod data_api;
mod errors;
mod ingest_api;
mod operations;
mod results;
mod routes;
mod server;

pub(crate) use data_api::DataApi;
pub(crate) use ingest_api::{Incoming, IngestApi};
pub(crate) use routes::routes;
pub(crate) use server::serve;

use crate::domain::AllowedDms;
use crate::eventgrid::{BlobStore, Trigger};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the routes call: the ingestion backend and the services of each trigger.
pub(crate) struct Services<B> {
    pub(crate) backend: B,
    /// The DMs a request or an operation id may name.
    pub(crate) dms: AllowedDms,
    pub(crate) ingest_api: IngestApi,
    pub(crate) data_api: DataApi,
    pub(crate) trigger: Trigger,
    /// Get Blob Properties for the trigger.
    pub(crate) blob_store: BlobStore,
    /// Largest request body read, for every route.
    pub(crate) max_body_bytes: usize,
    /// How long `POST /api/ingest` may take, body included.
    pub(crate) request_deadline: Duration,
    /// How long a `BlobCreated` invocation may take.
    pub(crate) event_deadline: Duration,
    /// How long a data upload may take, its body included.
    pub(crate) data_deadline: Duration,
    /// Requests (of every route but the readiness probe) in flight at once.
    pub(crate) requests: Arc<Semaphore>,
}

impl<B> Services<B> {
    /// A slot for one more request in flight, or `None` when all are taken.
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.requests.clone().try_acquire_owned().ok()
    }
}
