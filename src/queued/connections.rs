//! Put Message's connections: HTTP/1.1 to each storage origin, over TLS (or plain TCP for a
//! loopback emulator, which `local` alone allows), kept across resource snapshots and each driven
//! inside the future that posts on it.
//!
//! Why not the shared reqwest client: measured (BENCHMARKS.md), its layers per message — tower
//! services, the pool lookup, and a spawned connection task that hands every answer on to the
//! posting task, a second wake-up — were about a third of the handler's CPU per message against
//! the null queue and a fifth against Azurite. Here a post is one hyper `send_request` on a
//! connection the posting future polls itself, so an answer wakes only the task waiting for it.
//!
//! What reqwest did that this does not: `HTTPS_PROXY` (storage is reached directly, as from a
//! Functions instance), HTTP/2 (the queue service speaks HTTP/1.1) and redirects (never followed
//! anyway). Certificates are checked exactly as reqwest checks them: rustls with the platform
//! verifier.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use url::{Host, Url};

/// As reqwest's `connect_timeout` in `transport`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle this long is closed rather than reused (reqwest's pool default): the
/// storage front end may have dropped it silently.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin; a DM's posts in flight are bounded well below it.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An answer's body is read (so the connection can carry the next post) up to this; storage
/// answers to Put Message are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = crate::transport::MAX_ANSWER_BYTES;

/// Where a queue is: scheme, host and port, the key connections are kept by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    tls: bool,
    host: Host<String>,
    port: u16,
}

impl Origin {
    pub(crate) fn of(url: &Url) -> Result<Self, String> {
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("unsupported scheme {other}")),
        };
        let host = url.host().ok_or("no host")?.to_owned();
        let port = url.port_or_known_default().ok_or("no port")?;
        Ok(Self { tls, host, port })
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    pub(crate) fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        match (&self.host, self.port == default) {
            (host, true) => host.to_string(),
            (host, false) => format!("{host}:{}", self.port),
        }
    }
}

/// What a storage service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// `x-ms-error-code`.
    pub(crate) error_code: Option<String>,
}

/// Why an exchange has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExchangeError {
    /// Nothing was sent: no connection could be made (name, TCP, TLS).
    NotSent(String),
    /// The request went out, or may have, and no answer came back.
    AnswerLost(String),
}

/// The storage connections of the process.
pub(crate) struct StorageConnections {
    tls: TlsConnector,
    idle: Mutex<HashMap<Origin, Vec<Idle>>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Connection<TokioIo<Stream>, Full<Bytes>>>>,
}

/// What one exchange on one connection came to.
enum Driven {
    Answered {
        answer: Answer,
        reusable: bool,
    },
    /// The connection was closed before the request was written: it can go on another.
    NotWritten(Box<hyper::Request<Full<Bytes>>>, String),
    Lost(String),
}

impl StorageConnections {
    /// Certificates are checked against the platform's roots.
    pub(crate) fn new() -> Result<Self, rustls::Error> {
        Self::with_extra_roots(Vec::new())
    }

