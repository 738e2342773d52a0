//! The one HTTP client of the process, shared by the DM client, the queue clients and the
//! managed-identity credential: building a client loads the root certificates (milliseconds of
//! CPU), and sharing one keeps its connection pool across resource refreshes.

use std::sync::Arc;
use std::time::Duration;

pub(crate) fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        // A redirect would carry a bearer token or a SAS to a host nobody vetted.
        .redirect(reqwest::redirect::Policy::none())
        // DM and storage answers are small; decompression layers only cost CPU per request.
        .no_gzip()
        .no_deflate()
        .build()
}

/// Options for an SDK client on the shared transport, without the SDK's retries: each caller
/// retries by its own policy (another queue, Event Grid's redelivery).
pub(crate) fn sdk_options(
    transport: &azure_core::http::Transport,
) -> azure_core::http::ClientOptions {
    azure_core::http::ClientOptions {
        retry: azure_core::http::RetryOptions::none(),
        transport: Some(transport.clone()),
        ..azure_core::http::ClientOptions::default()
    }
}

/// The same client as an azure_core transport.
pub(crate) fn azure_transport(http: &reqwest::Client) -> azure_core::http::Transport {
    azure_core::http::Transport::new(Arc::new(http.clone()))
}
