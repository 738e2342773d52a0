//! Posting messages to the DM's ingestion queues: every queue is used, storage accounts are ranked
//! by recent success (the SDKs' 6 × 10 s window and 90/70/30/0 tiers), queues are taken
//! round-robin within a tier, and a failed post moves on to another queue.

use crate::dm::QueueResource;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Transport, XmlFormat};
use azure_storage_queue::models::QueueMessage;
use azure_storage_queue::{QueueClient, QueueClientOptions};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A message is tried on at most this many distinct queues, as the SDKs do.
pub const MAX_QUEUE_ATTEMPTS: usize = 3;
const BUCKETS: usize = 6;
const BUCKET_SPAN: Duration = Duration::from_secs(10);
const TIERS: [f64; 4] = [0.9, 0.7, 0.3, 0.0];
/// One Put Message should take milliseconds; a stuck connection must not hold a blob for minutes.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Success counts per storage account over the last minute. Lives as long as the DM's cache, so
/// what was learnt survives a resource refresh.
#[derive(Default)]
pub struct AccountRanking {
    accounts: Mutex<HashMap<String, Window>>,
}

#[derive(Default)]
struct Window {
    /// (bucket start, successes, total), newest last.
    buckets: Vec<(Instant, u32, u32)>,
}

impl Window {
    fn record(&mut self, now: Instant, success: bool) {
        let fresh = matches!(self.buckets.last(), Some((start, _, _)) if now.duration_since(*start) < BUCKET_SPAN);
        if !fresh {
            self.buckets.push((now, 0, 0));
            if self.buckets.len() > BUCKETS {
                self.buckets.remove(0);
            }
        }
        if let Some(last) = self.buckets.last_mut() {
            last.1 += u32::from(success);
            last.2 += 1;
        }
    }

    /// Weighted success rate, newest bucket weighing most; 1.0 without recent data.
    fn rank(&self, now: Instant) -> f64 {
        let horizon = BUCKET_SPAN * BUCKETS as u32;
        let (mut weighted, mut weights) = (0.0, 0.0);
        for (age_index, (start, ok, total)) in self.buckets.iter().rev().enumerate() {
            if now.duration_since(*start) >= horizon || *total == 0 {
                continue;
            }
            let weight = (BUCKETS - age_index) as f64;
            weighted += f64::from(*ok) / f64::from(*total) * weight;
            weights += weight;
        }
        if weights == 0.0 {
            1.0
        } else {
            weighted / weights
        }
    }
}

impl AccountRanking {
    pub fn record(&self, account: &str, success: bool) {
        let now = Instant::now();
        if let Ok(mut accounts) = self.accounts.lock() {
            // Look up before inserting: the account's name is only copied the first time.
            match accounts.get_mut(account) {
                Some(window) => window.record(now, success),
                None => accounts
                    .entry(account.to_owned())
                    .or_default()
                    .record(now, success),
            }
        }
    }

    /// The tier (0 = best) of each of `accounts`, read under one lock.
    fn tiers(&self, accounts: &[String], now: Instant) -> Vec<usize> {
        let known = self.accounts.lock().ok();
        accounts
            .iter()
            .map(|account| {
                let rank = known
                    .as_ref()
                    .and_then(|a| a.get(account).map(|w| w.rank(now)))
                    .unwrap_or(1.0);
                TIERS
                    .iter()
                    .position(|&threshold| rank >= threshold)
                    .unwrap_or(TIERS.len() - 1)
            })
            .collect()
    }
}

/// Why one post to one queue failed.
#[derive(Debug, Clone)]
pub enum PostError {
    /// 403 AuthenticationFailed: the SAS expired or was revoked; fresh resources may fix it.
    AuthenticationFailed(String),
    /// 413 / 400 on the message itself: another queue would refuse it too.
    Rejected(String),
    /// Anything else: throttling, 5xx, timeouts, refused connections. Another queue may work.
    Unavailable(String),
}

impl PostError {
    pub fn message(&self) -> &str {
        match self {
            PostError::AuthenticationFailed(m)
            | PostError::Rejected(m)
            | PostError::Unavailable(m) => m,
        }
    }
}

struct Target {
    resource: QueueResource,
    client: QueueClient,
    /// Queue URL without its SAS, for logs.
    redacted: String,
}

/// The queues of one resource snapshot, with their clients.
pub struct QueuePool {
    targets: Vec<Target>,
    /// Indices into `targets`, interleaved across accounts (a1q1, a2q1, a1q2, …) so consecutive
    /// picks, and so retries, land on different accounts.
    interleaved: Vec<usize>,
    /// Distinct storage accounts, and each target's index into them.
    accounts: Vec<String>,
    account_of: Vec<usize>,
    next: AtomicUsize,
}