    /// The platform's roots and `extra` ones (a private CA in front of storage, or a test's).
    pub(crate) fn with_extra_roots(
        extra: Vec<CertificateDer<'static>>,
    ) -> Result<Self, rustls::Error> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `request` to `origin` on an idle connection, or a new one, and reads the answer, all
    /// `within` the given time. A pooled connection the server closed before the request was
    /// written is replaced once. Running out of time while still connecting is `NotSent`: unlike a
    /// timeout around the whole exchange, that outcome is certain.
    pub(crate) async fn exchange(
        &self,
        origin: &Origin,
        mut request: hyper::Request<Full<Bytes>>,
        within: Duration,
    ) -> Result<Answer, ExchangeError> {
        let by = tokio::time::Instant::now() + within;
        let mut pooled = self.checkout(origin);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => self.connect(origin, by).await?,
            };
            let Ok(driven) = tokio::time::timeout_at(by, drive(&mut conn, request)).await else {
                return Err(ExchangeError::AnswerLost(format!(
                    "no answer within {:.1} s",
                    within.as_secs_f64()
                )));
            };
            match driven {
                Driven::Answered { answer, reusable } => {
                    if reusable {
                        self.checkin(origin, conn);
                    }
                    return Ok(answer);
                }
                Driven::NotWritten(unsent, _) if reused => request = *unsent,
                Driven::NotWritten(_, reason) => return Err(ExchangeError::NotSent(reason)),
                Driven::Lost(reason) => return Err(ExchangeError::AnswerLost(reason)),
            }
        }
    }

    /// The most recently used live connection to `origin`; closed and stale ones are dropped.
    fn checkout(&self, origin: &Origin) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(origin)?;
        let now = Instant::now();
        while let Some(Idle { mut conn, since }) = list.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, origin: &Origin, conn: Conn) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let idle_conn = Idle {
            conn,
            since: Instant::now(),
        };
        // `entry` would clone the origin (its host name) on every post.
        match idle.get_mut(origin) {
            Some(list) if list.len() < MAX_IDLE_PER_ORIGIN => list.push(idle_conn),
            Some(_) => {}
            None => {
                idle.insert(origin.clone(), vec![idle_conn]);
            }
        }
    }

    /// A new connection by `by` at the latest, and within [`CONNECT_TIMEOUT`].
    async fn connect(
        &self,
        origin: &Origin,
        by: tokio::time::Instant,
    ) -> Result<Conn, ExchangeError> {
        let not_sent = |what: &str, e: &dyn std::fmt::Display| {
            ExchangeError::NotSent(format!("{what} {}: {e}", origin.authority()))
        };
        let connecting = async {
            let tcp = match &origin.host {
                Host::Domain(name) => TcpStream::connect((name.as_str(), origin.port)).await,
                Host::Ipv4(ip) => TcpStream::connect(SocketAddr::from((*ip, origin.port))).await,
                Host::Ipv6(ip) => TcpStream::connect(SocketAddr::from((*ip, origin.port))).await,
            }
            .map_err(|e| not_sent("cannot connect to", &e))?;
            // Put Message is one small write; Nagle would hold it for the previous answer's ACK.
            let _ = tcp.set_nodelay(true);
            if !origin.tls {
                return Ok(Stream::Plain(tcp));
            }
            let name = match &origin.host {
                Host::Domain(name) => ServerName::try_from(name.clone())
                    .map_err(|e| not_sent("invalid TLS name for", &e))?,
                Host::Ipv4(ip) => ServerName::from(std::net::IpAddr::V4(*ip)),
                Host::Ipv6(ip) => ServerName::from(std::net::IpAddr::V6(*ip)),
            };
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| not_sent("TLS handshake with", &e))?;
            Ok(Stream::Tls(Box::new(tls)))
        };
        let limit = (by - tokio::time::Instant::now()).min(CONNECT_TIMEOUT);
        let stream = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| {
                not_sent(
                    "cannot connect to",
                    &format!("no connection within {:.1} s", limit.as_secs_f64()),
                )
            })??;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| not_sent("cannot start HTTP/1.1 with", &e))?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
        })
    }
}

impl Conn {
    /// Whether the connection can take a request: polling its driver once lets it see a close
    /// that arrived while it was idle (nobody polls an idle connection).
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.driver.as_mut().poll(&mut cx).is_pending() && self.sender.is_ready()
    }
}

