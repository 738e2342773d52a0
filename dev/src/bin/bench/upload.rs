//! The data-upload cells (`--upload`, issue 11): one body of N MB posted to a fresh handler's
//! `POST /api/ingest/{database}/{table}?format=csv` (chunked, generated as it is sent), and the
//! same bytes through the official Python SDK's `QueuedIngestClient.ingest_from_stream` on the
//! same stack (a virtualenv under `target/bench-venv`, `dev/bench/requirements.txt`,
//! `dev/bench/sdk_upload.py`). Either side's queued message is read back from the DM's queues
//! (its `Id` and `RawDataSize` checked) before its figure counts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use kusto_dev::DmEmulator;

pub const DATABASE: &str = "benchdb";
pub const TABLE: &str = "Upload";
/// Sizes are in MB of 10^6 bytes; so are the MB/s figures.
pub const MB: u64 = 1_000_000;
/// The targets: at least this many times the SDK's MB/s, handler peak RSS at most this.
pub const RATIO_TARGET: f64 = 2.0;
pub const RSS_TARGET_KIB: u64 = 64 * 1024;

/// 1 MB (10^6 bytes) of CSV: 5 columns (id, timestamp, host, metric, value), the last line's
/// host padded so the chunk ends exactly on a line. Bodies are this chunk repeated.
pub fn chunk() -> Bytes {
    let size = MB as usize;
    let mut out = String::with_capacity(size);
    let mut i = 0u64;
    while size - out.len() >= 200 {
        out.push_str(&format!(
            "{i:08},2026-12-01T00:{:02}:{:02}Z,host-{:02},metric-{},{}.{:03}\n",
            (i / 60) % 60,
            i % 60,
            i % 97,
            i % 13,
            (i * 7919) % 1_000_003,
            i % 1000
        ));
        i += 1;
    }
    let head = format!("{i:08},2026-12-01T00:00:00Z,host-");
    let tail = ",metric-0,0.000\n";
    let pad = size - out.len() - head.len() - tail.len();
    out.push_str(&head);
    out.push_str(&"x".repeat(pad));
    out.push_str(tail);
    debug_assert_eq!(out.len(), size);
    Bytes::from(out)
}

/// `size` bytes: `chunk` repeated (the last copy cut short), produced as the client sends them.
pub fn body(chunk: Bytes, size: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(body_stream(chunk, size))
}

fn body_stream(
    chunk: Bytes,
    size: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            (sent < size).then(|| {
                let n = (chunk.len() as u64).min(size - sent);
                (Ok::<_, std::io::Error>(chunk.slice(..n as usize)), sent + n)
            })
        }
    })
}

/// One side of one cell.
#[derive(Debug, Clone)]
pub struct Side {
    pub elapsed: Duration,
    pub peak_rss_kib: u64,
    /// RSS before the upload: the handler's idle VmRSS, the SDK process's ru_maxrss after its
    /// imports and client construction.
    pub base_rss_kib: u64,
    pub source_id: String,
    /// Compressed size of the uploaded blob, when known.
    pub note: String,
}

impl Side {
    pub fn mb_per_sec(&self, size: u64) -> f64 {
        size as f64 / MB as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One row of the upload table.
pub struct UploadRow {
    pub size_mb: u64,
    pub handler: Result<Side, String>,
    pub sdk: Result<Side, String>,
}

/// The virtualenv's python: `target/bench-venv`, created and filled from
/// `dev/bench/requirements.txt` when missing or when the requirements changed since.
pub fn venv_python(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join("target/bench-venv");
    let python = venv.join("bin/python");
    let req_path = root.join("dev/bench/requirements.txt");
    let req = std::fs::read_to_string(&req_path)
        .map_err(|e| format!("cannot read {}: {e}", req_path.display()))?;
    let marker = venv.join("bench-requirements.txt");
    if python.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(req.as_str()) {
        return Ok(python);
    }
    let base = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    eprintln!(
        "creating {} and installing {} ...",
        venv.display(),
        req_path.display()
    );
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({status})"))
        }
    };
    run(
        Command::new(&base).args(["-m", "venv"]).arg(&venv),
        "python3 -m venv (set PYTHON to another interpreter)",
    )?;
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&req_path),
        "pip install -r dev/bench/requirements.txt",
    )?;
    std::fs::write(&marker, req).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(python)
}

/// A token for the DM from the emulator's managed-identity endpoint (as a deployed app gets it).
pub async fn dm_token(client: &reqwest::Client, emu: &DmEmulator) -> Result<String, String> {
    let url = format!(
        "{}?api-version=2019-08-01&resource=https%3A%2F%2Fkusto.kusto.windows.net",
        emu.identity_endpoint()
    );
    let rsp = client
        .get(&url)
        .header("x-identity-header", emu.identity_header())
        .send()
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    let status = rsp.status();
    let v: Value = rsp
        .json()
        .await
        .map_err(|e| format!("token endpoint ({status}): {e}"))?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("token endpoint answered {status} without access_token"))
}

/// Paths the SDK side needs.
pub struct SdkSetup {
    pub python: PathBuf,
    pub script: PathBuf,
    pub token_file: PathBuf,
    pub chunk_file: PathBuf,
}

