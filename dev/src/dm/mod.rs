//! A local Kusto Data Management endpoint for queued ingestion, backed by Azurite.
//!
//! Three loopback listeners, served from a runtime owned by the emulator (so it works
//! from any test runtime, or none):
//! * DM: `POST /v1/rest/mgmt`, `POST /v1/rest/query` (`T | count`), the queued-ingestion REST
//!   API v2 (`/v1/rest/ingestion/…`, see [`RestV2Config`]) (+ `/_emulator/…` control API) — can
//!   be stopped/restarted;
//! * identity: `GET /msi/token` (+ `/_emulator/…`) — stays up while the DM is stopped;
//! * fake storage: null queue and the endpoint of accounts broken with
//!   `ServerBusy`/`Hang`/`Reset`/`ResetAfterEnqueue` (a minimal HTTP/1.1 server, see `http1`).
//!
//! With `EmulatorConfig::ingest` a background worker also consumes the ingestion queues and
//! ingests into in-memory tables (see [`ingest`]).

mod control;
mod fake_storage;
mod faults;
mod http1;
pub mod ingest;
mod mgmt;
mod query;
mod reply;
mod rest_v2;
mod server;
mod state;
pub mod tables;
mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use warp::Filter as _;
use warp::http::{HeaderMap, Method};

pub use faults::{BreakMode, Faults, RestV2Endpoint};
pub use ingest::{Catalog, FailureStatus, IngestionOutcome, IngestionStatus, Report};
pub use rest_v2::{RestV2Config, RestV2Request};
pub use state::{FakeStorageCounts, MgmtRequest, TokenRequest};

use crate::azurite::free_ports;
use crate::error::{Error, Result};
use crate::storage::AzuriteHandle;
use server::{Routes, Server};
use state::{Layout, Log, State, normalize_audience, normalize_command};

/// Audiences the real DM is known to accept (reference §2.1); the emulator's own
/// DM URL is always accepted as well.
pub const DEFAULT_AUDIENCES: [&str; 3] = [
    "https://kusto.kusto.windows.net",
    "https://api.kusto.windows.net",
    "https://help.kusto.windows.net",
];

/// Emulator configuration; `EmulatorConfig::default()` is what tests normally want.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Storage accounts to spread the queues over (at least two). Empty = the first
    /// two accounts of the Azurite instance.
    pub accounts: Vec<String>,
    /// Ready-for-aggregation queues per account (default 2).
    pub queues_per_account: usize,
    /// Prefix of every queue/container/table name; unique per instance by default
    /// (`rfa` + 8 hex chars) so emulators sharing one Azurite never see each other's messages.
    /// Lowercase letters, digits and single hyphens, at most 30 chars.
    pub queue_prefix: String,
    /// SAS lifetime of the resources handed out (default 12 h, like the real DM).
    pub sas_lifetime: Duration,
    /// Lifetime of tokens from the identity endpoint (default 1 h).
    pub token_lifetime: Duration,
    /// Token audiences (`resource`) the DM accepts.
    pub accepted_audiences: Vec<String>,
    /// Point the ready-for-aggregation queues at the emulator's null queue (benchmarks).
    pub null_queue: bool,
    /// Secret expected in `X-IDENTITY-HEADER`; `None` = random.
    pub identity_header: Option<String>,
    /// Fixed ports (0 = any free port).
    pub dm_port: u16,
    pub identity_port: u16,
    pub storage_port: u16,
    /// Run the ingestion worker: consume the ready-for-aggregation queues and ingest like the
    /// DM (default `false`, so tests can read the queued messages themselves).
    pub ingest: bool,
    /// Databases and tables the worker accepts; `None` (default) accepts any and creates a
    /// table on its first ingestion.
    pub catalog: Option<Catalog>,
    /// The queued-ingestion REST API (v2): whether it exists, which method the configuration
    /// prefers, its batch limit and refresh interval.
    pub rest_v2: RestV2Config,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        EmulatorConfig {
            accounts: Vec::new(),
            queues_per_account: 2,
            queue_prefix: format!("rfa{}", &id[..8]),
            sas_lifetime: Duration::from_secs(12 * 3600),
            token_lifetime: Duration::from_secs(3600),
            accepted_audiences: DEFAULT_AUDIENCES.iter().map(|s| s.to_string()).collect(),
            null_queue: false,
            identity_header: None,
            dm_port: 0,
            identity_port: 0,
            storage_port: 0,
            ingest: false,
            catalog: None,
            rest_v2: RestV2Config::default(),
        }
    }
}

