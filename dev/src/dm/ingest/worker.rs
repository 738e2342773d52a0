//! The background worker: what the DM does with a queued message. It polls every
//! ready-for-aggregation queue (Get Messages with a visibility timeout), and for each
//! message: checks the authorization context and the catalog, honours `ingestIfNotExists`,
//! downloads and parses the blob, appends the rows, deletes the blob unless
//! `RetainBlobOnSuccess`, updates the status row, posts the notifications that
//! `ReportLevel`/`ReportMethod` ask for, deletes the message, and records the outcome.
//!
//! Unlike the real DM it does not batch, and reports transient failures at once instead of
//! retrying them.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use super::download::{self, Source};
use super::message::{self, IngestMessage};
use super::notify;
use super::outcome::{Failure, FailureStatus, IngestionOutcome, IngestionStatus, Report};
use super::parse;
use super::status::{self, StatusUpdate};
use super::store::Commit;
use crate::dm::state::State;
use crate::storage::DequeuedMessage;

/// Messages taken per Get Messages call (the Azure maximum).
const BATCH: u8 = 32;
/// Pause after a round that found no message.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Hidden this long (plus the injected ingestion delay) while being processed.
const VISIBILITY: Duration = Duration::from_secs(30);
/// Error code of a skipped `ingestIfNotExists` ingestion (DOC `error-codes.md`, category Other).
const SKIPPED_CODE: &str = "Skipped_IngestByTagAlreadyExists";

/// Starts the worker on the emulator's runtime; it ends with the runtime.
pub(crate) fn spawn(rt: &Handle, state: Arc<State>) {
    rt.spawn(run(state));
}