/// Runs `dev/bench/sdk_upload.py` for `size` bytes; the SDK's own version and Python's are
/// returned with the figures.
pub async fn run_sdk(setup: &SdkSetup, dm_url: &str, size: u64) -> Result<(Side, String), String> {
    let mut cmd = Command::new(&setup.python);
    cmd.arg(&setup.script)
        .args(["--dm-url", dm_url, "--size", &size.to_string()])
        .args(["--database", DATABASE, "--table", TABLE])
        .arg("--token-file")
        .arg(&setup.token_file)
        .arg("--chunk-file")
        .arg(&setup.chunk_file)
        // Loopback only: no proxy from the environment.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| format!("sdk_upload.py: {e}"))?
        .map_err(|e| format!("cannot run sdk_upload.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "sdk_upload.py failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    let v: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("sdk_upload.py printed no JSON: {stdout:.500}"))?;
    let field = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("sdk_upload.py: no {k}"))
    };
    let side = Side {
        elapsed: Duration::from_secs_f64(v["seconds"].as_f64().ok_or("sdk_upload.py: no seconds")?),
        peak_rss_kib: field("peak_rss_kib")?,
        base_rss_kib: field("base_rss_kib")?,
        source_id: v["source_id"].as_str().unwrap_or_default().to_owned(),
        note: String::new(),
    };
    let versions = format!(
        "azure-kusto-ingest {} on Python {}",
        v["sdk_version"].as_str().unwrap_or("?"),
        v["python"].as_str().unwrap_or("?")
    );
    Ok((side, versions))
}

/// Posts `size` bytes to `handler_url` chunked; returns the time to the 202 and its `sourceId`.
pub async fn post_to_handler(
    client: &reqwest::Client,
    handler_url: &str,
    chunk: Bytes,
    size: u64,
) -> Result<(Duration, String), String> {
    let url = format!("{handler_url}/api/ingest/{DATABASE}/{TABLE}?format=csv");
    let t = Instant::now();
    let rsp = client
        .post(&url)
        .header("content-type", "text/csv")
        .body(body(chunk, size))
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = rsp.status();
    let text = rsp.text().await.unwrap_or_default();
    let elapsed = t.elapsed();
    if status.as_u16() != 202 {
        return Err(format!("the handler answered {status}: {text:.500}"));
    }
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("202 body: {e}: {text:.300}"))?;
    let source_id = v["blobs"][0]["sourceId"]
        .as_str()
        .ok_or_else(|| format!("202 without blobs[0].sourceId: {text:.300}"))?
        .to_owned();
    Ok((elapsed, source_id))
}

/// Takes every message off the emulator's ingestion queues and checks that exactly one is
/// `source_id`'s, for `size` bytes, into the bench table, its blob in a TempStorage container;
/// returns the blob's compressed size when Azurite tells it. Then deletes the temporary blobs
/// (Azurite keeps them in memory).
pub async fn verify_and_clean(
    emu: &DmEmulator,
    source_id: &str,
    size: u64,
) -> Result<Option<u64>, String> {
    let messages = emu
        .receive_ingestion_messages()
        .await
        .map_err(|e| format!("reading the ingestion queues: {e}"))?;
    let ours: Vec<&Value> = messages
        .iter()
        .filter_map(|m| m.json.as_ref())
        .filter(|j| j["Id"].as_str() == Some(source_id))
        .collect();
    let result = match ours.as_slice() {
        [m] => {
            let raw = m["RawDataSize"].as_u64();
            let path = m["BlobPath"].as_str().unwrap_or_default();
            if raw != Some(size) {
                Err(format!("queued RawDataSize {raw:?}, expected {size}"))
            } else if m["DatabaseName"] != DATABASE || m["TableName"] != TABLE {
                Err(format!(
                    "queued for {}.{}",
                    m["DatabaseName"], m["TableName"]
                ))
            } else {
                Ok(path.split('?').next().unwrap_or_default().to_owned())
            }
        }
        other => Err(format!(
            "{} queued messages with Id {source_id} ({} messages in all)",
            other.len(),
            messages.len()
        )),
    };
    let azurite = emu.azurite();
    let mut compressed = None;
    let mut found = false;
    for (account, container) in emu.temp_containers() {
        for name in azurite
            .list_blobs(&account, &container)
            .await
            .unwrap_or_default()
        {
            if let Ok(path) = &result
                && path.ends_with(&format!("/{container}/{name}"))
            {
                found = true;
                compressed = blob_size(azurite, &account, &container, &name).await;
            }
            let _ = azurite.delete_blob(&account, &container, &name).await;
        }
    }
    let path = result?;
    if !found {
        return Err(format!(
            "the queued BlobPath {path} is not in a TempStorage container"
        ));
    }
    Ok(compressed)
}

/// `Content-Length` of a HEAD on the blob (shared-key signed by the Azurite handle's SAS).
async fn blob_size(
    azurite: &kusto_dev::storage::AzuriteHandle,
    account: &str,
    container: &str,
    name: &str,
) -> Option<u64> {
    let url = azurite.blob_sas_url(account, container, name, "r", Duration::from_secs(600));
    let rsp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .head(&url)
        .send()
        .await
        .ok()?;
    rsp.headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn the_chunk_is_one_mb_of_whole_five_column_lines() {
        let c = chunk();
        assert_eq!(c.len() as u64, MB);
        assert_eq!(c.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&c).unwrap();
        for line in text.lines() {
            assert_eq!(line.split(',').count(), 5, "{line}");
        }
    }

    #[tokio::test]
    async fn the_body_is_exactly_size_bytes_of_the_chunk_repeated() {
        let c = Bytes::from_static(b"0123456789");
        let mut stream = std::pin::pin!(body_stream(c, 25));
        let mut all = Vec::new();
        while let Some(frame) = stream.next().await {
            all.extend_from_slice(&frame.unwrap());
        }
        assert_eq!(all, b"0123456789012345678901234");
    }
}
