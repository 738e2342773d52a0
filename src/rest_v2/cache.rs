//! The ingestion configuration of one DM: fetched when first needed, refreshed after its
//! `refreshInterval` in the background (single flight, `dm::refresh`), and served stale while a
//! refresh fails, as the v1 resources are (`queued::cache`). Only a request that finds no
//! configuration at all waits for the DM. A DM without the v2 API (404) is remembered as such and
//! asked again now and then, so a cluster that gains the API is noticed.

use super::configuration::Configuration;
use crate::dm::refresh::{Flight, RefetchError, SasRefetchLimit};
use crate::dm::{Call, DmClient, DmError};
use crate::domain::DmEndpoint;
use crate::ingest::Deadline;
use crate::queued::{StorageRoot, sas_usable_for};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a 404 from the configuration endpoint stands before the DM is asked again.
const ABSENT_RECHECK: Duration = Duration::from_secs(10 * 60);

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
    /// Until when the SAS of the configuration's containers works (with a margin).
    containers_usable_until: Instant,
}

impl Entry {
    /// Whether data can still be uploaded with what this entry says.
    fn uploadable(&self, now: Instant) -> bool {
        match self.known {
            Known::Supported(_) => now < self.containers_usable_until,
            Known::Absent => true,
        }
    }
}

type Current = Arc<RwLock<Option<Arc<Entry>>>>;

pub(super) struct ConfigCache {
    dm: DmEndpoint,
    client: Arc<DmClient>,
    /// Shared with the fetch task, which replaces it.
    current: Current,
    flight: Flight,
    sas_refetches: SasRefetchLimit,
}

impl ConfigCache {
    pub(super) fn new(dm: DmEndpoint, client: Arc<DmClient>) -> Self {
        Self {
            flight: Flight::new(&dm),
            dm,
            client,
            current: Arc::new(RwLock::new(None)),
            sas_refetches: SasRefetchLimit::default(),
        }
    }

    fn current(&self) -> Option<Arc<Entry>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// The configuration, or that there is none; an error only when nothing is known and the DM
    /// could not be asked (or `deadline` passed while waiting for the fetch).
    pub(super) async fn get(&self, deadline: Deadline) -> Result<Known, DmError> {
        self.get_where(deadline, |_, _| true).await
    }

    /// As [`get`](Self::get), for uploading data: a copy whose containers' SAS has expired (its
    /// refreshes failed that long) is no use, so the caller then waits for a fresh one.
    pub(super) async fn get_for_upload(&self, deadline: Deadline) -> Result<Known, DmError> {
        self.get_where(deadline, Entry::uploadable).await
    }

    /// The cached copy when it is `usable`, else one fetched now (waiting at most until
    /// `deadline`).
    async fn get_where(
        &self,
        deadline: Deadline,
        usable: impl Fn(&Entry, Instant) -> bool,
    ) -> Result<Known, DmError> {
        let now = Instant::now();
        let current = self.current();
        if let Some(entry) = current.as_ref().filter(|e| usable(e, now)) {
            // Due: refreshed behind this request, which is served from the copy it has.
            if now >= entry.refresh_at && self.flight.recent_failure(now).is_none() {
                self.start_fetch();
            }
            return Ok(entry.known.clone());
        }
        if let Some(error) = self.flight.recent_failure(now) {
            return Err(error);
        }
        self.start_fetch();
        tokio::time::timeout_at(deadline.instant(), self.flight.settled())
            .await
            .map_err(|_| DmError::Unreachable {
                endpoint: self.dm.to_string(),
                reason: "the configuration fetch did not finish before this request's deadline"
                    .to_owned(),
            })?;
        let fetched = self.current();
        if let Some(entry) = fetched.filter(|e| usable(e, Instant::now())) {
            return Ok(entry.known.clone());
        }
        Err(self
            .flight
            .last_failure()
            .unwrap_or_else(|| DmError::Unreachable {
                endpoint: self.dm.to_string(),
                reason: "the configuration fetch ended without a usable answer".to_owned(),
            }))
    }

    /// A configuration newer than `rejected`, whose container SAS storage refused: fetched now
    /// unless another upload already replaced it (many uploads refused together cause one fetch)
    /// and unless the SAS refetch limit holds.
    pub(super) async fn replace(
        &self,
        rejected: &Arc<Configuration>,
    ) -> Result<Arc<Configuration>, RefetchError> {
        let newer = |entry: Option<Arc<Entry>>| match entry.map(|e| e.known.clone()) {
            Some(Known::Supported(c)) if !Arc::ptr_eq(&c, rejected) => Some(c),
            _ => None,
        };
        // A fetch already running may be the replacement.
        self.flight.settled().await;
        if let Some(fresh) = newer(self.current()) {
            return Ok(fresh);
        }
        let now = Instant::now();
        if let Some(wait) = self.sas_refetches.wait(now) {
            return Err(RefetchError::Held(wait));
        }
        if let Some(error) = self.flight.recent_failure(now) {
            return Err(RefetchError::Dm(error));
        }
        self.sas_refetches.record(now);
        self.start_fetch();
        self.flight.settled().await;
        newer(self.current()).ok_or_else(|| {
            RefetchError::Dm(self.flight.last_failure().unwrap_or_else(|| {
                DmError::InvalidResponse {
                    endpoint: self.dm.to_string(),
                    reason: "the DM no longer describes a queued-ingestion REST API".to_owned(),
                }
            }))
        })
    }

