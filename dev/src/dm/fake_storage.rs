//! The fake storage listener (served by [`super::http1`]). It has two jobs:
//! * null queue: `POST /<account>/<queue>/messages` (or `/null/<account>/<queue>/messages`)
//!   answers 201 with a `QueueMessagesList` as fast as possible and counts messages;
//! * broken accounts: a request whose path names an account broken with
//!   `ServerBusy`, `Hang`, `Reset` or `ResetAfterEnqueue` gets that fault (see
//!   [`BreakMode`]), counted per account.
//!
//! Outside null-queue mode this endpoint only exists to fail: URLs handed out while an
//! account was broken keep failing with `503 ServerBusy` once the account is healed
//! (clients must refresh resources).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::faults::BreakMode;
use super::http1::{Outcome, Request, Response};
use super::reply;
use super::state::State;
use crate::error::Error;

fn rfc1123(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&fmt).unwrap_or_default()
}

fn storage_error(status: u16, code: &str, message: &str) -> Outcome {
    let request_id = uuid::Uuid::new_v4().to_string();
    let now = time::OffsetDateTime::now_utc();
    let iso = crate::sas::format_time(now);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{request_id}\nTime:{iso}</Message></Error>"
    );
    Outcome::Respond(Response {
        status,
        headers: vec![
            ("content-type", reply::XML.to_string()),
            ("x-ms-request-id", request_id),
            ("x-ms-error-code", code.to_string()),
            ("x-ms-version", "2021-08-06".to_string()),
            ("date", rfc1123(now)),
        ],
        body: body.into_bytes(),
    })
}

fn server_busy() -> Outcome {
    storage_error(
        503,
        "ServerBusy",
        "The server is currently unable to receive requests. Please retry your request.",
    )
}

fn has_message_text(body: &[u8]) -> bool {
    body.windows(13).any(|w| w == b"<MessageText>")
}

pub(crate) async fn handle(state: Arc<State>, req: Request) -> Outcome {
    let (explicit_null, rest) = match req.path.strip_prefix("/null/") {
        Some(rest) => (true, rest),
        None => (false, req.path.trim_start_matches('/')),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some(account) = segments.first().copied() else {
        return storage_error(
            400,
            "InvalidUri",
            "The requested URI does not represent any resource on the server.",
        );
    };
    let is_put_message = req.method == "POST" && segments.len() == 3 && segments[2] == "messages";

    if !explicit_null {
        let mode = state.faults.broken(account);
        match mode {
            Some(BreakMode::Hang) => {
                state.count_fake(account, |c| c.hang += 1);
                return Outcome::Hang;
            }
            Some(BreakMode::Reset) => {
                state.count_fake(account, |c| c.reset += 1);
                return Outcome::Reset;
            }
            Some(BreakMode::ResetAfterEnqueue) => {
                state.count_fake(account, |c| c.reset_after_enqueue += 1);
                if !is_put_message {
                    return Outcome::Reset;
                }
                return enqueue_then_reset(&state, account, segments[1], &req.body).await;
            }
            Some(BreakMode::ServerBusy) | Some(BreakMode::BadSignature) | None => {
                if mode == Some(BreakMode::ServerBusy) || !state.null_queue {
                    state.busy_count.fetch_add(1, Ordering::Relaxed);
                    state.count_fake(account, |c| c.server_busy += 1);
                    return server_busy();
                }
            }
        }
    }
    if !is_put_message {
        return storage_error(
            404,
            "ResourceNotFound",
            "The specified resource does not exist (the kusto-dev null queue only implements Put Message).",
        );
    }
    if !has_message_text(&req.body) {
        return invalid_xml();
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
    Outcome::Respond(Response {
        status: 201,
        headers: vec![
            ("content-type", reply::XML.to_string()),
            ("x-ms-version", "2021-08-06".to_string()),
        ],
        body: body.into_bytes(),
    })
}

fn invalid_xml() -> Outcome {
    storage_error(
        400,
        "InvalidXmlDocument",
        "XML specified is not syntactically valid.",
    )
}

/// `ResetAfterEnqueue`: puts the message into the real Azurite queue (with the storage
/// helpers, so tests find it the usual way; query options such as `visibilitytimeout`
/// are not passed on), then resets. If Azurite refuses, its answer is passed on instead.
async fn enqueue_then_reset(state: &State, account: &str, queue: &str, body: &[u8]) -> Outcome {
    let text = std::str::from_utf8(body)
        .ok()
        .and_then(|b| crate::xml::first(b, "MessageText"));
    let Some(text) = text else {
        return invalid_xml();
    };
    match state.storage.put_message(account, queue, &text).await {
        Ok(()) => {
            state.count_fake(account, |c| c.enqueued += 1);
            Outcome::Reset
        }
        Err(Error::Storage { status, body, .. }) => Outcome::Respond(Response {
            status,
            headers: vec![("content-type", reply::XML.to_string())],
            body: body.into_bytes(),
        }),
        Err(e) => storage_error(
            500,
            "InternalError",
            &crate::xml::escape(&format!("kusto-dev could not enqueue into Azurite: {e}")),
        ),
    }
}
