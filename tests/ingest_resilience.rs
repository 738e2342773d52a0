//! Caching, queue spreading, failover and DM failures, through the real handler and the DM
//! emulator's fault injection. Tests whose premise holds for either protocol run both ways
//! (`both_protocols!`); those about the v1 queues and their SAS stay v1.

mod common;

use common::*;
use kusto_dev::{BreakMode, Faults, RestV2Endpoint};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const RESOURCES: &str = ".get ingestion resources";
const IDENTITY: &str = ".get kusto identity token";

fn blobs(app: &TestApp, prefix: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let uris: Vec<String> = (0..n)
        .map(|i| app.blob_uri(&format!("{prefix}/{i}.csv")))
        .collect();
    let bodies = uris
        .iter()
        .map(|u| json!({ "blobUri": u, "rawDataSize": 100 }))
        .collect();
    (uris, bodies)
}

fn per_queue(messages: &[QueuedMessage]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for m in messages {
        *counts
            .entry((m.account.clone(), m.queue.clone()))
            .or_insert(0) += 1;
    }
    counts
}

fn retry_after_secs(reply: &Reply) -> u64 {
    let value = reply.headers.get("retry-after").unwrap_or_else(|| {
        panic!(
            "Retry-After header missing: {:?} {}",
            reply.headers, reply.text
        )
    });
    let secs: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("Retry-After is not delay-seconds: {value:?}"));
    assert!(secs > 0, "Retry-After 0");
    secs
}

/// The DM answers its next calls with `statuses`: v1's management commands, or v2's configuration
/// GET (the first call a v2 request makes; the queued POST has tests of its own in ingest_v2.rs).
fn push_dm_statuses(faults: &Faults, protocol: Protocol, statuses: &[(u16, Option<u64>)]) {
    match protocol {
        Protocol::V1 => faults.push_statuses(statuses),
        Protocol::V2 => faults.push_rest_v2_statuses(RestV2Endpoint::Configuration, statuses),
    }
}

/// Statuses of the v2 configuration GETs the DM answered, in order.
fn configuration_reads(app: &TestApp) -> Vec<kusto_dev::RestV2Request> {
    app.dm
        .rest_v2_requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/configuration"))
        .collect()
}

/// Blob counts of the queued POSTs the DM accepted.
fn accepted_posts(app: &TestApp) -> Vec<usize> {
    app.dm
        .rest_v2_requests()
        .iter()
        .filter(|r| r.method == "POST" && r.status == 200)
        .map(|r| r.blobs)
        .collect()
}

both_protocols!(
    resources_and_identity_token_are_fetched_once_for_many_requests,
    dm_throttling_is_retried_after_retry_after,
    dm_server_error_is_retried,
    dm_down_with_a_warm_cache,
    dm_down_cold_is_503_with_clear_error,
    dm_unreachable_cold_is_503,
    dm_refusing_the_apps_identity_is_502_unauthorized,
    dm_rejecting_the_command_is_502_rejected_without_retry,
    sigterm_lets_in_flight_requests_finish_before_exit,
);

/// Every blob of a reply failed (with `code` when given); nothing queued; top-level error present.
fn assert_all_failed(reply: &Reply, n: usize, code: Option<&str>) {
    assert_eq!(reply.body["blobCount"], n, "{}", reply.text);
    assert_eq!(reply.body["queued"], 0, "{}", reply.text);
    assert_eq!(reply.body["failed"], n, "{}", reply.text);
    let results = reply.body["blobs"].as_array().expect("per-blob results");
    assert_eq!(results.len(), n);
    for r in results {
        assert_eq!(r["status"], "failed", "{r}");
        match code {
            Some(code) => assert_eq!(r["error"]["code"], code, "{r}"),
            None => assert!(
                r["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
                "{r}"
            ),
        }
        assert!(r["sourceId"].is_string(), "{r}");
    }
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a top-level error explains why nothing was queued: {}",
        reply.text
    );
}

