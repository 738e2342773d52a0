//! A small Event Grid stand-in (Azurite emits no events): polls List Blobs on the watched
//! containers every second and turns each new or overwritten blob into one
//! `Microsoft.Storage.BlobCreated` invocation of the handler's `BlobCreated` function, encoded
//! the way the Functions host does it. A 500 is redelivered (with backoff, a few times), like
//! Event Grid would.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kusto_dev::AzuriteHandle;
use serde_json::{Value, json};

use super::show;

/// Poll interval.
const TICK: Duration = Duration::from_secs(1);
/// List Blobs pages read per container per tick (5000 blobs each).
const MAX_PAGES: usize = 10;
/// Invocations sent per tick; the rest wait for the next tick.
const MAX_EVENTS_PER_TICK: usize = 100;
/// Deliveries of one event before giving up (Event Grid would dead-letter it).
const MAX_ATTEMPTS: u32 = 5;
const HOST_VERSION: &str = "4.1037.0";
/// How long to wait for the DM emulator to ingest a queued blob before moving on.
const INGEST_WAIT: Duration = Duration::from_secs(10);

/// One blob as List Blobs shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobItem {
    pub name: String,
    pub etag: String,
    pub content_length: u64,
    pub content_type: String,
    pub blob_type: String,
}

/// An event waiting to be (re)delivered.
struct Pending {
    event: Value,
    attempts: u32,
    next_try: Instant,
}

pub struct Watcher {
    pub azurite: AzuriteHandle,
    /// Storage account holding the watched containers.
    pub account: String,
    pub containers: Vec<String>,
    /// `http://127.0.0.1:<port>` of the handler.
    pub handler_url: String,
    /// The DM emulator's control API, to show what became of the queued message.
    pub control_url: String,
}

type Key = (String, String);