/// A message received from an ingestion queue.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub account: String,
    pub queue: String,
    /// Raw `MessageText` (base64 of the JSON for Kusto clients).
    pub text: String,
    /// `text` base64-decoded and parsed as JSON, when that works.
    pub json: Option<serde_json::Value>,
}

/// The running emulator. Dropping it closes all listeners.
pub struct DmEmulator {
    state: Arc<State>,
    faults: Faults,
    servers: Mutex<Vec<Server>>,
    fake_storage: Option<http1::Listener>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for DmEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmEmulator")
            .field("url", &self.state.dm_url)
            .field("identity_endpoint", &self.state.identity_url)
            .field("queues", &self.state.layout.ingestion_queues)
            .finish_non_exhaustive()
    }
}

fn validate_prefix(p: &str) -> Result<()> {
    let ok = !p.is_empty()
        && p.len() <= 30
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && !p.ends_with('-')
        && !p.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "queue_prefix {p:?} must be 1-30 chars of lowercase letters, digits and single hyphens"
        )))
    }
}

#[derive(Clone, Copy)]
enum Listener {
    Dm,
    Identity,
}

fn routes(state: Arc<State>, which: Listener) -> Routes {
    warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  body: bytes::Bytes| {
                let state = state.clone();
                async move {
                    let path = path.as_str();
                    match which {
                        _ if path.starts_with("/_emulator") => {
                            control::handle(state, &method, path, body).await
                        }
                        Listener::Dm if path == "/v1/rest/mgmt" && method == Method::POST => {
                            mgmt::handle(state, headers, body).await
                        }
                        Listener::Dm if path == "/v1/rest/query" && method == Method::POST => {
                            query::handle(state, headers, body).await
                        }
                        Listener::Dm if state.rest_v2.enabled => {
                            match rest_v2::route(
                                path,
                                method == Method::GET,
                                method == Method::POST,
                            ) {
                                Some(route) => {
                                    rest_v2::handle(
                                        state,
                                        route,
                                        method.as_str(),
                                        path,
                                        &query,
                                        headers,
                                        body,
                                    )
                                    .await
                                }
                                None => reply::not_found(&format!("{method} {path}")),
                            }
                        }
                        Listener::Identity if path == "/msi/token" && method == Method::GET => {
                            token::handle(state, &query, &headers).await
                        }
                        _ => reply::not_found(&format!("{method} {path}")),
                    }
                }
            },
        )
        .boxed()
}