async fn resources_and_identity_token_are_fetched_once_for_many_requests(protocol: Protocol) {
    // A slow DM makes the ten concurrent cold requests wait on the same fetch, and shows
    // whether the two commands ran side by side.
    let delay = Duration::from_millis(400);
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(move |f| f.set_delay(delay))
        .start()
        .await;
    // v2: one small POST per request. The emulator answers a POST only once it has put each of its
    // blobs on a queue (one Azurite call each), far slower than a DM: many large POSTs at once
    // outlast the handler's 10 s per DM call on a loaded machine.
    let per_request = match protocol {
        Protocol::V1 => 100,
        Protocol::V2 => 5,
    };
    let mut requests = Vec::new();
    let mut all_uris = BTreeSet::new();
    for r in 0..10 {
        let (uris, bodies) = blobs(&app, &format!("cache{r}"), per_request);
        all_uris.extend(uris);
        requests.push(request(bodies));
    }
    let replies = futures::future::join_all(requests.iter().map(|b| app.post_ingest(b))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{:.500}", reply.text);
        assert_eq!(reply.body["queued"], per_request);
    }
    if protocol == Protocol::V2 {
        // One configuration read for all ten requests, no v1 command, 20 blobs per POST; the DM
        // queued every blob exactly once.
        let reads = configuration_reads(&app);
        assert_eq!(reads.len(), 1, "{reads:#?}");
        assert!(app.dm.mgmt_requests().is_empty(), "no v1 command");
        assert_eq!(accepted_posts(&app), vec![5; 10]);
        let messages = app.drain_messages().await;
        assert_eq!(messages.len(), 50);
        assert_eq!(blob_paths(&messages), all_uris, "every blob exactly once");
        app.assert_no_secrets();
        return;
    }
    assert_eq!(
        app.dm.command_count(RESOURCES),
        1,
        "{:#?}",
        app.dm.mgmt_requests()
    );
    assert_eq!(
        app.dm.command_count(IDENTITY),
        1,
        "{:#?}",
        app.dm.mgmt_requests()
    );
    assert_eq!(app.dm.mgmt_requests().len(), 2, "no other DM calls");
    assert!(!app.dm.token_requests().is_empty());

    // Fetched concurrently: with each answer delayed, sequential calls would finish at least
    // one delay apart.
    let reqs = app.dm.mgmt_requests();
    let gap = if reqs[0].at > reqs[1].at {
        reqs[0].at - reqs[1].at
    } else {
        reqs[1].at - reqs[0].at
    };
    assert!(
        gap < delay,
        "the two cold DM commands did not overlap (answered {gap:?} apart, each takes {delay:?})"
    );

    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 1000);
    assert_eq!(blob_paths(&messages), all_uris, "every blob exactly once");
    let ids: BTreeSet<&str> = messages
        .iter()
        .map(|m| m.body["Id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1000, "distinct source ids");
    let contexts: BTreeSet<String> = messages
        .iter()
        .map(|m| m.body["AdditionalProperties"]["authorizationContext"].to_string())
        .collect();
    assert_eq!(contexts.len(), 1, "one cached authorization context");
    app.assert_no_secrets();
}

// v1 only (here and down to the bad-signature tests): the premise is the storage queues the v1
// resources hand out; a v2 client never sees a queue.
#[tokio::test]
async fn messages_spread_over_every_queue_of_both_accounts() {
    let app = TestApp::start().await;
    let (_, bodies) = blobs(&app, "spread", 100);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:.500}", reply.text);
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 100);
    let counts = per_queue(&messages);
    let queues = app.dm.ingestion_queues();
    assert_eq!(
        queues.len(),
        4,
        "the emulator hands out 2 queues in each of 2 accounts"
    );
    for q in &queues {
        assert!(
            counts.get(q).copied().unwrap_or(0) > 0,
            "queue {q:?} got no message; distribution {counts:?}"
        );
    }
    let accounts: BTreeSet<&str> = messages.iter().map(|m| m.account.as_str()).collect();
    assert_eq!(accounts.len(), 2, "{counts:?}");
    // Round-robin spreads evenly enough that no queue carries most of the load.
    assert!(
        counts.values().all(|&c| c <= 50),
        "uneven spread: {counts:?}"
    );
}

