//! The ingestion configuration of one DM: fetched when first needed, refreshed after its
//! `refreshInterval` by one task at a time, and served stale while a refresh fails, as the v1
//! resources are (`queued::cache`). A DM without the v2 API (404) is remembered as such and asked
//! again now and then, so a cluster that gains the API is noticed.

use super::configuration::Configuration;
use crate::dm::{Call, DmClient, DmError};
use crate::domain::DmEndpoint;
use crate::ingest::Deadline;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a 404 from the configuration endpoint stands before the DM is asked again.
const ABSENT_RECHECK: Duration = Duration::from_secs(10 * 60);
/// After a failed fetch, callers get that failure (or the stale copy) for this long before the DM
/// is asked again, so an outage is not multiplied by every waiting request.
const FAILURE_HOLD: Duration = Duration::from_secs(5);

/// What the DM said about its v2 API.
#[derive(Debug, Clone)]
pub(crate) enum Known {
    Supported(Arc<Configuration>),
    /// The configuration endpoint answered 404: the cluster has no v2 API.
    Absent,
}

struct Entry {
    known: Known,
    refresh_at: Instant,
}

pub(super) struct ConfigCache {
    dm: DmEndpoint,
    client: Arc<DmClient>,
    current: RwLock<Option<Arc<Entry>>>,
    last_failure: RwLock<Option<(Instant, DmError)>>,
    /// Single flight: whoever holds it fetches; the others wait for it or serve the current copy.
    refresh: tokio::sync::Mutex<()>,
}

impl ConfigCache {
    pub(super) fn new(dm: DmEndpoint, client: Arc<DmClient>) -> Self {
        Self {
            dm,
            client,
            current: RwLock::new(None),
            last_failure: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Arc<Entry>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn recent_failure(&self, now: Instant) -> Option<DmError> {
        let guard = self.last_failure.read().ok()?;
        let (at, error) = guard.as_ref()?;
        (now.duration_since(*at) < FAILURE_HOLD).then(|| error.clone())
    }

    /// The configuration, or that there is none; an error only when nothing is known and the DM
    /// could not be asked (or `deadline` passed while waiting for another task's fetch).
    pub(super) async fn get(&self, deadline: Deadline) -> Result<Known, DmError> {
        let now = Instant::now();
        let current = self.current();
        if let Some(entry) = &current {
            if now < entry.refresh_at {
                return Ok(entry.known.clone());
            }
            // Due, but still usable: a failing DM or another task's refresh does not hold us up.
            if self.recent_failure(now).is_some() {
                return Ok(entry.known.clone());
            }
            let Ok(_guard) = self.refresh.try_lock() else {
                return Ok(entry.known.clone());
            };
            return Ok(match self.fetch(deadline).await {
                Ok(known) => known,
                Err(error) => {
                    tracing::warn!(dm = %self.dm, %error, "ingestion configuration refresh failed; serving the previous one");
                    entry.known.clone()
                }
            });
        }
        if let Some(error) = self.recent_failure(now) {
            return Err(error);
        }
        let _guard = tokio::time::timeout_at(deadline.instant(), self.refresh.lock())
            .await
            .map_err(|_| DmError::Unreachable {
                endpoint: self.dm.to_string(),
                reason: "another request's configuration fetch did not finish before this request's deadline".to_owned(),
            })?;
        // Whoever held the lock may have fetched it meanwhile.
        if let Some(entry) = self.current() {
            return Ok(entry.known.clone());
        }
        if let Some(error) = self.recent_failure(Instant::now()) {
            return Err(error);
        }
        self.fetch(deadline).await
    }

    /// Asks the DM (the caller holds the refresh lock) and stores what it said.
    async fn fetch(&self, deadline: Deadline) -> Result<Known, DmError> {
        let call = Call {
            method: reqwest::Method::GET,
            url: format!("{}/v1/rest/ingestion/configuration", self.dm),
            body: None,
            what: "ingestion configuration",
        };
        let result = match self
            .client
            .call(&self.dm, &call, Some(deadline.instant()), true)
            .await
        {
            Ok(body) => Configuration::parse(&body)
                .map(|c| {
                    let refresh = c.refresh;
                    (Known::Supported(Arc::new(c)), refresh)
                })
                .map_err(|reason| DmError::InvalidResponse {
                    endpoint: self.dm.to_string(),
                    reason,
                }),
            Err(DmError::Rejected { status: 404, .. }) => Ok((Known::Absent, ABSENT_RECHECK)),
            Err(error) => Err(error),
        };
        match result {
            Ok((known, refresh)) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Some(Arc::new(Entry {
                        known: known.clone(),
                        refresh_at: Instant::now() + refresh,
                    }));
                }
                if let Ok(mut failure) = self.last_failure.write() {
                    *failure = None;
                }
                Ok(known)
            }
            Err(error) => {
                if let Ok(mut failure) = self.last_failure.write() {
                    *failure = Some((Instant::now(), error.clone()));
                }
                Err(error)
            }
        }
    }
}
