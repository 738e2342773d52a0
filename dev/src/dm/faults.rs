//! Fault injection: a cloneable handle shared by the test and the emulator's handlers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::server::{Routes, Server};
use crate::error::{Error, Result};

/// How a storage account is broken in the resources the DM hands out.
///
/// Every mode but `BadSignature` points the account's URLs (queues, container, table) at
/// the emulator's fake storage listener, same `/<account>/<name>` path and SAS query.
/// That listener acts on the mode the account has when a request arrives, and counts
/// requests per account ([`crate::dm::DmEmulator::fake_storage_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BreakMode {
    /// Every request is answered `503 ServerBusy` (storage error XML).
    ServerBusy,
    /// Queue URLs point at Azurite but carry a wrong `sig`: Azurite answers `403 AuthenticationFailed`.
    BadSignature,
    /// The request is read, then never answered: the connection stays open until the
    /// client closes it (its timeout).
    Hang,
    /// The request is read, then the connection is reset (TCP RST) without an answer;
    /// nothing is enqueued.
    Reset,
    /// A Put Message is really enqueued into the Azurite queue of the same account and
    /// name, then the connection is reset without an answer: the message was accepted but
    /// the answer was lost. Other requests are just reset.
    ResetAfterEnqueue,
}

/// A v2 REST endpoint, for the faults that name one ([`Faults::push_rest_v2_statuses`],
/// [`Faults::set_rest_v2_delay`], [`Faults::lose_rest_v2_answers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestV2Endpoint {
    /// `GET /v1/rest/ingestion/configuration`.
    Configuration,
    /// `POST /v1/rest/ingestion/queued/{db}/{table}`.
    Queued,
    /// `GET /v1/rest/ingestion/queued/{db}/{table}/{operationId}`.
    Status,
}

#[derive(Debug)]
pub(crate) struct FaultState {
    statuses: VecDeque<(u16, Option<u64>)>,
    rest_v2_statuses: HashMap<RestV2Endpoint, VecDeque<(u16, Option<u64>)>>,
    rest_v2_delays: HashMap<RestV2Endpoint, Duration>,
    rest_v2_lost_answers: HashMap<RestV2Endpoint, usize>,
    delay: Duration,
    down: bool,
    broken: HashMap<String, BreakMode>,
    sas_lifetime: Duration,
    token_lifetime: Duration,
    token_failure: Option<u16>,
    token_delay: Duration,
    oversized_answers: Option<usize>,
    ingest_delay: Duration,
}

/// The DM listener, restartable on the same port.
struct DmSwitch {
    rt: Handle,
    port: u16,
    routes: Routes,
    server: Option<Server>,
}

struct Inner {
    state: Mutex<FaultState>,
    defaults: (Duration, Duration),
    dm: Mutex<Option<DmSwitch>>,
}

