//! The ingestion resources and identity token of one DM, fetched together, cached, refreshed ahead
//! of expiry in the background by one task at a time (`dm::refresh`, shared with the v2
//! configuration cache), and served stale while a refresh fails and the SAS is valid.

use super::authorization::AuthorizationContext;
use super::connections::StorageConnections;
use super::pool::QueuePool;
use super::resources::{IngestionResources, StorageRoot, sas_usable_for};
use super::status_table::StatusTable;
use crate::dm::refresh::{Flight, RefetchError, SasRefetchLimit};
use crate::dm::{DmClient, DmError};
use crate::domain::DmEndpoint;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The SDKs refresh both every hour; refreshing ten minutes early keeps requests off the slow path.
const REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);

/// One successful fetch of both commands.
pub(super) struct Snapshot {
    pub(super) generation: u64,
    pub(super) pool: QueuePool,
    pub(super) authorization_context: AuthorizationContext,
    /// Where tracked blobs are recorded, when the DM hands out a status table.
    pub(super) status_table: Option<StatusTable>,
    /// Where data bodies are uploaded.
    pub(super) temp_containers: Vec<StorageRoot>,
    refresh_at: Instant,
    /// When the queue SAS stops working, as a monotonic instant.
    usable_until: Instant,
}

impl Snapshot {
    fn usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

/// Cheap to share with the fetch task: what it needs is behind one `Arc`.
pub(super) struct ResourceCache {
    inner: Arc<Inner>,
    flight: Flight,
}

struct Inner {
    dm: DmEndpoint,
    client: Arc<DmClient>,
    /// The process's storage connections, for the queue posts of every snapshot.
    connections: Arc<StorageConnections>,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// The generation a queue reported as unauthorized (403): it is refreshed on next use, unless
    /// the SAS refetch limit holds.
    invalidated: AtomicU64,
    sas_refetches: SasRefetchLimit,
    generations: AtomicU64,
}

impl ResourceCache {
    pub(super) fn new(
        dm: DmEndpoint,
        client: Arc<DmClient>,
        connections: Arc<StorageConnections>,
    ) -> Self {
        Self {
            flight: Flight::new(&dm),
            inner: Arc::new(Inner {
                dm,
                client,
                connections,
                current: RwLock::new(None),
                invalidated: AtomicU64::new(0),
                sas_refetches: SasRefetchLimit::default(),
                generations: AtomicU64::new(0),
            }),
        }
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.inner.current()
    }

    fn needs_refresh(&self, snapshot: &Snapshot, now: Instant) -> bool {
        now >= snapshot.refresh_at || !snapshot.usable(now) || self.refused(snapshot, now)
    }

    /// Storage refused `snapshot`'s SAS and a refetch for that is allowed now.
    fn refused(&self, snapshot: &Snapshot, now: Instant) -> bool {
        self.invalidated(snapshot) && self.inner.sas_refetches.wait(now).is_none()
    }

    fn invalidated(&self, snapshot: &Snapshot) -> bool {
        self.inner.invalidated.load(Ordering::Acquire) == snapshot.generation
    }

    /// Marks `generation` as rejected by storage (403), so the next `get` fetches fresh resources.
    /// A report about an older generation than the current one changes nothing: it was replaced.
    pub(super) fn invalidate(&self, generation: u64) {
        if self.current().is_some_and(|c| c.generation == generation) {
            self.inner
                .invalidated
                .fetch_max(generation, Ordering::AcqRel);
        }
    }

    /// Starts a fetch in the background unless one is running.
    fn start_fetch(&self) {
        let inner = self.inner.clone();
        self.flight.start(async move { inner.refresh().await });
    }

    /// What a caller that needed a fetch gets once it ended: the current snapshot while its SAS
    /// works, else why there is none.
    fn after_fetch(&self) -> Result<Arc<Snapshot>, DmError> {
        match self.current() {
            Some(snapshot) if snapshot.usable(Instant::now()) => Ok(snapshot),
            _ => Err(self
                .flight
                .last_failure()
                .unwrap_or_else(|| DmError::Unreachable {
                    endpoint: self.inner.dm.to_string(),
                    reason: "the ingestion resources fetch ended without an answer".to_owned(),
                })),
        }
    }

