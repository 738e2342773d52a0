//! `POST {dm}/v1/rest/mgmt` with the headers the SDKs send, the app's bearer token, and retries
//! for throttling and transient server errors.
//!
//! Written on reqwest rather than as an azure_core pipeline: azure_core's bearer-token policy
//! refuses every non-https URL, so it could not talk to the local DM emulator without a test-only
//! branch, and its retry policy cannot be bounded by a caller's deadline, which a handler answering
//! the Functions host (230 s) and Event Grid (30 s) must be. What it would give us here — retry on
//! 429/5xx with `Retry-After`, exponential backoff with jitter — is the twenty lines below.

use super::v1::{KustoErrorBody, V1Response};
use super::{APPLICATION_FOR_TRACING, CLIENT_VERSION_FOR_TRACING, DmError};
use crate::domain::DmEndpoint;
use crate::identity::Identity;
use crate::transport::{CappedReadError, MAX_ANSWER_BYTES, read_capped};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The database the SDKs address management commands to; the DM ignores it for the ingestion
/// commands.
const DEFAULT_DB: &str = "NetDefaultDB";

/// How DM calls are retried: only throttling (429), 5xx and unreachable endpoints, with
/// exponential backoff and jitter, honouring `Retry-After` up to `max_delay`.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub(crate) attempts: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    /// One attempt (token and answer included) gives up after this long.
    pub(crate) attempt_timeout: Duration,
    /// All attempts and the waits between them fit in this, so a slow DM or identity endpoint
    /// costs a caller this much at most, not attempts × timeouts.
    pub(crate) budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // The SDKs make 4 attempts capped at 30 s; a caller is waiting here, so the cap is lower.
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
            // Under the 25 s a BlobCreated invocation has.
            budget: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32, error: &DmError) -> Duration {
        if let Some(after) = error.retry_after() {
            return after.min(self.max_delay);
        }
        let exp = self.base_delay.saturating_mul(1 << attempt.min(10));
        let jitter = rand::random_range(0..=self.base_delay.as_millis() as u64);
        (exp + Duration::from_millis(jitter)).min(self.max_delay)
    }
}

pub(crate) struct DmClient {
    http: reqwest::Client,
    identity: Identity,
    scope: String,
    retry: RetryPolicy,
}