impl Watcher {
    /// Runs until the task is aborted. Blobs present at start are not events.
    pub async fn run(self) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("event emitter: cannot build an HTTP client: {e}");
                return;
            }
        };
        let mut seen: HashMap<Key, String> = HashMap::new();
        for container in &self.containers {
            match self.list(&client, container).await {
                Ok(items) => {
                    for item in items {
                        seen.insert((container.clone(), item.name), item.etag);
                    }
                }
                Err(e) => eprintln!("event emitter: listing {container}: {e}"),
            }
        }
        let mut pending: HashMap<Key, Pending> = HashMap::new();
        let mut list_error_shown = false;
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            for container in &self.containers {
                let items = match self.list(&client, container).await {
                    Ok(items) => {
                        list_error_shown = false;
                        items
                    }
                    Err(e) => {
                        if !list_error_shown {
                            eprintln!("event emitter: listing {container}: {e}");
                            list_error_shown = true;
                        }
                        continue;
                    }
                };
                for item in items {
                    let key = (container.clone(), item.name.clone());
                    if seen.get(&key) == Some(&item.etag) {
                        continue;
                    }
                    seen.insert(key.clone(), item.etag.clone());
                    // A newer upload replaces an undelivered older one, like a new event would.
                    pending.insert(
                        key,
                        Pending {
                            event: self.event(container, &item),
                            attempts: 0,
                            next_try: Instant::now(),
                        },
                    );
                }
            }
            let now = Instant::now();
            let mut due: Vec<Key> = pending
                .iter()
                .filter(|(_, p)| p.next_try <= now)
                .map(|(k, _)| k.clone())
                .collect();
            due.sort();
            due.truncate(MAX_EVENTS_PER_TICK);
            for key in due {
                let Some(mut p) = pending.remove(&key) else {
                    continue;
                };
                p.attempts += 1;
                let done = self.deliver(&client, &key, &p.event, p.attempts).await;
                if !done {
                    if p.attempts >= MAX_ATTEMPTS {
                        println!(
                            "[event] {}/{}: giving up after {} deliveries (Event Grid would dead-letter the event)",
                            key.0, key.1, p.attempts
                        );
                    } else {
                        p.next_try = Instant::now() + TICK * 2u32.pow(p.attempts);
                        pending.insert(key, p);
                    }
                }
            }
        }
    }

    /// All blobs of a container (at most `MAX_PAGES` pages).
    async fn list(
        &self,
        client: &reqwest::Client,
        container: &str,
    ) -> Result<Vec<BlobItem>, String> {
        let sas_url = self.azurite.container_sas_url(
            &self.account,
            container,
            "rl",
            Duration::from_secs(600),
        );
        let mut items = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = format!("{sas_url}&restype=container&comp=list&maxresults=5000");
            if let Some(m) = &marker {
                let m: String = url::form_urlencoded::byte_serialize(m.as_bytes()).collect();
                url.push_str(&format!("&marker={m}"));
            }
            let rsp = client
                .get(&url)
                .header("x-ms-version", "2021-08-06")
                .send()
                .await
                .map_err(|e| format!("List Blobs failed: {e}"))?;
            let status = rsp.status();
            let body = rsp
                .text()
                .await
                .map_err(|e| format!("List Blobs body: {e}"))?;
            if !status.is_success() {
                return Err(format!("List Blobs answered {status}: {}", clip(&body)));
            }
            items.extend(parse_list(&body));
            marker = xml_first(&body, "NextMarker").filter(|m| !m.is_empty());
            if marker.is_none() {
                break;
            }
        }
        Ok(items)
    }

    /// The Event Grid schema event Azure Storage would publish for this blob.
    fn event(&self, container: &str, item: &BlobItem) -> Value {
        let now = time::OffsetDateTime::now_utc();
        json!({
            "topic": format!(
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/{}",
                self.account
            ),
            "subject": format!("/blobServices/default/containers/{container}/blobs/{}", item.name),
            "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": event_time(now),
            "id": uuid::Uuid::new_v4().to_string(),
            "data": {
                "api": "PutBlob",
                "clientRequestId": uuid::Uuid::new_v4().to_string(),
                "requestId": uuid::Uuid::new_v4().to_string(),
                "eTag": item.etag,
                "contentType": item.content_type,
                "contentLength": item.content_length,
                "blobType": item.blob_type,
                "url": self.azurite.blob_url(&self.account, container, &item.name),
                "sequencer": format!("{:048x}", now.unix_timestamp_nanos().max(0)),
                "storageDiagnostics": { "batchId": uuid::Uuid::new_v4().to_string() }
            },
            "dataVersion": "",
            "metadataVersion": "1"
        })
    }

    /// Posts one invocation; `true` when the event is done with (acknowledged or hopeless).
    async fn deliver(
        &self,
        client: &reqwest::Client,
        key: &Key,
        event: &Value,
        attempt: u32,
    ) -> bool {
        let (container, name) = key;
        let body = invocation_body(event);
        let delivery = if attempt > 1 {
            format!(" (delivery {attempt})")
        } else {
            String::new()
        };
        println!();
        println!(
            "[event] new blob {container}/{name} -> POST {}/BlobCreated{delivery}",
            self.handler_url
        );
        let rsp = client
            .post(format!("{}/BlobCreated", self.handler_url))
            .header("content-type", "application/json")
            .header(
                "x-azure-functions-invocationid",
                uuid::Uuid::new_v4().to_string(),
            )
            .header("x-azure-functions-hostversion", HOST_VERSION)
            .header("user-agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
            .body(body)
            .send()
            .await;
        let rsp = match rsp {
            Ok(r) => r,
            Err(e) => {
                println!("[event] the handler did not answer: {e}");
                return false;
            }
        };
        let status = rsp.status().as_u16();
        let text = rsp.text().await.unwrap_or_default();
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        println!("[event] handler answered {status}");
        match reply.get("Logs").and_then(Value::as_array) {
            Some(lines) => {
                for line in lines {
                    println!("  {}", show::redact_sig(line.as_str().unwrap_or_default()));
                }
            }
            None => println!("  {}", show::redact_sig(&clip(&text))),
        }
        match status {
            200..=299 => {
                if text.contains("queued ") {
                    let url = self.azurite.blob_url(&self.account, container, name);
                    let found = show::wait_for_ingestion(
                        &self.control_url,
                        |m| {
                            let id = m.get("Id").and_then(Value::as_str).unwrap_or("#");
                            let path = m.get("BlobPath").and_then(Value::as_str).unwrap_or("");
                            text.contains(id) || path.starts_with(&url)
                        },
                        INGEST_WAIT,
                    )
                    .await;
                    show::print_ingestion(found, "the queued blob");
                }
                true
            }
            404 => {
                println!(
                    "[event] this handler build has no BlobCreated function (404); not retrying"
                );
                true
            }
            400..=499 => true,
            _ => false,
        }
    }
}

