//! The load generator: request bodies, one bounded cell of concurrent requests, latency stats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

/// The bench's HTTP client: keep-alive, loopback only (no proxy), bounded time per request.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(180))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// `POST /api/ingest` body with the first `n` of `blob_uris` (each with `rawDataSize`, so the
/// handler never needs a HEAD).
pub fn ingest_body(blob_uris: &[String], n: usize) -> Bytes {
    body(blob_uris, n, false)
}

/// The same, with `"tracking": true` (the blobs' rows go into the DM's status table first).
pub fn tracked_body(blob_uris: &[String], n: usize) -> Bytes {
    body(blob_uris, n, true)
}

fn body(blob_uris: &[String], n: usize, tracking: bool) -> Bytes {
    let blobs: Vec<Value> = blob_uris
        .iter()
        .take(n)
        .map(|u| json!({ "blobUri": u, "rawDataSize": 1_048_576 }))
        .collect();
    Bytes::from(
        json!({
            "database": "benchdb",
            "table": "BenchTable",
            "format": "csv",
            "ignoreFirstRecord": true,
            "tracking": tracking,
            "blobs": blobs
        })
        .to_string(),
    )
}

/// Bounds of one cell: stop issuing requests after `max_time` or `max_requests`, whichever
/// comes first (requests in flight then finish).
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub blobs: usize,
    pub concurrency: usize,
    /// Requests ask for status tracking.
    pub tracked: bool,
    pub max_time: Duration,
    pub max_requests: u64,
}

#[derive(Debug, Default, Clone)]
pub struct CellResult {
    pub requests: u64,
    pub failed_requests: u64,
    pub blobs_queued: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub first_error: Option<String>,
}

impl CellResult {
    pub fn blobs_per_sec(&self) -> f64 {
        self.blobs_queued as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs one cell against `url` with `body` (holding `cell.blobs` blobs).
pub async fn run_cell(client: &reqwest::Client, url: &str, body: Bytes, cell: Cell) -> CellResult {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..cell.concurrency)
        .map(|_| {
            let (client, url, body, issued) =
                (client.clone(), url.to_owned(), body.clone(), issued.clone());
            tokio::spawn(async move {
                let mut r = CellResult::default();
                while start.elapsed() < cell.max_time
                    && issued.fetch_add(1, Ordering::Relaxed) < cell.max_requests
                {
                    let t = Instant::now();
                    let outcome = post(&client, &url, body.clone(), cell.blobs).await;
                    r.latencies.push(t.elapsed());
                    r.requests += 1;
                    match outcome {
                        Ok(queued) => r.blobs_queued += queued,
                        Err(e) => {
                            r.failed_requests += 1;
                            r.first_error.get_or_insert(e);
                        }
                    }
                }
                r
            })
        })
        .collect();
    let mut total = CellResult::default();
    for w in workers {
        match w.await {
            Ok(r) => {
                total.requests += r.requests;
                total.failed_requests += r.failed_requests;
                total.blobs_queued += r.blobs_queued;
                total.latencies.extend(r.latencies);
                if total.first_error.is_none() {
                    total.first_error = r.first_error;
                }
            }
            Err(e) => {
                total
                    .first_error
                    .get_or_insert(format!("worker failed: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// One ingest request; `Ok(blobs queued)` for 202 (all) and 207 (the `queued` count).
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    blobs: usize,
) -> Result<u64, String> {
    let rsp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = rsp.status().as_u16();
    let text = rsp
        .bytes()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?;
    match status {
        202 => Ok(blobs as u64),
        207 => {
            let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
            let queued = v["queued"].as_u64().unwrap_or(0);
            if queued == 0 {
                Err(format!("207 without queued blobs: {}", snippet(&text)))
            } else {
                Ok(queued)
            }
        }
        _ => Err(format!("HTTP {status}: {}", snippet(&text))),
    }
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

/// Percentile `p` (0..=100) of `samples` (nearest rank).
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `samples`.
pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// Sequential round trips of `f` for up to `max_time` or `max` samples (after 20 warm-ups).
pub async fn round_trips<F, Fut>(
    max: usize,
    max_time: Duration,
    mut f: F,
) -> Result<Vec<Duration>, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for _ in 0..20 {
        f().await?;
    }
    let start = Instant::now();
    let mut out = Vec::with_capacity(max);
    while out.len() < max && start.elapsed() < max_time {
        let t = Instant::now();
        f().await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(
            median(&[Duration::from_millis(3)]),
            Duration::from_millis(3)
        );
        assert_eq!(median(&[]), Duration::ZERO);
    }

    #[test]
    fn bodies_hold_n_blobs() {
        let uris: Vec<String> = (0..5)
            .map(|i| format!("http://127.0.0.1:1/a/c/{i}.csv"))
            .collect();
        let v: Value = serde_json::from_slice(&ingest_body(&uris, 3)).unwrap();
        assert_eq!(v["blobs"].as_array().unwrap().len(), 3);
        assert_eq!(v["blobs"][0]["rawDataSize"], 1_048_576);
    }
}