#[tokio::test]
async fn busy_account_fails_over_to_the_other() {
    let app = TestApp::builder()
        .faults(|f| f.break_account("ingestacct1", BreakMode::ServerBusy))
        .start()
        .await;
    let (uris, bodies) = blobs(&app, "failover", 20);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:.800}", reply.text);
    assert_eq!(reply.body["queued"], 20);
    assert_eq!(reply.body["failed"], 0);
    assert!(app.dm.server_busy_count() > 0, "the busy account was tried");
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 20);
    for m in &messages {
        assert_eq!(m.account, "ingestacct2", "{m:?}");
    }
    for uri in &uris {
        message_for(&messages, uri);
    }
    app.assert_no_secrets();
}

#[tokio::test]
async fn every_queue_busy_is_503_queue_unavailable() {
    let app = TestApp::builder()
        .faults(|f| {
            f.break_account("ingestacct1", BreakMode::ServerBusy);
            f.break_account("ingestacct2", BreakMode::ServerBusy);
        })
        .start()
        .await;
    let (_, bodies) = blobs(&app, "allbusy", 3);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    retry_after_secs(&reply);
    assert_all_failed(&reply, 3, Some("QueueUnavailable"));
    assert!(app.drain_messages().await.is_empty());
    app.assert_no_secrets();
}

#[tokio::test]
async fn bad_signature_refetches_resources_once() {
    let app = TestApp::builder()
        .faults(|f| f.break_account("ingestacct1", BreakMode::BadSignature))
        .start()
        .await;
    // Many posts to the broken account get 403 AuthenticationFailed; the other account takes
    // their blobs.
    let (_, bodies) = blobs(&app, "badsig1", 20);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:.800}", reply.text);
    assert_eq!(reply.body["queued"], 20);
    let first = app.drain_messages().await;
    assert_eq!(first.len(), 20);
    assert!(
        first.iter().all(|m| m.account == "ingestacct2"),
        "{first:?}"
    );

    // The rejected resources are replaced: exactly one refetch, whether it happened during the
    // first request or before the second.
    app.dm.faults().heal_account("ingestacct1");
    let (_, bodies) = blobs(&app, "badsig2", 20);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:.800}", reply.text);
    assert_eq!(
        app.dm.command_count(RESOURCES),
        2,
        "403 AuthenticationFailed refetches the resources exactly once: {:#?}",
        app.dm.mgmt_requests()
    );
    assert_eq!(app.drain_messages().await.len(), 20);
    app.assert_no_secrets();
}

#[tokio::test]
async fn bad_signature_everywhere_fails_with_authorization_error_after_one_refetch() {
    let app = TestApp::builder()
        .faults(|f| {
            f.break_account("ingestacct1", BreakMode::BadSignature);
            f.break_account("ingestacct2", BreakMode::BadSignature);
        })
        .start()
        .await;
    let (_, bodies) = blobs(&app, "badsig-all", 3);
    let reply = app.post_ingest(&request(bodies)).await;
    assert!(
        !reply.status.is_success(),
        "nothing can be queued: {} {}",
        reply.status,
        reply.text
    );
    assert_all_failed(&reply, 3, Some("QueueAuthorizationFailed"));
    assert_eq!(
        app.dm.command_count(RESOURCES),
        2,
        "one refetch, no loop: {:#?}",
        app.dm.mgmt_requests()
    );
    assert!(app.drain_messages().await.is_empty());
    app.assert_no_secrets();
}

