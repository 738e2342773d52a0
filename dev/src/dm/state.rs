//! State shared by the emulator's handlers and the test-facing accessors:
//! layout of the storage resources, issued tokens, request logs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::faults::Faults;
use super::ingest;
use crate::storage::AzuriteHandle;

/// One request to `POST /v1/rest/mgmt`, as seen by the emulator.
#[derive(Debug, Clone, Serialize)]
pub struct MgmtRequest {
    /// The `csl` text, trimmed (empty when the body was not valid JSON).
    pub command: String,
    /// The `db` field, if any.
    pub db: Option<String>,
    /// Status the emulator answered.
    pub status: u16,
    /// Whether an `Authorization` header was present (its value is never recorded).
    pub authorization_present: bool,
    /// The `x-ms-client-request-id` header.
    pub client_request_id: Option<String>,
    /// All request headers in arrival order, names lowercase; the `Authorization`
    /// value is replaced by `<redacted>`.
    pub headers: Vec<(String, String)>,
    /// Passed authentication with a parseable body, i.e. reached command handling
    /// (including requests answered by injected statuses). See `command_count`.
    pub handled: bool,
    /// When the request arrived.
    #[serde(skip)]
    pub at: Instant,
}

impl MgmtRequest {
    /// Value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Names of all headers sent (lowercase).
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// One request to the managed-identity token endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRequest {
    /// `resource` query parameter (the scope without `/.default`).
    pub resource: Option<String>,
    /// `client_id` query parameter (user-assigned identity).
    pub client_id: Option<String>,
    pub object_id: Option<String>,
    pub msi_res_id: Option<String>,
    pub api_version: Option<String>,
    /// `X-IDENTITY-HEADER` matched the emulator's secret.
    pub identity_header_ok: bool,
    /// `metadata: true` header present.
    pub metadata_header: bool,
    pub status: u16,
    #[serde(skip)]
    pub at: Instant,
}

/// What the fake storage listener did with the requests naming one account while it
/// was broken (see [`crate::BreakMode`]); null-queue messages are not counted here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FakeStorageCounts {
    /// Answered `503 ServerBusy` (mode `ServerBusy`, or a stale fake URL of a healed account).
    pub server_busy: u64,
    /// Read and never answered (mode `Hang`).
    pub hang: u64,
    /// Read, then reset without enqueuing (mode `Reset`).
    pub reset: u64,
    /// Received in mode `ResetAfterEnqueue` (whether or not the enqueue worked).
    pub reset_after_enqueue: u64,
    /// Messages really put into Azurite in mode `ResetAfterEnqueue`.
    pub enqueued: u64,
}

impl FakeStorageCounts {
    /// Requests received, all modes together (`enqueued` is part of `reset_after_enqueue`).
    pub fn requests(&self) -> u64 {
        self.server_busy + self.hang + self.reset + self.reset_after_enqueue
    }
}

/// A token issued by the token endpoint.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub resource: String,
    pub expires_at: Instant,
}

/// Storage resources the emulator created in Azurite.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub ingestion_queues: Vec<(String, String)>,
    pub failed_queue: (String, String),
    pub successful_queue: (String, String),
    pub temp_containers: Vec<(String, String)>,
    pub status_table: (String, String),
}

