//! Settings, read once at start-up from app settings (environment variables). Every setting name
//! the handler reads is here; a bad value stops start-up with a message naming the setting.

use crate::authorization::{Names, Policy};
use crate::domain::{AllowedDms, DmEndpoint};
use crate::local::LocalBlobAccess;
use crate::properties::{Properties, PropertyBag};
use crate::routing::RouteTable;
use std::time::Duration;
use url::Url;

const PORT: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
const INGEST_URI: &str = "KUSTO_INGEST_URI";
const ALLOWED_INGEST_URIS: &str = "KUSTO_ALLOWED_INGEST_URIS";
const TOKEN_SCOPE: &str = "KUSTO_TOKEN_SCOPE";
const INGEST_METHOD: &str = "KUSTO_INGEST_METHOD";
const CLIENT_ID: &str = "AZURE_CLIENT_ID";
const MAX_BLOBS: &str = "INGEST_MAX_BLOBS";
const MAX_BODY_BYTES: &str = "INGEST_MAX_BODY_BYTES";
const MAX_CONCURRENCY: &str = "INGEST_MAX_CONCURRENCY";
const MAX_REQUESTS: &str = "INGEST_MAX_REQUESTS";
const DEFAULT_PROPERTIES: &str = "INGEST_DEFAULT_PROPERTIES";
const ROUTES: &str = "INGEST_ROUTES";
const READ_BLOB_METADATA: &str = "INGEST_READ_BLOB_METADATA";
const REQUEST_DEADLINE: &str = "INGEST_REQUEST_DEADLINE_SECONDS";
const EVENT_DEADLINE: &str = "INGEST_EVENT_DEADLINE_SECONDS";
const MAX_DATA_BYTES: &str = "INGEST_MAX_DATA_BYTES";
const DATA_DEADLINE: &str = "INGEST_DATA_DEADLINE_SECONDS";
const ALLOWED_TARGETS: &str = "INGEST_ALLOWED_TARGETS";
const ALLOWED_BLOB_SOURCES: &str = "INGEST_ALLOWED_BLOB_SOURCES";
const ALLOW_BLOB_CREDENTIALS: &str = "INGEST_ALLOW_BLOB_CREDENTIALS";
const CALLER_ROLES: &str = "INGEST_CALLER_ROLES";
const WORKER_THREADS: &str = "INGEST_WORKER_THREADS";
/// An account or container SAS (`sv=…&sig=…`) for reading blob metadata from a loopback storage
/// endpoint (Azurite); see [`crate::local`].
const LOCAL_BLOB_SAS: &str = "INGEST_LOCAL_BLOB_SAS";

/// A setting with a value the handler cannot use; the message says which value and why.
#[derive(Debug, thiserror::Error)]
#[error("setting {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

fn bad(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        message: message.into(),
    }
}

/// Which queued-ingestion protocol the handler speaks to a DM (`KUSTO_INGEST_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngestMethod {
    /// Per DM, what its configuration prefers (`preferredIngestionMethod`); v1 when the DM has
    /// no REST v2 API (404) or its configuration cannot be read.
    Auto,
    /// Ingestion resources and queues.
    V1,
    /// The queued-ingestion REST API.
    V2,
}

pub(crate) const DEFAULT_TOKEN_SCOPE: &str = "https://kusto.kusto.windows.net/.default";
pub(crate) const DEFAULT_MAX_BLOBS: usize = 5_000;
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
pub(crate) const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// As host.json's `extensions.http.maxConcurrentRequests`.
pub(crate) const DEFAULT_MAX_REQUESTS: usize = 64;
const DEFAULT_WORKER_THREADS: usize = 1;
const DEFAULT_PORT: u16 = 3000;
/// Well under the 230 s the Functions host gives an HTTP call (its front end's limit).
const DEFAULT_REQUEST_DEADLINE: usize = 60;
/// Under the 30 s Event Grid waits for a delivery before it redelivers.
const DEFAULT_EVENT_DEADLINE: usize = 25;
/// The Functions HTTP request limit.
pub(crate) const DEFAULT_MAX_DATA_BYTES: usize = 100 * 1024 * 1024;
/// A data upload streams its body: under the 230 s the Functions front end gives an HTTP call.
const DEFAULT_DATA_DEADLINE: usize = 200;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Port on 127.0.0.1 the Functions host talks to.
    pub(crate) port: u16,
    /// Every DM the app's token may be sent to, and the one used when a request names none.
    pub(crate) dms: AllowedDms,
    pub(crate) token_scope: String,
    pub(crate) ingest_method: IngestMethod,
    /// User-assigned managed identity; system-assigned when `None`.
    pub(crate) client_id: Option<String>,
    pub(crate) max_blobs: usize,
    pub(crate) max_body_bytes: usize,
    /// Queue posts in flight per DM, and blobs of one request in progress at once.
    pub(crate) max_concurrency: usize,
    /// Requests in flight at once; more are answered 503 with Retry-After.
    pub(crate) max_requests: usize,
    /// Ingestion properties applied under every request's own (`INGEST_DEFAULT_PROPERTIES`).
    pub(crate) default_properties: Properties,
    /// Event Grid routing rules.
    pub(crate) routes: RouteTable,
    /// Whether the Event Grid path reads blob metadata (one Get Blob Properties call per blob).
    pub(crate) read_blob_metadata: bool,
    /// How blob metadata is read on loopback storage in local runs.
    pub(crate) local_blob_access: LocalBlobAccess,
    /// How long `POST /api/ingest` may take, waits on the DM and the queues included.
    pub(crate) request_deadline: Duration,
    /// How long a `BlobCreated` invocation may take.
    pub(crate) event_deadline: Duration,
    /// Who may ingest what through `POST /api/ingest`.
    pub(crate) authorization: Policy,
    /// Largest data body of `POST /api/ingest/{database}/{table}`.
    pub(crate) max_data_bytes: u64,
    /// How long a data upload may take, its body included.
    pub(crate) data_deadline: Duration,
    /// Threads running the handler's tasks (see [`Settings::worker_threads`]).
    worker_threads: usize,
}

