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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::RetryPolicy;
    use crate::rest_v2::Preferred;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CONFIGURATION: &str = r#"{
      "containerSettings": {"containers": [{"path": "https://acc.blob.core.windows.net/c?sig=x"}],
        "refreshInterval": "01:00:00"},
      "ingestionSettings": {"maxBlobsPerBatch": 20, "preferredIngestionMethod": "REST"}
    }"#;

    /// A DM whose configuration endpoint answers what the test says, after `delay`, counting
    /// the requests it got.
    struct FakeDm {
        answer: Mutex<(u16, &'static str)>,
        delay: Mutex<Duration>,
        hits: AtomicUsize,
    }

    impl FakeDm {
        fn answer(&self, status: u16, body: &'static str) {
            *self.answer.lock().unwrap() = (status, body);
        }
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    async fn fake_dm(status: u16, body: &'static str) -> (Arc<FakeDm>, ConfigCache) {
        use warp::Filter as _;
        let dm = Arc::new(FakeDm {
            answer: Mutex::new((status, body)),
            delay: Mutex::new(Duration::ZERO),
            hits: AtomicUsize::new(0),
        });
        let served = dm.clone();
        let route = warp::get()
            .and(warp::path!("v1" / "rest" / "ingestion" / "configuration"))
            .then(move || {
                let dm = served.clone();
                async move {
                    dm.hits.fetch_add(1, Ordering::SeqCst);
                    let delay = *dm.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let (status, body) = *dm.answer.lock().unwrap();
                    warp::http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(body.to_owned())
                        .unwrap()
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        let client = DmClient::new(
            reqwest::Client::new(),
            crate::identity::Identity::fixed("token"),
            "scope".to_owned(),
            // One attempt: each `get` that asks is one request the fake counts.
            RetryPolicy {
                attempts: 1,
                ..RetryPolicy::default()
            },
        );
        let endpoint = DmEndpoint::parse(&format!("http://127.0.0.1:{}", addr.port())).unwrap();
        (dm, ConfigCache::new(endpoint, Arc::new(client)))
    }

    fn deadline() -> Deadline {
        Deadline::after(Duration::from_secs(10))
    }

    fn supported(known: &Known) -> &Arc<Configuration> {
        match known {
            Known::Supported(c) => c,
            Known::Absent => panic!("expected a configuration, got Absent"),
        }
    }

    impl ConfigCache {
        /// As if `refreshInterval` and the failure hold had passed.
        fn expire(&self) {
            let mut current = self.current.write().unwrap();
            if let Some(entry) = current.as_ref() {
                *current = Some(Arc::new(Entry {
                    known: entry.known.clone(),
                    refresh_at: Instant::now(),
                }));
            }
            *self.last_failure.write().unwrap() = None;
        }
    }

    #[tokio::test]
    async fn concurrent_first_requests_make_one_fetch() {
        let (dm, cache) = fake_dm(200, CONFIGURATION).await;
        *dm.delay.lock().unwrap() = Duration::from_millis(300);
        let gets = (0..16).map(|_| cache.get(deadline()));
        for known in futures::future::join_all(gets).await {
            assert_eq!(supported(&known.unwrap()).preferred, Preferred::V2);
        }
        assert_eq!(dm.hits(), 1);
        // Cached until its refreshInterval.
        cache.get(deadline()).await.unwrap();
        assert_eq!(dm.hits(), 1);
        // Due: asked again, once, however many ask.
        cache.expire();
        let gets = (0..8).map(|_| cache.get(deadline()));
        for known in futures::future::join_all(gets).await {
            known.unwrap();
        }
        assert_eq!(dm.hits(), 2);
    }

    #[tokio::test]
    async fn a_failing_refresh_serves_the_previous_configuration() {
        let (dm, cache) = fake_dm(200, CONFIGURATION).await;
        let first = cache.get(deadline()).await.unwrap();
        dm.answer(
            503,
            r#"{"error": {"code": "ServiceUnavailable", "message": "down"}}"#,
        );
        cache.expire();
        let known = cache.get(deadline()).await.unwrap();
        assert_eq!(dm.hits(), 2, "the refresh was tried");
        assert!(
            Arc::ptr_eq(supported(&first), supported(&known)),
            "the previous configuration itself"
        );
        // Within the failure hold the DM is not asked again, and the stale copy still serves.
        for _ in 0..5 {
            supported(&cache.get(deadline()).await.unwrap());
        }
        assert_eq!(dm.hits(), 2);
        // An unreadable answer is a failure too.
        dm.answer(200, "not json");
        cache.expire();
        supported(&cache.get(deadline()).await.unwrap());
        assert_eq!(dm.hits(), 3);
        // Once the DM answers again, the new configuration replaces the stale one.
        dm.answer(200, CONFIGURATION);
        cache.expire();
        let fresh = cache.get(deadline()).await.unwrap();
        assert_eq!(dm.hits(), 4);
        assert!(!Arc::ptr_eq(supported(&first), supported(&fresh)));
    }

    #[tokio::test]
    async fn a_cold_failure_is_an_error_held_briefly() {
        let (dm, cache) = fake_dm(503, r#"{"error": {"code": "x", "message": "down"}}"#).await;
        let error = cache.get(deadline()).await.unwrap_err();
        assert!(
            matches!(error, DmError::Server { status: 503, .. }),
            "{error:?}"
        );
        // Held: the next requests get the same failure without asking.
        cache.get(deadline()).await.unwrap_err();
        assert_eq!(dm.hits(), 1);
        dm.answer(200, CONFIGURATION);
        cache.expire();
        supported(&cache.get(deadline()).await.unwrap());
        assert_eq!(dm.hits(), 2);
    }

    #[tokio::test]
    async fn a_404_is_remembered_as_no_v2_api() {
        let (dm, cache) = fake_dm(404, r#"{"error": {"code": "NotFound", "message": "no"}}"#).await;
        for _ in 0..3 {
            assert!(matches!(
                cache.get(deadline()).await.unwrap(),
                Known::Absent
            ));
        }
        assert_eq!(dm.hits(), 1, "asked once");
        // Asked again once the recheck is due: a cluster that gains the API is noticed.
        let due = cache.current().unwrap().refresh_at;
        assert!(due >= Instant::now() + ABSENT_RECHECK - Duration::from_secs(5));
        dm.answer(200, CONFIGURATION);
        cache.expire();
        supported(&cache.get(deadline()).await.unwrap());
        assert_eq!(dm.hits(), 2);
    }
}
