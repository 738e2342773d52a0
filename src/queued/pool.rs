//! The queues of one resource snapshot and their clients: which queues to try for a message (the
//! healthiest storage accounts first, round-robin within a tier, at most three distinct queues, as
//! the SDKs do) and one Put Message.

use super::ranking::{AccountRanking, TIERS};
use super::resources::QueueResource;
use crate::domain::describe_error;
use crate::ingest::Deadline;
use azure_core::error::ErrorKind;
use azure_core::http::{RequestContent, Transport, XmlFormat};
use azure_storage_queue::models::QueueMessage;
use azure_storage_queue::{QueueClient, QueueClientOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A message is tried on at most this many distinct queues, as the SDKs do.
pub(crate) const MAX_QUEUE_ATTEMPTS: usize = 3;
/// One Put Message should take milliseconds; a stuck connection must not hold a blob for minutes.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one post to one queue failed.
#[derive(Debug, Clone)]
pub(crate) enum PostError {
    /// 403 AuthenticationFailed: the SAS expired or was revoked; fresh resources may fix it.
    AuthenticationFailed(String),
    /// 413 / 400 on the message itself: another queue would refuse it too.
    Rejected(String),
    /// Not stored: throttling, 5xx, a connection that could not be made. Another queue may work.
    Unavailable(String),
    /// Sent, but no answer came (a timeout, a reset after the request): it may be stored.
    Unknown(String),
}

impl PostError {
    pub(crate) fn message(&self) -> &str {
        match self {
            PostError::AuthenticationFailed(m)
            | PostError::Rejected(m)
            | PostError::Unavailable(m)
            | PostError::Unknown(m) => m,
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
pub(crate) struct QueuePool {
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
    pub(crate) fn new(resources: &[QueueResource], transport: &Transport) -> Result<Self, String> {
        let mut targets = Vec::with_capacity(resources.len());
        for resource in resources {
            // Retrying is ours to do, on a different queue.
            let options = QueueClientOptions {
                client_options: crate::transport::sdk_options(transport),
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

    /// The queues to try for one message, best first: healthiest tier first, round-robin within it.
    pub(crate) fn candidates(&self, ranking: &AccountRanking) -> Vec<usize> {
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

    pub(crate) fn account(&self, index: usize) -> &str {
        &self.targets[index].resource.account
    }

    pub(crate) fn describe(&self, index: usize) -> &str {
        &self.targets[index].redacted
    }

    /// One Put Message, answered by `deadline` at the latest.
    pub(crate) async fn post(
        &self,
        index: usize,
        text: String,
        deadline: Deadline,
    ) -> Result<(), PostError> {
        let target = &self.targets[index];
        let content: RequestContent<QueueMessage, XmlFormat> = QueueMessage {
            message_text: Some(text),
        }
        .try_into()
        .map_err(|e: azure_core::Error| {
            PostError::Rejected(format!("cannot serialize the queue message: {e}"))
        })?;
        let timeout = deadline.cap(POST_TIMEOUT);
        let sent = tokio::time::timeout(timeout, target.client.send_message(content, None)).await;
        match sent {
            // The message may be on the wire or already stored.
            Err(_) => Err(PostError::Unknown(format!(
                "no answer within {:.1} s",
                timeout.as_secs_f64()
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
        // The connection was never made: nothing was sent.
        ErrorKind::Connection => PostError::Unavailable(describe_error(error)),
        // Anything after the connection was made (a reset, a closed connection) may have come
        // after the queue stored the message.
        _ => PostError::Unknown(describe_error(error)),
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
        super::super::resources::IngestionResources::from_response(&response)
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
}