impl DmEmulator {
    /// Creates the queues/containers/table in Azurite, then opens the listeners.
    pub async fn start(azurite: &AzuriteHandle, config: EmulatorConfig) -> Result<DmEmulator> {
        let accounts: Vec<String> = if config.accounts.is_empty() {
            azurite.accounts().into_iter().take(2).collect()
        } else {
            config.accounts.clone()
        };
        if accounts.len() < 2 {
            return Err(Error::Config(format!(
                "the DM emulator spreads queues over at least two storage accounts, got {accounts:?}"
            )));
        }
        for a in &accounts {
            azurite.account_key(a)?;
        }
        if config.queues_per_account == 0 {
            return Err(Error::Config(
                "queues_per_account must be at least 1".into(),
            ));
        }
        let prefix = config.queue_prefix.clone();
        validate_prefix(&prefix)?;

        let layout =
            Self::provision(azurite, &accounts, &prefix, config.queues_per_account).await?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kusto-dm-emulator")
            .enable_all()
            .build()
            .map_err(|e| Error::io("building the emulator runtime", e))?;

        let bind = |port: u16| {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .map_err(|e| Error::io(format!("binding 127.0.0.1:{port}"), e))
        };
        let dm_listener = bind(config.dm_port)?;
        let id_listener = bind(config.identity_port)?;
        let st_listener = bind(config.storage_port)?;
        let port = |l: &std::net::TcpListener| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| Error::io("reading listener address", e))
        };
        let dm_url = format!("http://127.0.0.1:{}", port(&dm_listener)?);
        let identity_url = format!("http://127.0.0.1:{}/msi/token", port(&id_listener)?);
        let storage_url = format!("http://127.0.0.1:{}", port(&st_listener)?);

        let mut audiences: Vec<String> = config
            .accepted_audiences
            .iter()
            .map(|a| normalize_audience(a))
            .collect();
        audiences.push(normalize_audience(&dm_url));

        let faults = Faults::new(config.sas_lifetime, config.token_lifetime);
        let identity_header = config
            .identity_header
            .clone()
            .unwrap_or_else(|| format!("emu-identity-{}", uuid::Uuid::new_v4().simple()));
        let state = Arc::new(State {
            dm_url,
            identity_url,
            storage_url,
            identity_header,
            audiences,
            storage: azurite.clone(),
            layout,
            null_queue: config.null_queue,
            faults: faults.clone(),
            log: Mutex::new(Log::default()),
            null_count: AtomicU64::new(0),
            busy_count: AtomicU64::new(0),
            started: Instant::now(),
            trusted_issuers: Mutex::new(Vec::new()),
            ingest_worker: config.ingest,
            ingest: Mutex::new(ingest::Store::new(config.catalog.clone())),
            rest_v2: config.rest_v2.clone(),
            v2: Mutex::new(rest_v2::V2State::default()),
            v2_next_queue: std::sync::atomic::AtomicUsize::new(0),
        });

        let rt = runtime.handle().clone();
        let dm_routes = routes(state.clone(), Listener::Dm);
        let dm_server = Server::start(&rt, dm_listener, dm_routes.clone())?;
        faults.attach_dm(rt.clone(), dm_server, dm_routes);
        let servers = vec![Server::start(
            &rt,
            id_listener,
            routes(state.clone(), Listener::Identity),
        )?];
        let storage_state = state.clone();
        let fake_storage = http1::serve(&rt, st_listener, move |req| {
            fake_storage::handle(storage_state.clone(), req)
        })?;
        if config.ingest {
            ingest::spawn_worker(&rt, state.clone());
        }
        Ok(DmEmulator {
            state,
            faults,
            servers: Mutex::new(servers),
            fake_storage: Some(fake_storage),
            runtime: Some(runtime),
        })
    }

    async fn provision(
        az: &AzuriteHandle,
        accounts: &[String],
        prefix: &str,
        per_account: usize,
    ) -> Result<Layout> {
        // Interleave accounts so the first queues already span several accounts.
        let ingestion_queues: Vec<(String, String)> = (0..per_account)
            .flat_map(|_| accounts.iter())
            .enumerate()
            .map(|(n, a)| {
                (
                    a.clone(),
                    format!("{prefix}-readyforaggregation-secured-{n}"),
                )
            })
            .collect();
        let first = accounts[0].clone();
        let failed_queue = (first.clone(), format!("{prefix}-failedingestions"));
        let successful_queue = (first.clone(), format!("{prefix}-successfulingestions"));
        let today = time::OffsetDateTime::now_utc().date();
        let day = format!(
            "{:04}{:02}{:02}",
            today.year(),
            u8::from(today.month()),
            today.day()
        );
        let temp_containers: Vec<(String, String)> = accounts
            .iter()
            .map(|a| (a.clone(), format!("{day}-ingestdata-{prefix}-0")))
            .collect();
        let table: String = prefix.chars().filter(char::is_ascii_alphanumeric).collect();
        let status_table = (first, format!("ingestionsstatus{table}"));

        let queues = ingestion_queues
            .iter()
            .chain([&failed_queue, &successful_queue]);
        futures::future::try_join_all(queues.map(|(a, q)| az.create_queue(a, q))).await?;
        futures::future::try_join_all(
            temp_containers
                .iter()
                .map(|(a, c)| az.create_container(a, c)),
        )
        .await?;
        az.create_table(&status_table.0, &status_table.1).await?;
        Ok(Layout {
            ingestion_queues,
            failed_queue,
            successful_queue,
            temp_containers,
            status_table,
        })
    }

    // ----- settings for a handler -------------------------------------------------

    /// DM base URL, `http://127.0.0.1:<port>` (use as `KUSTO_INGEST_URI`).
    pub fn url(&self) -> &str {
        &self.state.dm_url
    }

    /// `http://127.0.0.1:<port>/msi/token` (use as `IDENTITY_ENDPOINT`).
    pub fn identity_endpoint(&self) -> &str {
        &self.state.identity_url
    }

    /// Secret for `IDENTITY_HEADER`.
    pub fn identity_header(&self) -> &str {
        &self.state.identity_header
    }

    /// Base URL of the `/_emulator` control API on the identity listener (always up).
    pub fn control_url(&self) -> String {
        self.state
            .identity_url
            .trim_end_matches("/msi/token")
            .to_string()
            + "/_emulator"
    }

    /// Base URL of the fake storage listener (null queue, and the endpoint of accounts
    /// broken with every [`BreakMode`] but `BadSignature`).
    pub fn fake_storage_url(&self) -> &str {
        &self.state.storage_url
    }

    /// `[("KUSTO_INGEST_URI", …), ("IDENTITY_ENDPOINT", …), ("IDENTITY_HEADER", …)]`.
    pub fn handler_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUSTO_INGEST_URI".into(), self.url().into()),
            ("IDENTITY_ENDPOINT".into(), self.identity_endpoint().into()),
            ("IDENTITY_HEADER".into(), self.identity_header().into()),
        ]
    }

    // ----- layout -----------------------------------------------------------------

    /// The Azurite instance the resources live in.
    pub fn azurite(&self) -> &AzuriteHandle {
        &self.state.storage
    }

    /// `(account, queue)` of every ready-for-aggregation queue.
    pub fn ingestion_queues(&self) -> Vec<(String, String)> {
        self.state.layout.ingestion_queues.clone()
    }

    /// `(account, queue)` of the failed-ingestions queue.
    pub fn failed_queue(&self) -> (String, String) {
        self.state.layout.failed_queue.clone()
    }

    /// `(account, queue)` of the successful-ingestions queue.
    pub fn successful_queue(&self) -> (String, String) {
        self.state.layout.successful_queue.clone()
    }

    /// `(account, container)` of every TempStorage container.
    pub fn temp_containers(&self) -> Vec<(String, String)> {
        self.state.layout.temp_containers.clone()
    }

    /// `(account, table)` of the ingestion status table.
    pub fn status_table(&self) -> (String, String) {
        self.state.layout.status_table.clone()
    }

    /// The rows `.get ingestion resources` would answer right now.
    pub fn ingestion_resources(&self) -> Vec<(String, String)> {
        mgmt::resource_rows(&self.state)
    }

    /// Dequeues every message of every ingestion queue (base64 JSON decoded when possible).
    /// With the ingestion worker on, it competes with the worker for the messages.
    pub async fn receive_ingestion_messages(&self) -> Result<Vec<ReceivedMessage>> {
        let mut out = Vec::new();
        for (account, queue) in &self.state.layout.ingestion_queues {
            for text in self.state.storage.receive_all(account, queue).await? {
                let json = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                out.push(ReceivedMessage {
                    account: account.clone(),
                    queue: queue.clone(),
                    text,
                    json,
                });
            }
        }
        Ok(out)
    }

    // ----- tokens and logs --------------------------------------------------------

    /// Issues a token directly (as if requested from the identity endpoint, not logged).
    pub fn issue_token(&self, resource: &str) -> String {
        self.state.issue_token(resource).0
    }

    /// Every `POST /v1/rest/mgmt` so far.
    pub fn mgmt_requests(&self) -> Vec<MgmtRequest> {
        self.state.log().mgmt.clone()
    }

    /// Requests for `command` (normalized: case, whitespace) that reached command
    /// handling — authenticated, parseable body — whatever their status (injected
    /// faults included; 401s, malformed bodies and "down" 503s excluded).
    pub fn command_count(&self, command: &str) -> usize {
        let wanted = normalize_command(command);
        self.state
            .log()
            .mgmt
            .iter()
            .filter(|r| r.handled && normalize_command(&r.command) == wanted)
            .count()
    }

    /// Every token endpoint request so far.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.log().token.clone()
    }

    /// `AuthorizationContext` values handed out by `.get kusto identity token`.
    pub fn issued_authorization_contexts(&self) -> Vec<String> {
        self.state.log().authorization_contexts.clone()
    }

    /// A new `AuthorizationContext`, as `.get kusto identity token` would answer (not logged
    /// as a request); the ingestion worker accepts messages carrying it.
    pub fn issue_authorization_context(&self) -> String {
        self.state.issue_authorization_context()
    }

    // ----- ingestion (EmulatorConfig::ingest) -------------------------------------

    /// Whether the ingestion worker runs.
    pub fn ingest_worker(&self) -> bool {
        self.state.ingest_worker
    }

    /// Rows ingested into `database.table` (0 for a table that does not exist).
    pub fn row_count(&self, database: &str, table: &str) -> u64 {
        self.state.ingest().row_count(database, table).unwrap_or(0)
    }

    /// The rows of `database.table`: JSON arrays of strings for separated formats and
    /// `txt`/`raw`, the JSON values themselves for `json`/`multijson`.
    pub fn rows(&self, database: &str, table: &str) -> Vec<serde_json::Value> {
        self.state.ingest().rows(database, table)
    }

    /// `{"db.table": rows}` for every table (catalog tables included when empty).
    pub fn table_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.state.ingest().counts()
    }

    /// Every message the worker processed, in the order it finished them.
    pub fn ingestion_outcomes(&self) -> Vec<IngestionOutcome> {
        self.state.ingest().outcomes().to_vec()
    }

    /// The latest outcome for message `Id` `source_id`, if processed.
    pub fn ingestion_outcome(&self, source_id: &str) -> Option<IngestionOutcome> {
        let store = self.state.ingest();
        store
            .outcomes()
            .iter()
            .rev()
            .find(|o| o.source_id == source_id)
            .cloned()
    }

    /// Waits (polling every 20 ms, on the caller's tokio runtime) until the worker has
    /// processed message `source_id`; `None` after `timeout`.
    pub async fn wait_for_outcome(
        &self,
        source_id: &str,
        timeout: Duration,
    ) -> Option<IngestionOutcome> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(o) = self.ingestion_outcome(source_id) {
                return Some(o);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces the catalog (see [`EmulatorConfig::catalog`]): listed tables keep their rows,
    /// unlisted ones are dropped; `None` accepts any database and table again. Removing a
    /// table is the "missing table" fault.
    pub fn set_catalog(&self, catalog: Option<Catalog>) {
        self.state.ingest().set_catalog(catalog);
    }

    // ----- the v2 REST API (EmulatorConfig::rest_v2) -------------------------------

    /// Every v2 request so far (configuration, queued POSTs, status reads).
    pub fn rest_v2_requests(&self) -> Vec<RestV2Request> {
        self.state.v2().requests.clone()
    }

    /// From now on, a queued POST naming a blob whose URL contains `pattern` answers `status`
    /// (400 with a bad-request body, any other with a service-error body) and enqueues nothing:
    /// one batch of a request fails while the others go through.
    pub fn fail_rest_v2_blobs(&self, pattern: &str, status: u16) {
        self.state.v2().poisoned.push((pattern.to_string(), status));
    }

    /// Messages accepted by the null queue.
    pub fn null_queue_count(&self) -> u64 {
        self.state.null_count.load(Ordering::Relaxed)
    }

    /// Requests answered `503 ServerBusy` by the fake storage endpoint.
    pub fn server_busy_count(&self) -> u64 {
        self.state.busy_count.load(Ordering::Relaxed)
    }

    /// What the fake storage endpoint did with the requests for `account` (all zero
    /// when it received none): one counter per [`BreakMode`], plus messages enqueued.
    pub fn fake_storage_counts(&self, account: &str) -> FakeStorageCounts {
        self.state
            .log()
            .fake_storage
            .get(account)
            .copied()
            .unwrap_or_default()
    }

    /// Requests for `account` the fake storage endpoint received while it was broken,
    /// all modes together (`fake_storage_counts(account).requests()`); a request counts
    /// once it has been read completely, before the fault acts.
    pub fn fake_storage_requests(&self, account: &str) -> u64 {
        self.fake_storage_counts(account).requests()
    }

    /// Clears the request logs and counters (not the faults).
    pub fn clear_logs(&self) {
        self.state.clear_logs();
    }

    // ----- faults -----------------------------------------------------------------

    /// Cloneable fault-injection handle.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Closes the DM listener (connection refused); the token endpoint stays up.
    pub fn stop_dm(&self) -> Result<()> {
        self.faults.stop_dm()
    }

    /// Accepts the tokens `issuer`'s identity endpoint hands out too, as two DMs of one tenant
    /// accept the same managed identity's tokens: a handler pointed at `issuer`'s identity
    /// endpoint can then use this DM as a second, allowlisted one.
    pub fn trust_tokens_of(&self, issuer: &DmEmulator) {
        self.state
            .trusted_issuers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(issuer.state.clone());
    }

    /// Re-opens the DM listener on the same port.
    pub fn start_dm(&self) -> Result<()> {
        self.faults.start_dm()
    }

    /// Closes all listeners now (also done on drop).
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        // Dropping the DM switch also breaks the Faults -> routes -> State -> Faults cycle.
        self.faults.detach_dm();
        self.fake_storage.take();
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping the emulator inside an async test is fine.
            rt.shutdown_background();
        }
    }
}

impl Drop for DmEmulator {
    fn drop(&mut self) {
        self.close();
    }
}

/// Free loopback ports, e.g. to give the binary fixed ports.
pub fn pick_free_ports(n: usize) -> Result<Vec<u16>> {
    free_ports(n)
}
