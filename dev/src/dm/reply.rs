//! Building raw HTTP responses for the emulator's handlers.

use warp::Reply as _;
use warp::http::{HeaderValue, Response, StatusCode};
use warp::reply::Response as WarpResponse;

pub(crate) const JSON: &str = "application/json; charset=utf-8";
pub(crate) const XML: &str = "application/xml";

/// Response with a status, content type, body and extra headers. Invalid header
/// values (only possible when echoing client input) are dropped rather than failing.
pub(crate) fn raw(
    status: u16,
    content_type: &str,
    body: impl Into<Vec<u8>>,
    headers: &[(&str, String)],
) -> WarpResponse {
    with_head(
        Response::new(body.into()).into_response(),
        status,
        content_type,
        headers,
    )
}

/// Response whose body is streamed (chunked, no `Content-Length`).
pub(crate) fn stream<S>(
    status: u16,
    content_type: &str,
    chunks: S,
    headers: &[(&str, String)],
) -> WarpResponse
where
    S: futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>>
        + Send
        + Sync
        + 'static,
{
    with_head(
        warp::reply::stream(chunks).into_response(),
        status,
        content_type,
        headers,
    )
}

fn with_head(
    mut rsp: WarpResponse,
    status: u16,
    content_type: &str,
    headers: &[(&str, String)],
) -> WarpResponse {
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = rsp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert("content-type", v);
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            warp::http::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    rsp
}

/// JSON response from a serializable value.
pub(crate) fn json<T: serde::Serialize>(
    status: u16,
    value: &T,
    headers: &[(&str, String)],
) -> WarpResponse {
    // Serializing plain structs/`Value`s cannot fail; fall back to `{}` defensively.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    raw(status, JSON, body, headers)
}

pub(crate) fn not_found(what: &str) -> WarpResponse {
    json(
        404,
        &serde_json::json!({"error": {"code": "NotFound", "message": format!("kusto-dev emulator: no route for {what}")}}),
        &[],
    )
}
