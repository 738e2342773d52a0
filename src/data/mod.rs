//! A request body of data (not blob URLs), as it streams in: gzip-compressed on the way (or, when
//! it arrives gzip-compressed, checked and passed through), its uncompressed size counted, its size
//! bounded, and never held whole. A backend stores what this yields.

mod gzip;

pub(crate) use gzip::GzipBody;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

/// Why a data body cannot be ingested; each is the caller's to fix, except a broken connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DataError {
    #[error("the request body is empty: there is no data to ingest")]
    Empty,
    #[error("the request body is larger than {max} bytes (setting INGEST_MAX_DATA_BYTES)")]
    TooLarge { max: u64 },
    #[error(
        "the data is larger than {max} bytes uncompressed, the most the DM accepts for one ingestion (maxDataSize of its ingestion configuration)"
    )]
    OverDmLimit { max: u64 },
    #[error("the request body is not a complete gzip stream (Content-Encoding: gzip): {0}")]
    BadGzip(String),
    #[error("the request body stopped arriving: {0}")]
    Interrupted(String),
}

/// Compressed data, a chunk at a time. The seam between a request body and a backend's storage.
pub(crate) trait DataSource: Send {
    /// The next chunk of gzip data; `None` once the body is complete and valid.
    fn next_chunk(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, DataError>> + Send + '_>>;

    /// Uncompressed bytes so far; exact once `next_chunk` has answered `None`.
    fn raw_size(&self) -> u64;

    /// The uncompressed size the client announced before sending any of it (the `Content-Length`
    /// of a body that is not gzip-compressed), so that a limit can refuse it up front.
    fn announced_raw_size(&self) -> Option<u64>;
}