async fn run(state: Arc<State>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("kusto-dev ingestion worker: cannot build an HTTP client: {e}");
            return;
        }
    };
    loop {
        let mut busy = false;
        for (account, queue) in &state.layout.ingestion_queues {
            let visibility = VISIBILITY + state.faults.ingest_delay();
            match state
                .storage
                .receive_with(&client, account, queue, BATCH, visibility)
                .await
            {
                Ok(messages) if !messages.is_empty() => {
                    busy = true;
                    futures::future::join_all(
                        messages
                            .iter()
                            .map(|m| handle(&state, &client, account, queue, m)),
                    )
                    .await;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("kusto-dev ingestion worker: {e}"),
            }
        }
        if !busy {
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
}

/// Processes one message, deletes it, then records the outcome (so a test that sees the
/// outcome also sees the queue without the message).
async fn handle(
    state: &State,
    client: &reqwest::Client,
    account: &str,
    queue: &str,
    m: &DequeuedMessage,
) {
    let outcome = process(state, client, &m.text).await;
    if let Err(e) = state
        .storage
        .delete_message_with(client, account, queue, m)
        .await
    {
        tracing::warn!("kusto-dev ingestion worker: {e}");
    }
    state.ingest().record(outcome);
}

enum Done {
    Appended { rows: u64, source: Source },
    Skipped(String),
}

async fn process(state: &State, client: &reqwest::Client, text: &str) -> IngestionOutcome {
    let operation_id = uuid::Uuid::new_v4().to_string();
    let activity_id = uuid::Uuid::new_v4().to_string();
    let (msg, check) = match message::decode(text) {
        Ok(json) => message::read(json),
        Err(f) => {
            // Nothing to report to: the message names no table or status row.
            let mut o = blank(operation_id, serde_json::Value::Null);
            fail(&mut o, f);
            return o;
        }
    };
    let mut outcome = blank(operation_id, msg.json.clone());
    outcome.source_id = msg.id.clone();
    outcome.database = msg.database.clone();
    outcome.table = msg.table.clone();
    outcome.source_path = download::strip_secrets(&msg.blob_path);

    let delay = state.faults.ingest_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let result = match check {
        Ok(()) => ingest(state, client, &msg).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(Done::Appended { rows, source }) => {
            outcome.rows = rows;
            if !msg.retain_blob_on_success {
                // The DM deletes blobs in its own temporary storage with its own credentials (the
                // SAS it handed out for uploads has no delete right); others with the caller's SAS.
                let deleted = match own_temp_blob(state, &source.display) {
                    Some((account, container, name)) => state
                        .storage
                        .delete_blob(&account, &container, &name)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => download::delete(client, &source).await,
                };
                match deleted {
                    Ok(()) => outcome.blob_deleted = true,
                    Err(e) => outcome.report_errors.push(e),
                }
            }
        }
        Ok(Done::Skipped(tag)) => {
            outcome.status = IngestionStatus::Skipped;
            outcome.error_code = Some(SKIPPED_CODE.into());
            outcome.failure_status = Some(FailureStatus::Permanent);
            outcome.details = format!(
                "Another stream with the same ingest-by tag was already ingested: '{tag}' (ingestIfNotExists)"
            );
        }
        Err(f) => fail(&mut outcome, f),
    }
    report(state, client, &msg, &activity_id, &mut outcome).await;
    outcome
}

fn blank(operation_id: String, message: serde_json::Value) -> IngestionOutcome {
    IngestionOutcome {
        source_id: String::new(),
        operation_id,
        database: String::new(),
        table: String::new(),
        source_path: String::new(),
        status: IngestionStatus::Succeeded,
        error_code: None,
        failure_status: None,
        details: String::new(),
        rows: 0,
        blob_deleted: false,
        reported: Vec::new(),
        report_errors: Vec::new(),
        message,
    }
}

fn fail(o: &mut IngestionOutcome, f: Failure) {
    o.status = IngestionStatus::Failed;
    o.error_code = Some(f.code.to_string());
    o.failure_status = Some(f.status);
    o.details = f.details;
}

/// The authorization context must be one `.get kusto identity token` handed out (by this
/// emulator or one whose tokens it trusts); otherwise `BadRequest_InvalidKustoIdentityToken`.
fn authorize(state: &State, msg: &IngestMessage) -> Result<(), Failure> {
    let Some(ctx) = msg.authorization_context.as_deref() else {
        return Err(Failure::permanent(
            "BadRequest_InvalidKustoIdentityToken",
            "Invalid Kusto identity token: AdditionalProperties has no authorizationContext",
        ));
    };
    let issued = |s: &State| s.log().authorization_contexts.iter().any(|c| c == ctx);
    let trusted = state
        .trusted_issuers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|s| issued(s));
    if issued(state) || trusted {
        Ok(())
    } else {
        Err(Failure::permanent(
            "BadRequest_InvalidKustoIdentityToken",
            "Invalid Kusto identity token: the authorizationContext was not issued by this DM",
        ))
    }
}

async fn ingest(
    state: &State,
    client: &reqwest::Client,
    msg: &IngestMessage,
) -> Result<Done, Failure> {
    authorize(state, msg)?;
    {
        let store = state.ingest();
        store.check_target(&msg.database, &msg.table)?;
        if let Some(tag) = store.ingested_tag(&msg.database, &msg.table, &msg.ingest_if_not_exists)
        {
            return Ok(Done::Skipped(tag));
        }
    }
    let source = download::resolve(&state.storage, &msg.blob_path)?;
    let blob = download::fetch(client, &source).await?;
    let rows = parse::rows(&blob, &source.display, &msg.format, msg.ignore_first_record)?;
    let commit = state.ingest().commit(
        &msg.database,
        &msg.table,
        rows,
        msg.ingest_by_tags(),
        &msg.ingest_if_not_exists,
    )?;
    Ok(match commit {
        Commit::Appended(rows) => Done::Appended { rows, source },
        Commit::Skipped(tag) => Done::Skipped(tag),
    })
}

/// Status row (when the message names one) and queue notifications (per `ReportLevel`,
/// when `ReportMethod` is `Queue` or `QueueAndTable`).
async fn report(
    state: &State,
    client: &reqwest::Client,
    msg: &IngestMessage,
    activity_id: &str,
    o: &mut IngestionOutcome,
) {
    let at = notify::timestamp(time::OffsetDateTime::now_utc());
    if let Some(row) = &msg.status_row {
        let update = StatusUpdate {
            status: o.status,
            operation_id: &o.operation_id,
            activity_id,
            error_code: o.error_code.as_deref(),
            failure_status: o.failure_status,
            details: &o.details,
            updated_on: &at,
        };
        match status::update(client, row, &update).await {
            Ok(()) => o.reported.push(Report::StatusTable),
            Err(e) => o.report_errors.push(e),
        }
    }
    if !msg.reports_to_queue() {
        return;
    }
    let succeeded = o.status == IngestionStatus::Succeeded;
    let (report, (account, queue), body) = if succeeded && msg.reports_successes() {
        (
            Report::SuccessQueue,
            &state.layout.successful_queue,
            notify::success(o, activity_id, &at),
        )
    } else if !succeeded && msg.reports_failures() {
        (
            Report::FailureQueue,
            &state.layout.failed_queue,
            notify::failure(o, activity_id, &at),
        )
    } else {
        return;
    };
    match state
        .storage
        .put_message(account, queue, &notify::encode(&body))
        .await
    {
        Ok(()) => o.reported.push(report),
        Err(e) => o.report_errors.push(format!("notification: {e}")),
    }
}

/// `(account, container, blob)` when `url` names a blob in one of this emulator's `TempStorage`
/// containers.
fn own_temp_blob(state: &State, url: &str) -> Option<(String, String, String)> {
    state
        .layout
        .temp_containers
        .iter()
        .find_map(|(account, container)| {
            let prefix = format!(
                "{}/{container}/",
                state.storage.blob_endpoint(account).trim_end_matches('/')
            );
            url.strip_prefix(&prefix)
                .map(|name| (account.clone(), container.clone(), name.to_owned()))
        })
}
