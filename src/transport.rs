//! The process's reqwest client, shared by the DM client, the managed-identity credential, the
//! status table and the blob SDK: building a client loads the root certificates (milliseconds of
//! CPU), and sharing one keeps its connection pool across resource refreshes. Queue posts have
//! connections of their own (`queued::connections`).

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

/// The most a token endpoint, the DM or storage may send us in one answer body. Every answer we
/// expect is a few kilobytes; this keeps a broken or hostile endpoint from filling memory.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The same client as an azure_core transport whose answer bodies are capped at
/// [`MAX_ANSWER_BYTES`], for clients whose answers we do not read ourselves (the managed-identity
/// credential).
pub(crate) fn capped_azure_transport(http: &reqwest::Client) -> azure_core::http::Transport {
    azure_core::http::Transport::new(Arc::new(Capped {
        inner: http.clone(),
        max: MAX_ANSWER_BYTES,
    }))
}

#[derive(Debug)]
struct Capped {
    inner: reqwest::Client,
    max: usize,
}

#[async_trait::async_trait]
impl azure_core::http::HttpClient for Capped {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use futures::StreamExt;
        let response = self.inner.execute_request(request).await?;
        let (status, headers, body) = response.deconstruct();
        let max = self.max;
        let capped = body.scan(0usize, move |seen, chunk| {
            let chunk = chunk.and_then(|bytes| {
                *seen += bytes.len();
                if *seen > max {
                    Err(azure_core::Error::with_message(
                        azure_core::error::ErrorKind::Io,
                        format!("the answer is larger than {max} bytes"),
                    ))
                } else {
                    Ok(bytes)
                }
            });
            futures::future::ready(Some(chunk))
        });
        Ok(azure_core::http::AsyncRawResponse::new(
            status,
            headers,
            Box::pin(capped),
        ))
    }
}

/// Reads a reqwest answer body, refusing it once it passes `max` bytes.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, CappedReadError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(CappedReadError::TooLarge { max });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CappedReadError::Read(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(CappedReadError::TooLarge { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CappedReadError {
    #[error("the answer is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("reading the answer failed: {0}")]
    Read(String),
}
