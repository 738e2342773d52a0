//! The application: builds the services from the settings, binds its listener first (so the port
//! is known, 0 included), then serves until a shutdown signal, letting in-flight requests finish.

use crate::backends::Router;
use crate::dm::{DmClient, RetryPolicy};
use crate::eventgrid::{BlobStore, Trigger};
use crate::http::{DataApi, IngestApi, Services};
use crate::identity::Identity;
use crate::queued::{QueuedBackend, StorageConnections};
use crate::rest_v2::RestV2Backend;
use crate::settings::Settings;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the handler cannot start; `source()` holds the underlying error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot set up TLS for storage connections")]
    StorageTls(#[source] rustls::Error),
    #[error("cannot set up the managed identity")]
    Identity(#[source] azure_core::Error),
}

pub struct Application {
    listener: TcpListener,
    services: Arc<Services<Router>>,
}

impl Application {
    /// Binds 127.0.0.1:`settings.port`: the host always calls the handler on loopback.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Listen { addr, source })?;
        let services = Arc::new(services(settings)?);
        Ok(Self { listener, services })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        crate::http::serve(self.listener, crate::http::routes(self.services), shutdown).await;
    }
}

/// Every service, each given only what it uses. One reqwest client serves the DM, the identity
/// endpoint and storage (see `transport`); queue posts go on `queued::StorageConnections`.
fn services(settings: Settings) -> Result<Services<Router>, StartupError> {
    for warning in settings.authorization.warnings() {
        tracing::warn!("{warning}");
    }
    let http = crate::transport::http_client().map_err(StartupError::HttpClient)?;
    let transport = crate::transport::azure_transport(&http);
    let identity = Identity::managed(
        settings.client_id,
        crate::transport::capped_azure_transport(&http),
    )
    .map_err(StartupError::Identity)?;
    let dm_client = Arc::new(DmClient::new(
        http.clone(),
        identity.clone(),
        settings.token_scope,
        RetryPolicy::default(),
    ));
    let default_dm = settings.dms.default_dm().clone();
    Ok(Services {
        backend: Router::new(
            settings.ingest_method,
            QueuedBackend::new(
                &settings.dms,
                dm_client.clone(),
                http.clone(),
                Arc::new(StorageConnections::new().map_err(StartupError::StorageTls)?),
                settings.max_concurrency,
            ),
            RestV2Backend::new(&settings.dms, dm_client, &http, settings.max_concurrency),
        ),
        dms: settings.dms.clone(),
        ingest_api: IngestApi::new(
            settings.dms.clone(),
            settings.max_blobs,
            settings.default_properties.clone(),
            settings.authorization.clone(),
        ),
        data_api: DataApi::new(
            settings.dms,
            settings.default_properties.clone(),
            settings.authorization,
            settings.max_data_bytes,
        ),
        trigger: Trigger::new(
            settings.routes,
            settings.default_properties,
            settings.read_blob_metadata,
            default_dm,
        ),
        blob_store: BlobStore::new(identity.credential(), transport, settings.local_blob_access),
        max_body_bytes: settings.max_body_bytes,
        request_deadline: settings.request_deadline,
        event_deadline: settings.event_deadline,
        data_deadline: settings.data_deadline,
        requests: Arc::new(tokio::sync::Semaphore::new(settings.max_requests)),
    })
}