/// The body the Functions host POSTs to `/BlobCreated`: the event as indented JSON text,
/// serialized once more as a JSON string (double-encoded), in `Data.event`.
pub fn invocation_body(event: &Value) -> String {
    let indented = serde_json::to_string_pretty(event).unwrap_or_else(|_| event.to_string());
    let once = serde_json::to_string(&indented).unwrap_or_default();
    json!({
        "Data": { "event": once },
        "Metadata": {
            "sys": {
                "MethodName": "BlobCreated",
                "UtcNow": event_time(time::OffsetDateTime::now_utc()),
                "RandGuid": uuid::Uuid::new_v4().to_string()
            }
        }
    })
    .to_string()
}

/// `2024-03-05T10:15:30.1234567Z`, as Event Grid writes times.
fn event_time(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

/// The `<Blob>` entries of a List Blobs answer.
pub fn parse_list(xml: &str) -> Vec<BlobItem> {
    xml_blocks(xml, "Blob")
        .into_iter()
        .filter_map(|b| {
            Some(BlobItem {
                name: xml_first(b, "Name")?,
                etag: xml_first(b, "Etag").unwrap_or_default(),
                content_length: xml_first(b, "Content-Length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                content_type: xml_first(b, "Content-Type").unwrap_or_default(),
                blob_type: xml_first(b, "BlobType").unwrap_or_else(|| "BlockBlob".into()),
            })
        })
        .collect()
}

fn xml_blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let inner = &rest[start + open.len()..];
        let Some(end) = inner.find(&close) else { break };
        out.push(&inner[..end]);
        rest = &inner[end + close.len()..];
    }
    out
}

fn xml_first(xml: &str, tag: &str) -> Option<String> {
    xml_blocks(xml, tag).first().map(|s| xml_unescape(s))
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn clip(text: &str) -> String {
    let mut t: String = text.chars().take(500).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_blobs_answer_is_parsed() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/datalake1" ContainerName="landing"><Prefix/><Marker/><MaxResults>5000</MaxResults><Blobs><Blob><Name>a &amp; b.csv</Name><Properties><Creation-Time>Mon, 24 Nov 2025 13:00:00 GMT</Creation-Time><Etag>0x1F2E3D4C5B6A798</Etag><Content-Length>42</Content-Length><Content-Type>text/csv</Content-Type><BlobType>BlockBlob</BlobType></Properties></Blob><Blob><Name>x.json</Name><Properties><Etag>0x1</Etag><Content-Length>0</Content-Length></Properties></Blob></Blobs><NextMarker/></EnumerationResults>"#;
        let items = parse_list(xml);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].name, "a & b.csv");
        assert_eq!(items[0].etag, "0x1F2E3D4C5B6A798");
        assert_eq!(items[0].content_length, 42);
        assert_eq!(items[0].content_type, "text/csv");
        assert_eq!(items[1].blob_type, "BlockBlob");
        assert_eq!(xml_first(xml, "NextMarker"), None);
    }

    #[test]
    fn invocation_is_double_encoded_like_the_host() {
        let event = json!({"id": "e1", "eventType": "Microsoft.Storage.BlobCreated"});
        let body: Value = serde_json::from_str(&invocation_body(&event)).unwrap();
        assert_eq!(body["Metadata"]["sys"]["MethodName"], "BlobCreated");
        let once: String = serde_json::from_str(body["Data"]["event"].as_str().unwrap()).unwrap();
        assert!(once.contains('\n'), "indented: {once}");
        let decoded: Value = serde_json::from_str(&once).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn event_times_have_seven_fraction_digits() {
        let t = time::macros::datetime!(2024-03-05 10:15:30.1234567 UTC);
        assert_eq!(event_time(t), "2024-03-05T10:15:30.1234567Z");
    }
}
