//! The load: concurrent clients posting `POST /api/ingest` requests of 1 to 200 blobs, every
//! blob with its own `sourceId`, and what each request was answered, blob by blob.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

/// Blobs per request and their weights: mostly small requests, now and then a 200-blob one
/// (16 blobs on average).
const SIZES: [(usize, u64); 8] = [
    (1, 30),
    (2, 20),
    (5, 15),
    (10, 12),
    (20, 10),
    (50, 7),
    (100, 4),
    (200, 2),
];
/// Mean pause between a client's requests (drawn from 0..2×): with 4 clients about 100 blobs/s,
/// so a default run leaves some 12,000 messages for Azurite to hold and hand back.
const THINK: Duration = Duration::from_millis(500);
/// Pause after a request that got no HTTP answer (the handler is restarting).
const NO_ANSWER_PAUSE: Duration = Duration::from_millis(200);

/// What the clients share with the conductor: where the handler is, which phase runs, when to stop.
pub struct Shared {
    url: RwLock<String>,
    phase: AtomicUsize,
    stop: AtomicBool,
    pub requests: AtomicU64,
    /// Requests sent and not answered yet.
    pub in_flight: AtomicUsize,
    /// `{container URL}` and `{SAS query}` of the (never read) source blobs.
    blob_base: String,
    blob_sas: String,
}

impl Shared {
    pub fn new(url: String, container_sas_url: &str) -> Self {
        let (base, sas) = container_sas_url
            .split_once('?')
            .unwrap_or((container_sas_url, ""));
        Shared {
            url: RwLock::new(url),
            phase: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            blob_base: base.to_owned(),
            blob_sas: sas.to_owned(),
        }
    }

    /// Points new requests at another handler.
    pub fn set_url(&self, url: String) {
        *self.url.write().unwrap_or_else(|e| e.into_inner()) = url;
    }

    fn url(&self) -> String {
        self.url.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a request said about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Queued,
    /// `status: "failed"`, with its `error.code`.
    Failed(String),
    /// `status: "unknown"`, with its `error.code`.
    Unknown(String),
    /// An HTTP answer without a result for this blob: status and `error.code`.
    ErrorAnswer(u16, String),
    /// No HTTP answer although the request was (or may have been) sent: a broken connection or
    /// the client's timeout.
    NoAnswer(&'static str),
    /// The connection was never made (refused): the handler cannot have seen the request.
    NotSent,
}

/// One request: when it was sent (phase), how long it took, its status, and every blob's outcome.
pub struct RequestRecord {
    pub phase: usize,
    pub latency: Duration,
    /// HTTP status, or `None` without an answer.
    pub status: Option<u16>,
    pub blobs: Vec<(Uuid, Outcome)>,
}

/// One client: requests back to back with short random pauses until told to stop.
pub async fn run(id: u64, http: reqwest::Client, shared: Arc<Shared>) -> Vec<RequestRecord> {
    let mut rng = Rng::new(id);
    let mut records = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let phase = shared.phase.load(Ordering::Relaxed);
        let ids: Vec<Uuid> = (0..rng.size()).map(|_| Uuid::new_v4()).collect();
        let body = body(&shared, phase, &ids);
        let url = format!("{}/api/ingest", shared.url());
        let started = Instant::now();
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = post(&http, &url, body).await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let latency = started.elapsed();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let record = classify(phase, latency, &ids, answer);
        let pause = if record.status.is_none() {
            NO_ANSWER_PAUSE
        } else {
            THINK.mul_f64(2.0 * rng.unit())
        };
        records.push(record);
        tokio::time::sleep(pause).await;
    }
    records
}

/// The request body: each blob a URL on the data account (never read: `rawDataSize` is given)
/// named after its `sourceId`, so a queue message can be checked against it.
fn body(shared: &Shared, phase: usize, ids: &[Uuid]) -> String {
    let blobs: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "blobUri": format!("{}/p{phase}/{id}.csv?{}", shared.blob_base, shared.blob_sas),
                "sourceId": id.to_string(),
                "rawDataSize": 4096,
            })
        })
        .collect();
    json!({
        "database": "soakdb",
        "table": "Soak",
        "format": "csv",
        "idempotent": true,
        "blobs": blobs,
    })
    .to_string()
}

/// The blob path (no query) a message for `id` must carry: `…/p<phase>/<id>.csv`.
pub fn path_matches(blob_path: &str, id: &Uuid) -> bool {
    let path = blob_path.split('?').next().unwrap_or(blob_path);
    path.ends_with(&format!("/{id}.csv"))
}