    /// Resources newer than `rejected`, whose SAS storage refused: fetched now unless another
    /// task already replaced them, so that many blobs failing together cause one refetch, and
    /// unless the SAS refetch limit holds. Falls back to the rejected copy when the refetch fails
    /// (the caller then fails its blob).
    pub(super) async fn replace(&self, rejected: u64) -> Result<Arc<Snapshot>, RefetchError> {
        let newer = |c: Option<Arc<Snapshot>>| c.filter(|c| c.generation > rejected);
        if let Some(snapshot) = newer(self.current()) {
            return Ok(snapshot);
        }
        self.invalidate(rejected);
        // A fetch already running may be the replacement.
        self.flight.settled().await;
        if let Some(snapshot) = newer(self.current()) {
            return Ok(snapshot);
        }
        if let Some(wait) = self.inner.sas_refetches.wait(Instant::now()) {
            return Err(RefetchError::Held(wait));
        }
        if self.flight.recent_failure(Instant::now()).is_none() {
            self.start_fetch();
            self.flight.settled().await;
        }
        if let Some(snapshot) = newer(self.current()) {
            return Ok(snapshot);
        }
        self.after_fetch().map_err(RefetchError::Dm)
    }

    /// Resources to post with, at once while a usable copy exists: a refresh that falls due runs
    /// behind the request, and the copy serves while it fails and its SAS still works. Only when
    /// nothing usable is cached (cold, SAS expired, or refused by storage) does the caller wait
    /// for the DM, and an error then means nothing usable could be had.
    pub(super) async fn get(&self) -> Result<Arc<Snapshot>, DmError> {
        let now = Instant::now();
        let current = self.current();
        if let Some(snapshot) = &current {
            if !self.needs_refresh(snapshot, now) {
                return Ok(snapshot.clone());
            }
            if snapshot.usable(now) && !self.invalidated(snapshot) {
                if self.flight.recent_failure(now).is_none() {
                    self.start_fetch();
                }
                return Ok(snapshot.clone());
            }
        }
        if let Some(error) = self.flight.recent_failure(now) {
            return match current {
                Some(snapshot) if snapshot.usable(now) => Ok(snapshot),
                _ => Err(error),
            };
        }
        self.start_fetch();
        self.flight.settled().await;
        self.after_fetch()
    }
}

impl Inner {
    fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// Fetches both commands concurrently and installs the result; an error leaves the previous
    /// snapshot in place. Runs as the cache's one fetch (`Flight`).
    async fn refresh(&self) -> Result<(), DmError> {
        let started = Instant::now();
        let previous = self.current();
        if let Some(previous) = &previous
            && self.invalidated.load(Ordering::Acquire) == previous.generation
        {
            self.sas_refetches.record(started);
        }
        let (resources, token) = tokio::join!(
            IngestionResources::fetch(&self.client, &self.dm),
            AuthorizationContext::fetch(&self.client, &self.dm)
        );
        let built = resources.and_then(|resources| {
            let token = token?;
            let pool = QueuePool::new(&resources.queues, &self.connections).map_err(|reason| {
                DmError::InvalidResponse {
                    endpoint: self.dm.to_string(),
                    reason,
                }
            })?;
            Ok((resources, token, pool))
        });
        match built {
            Ok((resources, authorization_context, pool)) => {
                self.install(&resources, authorization_context, pool, started);
                Ok(())
            }
            Err(error) => {
                match previous {
                    Some(stale) if stale.usable(Instant::now()) => {
                        tracing::warn!(dm = %self.dm, generation = stale.generation, %error, "refreshing ingestion resources failed; serving the cached copy while its SAS is valid");
                    }
                    _ => tracing::error!(dm = %self.dm, %error, "cannot get ingestion resources"),
                }
                Err(error)
            }
        }
    }

    /// Makes a fresh fetch the current snapshot.
    fn install(
        &self,
        resources: &IngestionResources,
        authorization_context: AuthorizationContext,
        pool: QueuePool,
        started: Instant,
    ) {
        let now = Instant::now();
        let usable_for = sas_usable_for(resources.sas_expiry());
        let generation = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        let snapshot = Arc::new(Snapshot {
            generation,
            pool,
            authorization_context,
            status_table: resources.status_table.clone(),
            temp_containers: resources.temp_containers.clone(),
            // Refresh well before the SAS expires even when it is short-lived.
            refresh_at: now + REFRESH_AFTER.min(usable_for / 2),
            usable_until: now + usable_for,
        });
        tracing::info!(
            dm = %self.dm,
            generation,
            queues = resources.queues.len(),
            other_resources = resources.other_resources,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "fetched ingestion resources and identity token"
        );
        if let Ok(mut current) = self.current.write() {
            *current = Some(snapshot);
        }
    }
}