impl DmClient {
    pub(crate) fn new(
        http: reqwest::Client,
        identity: Identity,
        scope: String,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            identity,
            scope,
            retry,
        }
    }

    /// Runs one management command, retrying transient failures.
    pub(crate) async fn execute(
        &self,
        dm: &DmEndpoint,
        command: &str,
    ) -> Result<V1Response, DmError> {
        let body = serde_json::json!({"db": DEFAULT_DB, "csl": command}).to_string();
        let call = Call {
            method: reqwest::Method::POST,
            url: dm.mgmt_url(),
            body: Some(body),
            what: command,
        };
        // Management commands only read: an unanswered one is safe to send again.
        let answer = self.call(dm, &call, None, true).await?;
        serde_json::from_slice::<V1Response>(&answer).map_err(|e| DmError::InvalidResponse {
            endpoint: dm.to_string(),
            reason: format!("not a v1 JSON table: {e}"),
        })
    }

    /// One JSON call to a DM REST endpoint (the v2 ingestion API), with the same token, headers
    /// and retries as management commands. `until` shortens the retry budget to a caller's
    /// deadline; `resend_unanswered` says whether a call whose answer was lost may be sent again
    /// (not for a POST that may have been acted on). Returns the body of a 200 answer.
    pub(crate) async fn call(
        &self,
        dm: &DmEndpoint,
        call: &Call<'_>,
        until: Option<tokio::time::Instant>,
        resend_unanswered: bool,
    ) -> Result<Vec<u8>, DmError> {
        let budget = tokio::time::Instant::now() + self.retry.budget;
        let deadline = until.map_or(budget, |u| u.min(budget));
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                // Nothing was sent: not "unanswered", whatever the call.
                return Err(DmError::Unreachable {
                    endpoint: dm.to_string(),
                    reason: "the caller's deadline passed before the call".to_owned(),
                });
            }
            let timeout = self.retry.attempt_timeout.min(left);
            let sent = AtomicBool::new(false);
            let result = tokio::time::timeout(timeout, self.call_once(dm, call, &sent))
                .await
                .unwrap_or_else(|_| {
                    let reason = format!("no answer within {:.1} s", timeout.as_secs_f64());
                    let endpoint = dm.to_string();
                    // Out of time before the request went out (a slow token): nothing was sent.
                    Err(if sent.load(Ordering::Acquire) {
                        DmError::Unanswered { endpoint, reason }
                    } else {
                        DmError::Unreachable { endpoint, reason }
                    })
                });
            let again = |e: &DmError| {
                e.is_transient() && (resend_unanswered || !matches!(e, DmError::Unanswered { .. }))
            };
            match result {
                Ok(response) => return Ok(response),
                Err(error) if again(&error) && attempt + 1 < self.retry.attempts => {
                    let delay = self.retry.delay(attempt, &error);
                    if tokio::time::Instant::now() + delay >= deadline {
                        return Err(error);
                    }
                    tracing::warn!(dm = %dm, call = call.what, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, %error, "DM call failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One attempt; `sent` is set once the request is handed to the connection, so a timeout
    /// can tell a request that may have been acted on from one that never left.
    async fn call_once(
        &self,
        dm: &DmEndpoint,
        call: &Call<'_>,
        sent: &AtomicBool,
    ) -> Result<Vec<u8>, DmError> {
        let endpoint = dm.to_string();
        let token = self
            .identity
            .token(&self.scope)
            .await
            .map_err(DmError::Identity)?;
        let request_id = format!("KIA.execute;{}", crate::domain::random_uuid());
        let started = std::time::Instant::now();
        let request = self.request(call, token, &request_id);
        sent.store(true, Ordering::Release);
        let response = request.send().await.map_err(|e| send_error(&endpoint, e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match read_capped(response, MAX_ANSWER_BYTES).await {
            Ok(body) => body,
            // A refusal whose body could not be read is still a refusal: its status says which.
            Err(error) if status != 200 => {
                tracing::debug!(dm = %dm, call = call.what, status, %error, "unreadable error body");
                Default::default()
            }
            // An acceptance that could not be read: the DM acted, what it answered is unknown.
            Err(error @ CappedReadError::TooLarge { .. }) => {
                return Err(DmError::InvalidResponse {
                    endpoint,
                    reason: error.to_string(),
                });
            }
            Err(error) => {
                return Err(DmError::Unanswered {
                    endpoint,
                    reason: error.to_string(),
                });
            }
        };
        tracing::debug!(dm = %dm, call = call.what, status, request_id, elapsed_ms = started.elapsed().as_millis() as u64, "DM call");
        by_status(endpoint, status, retry_after, body)
    }

    /// `call` with the app's token and the headers the SDKs send.
    fn request(&self, call: &Call<'_>, token: String, request_id: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(call.method.clone(), &call.url)
            .bearer_auth(token)
            .header("Accept", "application/json")
            .header("x-ms-client-request-id", request_id)
            .header("x-ms-client-version", CLIENT_VERSION_FOR_TRACING)
            .header("x-ms-app", APPLICATION_FOR_TRACING)
            .header("x-ms-version", "2024-12-12");
        match &call.body {
            Some(body) => request
                .header("Content-Type", "application/json; charset=utf-8")
                .body(body.clone()),
            None => request,
        }
    }
}

/// A call that got no answer: refused before anything was sent (safe to send again, whatever
/// the call), or sent and unanswered.
fn send_error(endpoint: &str, error: reqwest::Error) -> DmError {
    let refused = error.is_connect();
    let reason = error.without_url().to_string();
    let endpoint = endpoint.to_owned();
    if refused {
        DmError::Unreachable { endpoint, reason }
    } else {
        DmError::Unanswered { endpoint, reason }
    }
}

/// A DM answer by its status: 200 is the body, anything else the error it stands for.
fn by_status(
    endpoint: String,
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
) -> Result<Vec<u8>, DmError> {
    match status {
        200 => Ok(body),
        429 => Err(DmError::Throttled {
            endpoint,
            retry_after,
        }),
        401 | 403 => Err(DmError::Unauthorized {
            endpoint,
            status,
            message: KustoErrorBody::summarize(&body),
        }),
        500..=599 => Err(DmError::Server {
            endpoint,
            status,
            message: KustoErrorBody::summarize(&body),
            retry_after,
        }),
        _ => Err(DmError::Rejected {
            endpoint,
            status,
            message: KustoErrorBody::summarize(&body),
        }),
    }
}

/// One call [`DmClient::call`] makes: what, where, and the JSON body.
pub(crate) struct Call<'a> {
    pub(crate) method: reqwest::Method,
    pub(crate) url: String,
    pub(crate) body: Option<String>,
    /// For logs: the command, or the API's name.
    pub(crate) what: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_honours_retry_after_within_the_cap() {
        let policy = RetryPolicy::default();
        let throttled = |secs| DmError::Throttled {
            endpoint: "x".into(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(policy.delay(0, &throttled(2)), Duration::from_secs(2));
        assert_eq!(policy.delay(0, &throttled(600)), policy.max_delay);
        let server = DmError::Server {
            endpoint: "x".into(),
            status: 503,
            message: String::new(),
            retry_after: None,
        };
        let d0 = policy.delay(0, &server);
        assert!(d0 >= policy.base_delay && d0 <= policy.base_delay * 2);
        assert!(policy.delay(9, &server) <= policy.max_delay);
    }
}