async fn dm_throttling_is_retried_after_retry_after(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(move |f| push_dm_statuses(f, protocol, &[(429, Some(1))]))
        .start()
        .await;
    let (uris, bodies) = blobs(&app, "throttle", 5);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    if protocol == Protocol::V2 {
        let faults = app.dm.faults();
        assert_eq!(
            faults.pending_rest_v2_statuses(RestV2Endpoint::Configuration),
            0,
            "the 429 was served"
        );
        let reads = configuration_reads(&app);
        let statuses: Vec<u16> = reads.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![429, 200], "{reads:#?}");
        assert!(
            reads[1].at - reads[0].at >= Duration::from_millis(900),
            "Retry-After: 1 was honoured ({:?})",
            reads[1].at - reads[0].at
        );
        let messages = app.drain_messages().await;
        assert_eq!(messages.len(), 5);
        for uri in &uris {
            message_for(&messages, uri);
        }
        return;
    }
    assert_eq!(app.dm.faults().pending_statuses(), 0, "the 429 was served");
    let reqs = app.dm.mgmt_requests();
    let throttled = reqs
        .iter()
        .find(|r| r.status == 429)
        .expect("a throttled call");
    let retried = reqs
        .iter()
        .find(|r| r.status == 200 && r.command == throttled.command && r.at > throttled.at)
        .unwrap_or_else(|| panic!("the throttled command was retried: {reqs:#?}"));
    assert!(
        retried.at - throttled.at >= Duration::from_millis(900),
        "Retry-After: 1 was honoured ({:?})",
        retried.at - throttled.at
    );
    assert_eq!(
        app.dm.command_count(RESOURCES) + app.dm.command_count(IDENTITY),
        3
    );
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 5);
    for uri in &uris {
        message_for(&messages, uri);
    }
}

async fn dm_server_error_is_retried(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(move |f| push_dm_statuses(f, protocol, &[(503, None), (500, None)]))
        .start()
        .await;
    let (_, bodies) = blobs(&app, "dm5xx", 2);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(app.drain_messages().await.len(), 2);
}

/// v1 still queues from its cached resources; v2 has a call to make for every blob, so the
/// request is 503 (try again later), without the configuration being asked for again.
async fn dm_down_with_a_warm_cache(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    let (_, first) = blobs(&app, "warm1", 3);
    let reply = app.post_ingest(&request(first)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(app.drain_messages().await.len(), 3);

    app.dm.stop_dm().expect("stop the DM listener");
    app.dm.faults().set_down(true);
    let (uris, second) = blobs(&app, "warm2", 4);
    let reply = app.post_ingest(&request(second)).await;
    if protocol == Protocol::V2 {
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text
        );
        retry_after_secs(&reply);
        assert_all_failed(&reply, 4, Some("DataManagementUnavailable"));
        assert_eq!(configuration_reads(&app).len(), 1, "served from the cache");
        assert!(app.drain_messages().await.is_empty());
        app.assert_no_secrets();
        return;
    }
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "cached resources serve: {}",
        reply.text
    );
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 4);
    for uri in &uris {
        message_for(&messages, uri);
    }
    assert_eq!(app.dm.command_count(RESOURCES), 1);
    app.assert_no_secrets();
}

