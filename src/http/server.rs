//! Serving connections with bounds a slow or hostile client cannot get around: at most
//! [`MAX_CONNECTIONS`] open at once (more are closed as they come), a request's headers (and the
//! wait for the next request on a kept-alive connection) within [`HEADER_TIMEOUT`], and on
//! shutdown in-flight requests get [`DRAIN_TIMEOUT`] to finish before the process exits anyway.
//! (warp's own server sets none of these.)

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::Filter;

/// Far below the default 1,024 file descriptors, far above what the Functions host opens.
const MAX_CONNECTIONS: usize = 512;
/// Headers of a request, or the next request on an idle kept-alive connection.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// What in-flight requests get after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest read buffer of a connection. hyper's default (~400 KiB) is reached by any body over a
/// few hundred KiB, and a connection holds a buffer of that size for as long as its request is
/// handled: 64 concurrent 1,000-blob requests kept 20 MB in them (BENCHMARKS.md). A request head
/// that fits is always read; a larger one may be refused with 431 (the host's are a few KiB).
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Serves `filter` on `listener` until `shutdown` completes, then drains.
pub(crate) async fn serve<F>(
    listener: TcpListener,
    filter: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait for some to be freed.
                    tracing::error!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(
                max = MAX_CONNECTIONS,
                "too many open connections; closing a new one"
            );
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(warp::service(filter.clone()));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_READ_BUFFER)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = DRAIN_TIMEOUT.as_secs(),
            "requests still in flight after the drain deadline; exiting anyway"
        );
    }
}
