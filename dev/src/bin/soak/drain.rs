//! Reading every message back from the emulator's ingestion queues, as the DM would: a
//! consumer dequeues them throughout the run, and reads the queues empty at the end.
//!
//! Two costs of Azurite (in memory) shape this. Get Messages sorts every visible message of the
//! queue, so thousands left waiting make each read slow: the consumer keeps few visible. And a
//! deleted message leaves an extent that Azurite's queue GC (every 60 s) removes one by one,
//! re-sorting an index each time: deleting thousands stalls Azurite for tens of seconds. So
//! messages are not deleted but hidden (visibility timeout one hour, longer than any run).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use kusto_dev::DmEmulator;
use serde_json::Value;
use uuid::Uuid;

/// Pause when every queue was empty.
const IDLE: Duration = Duration::from_millis(200);

/// One queue message: its `Id` (the blob's `sourceId`) and `BlobPath`, when it decodes.
pub struct Message {
    pub id: Option<Uuid>,
    pub blob_path: String,
}

pub struct Consumer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<Message>, String>>,
}

/// A queue's name and Get Messages URL.
struct Queue {
    name: String,
    get: String,
}

impl Consumer {
    /// Starts consuming every ingestion queue of `emu`.
    pub fn start(emu: &DmEmulator) -> Result<Consumer, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let queues: Vec<Queue> = emu
            .ingestion_queues()
            .into_iter()
            .map(|(account, queue)| {
                let url = emu.azurite().queue_sas_url(
                    &account,
                    &queue,
                    "p",
                    Duration::from_secs(24 * 3600),
                );
                let (base, sas) = url.split_once('?').unwrap_or((&url, ""));
                Queue {
                    name: format!("{account}/{queue}"),
                    get: format!("{base}/messages?numofmessages=32&visibilitytimeout=3600&{sas}"),
                }
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(consume(http, queues, stop.clone()));
        Ok(Consumer { stop, task })
    }

    /// Reads every queue empty, stops, and returns every message read; call it once nothing
    /// can be queued any more.
    pub async fn finish(self) -> Result<Vec<Message>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .map_err(|e| format!("the queue consumer failed: {e}"))?
    }
}

/// Passes over every queue (up to 32 messages each) until stopped and a pass that began after
/// the stop found every queue empty.
async fn consume(
    http: reqwest::Client,
    queues: Vec<Queue>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let mut read = 0;
        for q in &queues {
            let body = get_messages(&http, &q.get)
                .await
                .map_err(|e| format!("Get Messages {}: {e}", q.name))?;
            let batch = messages(&body);
            read += batch.len();
            out.extend(batch.into_iter().map(decode));
        }
        if read == 0 {
            if stopping {
                return Ok(out);
            }
            tokio::time::sleep(IDLE).await;
        }
    }
}

/// One Get Messages call, tried up to three times (Azurite now and then drops a kept-alive
/// connection).
async fn get_messages(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let rsp = match http
            .get(url)
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
        {
            Ok(rsp) => rsp,
            Err(e) => {
                last = error_chain(e);
                continue;
            }
        };
        let status = rsp.status();
        match rsp.text().await {
            Ok(body) if status.is_success() => return Ok(body),
            Ok(body) => return Err(format!("{status}: {body:.300}")),
            Err(e) => last = error_chain(e),
        }
    }
    Err(last)
}

/// An error and its sources, without the URL (it carries a SAS).
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The `MessageText` of each message of a Get Messages answer (base64 needs no XML unescaping).
fn messages(xml: &str) -> Vec<&str> {
    elements(xml, "QueueMessage")
        .into_iter()
        .map(|m| elements(m, "MessageText").into_iter().next().unwrap_or(""))
        .collect()
}

/// The contents of every `<name>…</name>` in `xml`.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

fn decode(text: &str) -> Message {
    let json: Value = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    Message {
        id: json["Id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
        blob_path: json["BlobPath"].as_str().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_is_read() {
        let id = Uuid::new_v4();
        let text = base64::engine::general_purpose::STANDARD.encode(format!(
            r#"{{"BlobPath":"http://h/a/{id}.csv?sig=x","Id":"{id}"}}"#
        ));
        let xml = format!(
            "<QueueMessagesList><QueueMessage><MessageId>m1</MessageId><MessageText>{text}</MessageText>\
             </QueueMessage><QueueMessage><MessageText>bm90IGpzb24=</MessageText></QueueMessage>\
             </QueueMessagesList>"
        );
        let decoded: Vec<Message> = messages(&xml).into_iter().map(decode).collect();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].id, Some(id));
        assert!(decoded[0].blob_path.ends_with("?sig=x"));
        assert_eq!(decoded[1].id, None);
    }
}