impl QueuePool {
    pub fn new(resources: &[QueueResource], transport: &Transport) -> Result<Self, String> {
        let mut targets = Vec::with_capacity(resources.len());
        for resource in resources {
            let options = QueueClientOptions {
                client_options: ClientOptions {
                    // Retrying is ours to do, on a different queue.
                    retry: RetryOptions::none(),
                    transport: Some(transport.clone()),
                    ..ClientOptions::default()
                },
                ..QueueClientOptions::default()
            };
            let client =
                QueueClient::new(resource.url.clone(), None, Some(options)).map_err(|e| {
                    format!(
                        "queue {}: {}",
                        resource.redacted(),
                        crate::domain::scrub_secrets(&e.to_string())
                    )
                })?;
            targets.push(Target {
                resource: resource.clone(),
                client,
                redacted: resource.redacted(),
            });
        }
        let mut by_account: Vec<(String, Vec<usize>)> = Vec::new();
        let mut account_of = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let position = match by_account
                .iter()
                .position(|(a, _)| *a == t.resource.account)
            {
                Some(position) => position,
                None => {
                    by_account.push((t.resource.account.clone(), Vec::new()));
                    by_account.len() - 1
                }
            };
            by_account[position].1.push(i);
            account_of.push(position);
        }
        let deepest = by_account.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
        let interleaved = (0..deepest)
            .flat_map(|depth| {
                by_account
                    .iter()
                    .filter_map(move |(_, list)| list.get(depth).copied())
            })
            .collect();
        Ok(Self {
            targets,
            interleaved,
            accounts: by_account.into_iter().map(|(a, _)| a).collect(),
            account_of,
            next: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The queues to try for one message, best first: healthiest tier first, round-robin within it.
    pub fn candidates(&self, ranking: &AccountRanking) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.interleaved.len();
        let tiers = ranking.tiers(&self.accounts, Instant::now());
        let mut picked = Vec::with_capacity(MAX_QUEUE_ATTEMPTS);
        for tier in 0..TIERS.len() {
            for offset in 0..n {
                let index = self.interleaved[(start + offset) % n];
                if tiers[self.account_of[index]] == tier {
                    picked.push(index);
                    if picked.len() == MAX_QUEUE_ATTEMPTS {
                        return picked;
                    }
                }
            }
        }
        picked
    }

    pub fn account(&self, index: usize) -> &str {
        &self.targets[index].resource.account
    }

    pub fn describe(&self, index: usize) -> &str {
        &self.targets[index].redacted
    }

    /// One Put Message.
    pub async fn post(&self, index: usize, text: String) -> Result<(), PostError> {
        let target = &self.targets[index];
        let content: RequestContent<QueueMessage, XmlFormat> = QueueMessage {
            message_text: Some(text),
        }
        .try_into()
        .map_err(|e: azure_core::Error| {
            PostError::Rejected(format!("cannot serialize the queue message: {e}"))
        })?;
        let sent =
            tokio::time::timeout(POST_TIMEOUT, target.client.send_message(content, None)).await;
        match sent {
            Err(_) => Err(PostError::Unavailable(format!(
                "no answer within {} s",
                POST_TIMEOUT.as_secs()
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(classify(&error)),
        }
    }
}

fn classify(error: &azure_core::Error) -> PostError {
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let code = error_code.as_deref().unwrap_or("");
            let message = if code.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status} {code}")
            };
            match (status, code) {
                (403, _) => PostError::AuthenticationFailed(message),
                (413, _) | (400, "MessageTooLarge") | (400, "RequestBodyTooLarge") => {
                    PostError::Rejected(message)
                }
                _ => PostError::Unavailable(message),
            }
        }
        _ => PostError::Unavailable(crate::domain::scrub_secrets(&error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_transport() -> Transport {
        crate::transport::azure_transport(&crate::transport::http_client().unwrap())
    }

    fn resources(spec: &[(&str, &str)]) -> Vec<QueueResource> {
        let rows: Vec<String> = spec
            .iter()
            .map(|(a, q)| format!(r#"["SecuredReadyForAggregationQueue","https://{a}.queue.core.windows.net/{q}?sig=s"]"#))
            .collect();
        let body = format!(
            r#"{{"Tables":[{{"TableName":"t","Columns":[{{"ColumnName":"ResourceTypeName"}},{{"ColumnName":"StorageRoot"}}],"Rows":[{}]}}]}}"#,
            rows.join(",")
        );
        let response: crate::dm::v1::V1Response = serde_json::from_str(&body).unwrap();
        crate::dm::IngestionResources::from_response(&response)
            .unwrap()
            .queues
    }

    #[test]
    fn round_robin_covers_every_queue_and_alternates_accounts() {
        let queues = resources(&[("a", "q1"), ("a", "q2"), ("b", "q1"), ("b", "q2")]);
        let pool = QueuePool::new(&queues, &test_transport()).unwrap();
        let ranking = AccountRanking::default();
        let mut firsts = Vec::new();
        for _ in 0..4 {
            let c = pool.candidates(&ranking);
            assert_eq!(c.len(), MAX_QUEUE_ATTEMPTS);
            assert_ne!(
                pool.account(c[0]),
                pool.account(c[1]),
                "a retry goes to the other account"
            );
            firsts.push(c[0]);
        }
        firsts.sort();
        assert_eq!(firsts, vec![0, 1, 2, 3]);
    }

    #[test]
    fn failing_account_drops_to_a_lower_tier() {
        let pool =
            QueuePool::new(&resources(&[("a", "q1"), ("b", "q1")]), &test_transport()).unwrap();
        let ranking = AccountRanking::default();
        for _ in 0..10 {
            ranking.record("a", false);
            ranking.record("b", true);
        }
        for _ in 0..4 {
            let c = pool.candidates(&ranking);
            assert_eq!(pool.account(c[0]), "b");
            assert_eq!(c.len(), 2, "only two distinct queues exist");
        }
    }

    #[test]
    fn window_rank_weighs_recent_buckets() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert_eq!(w.rank(t0), 1.0);
        w.record(t0, false);
        w.record(t0 + BUCKET_SPAN, true);
        let r = w.rank(t0 + BUCKET_SPAN);
        assert!(r > 0.5 && r < 1.0, "newer success weighs more: {r}");
        assert_eq!(w.rank(t0 + BUCKET_SPAN * 8), 1.0, "old data expires");
    }
}
