//! One summary line per request or invocation, for an operator asking "what happened to request
//! X": a span opened by the route with the host's invocation id, filled in by the handler with
//! what it did (DM, counts), and closed by the route with the status and the time taken. Lines
//! logged while the request runs carry the same span, so they share its invocation id.

use crate::domain::clip;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::future::Future;
use tokio::time::Instant;
use tracing::Span;
use tracing::field::Empty;

tokio::task_local! {
    /// Storage accounts that took a message or an upload for the request this task serves.
    static ACCOUNTS: RefCell<BTreeSet<String>>;
}

/// The header the Functions host adds to every request it forwards or proxies.
pub(crate) const INVOCATION_HEADER: &str = "x-azure-functions-invocationid";

/// The span of one request on `route`; `invocation_id` is the caller-visible header, clipped and
/// escaped since anyone can send it.
pub(crate) fn span(route: &'static str, invocation_id: Option<&str>) -> Span {
    let invocation_id = invocation_id.map_or_else(|| "-".to_owned(), clip);
    tracing::info_span!(
        "request",
        route = %route,
        invocation_id = %invocation_id,
        dm = Empty,
        blobs = Empty,
        queued = Empty,
        failed = Empty,
        unknown = Empty,
        events = Empty,
        skipped = Empty,
        rejected = Empty,
        retry = Empty,
        source_id = Empty,
        raw_bytes = Empty,
        operation_id = Empty,
    )
}

/// What a batch of blobs came to.
pub(crate) struct BatchCounts {
    pub(crate) blobs: usize,
    pub(crate) queued: usize,
    pub(crate) failed: usize,
    pub(crate) unknown: usize,
}

/// Records the DM and the outcome counts into the current request's span.
pub(crate) fn record_batch(dm: &dyn Display, counts: &BatchCounts) {
    let span = Span::current();
    span.record("dm", tracing::field::display(dm));
    span.record("blobs", counts.blobs);
    span.record("queued", counts.queued);
    span.record("failed", counts.failed);
    span.record("unknown", counts.unknown);
}

/// Records one named value into the current request's span.
pub(crate) fn record(field: &'static str, value: impl Display) {
    Span::current().record(field, tracing::field::display(value));
}

/// Runs a request's work where [`account_used`] can note accounts for its summary line. The
/// queue posts and uploads run in the request's own task, so a task-local reaches them without
/// threading a collector through the backend.
pub(crate) async fn collecting_accounts<F: Future>(work: F) -> F::Output {
    ACCOUNTS.scope(RefCell::new(BTreeSet::new()), work).await
}

/// Notes that `account` took a message or an upload for the current request.
pub(crate) fn account_used(account: &str) {
    // Outside a request (start-up, a background refresh) there is nothing to note.
    let _ = ACCOUNTS.try_with(|accounts| {
        let mut accounts = accounts.borrow_mut();
        if !accounts.contains(account) {
            accounts.insert(clip(account));
        }
    });
}

/// The summary line itself, inside the request's span.
pub(crate) fn done(status: u16, started: Instant) {
    let accounts = ACCOUNTS
        .try_with(|a| a.borrow().iter().cloned().collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    tracing::info!(
        status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        accounts = %accounts,
        "request done"
    );
}