enum Answer {
    Http(u16, Vec<u8>),
    Failed(reqwest::Error),
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> Answer {
    let rsp = match http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(rsp) => rsp,
        Err(e) => return Answer::Failed(e),
    };
    let status = rsp.status().as_u16();
    match rsp.bytes().await {
        Ok(bytes) => Answer::Http(status, bytes.to_vec()),
        Err(e) => Answer::Failed(e),
    }
}

fn classify(phase: usize, latency: Duration, ids: &[Uuid], answer: Answer) -> RequestRecord {
    let (status, blobs) = match answer {
        Answer::Failed(e) => {
            let outcome = if e.is_connect() {
                Outcome::NotSent
            } else if e.is_timeout() {
                Outcome::NoAnswer("client timeout")
            } else {
                Outcome::NoAnswer("connection broken")
            };
            (None, ids.iter().map(|id| (*id, outcome.clone())).collect())
        }
        Answer::Http(status, bytes) => (Some(status), per_blob(status, &bytes, ids)),
    };
    RequestRecord {
        phase,
        latency,
        status,
        blobs,
    }
}

/// Each blob's outcome from an HTTP answer: its entry in `blobs` (matched by `sourceId`), else
/// the request-level error.
fn per_blob(status: u16, bytes: &[u8], ids: &[Uuid]) -> Vec<(Uuid, Outcome)> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let mut results: HashMap<Uuid, Outcome> = HashMap::new();
    for b in v["blobs"].as_array().into_iter().flatten() {
        let Some(id) = b["sourceId"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
            continue;
        };
        let code = b["error"]["code"].as_str().unwrap_or("-").to_owned();
        let outcome = match b["status"].as_str() {
            Some("queued") => Outcome::Queued,
            Some("unknown") => Outcome::Unknown(code),
            Some("failed") => Outcome::Failed(code),
            other => Outcome::ErrorAnswer(status, format!("status {other:?}")),
        };
        results.insert(id, outcome);
    }
    let request_error = v["error"]["code"].as_str().unwrap_or("-").to_owned();
    ids.iter()
        .map(|id| {
            let outcome = match results.remove(id) {
                Some(outcome) => outcome,
                // A 202 means every blob was queued, with or without a list.
                None if status == 202 && results.is_empty() && v["blobs"].is_null() => {
                    Outcome::Queued
                }
                None if v["blobs"].is_array() => {
                    Outcome::ErrorAnswer(status, "NoResultForBlob".into())
                }
                None => Outcome::ErrorAnswer(status, request_error.clone()),
            };
            (*id, outcome)
        })
        .collect()
}

/// xorshift64*: enough randomness for request sizes and pauses, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A request size drawn by the weights of `SIZES`.
    fn size(&mut self) -> usize {
        let total: u64 = SIZES.iter().map(|(_, w)| w).sum();
        let mut pick = self.next() % total;
        for (size, weight) in SIZES {
            if pick < weight {
                return size;
            }
            pick -= weight;
        }
        1
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_blob_results_are_matched_by_source_id() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let body = json!({ "blobs": [
            { "sourceId": b.to_string(), "status": "unknown", "error": { "code": "QueueOutcomeUnknown" } },
            { "sourceId": a.to_string(), "status": "queued" },
        ]});
        let got = per_blob(207, body.to_string().as_bytes(), &[a, b, c]);
        assert_eq!(got[0], (a, Outcome::Queued));
        assert_eq!(got[1], (b, Outcome::Unknown("QueueOutcomeUnknown".into())));
        assert_eq!(
            got[2],
            (c, Outcome::ErrorAnswer(207, "NoResultForBlob".into()))
        );
    }

    #[test]
    fn an_error_answer_applies_to_every_blob() {
        let a = Uuid::new_v4();
        let body = json!({ "error": { "code": "DataManagementUnavailable" } });
        assert_eq!(
            per_blob(503, body.to_string().as_bytes(), &[a]),
            vec![(
                a,
                Outcome::ErrorAnswer(503, "DataManagementUnavailable".into())
            )]
        );
        assert_eq!(per_blob(202, b"", &[a]), vec![(a, Outcome::Queued)]);
    }

    #[test]
    fn message_paths_name_their_source_id() {
        let id = Uuid::new_v4();
        assert!(path_matches(
            &format!("http://127.0.0.1:1/datalake1/soak/p3/{id}.csv?sv=1&sig=x"),
            &id
        ));
        assert!(!path_matches("http://127.0.0.1:1/d/soak/p3/other.csv", &id));
    }
}
