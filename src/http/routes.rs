//! warp filters. Each route reads its body under the configured limit, calls one handler, and
//! turns its `Reply` into an HTTP response; nothing else happens here.

use super::data_api::DataRequest;
use super::errors::{ApiError, Reply};
use super::{Incoming, Services, operations};
use crate::ingest::{Backend, Deadline};
use crate::request_log as summary;
use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;
use warp::Filter;
use warp::http::{Method, Response, StatusCode, header};
use warp::path::FullPath;

/// A client that sends nothing of its body for this long is answered 408.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn routes<B: Backend>(
    services: Arc<Services<B>>,
) -> impl Filter<Extract = (Response<String>,), Error = Infallible> + Clone + Send + Sync + 'static
{
    // The host polls `GET /` until it answers; any answer means ready.
    let ready = warp::get()
        .and(warp::path::end())
        .map(|| json_response(200, None, String::from("{\"status\":\"ready\"}")));

    let not_found = warp::method()
        .and(warp::path::full())
        .map(|method: Method, path: FullPath| unmatched(&method, path.as_str()));

    ready
        .or(ingest(services.clone()))
        .unify()
        .or(data(services.clone()))
        .unify()
        .or(operation(services.clone()))
        .unify()
        .or(blob_created(services))
        .unify()
        .or(not_found)
        .unify()
}

fn with_services<B: Backend>(
    services: Arc<Services<B>>,
) -> impl Filter<Extract = (Arc<Services<B>>,), Error = Infallible> + Clone {
    warp::any().map(move || services.clone())
}

/// The host's invocation id, for the request's summary line.
fn invocation() -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>(summary::INVOCATION_HEADER)
}

/// The declared length and the body as it arrives.
fn sized_body() -> impl Filter<
    Extract = (
        Option<u64>,
        impl Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
    ),
    Error = warp::Rejection,
> + Clone {
    warp::header::optional::<u64>("content-length").and(warp::body::stream())
}

/// `POST /api/ingest`.
fn ingest<B: Backend>(
    services: Arc<Services<B>>,
) -> impl Filter<Extract = (Response<String>,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    warp::post()
        .and(warp::path!("api" / "ingest"))
        .and(with_services(services))
        .and(warp::header::optional::<String>("x-ms-client-principal"))
        .and(invocation())
        .and(sized_body())
        .then(
            |services: Arc<Services<B>>,
             principal: Option<String>,
             invocation: Option<String>,
             length: Option<u64>,
             body| {
                let budget = services.request_deadline;
                answer(
                    services,
                    "ingest",
                    invocation,
                    budget,
                    move |services, deadline| async move {
                        match read_limited(body, length, services.max_body_bytes).await {
                            Ok(body) => {
                                let request = Incoming { body, principal };
                                services
                                    .ingest_api
                                    .handle(&services.backend, request, deadline)
                                    .await
                            }
                            Err(error) => error.into(),
                        }
                    },
                )
            },
        )
}

/// `POST /api/ingest/{database}/{table}`: a data body.
fn data<B: Backend>(
    services: Arc<Services<B>>,
) -> impl Filter<Extract = (Response<String>,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    warp::post()
        .and(warp::path!("api" / "ingest" / String / String))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("content-encoding"))
        .and(warp::header::optional::<String>("x-ms-client-principal"))
        .and(invocation())
        .and(with_services(services))
        .and(sized_body())
        .then(
            |database: String,
             table: String,
             query: String,
             content_type: Option<String>,
             content_encoding: Option<String>,
             principal: Option<String>,
             invocation: Option<String>,
             services: Arc<Services<B>>,
             content_length: Option<u64>,
             body| {
                let budget = services.data_deadline;
                answer(
                    services,
                    "data",
                    invocation,
                    budget,
                    move |services, deadline| async move {
                        let request = DataRequest {
                            database,
                            table,
                            query,
                            content_type,
                            content_encoding,
                            content_length,
                            principal,
                            body: Box::pin(body),
                        };
                        services
                            .data_api
                            .handle(&services.backend, request, deadline)
                            .await
                    },
                )
            },
        )
}

/// `GET /api/ingest/operations/{id}`.
fn operation<B: Backend>(
    services: Arc<Services<B>>,
) -> impl Filter<Extract = (Response<String>,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    warp::get()
        .and(warp::path!("api" / "ingest" / "operations" / String))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(invocation())
        .and(with_services(services))
        .then(
            |id: String, query: String, invocation: Option<String>, services: Arc<Services<B>>| {
                let budget = services.request_deadline;
                answer(
                    services,
                    "operation",
                    invocation,
                    budget,
                    move |services, deadline| async move {
                        operations::handle(&services.backend, &services.dms, &id, &query, deadline)
                            .await
                    },
                )
            },
        )
}

