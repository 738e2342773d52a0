//! Serving a warp filter on a pre-bound listener, with a stop that really closes the
//! socket (clients then see "connection refused", like a DM that is down).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use warp::filters::BoxedFilter;

use crate::error::{Error, Result};

/// The routes of one listener, already boxed so they can be re-served after a restart.
pub(crate) type Routes = BoxedFilter<(warp::reply::Response,)>;

/// A running listener.
pub(crate) struct Server {
    port: u16,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Serves `routes` on `listener` from the emulator runtime `rt`.
    pub(crate) fn start(
        rt: &Handle,
        listener: std::net::TcpListener,
        routes: Routes,
    ) -> Result<Self> {
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("reading listener address", e))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making listener non-blocking", e))?;
        let (tx, rx) = oneshot::channel::<()>();
        rt.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("kusto-dev: cannot register listener on port {port}: {e}");
                    return;
                }
            };
            // Graceful: on signal warp drops the listener first (new connections are
            // refused), closes idle keep-alive connections and lets in-flight requests end.
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run()
                .await;
        });
        Ok(Server {
            port,
            shutdown: Some(tx),
        })
    }

    /// Binds `127.0.0.1:port` (0 = any) and serves.
    pub(crate) fn bind(rt: &Handle, port: u16, routes: Routes) -> Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| Error::io(format!("binding 127.0.0.1:{port}"), e))?;
        Self::start(rt, listener, routes)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Signals shutdown and waits (up to 5 s) until the port refuses connections.
    pub(crate) fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if Instant::now() > deadline {
                return Err(Error::Emulator(format!(
                    "listener on port {} still accepts connections 5 s after stop",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