#[derive(Debug, Default)]
pub(crate) struct Log {
    pub mgmt: Vec<MgmtRequest>,
    pub token: Vec<TokenRequest>,
    pub tokens: HashMap<String, IssuedToken>,
    pub authorization_contexts: Vec<String>,
    /// Per account.
    pub fake_storage: HashMap<String, FakeStorageCounts>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub dm_url: String,
    pub identity_url: String,
    pub storage_url: String,
    pub identity_header: String,
    /// Normalized (see [`normalize_audience`]).
    pub audiences: Vec<String>,
    pub storage: AzuriteHandle,
    pub layout: Layout,
    pub null_queue: bool,
    pub faults: Faults,
    pub log: Mutex<Log>,
    pub null_count: AtomicU64,
    pub busy_count: AtomicU64,
    pub started: Instant,
    /// Other emulators whose identity endpoint's tokens this DM accepts too (a second DM of
    /// the same "tenant", for tests that need two DMs behind one managed identity).
    pub trusted_issuers: Mutex<Vec<Arc<State>>>,
    /// Whether the ingestion worker runs (`EmulatorConfig::ingest`).
    pub ingest_worker: bool,
    /// Catalog, ingested rows and ingestion outcomes.
    pub ingest: Mutex<ingest::Store>,
    /// The v2 REST API as configured (`EmulatorConfig::rest_v2`).
    pub rest_v2: super::rest_v2::RestV2Config,
    /// Tracked v2 operations, v2 request log, injected v2 failures.
    pub v2: Mutex<super::rest_v2::V2State>,
    /// Round-robin position over the ingestion queues for v2 blobs.
    pub v2_next_queue: std::sync::atomic::AtomicUsize,
}

impl State {
    pub(crate) fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn v2(&self) -> MutexGuard<'_, super::rest_v2::V2State> {
        self.v2.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn ingest(&self) -> MutexGuard<'_, ingest::Store> {
        self.ingest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new `AuthorizationContext` (`.get kusto identity token`), remembered so the
    /// ingestion worker accepts messages carrying it.
    pub(crate) fn issue_authorization_context(&self) -> String {
        let context = format!("emu-authz-{}", uuid::Uuid::new_v4());
        self.log().authorization_contexts.push(context.clone());
        context
    }

    /// Updates the fake storage counters of `account`.
    pub(crate) fn count_fake(&self, account: &str, update: impl FnOnce(&mut FakeStorageCounts)) {
        update(
            self.log()
                .fake_storage
                .entry(account.to_string())
                .or_default(),
        );
    }

    /// Clears request logs and counters (not issued tokens, not faults).
    pub(crate) fn clear_logs(&self) {
        let mut log = self.log();
        log.mgmt.clear();
        log.token.clear();
        log.fake_storage.clear();
        self.v2().requests.clear();
        self.null_count.store(0, Ordering::Relaxed);
        self.busy_count.store(0, Ordering::Relaxed);
    }

    /// Issues a token for `resource` valid for the current token lifetime.
    pub(crate) fn issue_token(&self, resource: &str) -> (String, Duration) {
        let lifetime = self.faults.token_lifetime();
        let token = format!("emu-token-{}", uuid::Uuid::new_v4());
        self.log().tokens.insert(
            token.clone(),
            IssuedToken {
                resource: resource.to_string(),
                expires_at: Instant::now() + lifetime,
            },
        );
        (token, lifetime)
    }

    /// Checks an `Authorization` header value; `Err` carries the 401 reason.
    pub(crate) fn check_bearer(&self, authorization: Option<&str>) -> Result<(), String> {
        let Some(value) = authorization else {
            return Err("missing Authorization header".into());
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err("Authorization header is not a Bearer token".into());
        };
        let issued = self.log().tokens.get(token.trim()).cloned().or_else(|| {
            self.trusted_issuers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find_map(|issuer| issuer.log().tokens.get(token.trim()).cloned())
        });
        let Some(issued) = issued else {
            return Err("token was not issued by this emulator's identity endpoint".into());
        };
        if Instant::now() >= issued.expires_at {
            return Err("token expired (IDX10223: Lifetime validation failed)".into());
        }
        let aud = normalize_audience(&issued.resource);
        if !self.audiences.contains(&aud) {
            return Err(format!(
                "token audience '{}' is not accepted by this service (accepted: {:?})",
                issued.resource, self.audiences
            ));
        }
        Ok(())
    }
}

/// Audience comparison ignores case, a trailing `/` and a `/.default` suffix.
pub(crate) fn normalize_audience(a: &str) -> String {
    let a = a.trim();
    let a = a.strip_suffix("/.default").unwrap_or(a);
    a.trim_end_matches('/').to_ascii_lowercase()
}

/// Normalized management command: trimmed, lowercase, single spaces.
pub(crate) fn normalize_command(c: &str) -> String {
    c.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}