/// `POST /BlobCreated`. A busy handler answers 503 like the other routes: Event Grid redelivers a
/// failed invocation.
fn blob_created<B: Backend>(
    services: Arc<Services<B>>,
) -> impl Filter<Extract = (Response<String>,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    warp::post()
        .and(warp::path!("BlobCreated"))
        .and(with_services(services))
        .and(invocation())
        .and(sized_body())
        .then(
            |services: Arc<Services<B>>, invocation: Option<String>, length: Option<u64>, body| {
                let budget = services.event_deadline;
                answer(
                    services,
                    "BlobCreated",
                    invocation,
                    budget,
                    move |services, deadline| async move {
                        let reply = match read_limited(body, length, services.max_body_bytes).await
                        {
                            Ok(bytes) => {
                                services
                                    .trigger
                                    .handle(
                                        &services.backend,
                                        &services.blob_store,
                                        &bytes,
                                        deadline,
                                    )
                                    .await
                            }
                            // Redelivering an oversized event would fail the same way forever:
                            // acknowledge it.
                            Err(error) => crate::eventgrid::rejected(&error.headline().message),
                        };
                        Reply {
                            status: reply.status,
                            retry_after: None,
                            body: reply.body.to_string(),
                        }
                    },
                )
            },
        )
}

/// The methods a known path answers, or `None` for a path no route has. A path of four
/// segments under `operations` is also a data upload to a database named `operations`.
fn allowed_methods(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        [] | [""] => Some("GET"),
        ["api", "ingest"] => Some("POST"),
        ["api", "ingest", "operations", _] => Some("GET, POST"),
        ["api", "ingest", _, _] => Some("POST"),
        ["BlobCreated"] => Some("POST"),
        _ => None,
    }
}

/// What a request no route took gets: 405 with `Allow` on a known path, else 404.
fn unmatched(method: &Method, path: &str) -> Response<String> {
    match allowed_methods(path) {
        Some(allow) if !allow.split(", ").any(|m| m == method.as_str()) => {
            let mut response = to_response(ApiError::MethodNotAllowed { allow }.into());
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
            response
        }
        _ => to_response(ApiError::NotFound.into()),
    }
}

/// Collects the body, refusing it as soon as it passes `max` bytes (at once when its
/// Content-Length says so), so an oversized request costs at most `max` bytes of memory, and
/// giving up on a client that stops sending for [`BODY_IDLE_TIMEOUT`].
async fn read_limited<S, B>(
    body: S,
    content_length: Option<u64>,
    max: usize,
) -> Result<bytes::Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if content_length.is_some_and(|n| n > max as u64) {
        return Err(ApiError::BodyTooLarge { max });
    }
    let mut body = std::pin::pin!(body);
    // Reserved up front only as far as a typical body goes: the declared length is a claim.
    let mut collected = BytesMut::with_capacity(
        content_length
            .map_or(0, |n| n as usize)
            .min(max)
            .min(1 << 20),
    );
    loop {
        let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next())
            .await
            .map_err(|_| ApiError::BodyTimeout(BODY_IDLE_TIMEOUT))?;
        let Some(chunk) = next else {
            break;
        };
        let mut chunk = chunk.map_err(|e| {
            ApiError::InvalidJson(format!("the request body could not be read: {e}"))
        })?;
        if collected.len() + chunk.remaining() > max {
            return Err(ApiError::BodyTooLarge { max });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

/// What every route does around its own `work`: the request's summary span and account
/// collector, its deadline (`budget` from now), a slot among the requests in flight (503
/// `ServerBusy` without one), and the summary line once the reply is known.
async fn answer<B, W, F>(
    services: Arc<Services<B>>,
    route: &'static str,
    invocation: Option<String>,
    budget: Duration,
    work: W,
) -> Response<String>
where
    W: FnOnce(Arc<Services<B>>, Deadline) -> F,
    F: Future<Output = Reply>,
{
    let span = summary::span(route, invocation.as_deref());
    let reply = summary::collecting_accounts(async move {
        let started = Instant::now();
        let deadline = Deadline::after(budget);
        let reply = match services.admit() {
            Some(_in_flight) => work(services.clone(), deadline).await,
            None => ApiError::Busy.into(),
        };
        summary::done(reply.status, started);
        reply
    })
    .instrument(span)
    .await;
    to_response(reply)
}

fn to_response(reply: Reply) -> Response<String> {
    json_response(reply.status, reply.retry_after_header(), reply.body)
}

fn json_response(status: u16, retry_after: Option<String>, body: String) -> Response<String> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8");
    if let Some(after) = retry_after {
        builder = builder.header(header::RETRY_AFTER, after);
    }
    builder.body(body).unwrap_or_else(|_| {
        Response::new(String::from(
            "{\"error\":{\"code\":\"InternalError\",\"message\":\"response could not be built\"}}",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_name_their_methods() {
        assert_eq!(allowed_methods("/"), Some("GET"));
        assert_eq!(allowed_methods("/api/ingest"), Some("POST"));
        assert_eq!(allowed_methods("/api/ingest/"), Some("POST"));
        assert_eq!(allowed_methods("/api/ingest/db/t"), Some("POST"));
        assert_eq!(
            allowed_methods("/api/ingest/operations/abc"),
            Some("GET, POST")
        );
        assert_eq!(allowed_methods("/BlobCreated"), Some("POST"));
        assert_eq!(allowed_methods("/api/other"), None);
        assert_eq!(allowed_methods("/api/ingest/a/b/c"), None);
    }

    #[test]
    fn a_wrong_method_is_405_with_allow_and_an_unknown_path_404() {
        let response = unmatched(&Method::GET, "/api/ingest");
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[header::ALLOW], "POST");
        assert!(response.body().contains("MethodNotAllowed"));
        assert_eq!(unmatched(&Method::DELETE, "/nope").status(), 404);
    }
}