    /// Starts a fetch in the background unless one is running.
    fn start_fetch(&self) {
        let (dm, client, current) = (self.dm.clone(), self.client.clone(), self.current.clone());
        self.flight
            .start(async move { fetch(&dm, &client, &current).await });
    }
}

/// Asks the DM and stores what it said; an error leaves the previous copy in place.
async fn fetch(dm: &DmEndpoint, client: &DmClient, current: &Current) -> Result<(), DmError> {
    let call = Call {
        method: reqwest::Method::GET,
        url: format!("{dm}/v1/rest/ingestion/configuration"),
        body: None,
        what: "ingestion configuration",
    };
    let result = match client.call(dm, &call, None, true).await {
        Ok(body) => Configuration::parse(&body)
            .map(|c| {
                let usable_for = sas_usable_for(StorageRoot::earliest_expiry(&c.containers));
                // Refresh well before the containers' SAS expires, even when it is short-lived.
                let refresh = c.refresh.min(usable_for / 2);
                (Known::Supported(Arc::new(c)), refresh, usable_for)
            })
            .map_err(|reason| DmError::InvalidResponse {
                endpoint: dm.to_string(),
                reason,
            }),
        Err(DmError::Rejected { status: 404, .. }) => {
            Ok((Known::Absent, ABSENT_RECHECK, ABSENT_RECHECK))
        }
        Err(error) => Err(error),
    };
    let stale = current.read().ok().is_some_and(|c| c.is_some());
    match result {
        Ok((known, refresh, usable_for)) => {
            let now = Instant::now();
            if let Ok(mut current) = current.write() {
                *current = Some(Arc::new(Entry {
                    known,
                    refresh_at: now + refresh,
                    containers_usable_until: now + usable_for,
                }));
            }
            Ok(())
        }
        Err(error) if stale => {
            tracing::warn!(dm = %dm, %error, "ingestion configuration refresh failed; serving the previous one");
            Err(error)
        }
        Err(error) => {
            tracing::warn!(dm = %dm, %error, "cannot get the ingestion configuration");
            Err(error)
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
                    containers_usable_until: entry.containers_usable_until,
                }));
            }
            self.flight.forget_failure();
        }
    }

    /// A configuration whose one container's SAS expires `secs` from now.
    fn expiring_in(secs: i64) -> &'static str {
        let se = (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let body = format!(
            r#"{{"containerSettings": {{"containers": [{{"path": "https://acc.blob.core.windows.net/c?se={se}&sig=x"}}],
               "refreshInterval": "01:00:00"}},
              "ingestionSettings": {{"maxBlobsPerBatch": 20, "preferredIngestionMethod": "REST"}}}}"#
        );
        Box::leak(body.into_boxed_str())
    }

    #[tokio::test]
    async fn a_short_lived_container_sas_brings_the_refresh_forward() {
        let (_dm, cache) = fake_dm(200, expiring_in(120)).await;
        cache.get(deadline()).await.unwrap();
        let entry = cache.current().unwrap();
        // Usable until 30 s before the expiry; refreshed halfway there, not after an hour.
        let usable = entry.containers_usable_until - Instant::now();
        assert!(usable > Duration::from_secs(85) && usable <= Duration::from_secs(90));
        let refresh = entry.refresh_at - Instant::now();
        assert!(refresh > Duration::from_secs(40) && refresh <= Duration::from_secs(45));
    }

    #[tokio::test]
    async fn an_upload_waits_for_a_fresh_copy_once_the_containers_sas_expired() {
        // The DM hands out a container SAS that has already expired (as a copy whose refreshes
        // kept failing would hold).
        let (dm, cache) = fake_dm(200, expiring_in(-10)).await;
        let stale = cache.get(deadline()).await.unwrap();
        // Posting blob URLs does not need the containers: the copy serves.
        let served = cache.get(deadline()).await.unwrap();
        assert!(Arc::ptr_eq(supported(&stale), supported(&served)));
        cache.flight.settled().await;
        // Uploading does: it waits for a fetch, here one whose SAS works for an hour.
        dm.answer(200, expiring_in(3600));
        let hits = dm.hits();
        let fresh = cache.get_for_upload(deadline()).await.unwrap();
        assert!(!Arc::ptr_eq(supported(&stale), supported(&fresh)));
        assert_eq!(dm.hits(), hits + 1);
        // Usable now: the next upload is served from it.
        cache.get_for_upload(deadline()).await.unwrap();
        assert_eq!(dm.hits(), hits + 1);

        // While the DM fails, an upload gets its error rather than an expired SAS.
        let (dm, cache) = fake_dm(200, expiring_in(-10)).await;
        cache.get(deadline()).await.unwrap();
        cache.flight.settled().await;
        dm.answer(503, "{}");
        cache.expire();
        assert!(cache.get_for_upload(deadline()).await.is_err());
        assert!(
            cache.get(deadline()).await.is_ok(),
            "posts still get the copy"
        );
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
        cache.flight.settled().await;
        assert_eq!(dm.hits(), 1);
        // Due: asked again, once, however many ask.
        cache.expire();
        let gets = (0..8).map(|_| cache.get(deadline()));
        for known in futures::future::join_all(gets).await {
            known.unwrap();
        }
        cache.flight.settled().await;
        assert_eq!(dm.hits(), 2);
    }

    #[tokio::test]
    async fn a_due_refresh_runs_behind_the_requests_and_replaces_the_copy() {
        let (dm, cache) = fake_dm(200, CONFIGURATION).await;
        let first = cache.get(deadline()).await.unwrap();
        *dm.delay.lock().unwrap() = Duration::from_millis(500);
        cache.expire();
        // Served from the copy at once, not after the DM's 500 ms.
        let served = cache.get(deadline()).await.unwrap();
        assert!(Arc::ptr_eq(supported(&first), supported(&served)));
        cache.flight.settled().await;
        assert_eq!(dm.hits(), 2);
        let fresh = cache.get(deadline()).await.unwrap();
        assert!(
            !Arc::ptr_eq(supported(&first), supported(&fresh)),
            "the refresh replaced the copy"
        );
    }

    #[tokio::test]
    async fn a_hung_refresh_holds_up_no_request() {
        let (dm, cache) = fake_dm(200, CONFIGURATION).await;
        let first = cache.get(deadline()).await.unwrap();
        // Longer than the test: the DM never answers the refresh.
        *dm.delay.lock().unwrap() = Duration::from_secs(3600);
        cache.expire();
        for _ in 0..5 {
            let served = tokio::time::timeout(Duration::from_secs(5), cache.get(deadline()))
                .await
                .expect("served from the copy while the refresh hangs")
                .unwrap();
            assert!(Arc::ptr_eq(supported(&first), supported(&served)));
        }
        // Let the refresh reach the DM: it is asked once, however many requests find it due.
        let wait_for_the_fetch = async {
            while dm.hits() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait_for_the_fetch)
            .await
            .expect("the background refresh asked the DM");
        cache.get(deadline()).await.unwrap();
        assert_eq!(dm.hits(), 2);
    }

    #[tokio::test]
    async fn a_cold_request_waits_only_until_its_deadline_and_the_fetch_goes_on() {
        let (dm, cache) = fake_dm(200, CONFIGURATION).await;
        *dm.delay.lock().unwrap() = Duration::from_millis(800);
        let error = cache
            .get(Deadline::after(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        // The fetch it started was not cancelled with it: the next request gets its answer.
        supported(&cache.get(deadline()).await.unwrap());
        assert_eq!(dm.hits(), 1);
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
        cache.flight.settled().await;
        assert_eq!(dm.hits(), 2, "the refresh was tried");
        assert!(
            Arc::ptr_eq(supported(&first), supported(&known)),
            "the previous configuration itself"
        );
        // Within the failure hold the DM is not asked again, and the stale copy still serves.
        for _ in 0..5 {
            let known = cache.get(deadline()).await.unwrap();
            assert!(Arc::ptr_eq(supported(&first), supported(&known)));
        }
        cache.flight.settled().await;
        assert_eq!(dm.hits(), 2);
        // An unreadable answer is a failure too.
        dm.answer(200, "not json");
        cache.expire();
        supported(&cache.get(deadline()).await.unwrap());
        cache.flight.settled().await;
        assert_eq!(dm.hits(), 3);
        let known = cache.get(deadline()).await.unwrap();
        assert!(Arc::ptr_eq(supported(&first), supported(&known)));
        // Once the DM answers again, the new configuration replaces the stale one.
        dm.answer(200, CONFIGURATION);
        cache.expire();
        cache.get(deadline()).await.unwrap();
        cache.flight.settled().await;
        assert_eq!(dm.hits(), 4);
        let fresh = cache.get(deadline()).await.unwrap();
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
        cache.get(deadline()).await.unwrap();
        cache.flight.settled().await;
        supported(&cache.get(deadline()).await.unwrap());
        assert_eq!(dm.hits(), 2);
    }
}
