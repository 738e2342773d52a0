//! The queues of one resource snapshot: which queues to try for a message (the healthiest storage
//! accounts first, round-robin within a tier, at most three distinct queues, as the SDKs do) and
//! one Put Message.
//!
//! A post is the request `azure_storage_queue`'s `QueueClient::send_message` sends (same URL, body
//! bytes, `x-ms-version`, content headers; the unit tests compare with the SDK), written straight
//! to a storage connection (`connections`). Measured (BENCHMARKS.md), the SDK's per-message
//! pipeline — URL re-parsing, policy chain, XML serializer, response header maps, a `getrandom`
//! call — cost more CPU than everything else the handler does for a blob; our message text is
//! base64, so the body needs no XML escaping and is three string pieces.

use super::connections::{Answer, ExchangeError, Origin, StorageConnections};
use super::message::QueueText;
use super::ranking::{AccountRanking, TIERS};
use super::resources::StorageRoot;
use crate::domain::scrub_secrets;
use crate::ingest::Deadline;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Uri};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A message is tried on at most this many distinct queues, as the SDKs do.
pub(crate) const MAX_QUEUE_ATTEMPTS: usize = 3;
/// One Put Message should take milliseconds; a stuck connection must not hold a blob for minutes.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The storage service version `azure_storage_queue` 1.1 sends (a unit test keeps them equal).
const STORAGE_VERSION: &str = "2026-04-06";
const X_MS_VERSION: HeaderName = HeaderName::from_static("x-ms-version");
const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
const APPLICATION_XML: HeaderValue = HeaderValue::from_static("application/xml");
const QUEUE_USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("kusto-ingest-api/", env!("CARGO_PKG_VERSION")));
/// What the SDK's XML serializer writes around a message text that needs no escaping.
const BODY_HEAD: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>";
const BODY_TAIL: &str = "</MessageText></QueueMessage>";

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
    resource: StorageRoot,
    origin: Origin,
    /// `Host` of the posts.
    host: HeaderValue,
    /// `{queue path}/messages?{sas}`, built once.
    put_path: Uri,
    /// Queue URL without its SAS, for logs.
    redacted: String,
}