/// Cloneable fault-injection handle (see [`crate::dm::DmEmulator::faults`]).
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("state", &*self.state())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not wedge the emulator: ignore poisoning.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Faults {
    pub(crate) fn new(sas_lifetime: Duration, token_lifetime: Duration) -> Self {
        Faults {
            inner: Arc::new(Inner {
                state: Mutex::new(FaultState {
                    statuses: VecDeque::new(),
                    rest_v2_statuses: HashMap::new(),
                    rest_v2_delays: HashMap::new(),
                    rest_v2_lost_answers: HashMap::new(),
                    delay: Duration::ZERO,
                    down: false,
                    broken: HashMap::new(),
                    sas_lifetime,
                    token_lifetime,
                    token_failure: None,
                    token_delay: Duration::ZERO,
                    oversized_answers: None,
                    ingest_delay: Duration::ZERO,
                }),
                defaults: (sas_lifetime, token_lifetime),
                dm: Mutex::new(None),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.inner.state)
    }

    pub(crate) fn attach_dm(&self, rt: Handle, server: Server, routes: Routes) {
        *lock(&self.inner.dm) = Some(DmSwitch {
            rt,
            port: server.port(),
            routes,
            server: Some(server),
        });
    }

    pub(crate) fn detach_dm(&self) {
        lock(&self.inner.dm).take();
    }

    /// The next `statuses.len()` authenticated mgmt requests (`POST /v1/rest/mgmt`, the v1
    /// commands) answer these statuses (with `Retry-After: <secs>` when given) instead of the real
    /// answer. v2 endpoints are not affected: [`Faults::push_rest_v2_statuses`] names one, so a
    /// test says which call of which protocol fails.
    pub fn push_statuses(&self, statuses: &[(u16, Option<u64>)]) {
        self.state().statuses.extend(statuses.iter().copied());
    }

    /// Injected statuses not consumed yet.
    pub fn pending_statuses(&self) -> usize {
        self.state().statuses.len()
    }

    pub(crate) fn next_status(&self) -> Option<(u16, Option<u64>)> {
        self.state().statuses.pop_front()
    }

    /// Like [`Faults::push_statuses`] for one v2 REST endpoint: its next `statuses.len()`
    /// authenticated requests answer these statuses (with `Retry-After: <secs>` when given) in
    /// the Kusto error shape (429: throttled; others: a service error) and do nothing else (a
    /// queued POST enqueues nothing). Push many to make a fault outlast a request.
    pub fn push_rest_v2_statuses(&self, endpoint: RestV2Endpoint, statuses: &[(u16, Option<u64>)]) {
        self.state()
            .rest_v2_statuses
            .entry(endpoint)
            .or_default()
            .extend(statuses.iter().copied());
    }

    /// Statuses injected for `endpoint` and not consumed yet.
    pub fn pending_rest_v2_statuses(&self, endpoint: RestV2Endpoint) -> usize {
        self.state()
            .rest_v2_statuses
            .get(&endpoint)
            .map_or(0, VecDeque::len)
    }

    /// Drops the statuses still injected for `endpoint`: it answers normally again.
    pub fn clear_rest_v2_statuses(&self, endpoint: RestV2Endpoint) {
        self.state().rest_v2_statuses.remove(&endpoint);
    }

    pub(crate) fn next_rest_v2_status(
        &self,
        endpoint: RestV2Endpoint,
    ) -> Option<(u16, Option<u64>)> {
        self.state()
            .rest_v2_statuses
            .get_mut(&endpoint)
            .and_then(VecDeque::pop_front)
    }

    /// One v2 endpoint is slow: its requests are read, then wait `delay` (on top of
    /// [`Faults::set_delay`]) before they are acted on and answered; the other endpoints answer
    /// at once. A delay longer than the client waits is a hung endpoint (the client gives up,
    /// the emulator acts on the request when the delay is over). Zero clears it.
    pub fn set_rest_v2_delay(&self, endpoint: RestV2Endpoint, delay: Duration) {
        let mut state = self.state();
        if delay.is_zero() {
            state.rest_v2_delays.remove(&endpoint);
        } else {
            state.rest_v2_delays.insert(endpoint, delay);
        }
    }

    pub fn rest_v2_delay(&self, endpoint: RestV2Endpoint) -> Duration {
        self.state()
            .rest_v2_delays
            .get(&endpoint)
            .copied()
            .unwrap_or_default()
    }

    /// The next `count` authenticated requests to `endpoint` are acted on as usual (a queued POST
    /// enqueues its blobs), then their connection is closed without an answer: the client sees
    /// the connection drop after it sent the request, and cannot know what the DM did. Logged
    /// with `answer_lost`. Only requests the emulator acts on count: not those answered 503 (down),
    /// 401 or an injected status ([`Faults::push_rest_v2_statuses`]).
    pub fn lose_rest_v2_answers(&self, endpoint: RestV2Endpoint, count: usize) {
        *self
            .state()
            .rest_v2_lost_answers
            .entry(endpoint)
            .or_default() += count;
    }

    /// Whether this answer of `endpoint` is to be lost (and one fewer is).
    pub(crate) fn take_lost_answer(&self, endpoint: RestV2Endpoint) -> bool {
        let mut state = self.state();
        match state.rest_v2_lost_answers.get_mut(&endpoint) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Delay applied before answering every mgmt request and every v2 REST request.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    pub fn delay(&self) -> Duration {
        self.state().delay
    }

    /// While down, every mgmt and v2 REST request gets 503 (no auth check; mgmt requests are not
    /// counted, v2 requests are logged with their 503).
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    pub fn is_down(&self) -> bool {
        self.state().down
    }

    /// Break the resources of one storage account (see [`BreakMode`]).
    pub fn break_account(&self, account: &str, mode: BreakMode) {
        self.state().broken.insert(account.to_string(), mode);
    }

    pub fn heal_account(&self, account: &str) {
        self.state().broken.remove(account);
    }

    pub fn broken(&self, account: &str) -> Option<BreakMode> {
        self.state().broken.get(account).copied()
    }

    /// Lifetime (`se - now`) of the SAS handed out from now on, e.g. 2 s to test expiry.
    pub fn set_sas_lifetime(&self, lifetime: Duration) {
        self.state().sas_lifetime = lifetime;
    }

    pub fn sas_lifetime(&self) -> Duration {
        self.state().sas_lifetime
    }

    /// Lifetime of the tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().token_lifetime = lifetime;
    }

    pub fn token_lifetime(&self) -> Duration {
        self.state().token_lifetime
    }

    /// `Some(status)`: the token endpoint answers that status with an error JSON.
    pub fn fail_token_endpoint(&self, status: Option<u16>) {
        self.state().token_failure = status;
    }

    pub fn token_failure(&self) -> Option<u16> {
        self.state().token_failure
    }

    /// Delay applied before answering every token endpoint request (like [`Faults::set_delay`]
    /// for the DM).
    pub fn set_token_delay(&self, delay: Duration) {
        self.state().token_delay = delay;
    }

    pub fn token_delay(&self) -> Duration {
        self.state().token_delay
    }

    /// `Some(bytes)`: the answers that hand out resources, and every successful v2 answer, are
    /// padded to at least `bytes` bytes, streamed chunked without `Content-Length`:
    /// `.get ingestion resources` (v1) with rows of resource type
    /// [`crate::dm::tables::PADDING_RESOURCE_TYPE`], the v2 configuration GET, queued POST (after
    /// it enqueued its blobs) and status GET with a leading `kustoDevPadding` string member (both
    /// ignored by clients that read that far). `None` restores normal answers.
    pub fn set_oversized_answers(&self, bytes: Option<usize>) {
        self.state().oversized_answers = bytes;
    }

    pub fn oversized_answers(&self) -> Option<usize> {
        self.state().oversized_answers
    }

    /// Slow ingestion: the ingestion worker waits this long before processing each message
    /// (messages stay invisible meanwhile).
    pub fn set_ingest_delay(&self, delay: Duration) {
        self.state().ingest_delay = delay;
    }

    pub fn ingest_delay(&self) -> Duration {
        self.state().ingest_delay
    }

    /// Clears every fault and restores the configured lifetimes (does not restart the DM).
    pub fn reset(&self) {
        let (sas, token) = self.inner.defaults;
        let mut s = self.state();
        s.statuses.clear();
        s.rest_v2_statuses.clear();
        s.rest_v2_delays.clear();
        s.rest_v2_lost_answers.clear();
        s.delay = Duration::ZERO;
        s.down = false;
        s.broken.clear();
        s.sas_lifetime = sas;
        s.token_lifetime = token;
        s.token_failure = None;
        s.token_delay = Duration::ZERO;
        s.oversized_answers = None;
        s.ingest_delay = Duration::ZERO;
    }

    /// Closes the DM listener: new connections are refused, idle keep-alive
    /// connections are closed. The token endpoint stays up. Blocks until refused.
    pub fn stop_dm(&self) -> Result<()> {
        let server = {
            let mut dm = lock(&self.inner.dm);
            let Some(sw) = dm.as_mut() else {
                return Err(Error::Emulator("DM emulator is shut down".into()));
            };
            sw.server.take()
        };
        match server {
            Some(s) => s.stop(),
            None => Ok(()),
        }
    }

    /// Re-opens the DM listener on the same port. While it was closed, a connection from this
    /// machine may have been given the port as its own: binding is retried for up to 5 s.
    pub fn start_dm(&self) -> Result<()> {
        let mut dm = lock(&self.inner.dm);
        let Some(sw) = dm.as_mut() else {
            return Err(Error::Emulator("DM emulator is shut down".into()));
        };
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while sw.server.is_none() {
            match Server::bind(&sw.rt, sw.port, sw.routes.clone()) {
                Ok(server) => sw.server = Some(server),
                Err(_) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Whether the DM listener is open.
    pub fn dm_running(&self) -> bool {
        lock(&self.inner.dm)
            .as_ref()
            .is_some_and(|sw| sw.server.is_some())
    }

    /// Snapshot for the control API.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let running = self.dm_running();
        let s = self.state();
        let rest_v2: serde_json::Map<String, serde_json::Value> = s
            .rest_v2_statuses
            .iter()
            .map(|(endpoint, q)| {
                let q = q.iter().map(|(st, ra)| serde_json::json!([st, ra]));
                (format!("{endpoint:?}"), q.collect())
            })
            .collect();
        let by_endpoint = |name: RestV2Endpoint| format!("{name:?}");
        let rest_v2_delays: serde_json::Map<String, serde_json::Value> = s
            .rest_v2_delays
            .iter()
            .map(|(e, d)| (by_endpoint(*e), (d.as_millis() as u64).into()))
            .collect();
        let rest_v2_lost: serde_json::Map<String, serde_json::Value> = s
            .rest_v2_lost_answers
            .iter()
            .map(|(e, n)| (by_endpoint(*e), (*n).into()))
            .collect();
        serde_json::json!({
            "rest_v2_delay_ms": rest_v2_delays,
            "lost_rest_v2_answers": rest_v2_lost,
            "pending_statuses": s.statuses.iter().map(|(st, ra)| serde_json::json!([st, ra])).collect::<Vec<_>>(),
            "pending_rest_v2_statuses": rest_v2,
            "delay_ms": s.delay.as_millis() as u64,
            "down": s.down,
            "dm_running": running,
            "broken": s.broken,
            "sas_lifetime_secs": s.sas_lifetime.as_secs_f64(),
            "token_lifetime_secs": s.token_lifetime.as_secs_f64(),
            "token_failure": s.token_failure,
            "token_delay_ms": s.token_delay.as_millis() as u64,
            "oversized_answers": s.oversized_answers,
            "ingest_delay_ms": s.ingest_delay.as_millis() as u64,
        })
    }
}