async fn dm_down_cold_is_503_with_clear_error(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(|f| f.set_down(true))
        .start()
        .await;
    let (_, bodies) = blobs(&app, "cold", 2);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    retry_after_secs(&reply);
    assert_eq!(
        reply.error_code(),
        "DataManagementUnavailable",
        "{}",
        reply.text
    );
    assert_all_failed(&reply, 2, None);
    assert!(app.drain_messages().await.is_empty());

    // Once the DM is back, requests succeed again (a failure may be remembered for a few
    // seconds so a dead DM is not hammered, but not for long).
    app.dm.faults().set_down(false);
    let (_, bodies) = blobs(&app, "cold-after", 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = app.post_ingest(&request(bodies.clone())).await;
        if reply.status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text
        );
        assert!(
            std::time::Instant::now() < deadline,
            "still failing 15 s after the DM came back: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(app.drain_messages().await.len(), 2);
    app.assert_no_secrets();
}

async fn dm_unreachable_cold_is_503(protocol: Protocol) {
    let app = TestApp::builder().protocol(protocol).start().await;
    app.dm.stop_dm().expect("stop the DM listener");
    let (_, bodies) = blobs(&app, "refused", 1);
    let reply = app.post_ingest(&request(bodies)).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    retry_after_secs(&reply);
    assert_eq!(
        reply.error_code(),
        "DataManagementUnavailable",
        "{}",
        reply.text
    );
    assert_all_failed(&reply, 1, None);
    app.assert_no_secrets();
}

async fn dm_refusing_the_apps_identity_is_502_unauthorized(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(move |f| push_dm_statuses(f, protocol, &[(403, None); 8]))
        .start()
        .await;
    let (_, bodies) = blobs(&app, "rejected", 2);
    let reply = app.post_ingest(&request(bodies)).await;
    reply.assert_error(StatusCode::BAD_GATEWAY, "DataManagementUnauthorized");
    assert_all_failed(&reply, 2, None);
    assert!(app.drain_messages().await.is_empty());
    app.assert_no_secrets();
}

async fn dm_rejecting_the_command_is_502_rejected_without_retry(protocol: Protocol) {
    let app = TestApp::builder()
        .protocol(protocol)
        .faults(move |f| push_dm_statuses(f, protocol, &[(400, None); 8]))
        .start()
        .await;
    let (_, bodies) = blobs(&app, "badrequest", 1);
    let reply = app.post_ingest(&request(bodies)).await;
    reply.assert_error(StatusCode::BAD_GATEWAY, "DataManagementRejected");
    assert_all_failed(&reply, 1, None);
    // A 400 is permanent: each command is sent once, not retried.
    match protocol {
        Protocol::V1 => assert_eq!(app.dm.command_count(".get ingestion resources"), 1),
        Protocol::V2 => assert_eq!(configuration_reads(&app).len(), 1),
    }
    app.assert_no_secrets();
}

// v1 only: the premise is the queue SAS's lifetime. v2's stale configuration is served while a
// refresh fails in ingest_v2.rs (auto_keeps_v2_while_a_configuration_refresh_fails).
#[tokio::test]
async fn stale_resources_are_served_while_a_refresh_fails_until_their_sas_expires() {
    // An 8 s SAS makes the handler refresh after ~2 s and stop using the resources after ~4 s.
    let app = TestApp::builder()
        .faults(|f| f.set_sas_lifetime(Duration::from_secs(8)))
        .start()
        .await;
    let started = std::time::Instant::now();
    let (_, first) = blobs(&app, "fresh", 1);
    let reply = app.post_ingest(&request(first)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(app.dm.command_count(RESOURCES), 1);

    // The refresh that falls due now fails on every attempt.
    app.dm.faults().push_statuses(&[(503, None); 40]);
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let (uris, second) = blobs(&app, "stale", 2);
    let reply = app.post_ingest(&request(second)).await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "the cached copy serves while its SAS is valid: {}",
        reply.text
    );
    assert!(
        app.dm.command_count(RESOURCES) > 1,
        "a refresh was attempted"
    );
    let messages = app.drain_messages().await;
    for uri in &uris {
        message_for(&messages, uri);
    }

    // Past the SAS's usable life there is nothing left to serve.
    tokio::time::sleep(Duration::from_millis(6_500).saturating_sub(started.elapsed())).await;
    let (_, third) = blobs(&app, "expired", 1);
    let reply = app.post_ingest(&request(third)).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "DataManagementUnavailable");
    assert!(app.drain_messages().await.is_empty());
    app.assert_no_secrets();
}

async fn sigterm_lets_in_flight_requests_finish_before_exit(protocol: Protocol) {
    // A slow DM keeps the first request in flight while the host stops the worker.
    let mut app = TestApp::builder()
        .protocol(protocol)
        .faults(|f| f.set_delay(Duration::from_millis(1_500)))
        .start()
        .await;
    let (uris, bodies) = blobs(&app, "drain", 3);
    let pid = app.pid().to_string();
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    };
    let body = request(bodies);
    let (reply, ()) = tokio::join!(app.post_ingest(&body), terminate);
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "the request in flight completes: {}",
        reply.text
    );
    let exit = app
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the handler exits after draining");
    assert!(exit.success(), "clean exit: {exit}");
    let messages = app.drain_messages().await;
    assert_eq!(messages.len(), 3);
    for uri in &uris {
        message_for(&messages, uri);
    }
}

/// The blob paths the queued messages name.
fn blob_paths(messages: &[QueuedMessage]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| m.body["BlobPath"].as_str().unwrap().to_owned())
        .collect()
}
