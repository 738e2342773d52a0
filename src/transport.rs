//! The one HTTP client of the process, shared by the DM client, the queue clients and the
//! managed-identity credential: building a client loads the root certificates (milliseconds of
//! CPU), and sharing one keeps its connection pool across resource refreshes.

use std::sync::Arc;
use std::time::Duration;

pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        // A redirect would carry a bearer token or a SAS to a host nobody vetted.
        .redirect(reqwest::redirect::Policy::none())
        // DM and storage answers are small; decompression layers only cost CPU per request.
        .no_gzip()
        .no_deflate()
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The same client as an azure_core transport.
pub fn azure_transport(http: &reqwest::Client) -> azure_core::http::Transport {
    azure_core::http::Transport::new(Arc::new(http.clone()))
}
