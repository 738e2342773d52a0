//! The application: binds its listener first (so the port is known, 0 included), then serves
//! until a shutdown signal, letting in-flight requests finish.

use crate::config::Settings;
use crate::ingestor::Ingestor;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Application {
    listener: TcpListener,
    ingestor: Arc<Ingestor>,
}

impl Application {
    /// Binds 127.0.0.1:`settings.port`: the host always calls the handler on loopback.
    pub async fn build(settings: Settings) -> Result<Self, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let ingestor = Arc::new(Ingestor::new(Arc::new(settings))?);
        Ok(Self { listener, ingestor })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        warp::serve(crate::http::routes(self.ingestor))
            .incoming(self.listener)
            .graceful(shutdown)
            .run()
            .await;
    }
}