impl Settings {
    /// Worker threads of the runtime (`INGEST_WORKER_THREADS`, default 1). The handler waits on
    /// the network almost all the time; with a second worker every storage answer also woke the
    /// idle one (half the handler's system calls per queued blob against real storage, measured
    /// in BENCHMARKS.md), and a Functions instance's cores are shared with the host. More workers
    /// only help CPU-bound work: many concurrent data uploads (gzip) on a multi-core instance.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can supply them without touching the process
    /// environment. Empty values count as unset (ARM templates pass "" for optional settings).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Ok(Self {
            port: match get(PORT) {
                Some(v) => v
                    .parse::<u16>()
                    .map_err(|_| bad(PORT, format!("'{v}' is not a port number")))?,
                None => DEFAULT_PORT,
            },
            dms: allowed_dms(get(INGEST_URI), get(ALLOWED_INGEST_URIS))?,
            token_scope: token_scope(get(TOKEN_SCOPE))?,
            ingest_method: ingest_method(get(INGEST_METHOD))?,
            client_id: get(CLIENT_ID),
            max_blobs: positive(get(MAX_BLOBS), MAX_BLOBS, DEFAULT_MAX_BLOBS)?,
            max_body_bytes: positive(get(MAX_BODY_BYTES), MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES)?,
            max_concurrency: positive(
                get(MAX_CONCURRENCY),
                MAX_CONCURRENCY,
                DEFAULT_MAX_CONCURRENCY,
            )?,
            max_requests: positive(get(MAX_REQUESTS), MAX_REQUESTS, DEFAULT_MAX_REQUESTS)?,
            default_properties: default_properties(get(DEFAULT_PROPERTIES))?,
            routes: match get(ROUTES) {
                None => RouteTable::default(),
                Some(raw) => RouteTable::parse(&raw).map_err(|m| bad(ROUTES, m))?,
            },
            read_blob_metadata: flag(get(READ_BLOB_METADATA), READ_BLOB_METADATA)?,
            local_blob_access: LocalBlobAccess::new(get(LOCAL_BLOB_SAS).as_deref()),
            request_deadline: seconds(
                get(REQUEST_DEADLINE),
                REQUEST_DEADLINE,
                DEFAULT_REQUEST_DEADLINE,
            )?,
            event_deadline: seconds(get(EVENT_DEADLINE), EVENT_DEADLINE, DEFAULT_EVENT_DEADLINE)?,
            max_data_bytes: positive(get(MAX_DATA_BYTES), MAX_DATA_BYTES, DEFAULT_MAX_DATA_BYTES)?
                as u64,
            data_deadline: seconds(get(DATA_DEADLINE), DATA_DEADLINE, DEFAULT_DATA_DEADLINE)?,
            worker_threads: positive(get(WORKER_THREADS), WORKER_THREADS, DEFAULT_WORKER_THREADS)?,
            authorization: Policy::parse(
                Names {
                    targets: ALLOWED_TARGETS,
                    sources: ALLOWED_BLOB_SOURCES,
                    credentials: ALLOW_BLOB_CREDENTIALS,
                    roles: CALLER_ROLES,
                },
                get(ALLOWED_TARGETS).as_deref(),
                get(ALLOWED_BLOB_SOURCES).as_deref(),
                get(ALLOW_BLOB_CREDENTIALS)
                    .map(|v| flag(Some(v), ALLOW_BLOB_CREDENTIALS))
                    .transpose()?,
                get(CALLER_ROLES).as_deref(),
            )
            .map_err(|(name, message)| bad(name, message))?,
        })
    }
}

