//! A loopback "storage" endpoint with two jobs:
//! * null queue: `POST /<account>/<queue>/messages` (or `/null/<account>/<queue>/messages`)
//!   answers 201 with a `QueueMessagesList` as fast as possible and counts messages;
//! * broken account (`BreakMode::ServerBusy`): every request for that account gets
//!   `503 ServerBusy` storage XML.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use warp::http::Method;
use warp::reply::Response;

use super::faults::BreakMode;
use super::reply;
use super::state::State;

fn rfc1123(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&fmt).unwrap_or_default()
}

fn storage_error(status: u16, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let now = time::OffsetDateTime::now_utc();
    let iso = crate::sas::format_time(now);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{request_id}\nTime:{iso}</Message></Error>"
    );
    reply::raw(
        status,
        reply::XML,
        body,
        &[
            ("x-ms-request-id", request_id),
            ("x-ms-error-code", code.to_string()),
            ("x-ms-version", "2021-08-06".to_string()),
            ("date", rfc1123(now)),
        ],
    )
}

pub(crate) fn handle(state: Arc<State>, method: &Method, path: &str, body: &Bytes) -> Response {
    let (explicit_null, rest) = match path.strip_prefix("/null/") {
        Some(rest) => (true, rest),
        None => (false, path.trim_start_matches('/')),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some(account) = segments.first().copied() else {
        return storage_error(
            400,
            "InvalidUri",
            "The requested URI does not represent any resource on the server.",
        );
    };

    // Outside null-queue mode this endpoint only exists to be busy: URLs handed out
    // while an account was broken keep failing transiently (clients must refresh
    // resources), even after the account is healed.
    let busy = state.faults.broken(account) == Some(BreakMode::ServerBusy);
    if !explicit_null && (busy || !state.null_queue) {
        state.busy_count.fetch_add(1, Ordering::Relaxed);
        return storage_error(
            503,
            "ServerBusy",
            "The server is currently unable to receive requests. Please retry your request.",
        );
    }
    let is_put_message = method == Method::POST && segments.len() == 3 && segments[2] == "messages";
    if !is_put_message {
        return storage_error(
            404,
            "ResourceNotFound",
            "The specified resource does not exist (the kusto-dev null queue only implements Put Message).",
        );
    }
    if !body.windows(13).any(|w| w == b"<MessageText>") {
        return storage_error(
            400,
            "InvalidXmlDocument",
            "XML specified is not syntactically valid.",
        );
    }
    state.null_count.fetch_add(1, Ordering::Relaxed);
    let now = time::OffsetDateTime::now_utc();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList><QueueMessage><MessageId>{}</MessageId><InsertionTime>{}</InsertionTime><ExpirationTime>{}</ExpirationTime><PopReceipt>{}</PopReceipt><TimeNextVisible>{}</TimeNextVisible></QueueMessage></QueueMessagesList>",
        uuid::Uuid::new_v4(),
        rfc1123(now),
        rfc1123(now + time::Duration::days(7)),
        uuid::Uuid::new_v4().simple(),
        rfc1123(now),
    );
    reply::raw(
        201,
        reply::XML,
        body,
        &[("x-ms-version", "2021-08-06".to_string())],
    )
}
