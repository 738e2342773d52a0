//! Single-flight fetches of what a DM hands out, shared by the v1 resources cache
//! (`queued::cache`) and the v2 configuration cache (`rest_v2::cache`). A fetch runs in a task of
//! its own, bounded by [`FETCH_TIMEOUT`], so that a request holding a usable copy never waits for
//! it, and a request that must wait (nothing usable yet) can give up at its own deadline without
//! cancelling the fetch the next request will need. A failed fetch holds the DM off for
//! [`FAILURE_HOLD`], so an outage is not multiplied by every request that finds the copy due.

use super::DmError;
use crate::domain::DmEndpoint;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After a failed fetch, callers are answered from that failure (or the stale copy) for this long
/// before the DM is asked again.
pub(crate) const FAILURE_HOLD: Duration = Duration::from_secs(5);
/// A fetch still running after this long is abandoned and counts as failed. Above the DM client's
/// 20 s retry budget, so that it only ends a fetch whose calls stopped honouring theirs (a token
/// endpoint and a DM command in turn, say).
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// After storage refuses a SAS (403), fresh credentials are fetched at most once per hold; the
/// hold doubles while refusals keep coming (a rotated key, a SAS expired at the source), up to the
/// maximum, so a storage-side incident does not become DM throttling.
const SAS_REFETCH_HOLD: Duration = Duration::from_secs(5);
const SAS_REFETCH_MAX_HOLD: Duration = Duration::from_secs(5 * 60);

/// Why a cache has no copy newer than the one whose SAS storage refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RefetchError {
    #[error("fresh credentials could not be fetched: {0}")]
    Dm(DmError),
    #[error(
        "fresh credentials were fetched moments ago and were refused too; the DM is asked again in {} s at the earliest",
        .0.as_secs().max(1)
    )]
    Held(Duration),
}

impl RefetchError {
    /// When trying again makes sense, when the hold says.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            RefetchError::Held(wait) => Some(*wait),
            RefetchError::Dm(_) => None,
        }
    }
}

/// When SAS-triggered refetches may happen (see [`SAS_REFETCH_HOLD`]).
#[derive(Default)]
pub(crate) struct SasRefetchLimit {
    /// The last SAS-triggered refetch, and the hold that started with it.
    last: Mutex<Option<(Instant, Duration)>>,
}

impl SasRefetchLimit {
    /// How long until the next SAS-triggered refetch is allowed; `None`: now.
    pub(crate) fn wait(&self, now: Instant) -> Option<Duration> {
        let last = *self.last.lock().ok()?;
        let (at, hold) = last?;
        (at + hold)
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }

    /// A SAS-triggered refetch starts now: the next hold doubles when this one follows the last
    /// closely (the refusals go on), and starts over otherwise.
    pub(crate) fn record(&self, now: Instant) {
        if let Ok(mut last) = self.last.lock() {
            let hold = match *last {
                Some((at, hold)) if now.duration_since(at) < hold * 3 => {
                    (hold * 2).min(SAS_REFETCH_MAX_HOLD)
                }
                _ => SAS_REFETCH_HOLD,
            };
            *last = Some((now, hold));
        }
    }
}

/// The one fetch of one cache that may be running, and how the last one ended.
#[derive(Clone)]
pub(crate) struct Flight {
    endpoint: String,
    /// [`FETCH_TIMEOUT`].
    timeout: Duration,
    /// Held by the running fetch's task, released only after it stored its result (the copy or
    /// the failure), so a waiter that gets it sees what the fetch left.
    running: Arc<tokio::sync::Mutex<()>>,
    last_failure: Arc<Mutex<Option<(Instant, DmError)>>>,
}

impl Flight {
    pub(crate) fn new(dm: &DmEndpoint) -> Self {
        Self {
            endpoint: dm.to_string(),
            timeout: FETCH_TIMEOUT,
            running: Arc::new(tokio::sync::Mutex::new(())),
            last_failure: Arc::new(Mutex::new(None)),
        }
    }

    /// The last fetch's failure, while it holds the DM off.
    pub(crate) fn recent_failure(&self, now: Instant) -> Option<DmError> {
        let guard = self.last_failure.lock().ok()?;
        let (at, error) = guard.as_ref()?;
        (now.duration_since(*at) < FAILURE_HOLD).then(|| error.clone())
    }

    /// The last fetch's failure however old: what a waiter reports when the fetch it waited for
    /// stored nothing usable.
    pub(crate) fn last_failure(&self) -> Option<DmError> {
        let guard = self.last_failure.lock().ok()?;
        guard.as_ref().map(|(_, error)| error.clone())
    }

    /// Starts `fetch` in its own task unless a fetch is running already (then that one serves);
    /// `fetch` stores what it got before it returns. Needs a Tokio runtime.
    pub(crate) fn start<F>(&self, fetch: F)
    where
        F: Future<Output = Result<(), DmError>> + Send + 'static,
    {
        let Ok(held) = self.running.clone().try_lock_owned() else {
            return;
        };
        let last_failure = self.last_failure.clone();
        let (endpoint, timeout) = (self.endpoint.clone(), self.timeout);
        tokio::spawn(async move {
            let result = tokio::time::timeout(timeout, fetch)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(dm = %endpoint, timeout_ms = timeout.as_millis() as u64, "a DM fetch ran out of time; abandoned");
                    Err(DmError::Unreachable {
                        endpoint,
                        reason: format!(
                            "the fetch did not finish within {:.1} s",
                            timeout.as_secs_f64()
                        ),
                    })
                });
            if let Ok(mut last) = last_failure.lock() {
                *last = result.err().map(|error| (Instant::now(), error));
            }
            drop(held);
        });
    }

    /// As if the failure hold had passed.
    #[cfg(test)]
    pub(crate) fn forget_failure(&self) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = None;
        }
    }

    /// Returns once no fetch is running (at once when none is).
    pub(crate) async fn settled(&self) {
        drop(self.running.lock().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight() -> Flight {
        Flight::new(&DmEndpoint::parse("https://ingest-x.kusto.windows.net").unwrap())
    }

    #[tokio::test]
    async fn one_fetch_at_a_time_and_its_failure_is_held() {
        let flight = flight();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        flight.start(async move {
            let _ = released.await;
            Err(DmError::Identity("down".to_owned()))
        });
        // Running: a second start is a no-op (it would succeed at once otherwise).
        flight.start(async { Ok(()) });
        assert!(flight.recent_failure(Instant::now()).is_none());
        release.send(()).unwrap();
        flight.settled().await;
        assert!(matches!(
            flight.recent_failure(Instant::now()),
            Some(DmError::Identity(_))
        ));
        assert!(
            flight
                .recent_failure(Instant::now() + FAILURE_HOLD)
                .is_none()
        );
        assert!(flight.last_failure().is_some());
        // A success clears it.
        flight.start(async { Ok(()) });
        flight.settled().await;
        assert!(flight.last_failure().is_none());
    }

    #[tokio::test]
    async fn a_fetch_that_hangs_is_abandoned_as_failed() {
        let flight = Flight {
            timeout: Duration::from_millis(100),
            ..flight()
        };
        flight.start(std::future::pending());
        flight.settled().await;
        assert!(matches!(
            flight.last_failure(),
            Some(DmError::Unreachable { .. })
        ));
    }
}