fn allowed_dms(default: Option<String>, others: Option<String>) -> Result<AllowedDms, ConfigError> {
    let default = default.ok_or_else(|| {
        bad(
            INGEST_URI,
            "is required: the Data Management endpoint, e.g. https://ingest-mycluster.westeurope.kusto.windows.net",
        )
    })?;
    let default = DmEndpoint::parse(&default).map_err(|m| bad(INGEST_URI, m))?;
    let others = others
        .iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| DmEndpoint::parse(item).map_err(|m| bad(ALLOWED_INGEST_URIS, m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AllowedDms::new(default, others))
}

fn token_scope(raw: Option<String>) -> Result<String, ConfigError> {
    let scope = raw.unwrap_or_else(|| DEFAULT_TOKEN_SCOPE.to_owned());
    match Url::parse(&scope) {
        Ok(_) => Ok(scope),
        Err(_) => Err(bad(
            TOKEN_SCOPE,
            format!("'{scope}' is not a URL-shaped AAD scope"),
        )),
    }
}

fn ingest_method(raw: Option<String>) -> Result<IngestMethod, ConfigError> {
    match raw.map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("auto") => Ok(IngestMethod::Auto),
        Some("v1") => Ok(IngestMethod::V1),
        Some("v2") => Ok(IngestMethod::V2),
        Some(v) => Err(bad(
            INGEST_METHOD,
            format!(
                "'{v}' is not an ingestion method: auto (follow each DM's preferredIngestionMethod), v1 (queues) or v2 (REST API)"
            ),
        )),
    }
}

fn default_properties(raw: Option<String>) -> Result<Properties, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Properties::default());
    };
    match serde_json::from_str::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(map)) => PropertyBag::from_map(map)
            .parse()
            .map_err(|e| bad(DEFAULT_PROPERTIES, e.to_string())),
        _ => Err(bad(
            DEFAULT_PROPERTIES,
            "must be a JSON object of ingestion properties",
        )),
    }
}

fn flag(raw: Option<String>, name: &'static str) -> Result<bool, ConfigError> {
    match raw.map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(v) => Err(bad(name, format!("'{v}' is not true or false"))),
    }
}

fn seconds(
    raw: Option<String>,
    name: &'static str,
    default: usize,
) -> Result<Duration, ConfigError> {
    positive(raw, name, default).map(|n| Duration::from_secs(n as u64))
}

fn positive(raw: Option<String>, name: &'static str, default: usize) -> Result<usize, ConfigError> {
    match raw {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(name, format!("'{v}' is not a positive integer"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn required_and_bad_settings_are_named() {
        assert_eq!(settings(&[]).unwrap_err().name, "KUSTO_INGEST_URI");
        let e = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            ("INGEST_MAX_BLOBS", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "INGEST_MAX_BLOBS");
        let e = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            (
                "KUSTO_ALLOWED_INGEST_URIS",
                "https://ok.kusto.windows.net, http://evil.example.com",
            ),
        ])
        .unwrap_err();
        assert_eq!(e.name, "KUSTO_ALLOWED_INGEST_URIS");
        let e = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            ("INGEST_DEFAULT_PROPERTIES", "{\"format\": \"xlsx\"}"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "INGEST_DEFAULT_PROPERTIES");
    }

    #[test]
    fn allowlist_always_contains_the_default() {
        let s = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            (
                "KUSTO_ALLOWED_INGEST_URIS",
                "https://ingest-b.kusto.windows.net,",
            ),
            ("INGEST_MAX_BLOBS", ""),
        ])
        .unwrap();
        assert_eq!(s.dms.len(), 2);
        assert_eq!(s.max_blobs, DEFAULT_MAX_BLOBS);
        assert_eq!(s.token_scope, DEFAULT_TOKEN_SCOPE);
        assert_eq!(s.ingest_method, IngestMethod::Auto);
        assert_eq!(s.worker_threads(), 1);
    }

    #[test]
    fn worker_threads_is_a_positive_count() {
        let with = |v: &str| {
            settings(&[
                ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
                ("INGEST_WORKER_THREADS", v),
            ])
        };
        assert_eq!(with("4").unwrap().worker_threads(), 4);
        assert_eq!(with("0").unwrap_err().name, "INGEST_WORKER_THREADS");
        assert_eq!(with("many").unwrap_err().name, "INGEST_WORKER_THREADS");
    }

    #[test]
    fn ingest_method() {
        let with = |v: &str| {
            settings(&[
                ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
                ("KUSTO_INGEST_METHOD", v),
            ])
        };
        assert_eq!(with("V2").unwrap().ingest_method, IngestMethod::V2);
        assert_eq!(with("v1").unwrap().ingest_method, IngestMethod::V1);
        assert_eq!(with("auto").unwrap().ingest_method, IngestMethod::Auto);
        assert_eq!(with("").unwrap().ingest_method, IngestMethod::Auto);
        let e = with("rest").unwrap_err();
        assert_eq!(e.name, "KUSTO_INGEST_METHOD");
        assert!(e.message.contains("'rest'"), "{}", e.message);
    }
}