/// Sends `request` on `conn` and reads its answer, polling the connection in the same future.
async fn drive(conn: &mut Conn, request: hyper::Request<Full<Bytes>>) -> Driven {
    let Conn { sender, driver } = conn;
    let exchange = async {
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut error) => {
                return match error.take_message() {
                    Some(unsent) => {
                        Driven::NotWritten(Box::new(unsent), error.into_error().to_string())
                    }
                    None => Driven::Lost(error.into_error().to_string()),
                };
            }
        };
        let answer = Answer {
            status: response.status().as_u16(),
            error_code: response
                .headers()
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        // The status decides the outcome; a body that cannot be read to its end only costs the
        // connection.
        let reusable = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .is_ok();
        Driven::Answered { answer, reusable }
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut closed = false;
    std::future::poll_fn(|cx| {
        // The driver writes the request and reads the answer into the exchange's channel.
        if !closed && driver.as_mut().poll(cx).is_ready() {
            closed = true;
        }
        match exchange.as_mut().poll(cx) {
            Poll::Ready(Driven::Answered { answer, reusable }) => Poll::Ready(Driven::Answered {
                answer,
                reusable: reusable && !closed,
            }),
            Poll::Ready(other) => Poll::Ready(other),
            // A closed connection delivers nothing more.
            Poll::Pending if closed => Poll::Ready(Driven::Lost(
                "the connection closed before the answer".to_owned(),
            )),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A connection's byte stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A CA and a `localhost`/127.0.0.1 certificate it issued, valid until 2126.
    const CA: &[u8] = include_bytes!("testdata/ca.der");
    const LEAF: &[u8] = include_bytes!("testdata/leaf.der");
    const LEAF_KEY: &[u8] = include_bytes!("testdata/leaf.key.der");
    /// Time for an exchange in the tests that are not about running out of it.
    const WITHIN: Duration = Duration::from_secs(10);

    fn post(path: &str, origin: &Origin) -> hyper::Request<Full<Bytes>> {
        let mut request = hyper::Request::new(Full::new(Bytes::from_static(b"<QueueMessage/>")));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = path.parse().unwrap();
        request
            .headers_mut()
            .insert(hyper::header::HOST, origin.authority().parse().unwrap());
        request
    }

    fn origin(url: &str) -> Origin {
        Origin::of(&Url::parse(url).unwrap()).unwrap()
    }

    /// Answers every request with 201, over TLS with the test certificate; counts connections.
    async fn tls_server() -> (u16, Arc<AtomicUsize>) {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(LEAF.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(LEAF_KEY.to_vec())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_: hyper::Request<_>| async {
                        let mut answer =
                            hyper::Response::new(Full::new(Bytes::from_static(b"<ok/>")));
                        *answer.status_mut() = hyper::StatusCode::CREATED;
                        Ok::<_, std::convert::Infallible>(answer)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (port, connections)
    }

    #[tokio::test]
    async fn posts_over_tls_verify_the_certificate_and_reuse_the_connection() {
        let (port, accepted) = tls_server().await;
        let connections =
            StorageConnections::with_extra_roots(vec![CertificateDer::from(CA.to_vec())]).unwrap();
        let origin = origin(&format!("https://localhost:{port}/q"));
        for _ in 0..3 {
            let answer = connections
                .exchange(&origin, post("/q/messages?sig=s", &origin), WITHIN)
                .await
                .unwrap();
            assert_eq!(
                answer,
                Answer {
                    status: 201,
                    error_code: None
                }
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for three posts"
        );
    }

    #[tokio::test]
    async fn a_certificate_no_trusted_root_issued_is_refused_before_anything_is_sent() {
        let (port, _) = tls_server().await;
        let connections = StorageConnections::new().unwrap();
        let origin = origin(&format!("https://localhost:{port}/q"));
        let error = connections
            .exchange(&origin, post("/q/messages", &origin), WITHIN)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExchangeError::NotSent(m) if m.contains("TLS handshake")),
            "{error:?}"
        );
    }

    /// A plain HTTP server that reads one request per connection, answers it with `answer`
    /// (or nothing) and closes the connection.
    async fn one_shot_server(answer: Option<&'static [u8]>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.ends_with(b"<QueueMessage/>") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if let Some(answer) = answer {
                    let _ = tcp.write_all(answer).await;
                }
            }
        });
        (port, connections)
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        let (port, accepted) =
            one_shot_server(Some(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")).await;
        let connections = StorageConnections::new().unwrap();
        let origin = origin(&format!("http://127.0.0.1:{port}/q"));
        for _ in 0..2 {
            let answer = connections
                .exchange(&origin, post("/q/messages", &origin), WITHIN)
                .await
                .unwrap();
            assert_eq!(answer.status, 201);
            // Let the server's close arrive while the connection is idle.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_read_and_never_answered_is_an_answer_lost() {
        let (port, _) = one_shot_server(None).await;
        let connections = StorageConnections::new().unwrap();
        let origin = origin(&format!("http://127.0.0.1:{port}/q"));
        let error = connections
            .exchange(&origin, post("/q/messages", &origin), WITHIN)
            .await
            .unwrap_err();
        assert!(matches!(error, ExchangeError::AnswerLost(_)), "{error:?}");
    }

    #[tokio::test]
    async fn error_codes_are_read_and_nothing_listening_is_not_sent() {
        let (port, _) = one_shot_server(Some(
            b"HTTP/1.1 503 Service Unavailable\r\nx-ms-error-code: ServerBusy\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let connections = StorageConnections::new().unwrap();
        let busy = origin(&format!("http://127.0.0.1:{port}/q"));
        let answer = connections
            .exchange(&busy, post("/q/messages", &busy), WITHIN)
            .await
            .unwrap();
        assert_eq!(answer.error_code.as_deref(), Some("ServerBusy"));

        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = origin(&format!(
            "http://127.0.0.1:{}/q",
            closed.local_addr().unwrap().port()
        ));
        drop(closed);
        let error = connections
            .exchange(&nobody, post("/q/messages", &nobody), WITHIN)
            .await
            .unwrap_err();
        assert!(matches!(error, ExchangeError::NotSent(_)), "{error:?}");
    }

    /// Accepts connections and holds them, reading everything and answering nothing.
    async fn silent_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        port
    }

    #[tokio::test]
    async fn out_of_time_while_connecting_is_not_sent_and_after_sending_is_an_answer_lost() {
        let port = silent_server().await;
        let connections = StorageConnections::new().unwrap();
        // TLS: the server never answers the handshake, so the request is never written.
        let tls = origin(&format!("https://127.0.0.1:{port}/q"));
        let error = connections
            .exchange(&tls, post("/q/messages", &tls), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExchangeError::NotSent(m) if m.contains("no connection within 0.3 s")),
            "{error:?}"
        );
        // Plain HTTP: the request goes out at once and no answer comes.
        let plain = origin(&format!("http://127.0.0.1:{port}/q"));
        let error = connections
            .exchange(
                &plain,
                post("/q/messages", &plain),
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExchangeError::AnswerLost(m) if m.contains("no answer within 0.3 s")),
            "{error:?}"
        );
    }

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        assert_eq!(
            origin("https://a.queue.core.windows.net/q").authority(),
            "a.queue.core.windows.net"
        );
        assert_eq!(
            origin("http://127.0.0.1:10001/a/q").authority(),
            "127.0.0.1:10001"
        );
        assert_eq!(origin("http://[::1]:10001/a/q").authority(), "[::1]:10001");
        assert!(Origin::of(&Url::parse("ftp://x/q").unwrap()).is_err());
    }
}
