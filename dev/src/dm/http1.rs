//! A minimal HTTP/1.1 server for the fake storage listener. Hand-written rather than warp
//! because some faults must misbehave below HTTP: read a request and never answer, or
//! drop the connection with a TCP reset instead of answering.
//!
//! Enough of HTTP/1.1 for storage clients: keep-alive, `Content-Length` bodies (no
//! chunked request bodies), `Expect: 100-continue`; one request at a time per connection.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Request line, headers and request head are capped; storage messages are small.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A request as read from the connection.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// Path without the query (the SAS is not checked).
    pub path: String,
    pub body: Vec<u8>,
}

/// A complete answer; `Content-Length` (and `Connection: close` when closing) are added.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What to do with a request once it has been read.
#[derive(Debug)]
pub(crate) enum Outcome {
    Respond(Response),
    /// Never answer; keep the connection open until the client closes it.
    Hang,
    /// Close the connection with a TCP reset, without answering.
    Reset,
}

/// The accept loop; dropping it closes the listener. Open connections end when they
/// close or when the emulator's runtime shuts down.
pub(crate) struct Listener {
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` on `listener` from the runtime `rt`, one task per connection.
pub(crate) fn serve<H, F>(
    rt: &Handle,
    listener: std::net::TcpListener,
    handler: H,
) -> Result<Listener>
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("making listener non-blocking", e))?;
    let handler = Arc::new(handler);
    let task = rt.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("kusto-dev: cannot register the fake storage listener: {e}");
                return;
            }
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, handler.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("kusto-dev: fake storage accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(Listener { task })
}

async fn connection<H, F>(stream: TcpStream, handler: Arc<H>)
where
    H: Fn(Request) -> F,
    F: Future<Output = Outcome>,
{
    let mut conn = BufReader::new(stream);
    loop {
        let (request, close) = match read_request(&mut conn).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let rsp = Response {
                    status: 400,
                    headers: vec![("content-type", "text/plain".into())],
                    body: format!("kusto-dev fake storage: {e}").into_bytes(),
                };
                let _ = conn.get_mut().write_all(&encode(&rsp, true)).await;
                return;
            }
            Err(_) => return,
        };
        match handler(request).await {
            Outcome::Respond(rsp) => {
                if conn
                    .get_mut()
                    .write_all(&encode(&rsp, close))
                    .await
                    .is_err()
                    || close
                {
                    return;
                }
            }
            Outcome::Hang => {
                // Discard whatever else arrives until the client gives up.
                let mut sink = [0u8; 4096];
                while let Ok(1..) = conn.read(&mut sink).await {}
                return;
            }
            Outcome::Reset => {
                // SO_LINGER 0: closing sends RST, the client sees "connection reset".
                let _ = conn.get_ref().set_zero_linger();
                return;
            }
        }
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one line of the request head into `line`, keeping the head under its cap.
async fn head_line(
    conn: &mut BufReader<TcpStream>,
    line: &mut String,
    head_bytes: &mut usize,
) -> io::Result<usize> {
    line.clear();
    // Bounded read: a client sending an endless line cannot grow `line` past the cap.
    let limit = (MAX_HEAD_BYTES + 1).saturating_sub(*head_bytes) as u64;
    let n = (&mut *conn).take(limit).read_line(line).await?;
    *head_bytes += n;
    if *head_bytes > MAX_HEAD_BYTES {
        return Err(invalid("request head too large"));
    }
    Ok(n)
}

/// Reads one request and whether the connection must close after answering it.
/// `Ok(None)`: the client closed the connection between requests.
async fn read_request(conn: &mut BufReader<TcpStream>) -> io::Result<Option<(Request, bool)>> {
    let mut line = String::new();
    let mut head_bytes = 0;
    // RFC 9112 §2.2: ignore empty lines before the request line.
    loop {
        if head_line(conn, &mut line, &mut head_bytes).await? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!(
            "malformed request line {:?}",
            line.trim_end()
        )));
    };
    let (method, version) = (method.to_string(), version.to_string());
    let path = target
        .split_once('?')
        .map_or(target, |(p, _)| p)
        .to_string();

    let mut headers = Vec::new();
    loop {
        if head_line(conn, &mut line, &mut head_bytes).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(invalid(format!("malformed header line {l:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if header("transfer-encoding").is_some() {
        return Err(invalid(
            "chunked request bodies are not supported; send Content-Length",
        ));
    }
    let length: usize = match header("content-length") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {v:?}")))?,
    };
    if length > MAX_BODY_BYTES {
        return Err(invalid(format!("body of {length} bytes is too large")));
    }
    let close = version == "HTTP/1.0"
        || header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if length > 0 && header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        conn.get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok(Some((Request { method, path, body }, close)))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn encode(rsp: &Response, close: bool) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", rsp.status, reason(rsp.status));
    for (name, value) in &rsp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n", rsp.body.len()));
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&rsp.body);
    out
}