/// The queues of one resource snapshot.
pub(crate) struct QueuePool {
    /// The process's storage connections.
    connections: Arc<StorageConnections>,
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
    pub(crate) fn new(
        resources: &[StorageRoot],
        connections: &Arc<StorageConnections>,
    ) -> Result<Self, String> {
        let mut targets = Vec::with_capacity(resources.len());
        for resource in resources {
            if resource.url.cannot_be_a_base() {
                return Err(format!(
                    "queue {}: not a valid base URL",
                    resource.redacted()
                ));
            }
            let mut put_url = resource.url.clone();
            let path = format!("{}/messages", put_url.path().trim_end_matches('/'));
            put_url.set_path(&path);
            let invalid = |e: &dyn std::fmt::Display| format!("queue {}: {e}", resource.redacted());
            let origin = Origin::of(&put_url).map_err(|e| invalid(&e))?;
            let host = HeaderValue::try_from(origin.authority()).map_err(|e| invalid(&e))?;
            let put_path =
                Uri::try_from(&put_url[url::Position::BeforePath..url::Position::AfterQuery])
                    .map_err(|e| invalid(&e))?;
            targets.push(Target {
                resource: resource.clone(),
                origin,
                host,
                put_path,
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
            connections: connections.clone(),
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

    /// One Put Message, answered by `deadline` at the latest; 201 is success, as for
    /// `send_message`. No retries: another queue is the retry.
    pub(crate) async fn post(
        &self,
        index: usize,
        text: &QueueText,
        deadline: Deadline,
    ) -> Result<(), PostError> {
        let target = &self.targets[index];
        let mut request = Request::new(Full::new(put_message_body(text)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target.put_path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, target.host.clone());
        headers.insert(ACCEPT, APPLICATION_XML);
        headers.insert(CONTENT_TYPE, APPLICATION_XML);
        headers.insert(X_MS_VERSION, HeaderValue::from_static(STORAGE_VERSION));
        headers.insert(X_MS_CLIENT_REQUEST_ID, client_request_id());
        headers.insert(USER_AGENT, QUEUE_USER_AGENT);
        let within = deadline.cap(POST_TIMEOUT);
        match self
            .connections
            .exchange(&target.origin, request, within)
            .await
        {
            Ok(Answer { status: 201, .. }) => Ok(()),
            Ok(Answer { status, error_code }) => {
                Err(classify(status, error_code.as_deref().unwrap_or("")))
            }
            Err(ExchangeError::NotSent(reason)) => {
                Err(PostError::Unavailable(scrub_secrets(&reason)))
            }
            // Cut off by the timeout after it was sent, too: it may be stored.
            Err(ExchangeError::AnswerLost(reason)) => {
                Err(PostError::Unknown(scrub_secrets(&reason)))
            }
        }
    }
}

/// The Put Message body for `text`: base64 needs no escaping, so the SDK's serializer would write
/// exactly these three pieces.
fn put_message_body(text: &QueueText) -> Bytes {
    let text = text.as_str();
    let mut body = Vec::with_capacity(BODY_HEAD.len() + text.len() + BODY_TAIL.len());
    body.extend_from_slice(BODY_HEAD.as_bytes());
    body.extend_from_slice(text.as_bytes());
    body.extend_from_slice(BODY_TAIL.as_bytes());
    Bytes::from(body)
}

/// A random (v4) `x-ms-client-request-id`, as the SDK sends.
fn client_request_id() -> HeaderValue {
    let id = crate::domain::random_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let id = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static(""))
}

/// A failed answer (anything but 201), by status and `x-ms-error-code`.
fn classify(status: u16, code: &str) -> PostError {
    let message = if code.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {}", crate::domain::clip(code))
    };
    match (status, code) {
        (403, _) => PostError::AuthenticationFailed(message),
        (413, _) | (400, "MessageTooLarge") | (400, "RequestBodyTooLarge") => {
            PostError::Rejected(message)
        }
        _ => PostError::Unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_transport() -> Arc<StorageConnections> {
        Arc::new(StorageConnections::new().unwrap())
    }

    fn resources(spec: &[(&str, &str)]) -> Vec<StorageRoot> {
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

    /// The body as `send_message` gets it from the SDK's serializer.
    fn sdk_body(text: &str) -> Bytes {
        use azure_core::http::{RequestContent, XmlFormat};
        use azure_storage_queue::models::QueueMessage;
        let content: RequestContent<QueueMessage, XmlFormat> = QueueMessage {
            message_text: Some(text.to_owned()),
        }
        .try_into()
        .unwrap();
        match content.body() {
            azure_core::http::Body::Bytes(bytes) => bytes.clone(),
            _ => unreachable!("the XML serializer gives bytes"),
        }
    }

    #[test]
    fn body_bytes_and_version_are_the_sdks() {
        // (An empty text, which a message never is, is written `<MessageText/>` by the SDK.)
        for json in [
            "{}",
            "{\"BlobPath\":\"https://a.blob.core.windows.net/c/b.csv\"}",
            "é ü 日本 \u{1F600}",
        ] {
            let text = QueueText::encode(json.as_bytes());
            assert_eq!(put_message_body(&text), sdk_body(text.as_str()), "{json:?}");
        }
        assert_eq!(
            STORAGE_VERSION,
            azure_storage_queue::QueueClientOptions::default().version
        );
    }

    #[test]
    fn put_url_is_the_queue_url_plus_messages() {
        let queues = resources(&[("a", "q1")]);
        let pool = QueuePool::new(&queues, &test_transport()).unwrap();
        assert_eq!(pool.targets[0].put_path, "/q1/messages?sig=s");
        assert_eq!(pool.targets[0].host, "a.queue.core.windows.net");
    }

    #[test]
    fn answers_are_classified_like_the_sdks_errors() {
        assert!(matches!(
            classify(403, "AuthenticationFailed"),
            PostError::AuthenticationFailed(m) if m == "HTTP 403 AuthenticationFailed"
        ));
        assert!(matches!(classify(413, ""), PostError::Rejected(m) if m == "HTTP 413"));
        assert!(matches!(
            classify(400, "MessageTooLarge"),
            PostError::Rejected(_)
        ));
        assert!(matches!(
            classify(400, "RequestBodyTooLarge"),
            PostError::Rejected(_)
        ));
        assert!(matches!(
            classify(400, "InvalidXmlDocument"),
            PostError::Unavailable(_)
        ));
        assert!(matches!(
            classify(503, "ServerBusy"),
            PostError::Unavailable(m) if m == "HTTP 503 ServerBusy"
        ));
    }

    #[test]
    fn client_request_ids_are_random_v4_uuids() {
        let (a, b) = (client_request_id(), client_request_id());
        assert_ne!(a, b);
        let id = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);
    }
}
