//! The benchmark: `cargo run --release -p kusto-dev --bin bench`. Never part of the tests.
//!
//! Starts its own stack on free loopback ports — Azurite, a DM emulator whose queues are
//! Azurite's, a second one whose queues are a counting null queue — builds and runs the release
//! handler against each, and prints Markdown tables: throughput (blobs queued per second for
//! 1/100/1000-blob requests at 1/8/64 concurrent requests), handler CPU per queued blob and
//! maximum RSS for every cell against either queue (and for the 100-blob × 4 "CPU cell" the CPU
//! targets are held to), latency, start-up time and memory, with the targets each is held to.
//!
//! With `--upload` (or `--upload-only`, which skips everything else) it also measures data
//! uploads (issue 11): for each of `--upload-sizes` MB (default 10,100,1000) a fresh handler
//! takes the body chunked at `POST /api/ingest/{db}/{table}?format=csv`, and the official Python
//! SDK (`QueuedIngestClient.ingest_from_stream`, in a virtualenv it creates under
//! `target/bench-venv`) uploads the same bytes to the same DM emulator and Azurite: MB/s and
//! peak RSS side by side (see `bench/upload.rs`).
//!
//! ```text
//! cargo run --release -p kusto-dev --bin bench -- [--cell-secs S] [--starts N]
//!     [--handler PATH] [--skip-azurite] [--skip-null] [--cpu-cell-only]
//!     [--upload | --upload-only] [--upload-sizes MB,MB,...]
//! ```

// Shared with `local-stack`; the bench uses only part of it.
#[allow(dead_code)]
#[path = "local_stack/process.rs"]
mod process;

#[path = "bench/load.rs"]
mod load;
#[path = "bench/procfs.rs"]
mod procfs;
#[path = "bench/upload.rs"]
mod upload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kusto_dev::azurite::SHARED_ACCOUNTS;
use kusto_dev::dm::pick_free_ports;
use kusto_dev::{Azurite, DmEmulator, EmulatorConfig};

use load::{Cell, CellResult, median, percentile};
use process::{HandlerProcess, Output};

const SIZES: [usize; 3] = [1, 100, 1000];
const CONCURRENCY: [usize; 3] = [1, 8, 64];
/// Source data account (blob URIs point here; the blobs need not exist: rawDataSize is given).
const DATA_ACCOUNT: &str = "datalake1";
/// Added to every DM call in the second series of cold starts: sequential DM calls would add
/// it twice to the first request, concurrent ones once.
const DM_DELAY: Duration = Duration::from_millis(20);
/// Azurite takes ~1,300 messages/s on the reference machine, so 64 concurrent 1,000-blob
/// requests (64,000 messages per wave) would run into client timeouts: that cell sends one wave
/// of this many concurrent requests instead.
const AZURITE_BIG_CELL_CONCURRENCY: usize = 16;
const MIB: f64 = 1024.0;
/// The CPU cell: 100-blob requests, 4 concurrent, warm, against both queues (the shape the CPU
/// targets are measured on). It runs at least this long, whatever `--cell-secs` says, so the
/// handler's CPU time (10 ms clock ticks) is measured over tens of thousands of blobs.
const CPU_CELL: (usize, usize) = (100, 4);
const CPU_CELL_MIN_TIME: Duration = Duration::from_secs(5);
/// Handler CPU per queued blob in the CPU cell.
const CPU_TARGET_AZURITE: Duration = Duration::from_micros(60);
const CPU_TARGET_NULL: Duration = Duration::from_micros(30);

struct Args {
    cell_time: Duration,
    starts: usize,
    handler: Option<PathBuf>,
    skip_azurite: bool,
    skip_null: bool,
    cpu_cell_only: bool,
    /// Run the data-upload cells after the others.
    upload: bool,
    /// Run only the data-upload cells.
    upload_only: bool,
    /// Body sizes of the data-upload cells, MB (10^6 bytes).
    upload_sizes: Vec<u64>,
}

fn usage() -> &'static str {
    "usage: cargo run --release -p kusto-dev --bin bench -- [--cell-secs S (3)] [--starts N (9)] \
     [--handler PATH] [--skip-azurite] [--skip-null] [--cpu-cell-only] \
     [--upload | --upload-only] [--upload-sizes MB,MB,... (10,100,1000)]\n\
     --upload: also measure data uploads (handler vs the Python SDK, one fresh handler per size);\n\
     --upload-only: only those; the SDK runs from target/bench-venv (created on first use: \
     python3 -m venv + pip install -r dev/bench/requirements.txt; PYTHON picks the interpreter)"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        cell_time: Duration::from_secs(3),
        starts: 9,
        handler: None,
        skip_azurite: false,
        skip_null: false,
        cpu_cell_only: false,
        upload: false,
        upload_only: false,
        upload_sizes: vec![10, 100, 1000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--cell-secs" => {
                let v = value(&arg)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 60.0)
                    .ok_or_else(|| {
                        format!("--cell-secs: '{v}' is not a number of seconds in (0, 60]")
                    })?;
                args.cell_time = Duration::from_secs_f64(secs);
            }
            "--starts" => {
                let v = value(&arg)?;
                args.starts = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| format!("--starts: '{v}' is not a number in 1..=100"))?;
            }
            "--handler" => args.handler = Some(PathBuf::from(value(&arg)?)),
            "--skip-azurite" => args.skip_azurite = true,
            "--skip-null" => args.skip_null = true,
            "--cpu-cell-only" => args.cpu_cell_only = true,
            "--upload" => args.upload = true,
            "--upload-only" => args.upload_only = true,
            "--upload-sizes" => {
                let v = value(&arg)?;
                args.upload_sizes = v
                    .split(',')
                    .map(|s| s.trim().parse().ok().filter(|n| (1..=10_000).contains(n)))
                    .collect::<Option<Vec<u64>>>()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "--upload-sizes: '{v}' is not a comma-separated list of MB in 1..=10000"
                        )
                    })?;
            }
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // The main thread spawns the handlers and outlives them (see `HandlerProcess::spawn`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match kusto_dev::tool::run("bench", parse_args(), runtime, run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Which DM emulator a handler talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dm {
    Null,
    Azurite,
    Upload,
}

/// Everything the measurements share.
struct Stack {
    azurite: Azurite,
    emu_az: DmEmulator,
    emu_null: DmEmulator,
    /// The data-upload cells' emulator (its queues hold only their messages), when asked for.
    emu_up: Option<DmEmulator>,
    exe: PathBuf,
    log_dir: PathBuf,
    blob_uris: Vec<String>,
    client: reqwest::Client,
    handlers_started: usize,
}

impl Stack {
    /// A release handler against `emu`, ready; returns it and its exec → ready time.
    fn start_handler(&mut self, null: bool) -> Result<(HandlerProcess, Duration), String> {
        self.start_handler_with(if null { Dm::Null } else { Dm::Azurite }, &[])
    }

    /// A release handler against `dm`, with `extra` settings on top of the bench's.
    fn start_handler_with(
        &mut self,
        dm: Dm,
        extra: &[(&str, String)],
    ) -> Result<(HandlerProcess, Duration), String> {
        let mut last = String::new();
        // A free port can be taken between picking and binding: try a few.
        for _ in 0..3 {
            let port = pick_free_ports(1).map_err(|e| e.to_string())?[0];
            let emu = match dm {
                Dm::Null => &self.emu_null,
                Dm::Azurite => &self.emu_az,
                Dm::Upload => self.emu_up.as_ref().ok_or("no upload emulator")?,
            };
            let mut env: Vec<(String, String)> = vec![
                ("FUNCTIONS_WORKER_RUNTIME".into(), "custom".into()),
                ("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()),
                ("INGEST_MAX_BLOBS".into(), "5000".into()),
                ("INGEST_MAX_BODY_BYTES".into(), "8388608".into()),
                ("INGEST_MAX_CONCURRENCY".into(), "64".into()),
                ("RUST_LOG".into(), "info".into()),
            ];
            env.extend(emu.handler_env());
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            self.handlers_started += 1;
            let log = self.log_dir.join(format!(
                "handler-{}-{}.log",
                self.handlers_started,
                match dm {
                    Dm::Null => "null",
                    Dm::Azurite => "azurite",
                    Dm::Upload => "upload",
                }
            ));
            let mut h = HandlerProcess::spawn(&self.exe, &env, port, Output::File(log))?;
            match h.wait_ready(Duration::from_secs(20), Duration::from_millis(1)) {
                Ok(ready) => return Ok((h, ready)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

async fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let exe = match args.handler.clone() {
        Some(p) => p,
        None => {
            eprintln!("building the release handler (cargo build --release --bin handler)...");
            process::build_handler(true)?
        }
    };
    let log_dir = process::workspace_root().join("target/bench");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    eprintln!("starting Azurite and two DM emulators (Azurite queues, null queue)...");
    let azurite = Azurite::start(&SHARED_ACCOUNTS).map_err(|e| e.to_string())?;
    let emu_az = DmEmulator::start(&azurite, EmulatorConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let emu_null = DmEmulator::start(
        &azurite,
        EmulatorConfig {
            null_queue: true,
            ..EmulatorConfig::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let emu_up = if args.upload || args.upload_only {
        Some(
            DmEmulator::start(&azurite, EmulatorConfig::default())
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let blob_uris: Vec<String> = (0..1000)
        .map(|i| {
            azurite.blob_sas_url(
                DATA_ACCOUNT,
                "bench",
                &format!("2025/11/24/part-{i:05}.csv"),
                "r",
                Duration::from_secs(24 * 3600),
            )
        })
        .collect();
    let mut stack = Stack {
        azurite,
        emu_az,
        emu_null,
        emu_up,
        exe,
        log_dir,
        blob_uris,
        client: load::client()?,
        handlers_started: 0,
    };

    if args.upload_only {
        let (rows, versions) = run_uploads(&mut stack, &args).await?;
        let mut o = String::from("## Machine\n\n| | |\n|---|---|\n");
        for (k, v) in procfs::machine() {
            o.push_str(&format!("| {k} | {v} |\n"));
        }
        o.push('\n');
        o.push_str(&upload_markdown(&rows, &versions, started.elapsed()));
        println!("{o}");
        return Ok(());
    }

    eprintln!("measuring round trips (DM emulator, token endpoint, null queue, Azurite)...");
    let rtt = round_trips(&stack).await?;

    eprintln!(
        "starting the handler {} times (exec → ready, idle RSS, cold first request)...",
        args.starts
    );
    let mut starts = Vec::new();
    for _ in 0..args.starts {
        starts.push(measure_start(&mut stack, Duration::ZERO, &[]).await?);
    }
    let delayed_starts = args.starts.clamp(1, 5);
    eprintln!(
        "{delayed_starts} more starts with +{} ms on every DM call...",
        DM_DELAY.as_millis()
    );
    let mut delayed = Vec::new();
    for _ in 0..delayed_starts {
        // v1: in auto, a cold DM's configuration is read before v1's two calls (one round trip
        // more, see src/backends.rs), which would hide whether those two overlap.
        delayed.push(
            measure_start(
                &mut stack,
                DM_DELAY,
                &[("KUSTO_INGEST_METHOD", "v1".into())],
            )
            .await?,
        );
    }
    stack.emu_null.faults().set_delay(Duration::ZERO);

    let (cpu_null, null_rows, peak_rss) = if args.skip_null {
        (None, Vec::new(), 0)
    } else {
        eprintln!("CPU cell and throughput cells against the null queue...");
        let (null_handler, _) = stack.start_handler(true)?;
        eprintln!("  null-queue handler: pid {}", null_handler.pid());
        let cpu = run_cpu_cell(&stack, &null_handler, true, &args, false).await?;
        let tracked = run_cpu_cell(&stack, &null_handler, true, &args, true).await?;
        let rows = if args.cpu_cell_only {
            Vec::new()
        } else {
            run_cells(&stack, &null_handler, true, &args).await?
        };
        let peak = procfs::status_kib(null_handler.pid(), "VmHWM").unwrap_or(0);
        (Some((cpu, tracked)), rows, peak)
    };

    let (cpu_az, az_rows) = if args.skip_azurite {
        (None, Vec::new())
    } else {
        eprintln!("CPU cell and throughput cells against Azurite...");
        let (az_handler, _) = stack.start_handler(false)?;
        eprintln!("  Azurite handler: pid {}", az_handler.pid());
        let cpu = run_cpu_cell(&stack, &az_handler, false, &args, false).await?;
        let tracked = run_cpu_cell(&stack, &az_handler, false, &args, true).await?;
        let rows = if args.cpu_cell_only {
            Vec::new()
        } else {
            run_cells(&stack, &az_handler, false, &args).await?
        };
        (Some((cpu, tracked)), rows)
    };

    let uploads = if args.upload {
        Some(run_uploads(&mut stack, &args).await?)
    } else {
        None
    };

    let (cpu_null_row, tracked_null) = cpu_null.unzip();
    let (cpu_az_row, tracked_az) = cpu_az.unzip();
    let report = Report {
        args: &args,
        rtt,
        starts,
        delayed,
        null_rows,
        az_rows,
        cpu_null: cpu_null_row,
        cpu_az: cpu_az_row,
        tracked_null,
        tracked_az,
        peak_rss_kib: peak_rss,
        total: started.elapsed(),
    };
    let mut out = report.markdown();
    if let Some((rows, versions)) = uploads {
        out.push('\n');
        out.push_str(&upload_markdown(&rows, &versions, started.elapsed()));
    }
    println!("{out}");
    Ok(())
}

/// The data-upload cells: per size, a fresh handler then the SDK, each result checked on the
/// queue. Returns the rows and the SDK's version line.
async fn run_uploads(
    stack: &mut Stack,
    args: &Args,
) -> Result<(Vec<upload::UploadRow>, String), String> {
    let root = process::workspace_root();
    let python = upload::venv_python(&root)?;
    let chunk = upload::chunk();
    let chunk_file = stack.log_dir.join("upload-chunk.csv");
    std::fs::write(&chunk_file, &chunk)
        .map_err(|e| format!("cannot write {}: {e}", chunk_file.display()))?;
    // Uploads of a GB take longer than the other cells' client timeout.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let emu = stack.emu_up.as_ref().ok_or("no upload emulator")?;
    let token = upload::dm_token(&client, emu).await?;
    let token_file = stack.log_dir.join("upload-dm-token");
    std::fs::write(&token_file, &token)
        .map_err(|e| format!("cannot write {}: {e}", token_file.display()))?;
    let setup = upload::SdkSetup {
        python,
        script: root.join("dev/bench/sdk_upload.py"),
        token_file,
        chunk_file,
    };
    let dm_url = emu.url().to_owned();
    let mut versions = String::new();
    let mut rows = Vec::new();
    for &size_mb in &args.upload_sizes {
        let size = size_mb * upload::MB;
        eprintln!("data upload, {size_mb} MB: handler (fresh process)...");
        let handler = upload_through_handler(stack, &client, chunk.clone(), size).await;
        if let Err(e) = &handler {
            eprintln!("  handler: {e}");
        }
        eprintln!("data upload, {size_mb} MB: Python SDK...");
        let emu = stack.emu_up.as_ref().ok_or("no upload emulator")?;
        let sdk = match upload::run_sdk(&setup, &dm_url, size).await {
            Ok((mut side, v)) => {
                versions = v;
                match upload::verify_and_clean(emu, &side.source_id, size).await {
                    Ok(compressed) => {
                        side.note = compressed
                            .map(|c| format!("blob {:.1} MB", c as f64 / upload::MB as f64))
                            .unwrap_or_default();
                        Ok(side)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &sdk {
            eprintln!("  SDK: {e}");
        }
        rows.push(upload::UploadRow {
            size_mb,
            handler,
            sdk,
        });
    }
    let _ = std::fs::remove_file(&setup.token_file);
    Ok((rows, versions))
}

/// One handler-side upload: a fresh handler (so VmHWM is this upload's), the body posted
/// chunked, the queued message checked.
async fn upload_through_handler(
    stack: &mut Stack,
    client: &reqwest::Client,
    chunk: bytes::Bytes,
    size: u64,
) -> Result<upload::Side, String> {
    let (mut handler, _) = stack.start_handler_with(
        Dm::Upload,
        &[
            // Room for the largest body (the default is 100 MiB).
            ("INGEST_MAX_DATA_BYTES", (size + upload::MB).to_string()),
            ("INGEST_DATA_DEADLINE_SECONDS", "3600".to_owned()),
        ],
    )?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base_rss_kib = procfs::status_kib(handler.pid(), "VmRSS").unwrap_or(0);
    let posted = upload::post_to_handler(client, &handler.url(), chunk, size).await;
    let peak_rss_kib = procfs::status_kib(handler.pid(), "VmHWM").unwrap_or(0);
    let (elapsed, source_id) = match posted {
        Ok(p) => p,
        Err(e) => {
            let tail = handler.log_tail();
            handler.stop(Duration::from_secs(3));
            return Err(format!("{e}\n{tail}"));
        }
    };
    handler.stop(Duration::from_secs(3));
    let emu = stack.emu_up.as_ref().ok_or("no upload emulator")?;
    let compressed = upload::verify_and_clean(emu, &source_id, size).await?;
    Ok(upload::Side {
        elapsed,
        peak_rss_kib,
        base_rss_kib,
        source_id,
        note: compressed
            .map(|c| format!("blob {:.1} MB", c as f64 / upload::MB as f64))
            .unwrap_or_default(),
    })
}

fn upload_markdown(rows: &[upload::UploadRow], versions: &str, total: Duration) -> String {
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line("## Data upload (issue 11): handler vs the Python SDK's `ingest_from_stream`".into());
    line(String::new());
    line(format!(
        "One CSV body per size (a 1 MB chunk of 5-column lines repeated; MB = 10^6 bytes), \
         gzip-compressed into a DM TempStorage container in Azurite and queued; each side's \
         queued message read back (Id, RawDataSize, table, blob present) before its figure counts. \
         Handler: a fresh release process per size, the body posted chunked (no Content-Length), \
         time to the 202; peak RSS = VmHWM. SDK: {}, \
         `QueuedIngestClient.ingest_from_stream(StreamDescriptor(stream, is_compressed=False, size=N))` \
         timed alone (interpreter start and imports excluded); peak RSS = ru_maxrss. \
         Both cold (token and DM calls included), same DM emulator, same Azurite. Run took {:.0} s.",
        if versions.is_empty() {
            "Python SDK"
        } else {
            versions
        },
        total.as_secs_f64()
    ));
    line(String::new());
    line("| body | handler MB/s | handler peak RSS | SDK MB/s | SDK peak RSS | ratio | target met | detail |".into());
    line("|---:|---:|---:|---:|---:|---:|:-:|---|".into());
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / MIB);
    for r in rows {
        let size = r.size_mb * upload::MB;
        let (hr, hrss) = match &r.handler {
            Ok(h) => (format!("{:.1}", h.mb_per_sec(size)), mib(h.peak_rss_kib)),
            Err(_) => ("failed".into(), "—".into()),
        };
        let (sr, srss) = match &r.sdk {
            Ok(s) => (format!("{:.1}", s.mb_per_sec(size)), mib(s.peak_rss_kib)),
            Err(_) => ("failed".into(), "—".into()),
        };
        let ratio = match (&r.handler, &r.sdk) {
            (Ok(h), Ok(s)) => Some(h.mb_per_sec(size) / s.mb_per_sec(size).max(1e-9)),
            _ => None,
        };
        let met = match (&r.handler, ratio) {
            (Ok(h), Some(q)) => {
                mark(q >= upload::RATIO_TARGET && h.peak_rss_kib <= upload::RSS_TARGET_KIB)
            }
            _ => "✗",
        };
        let side = |name: &str, s: &Result<upload::Side, String>| match s {
            Ok(s) => format!(
                "{name} {:.2} s, RSS before {}{}",
                s.elapsed.as_secs_f64(),
                mib(s.base_rss_kib),
                if s.note.is_empty() {
                    String::new()
                } else {
                    format!(", {}", s.note)
                }
            ),
            Err(e) => format!(
                "{name} failed: {}",
                e.lines().next().unwrap_or_default().replace('|', "/")
            ),
        };
        line(format!(
            "| {} MB | {hr} | {hrss} | {sr} | {srss} | {} | {met} | {}; {} |",
            r.size_mb,
            ratio
                .map(|q| format!("{q:.1}×"))
                .unwrap_or_else(|| "—".into()),
            side("handler", &r.handler),
            side("SDK", &r.sdk),
        ));
    }
    line(String::new());
    line(format!(
        "Target: handler MB/s ≥ {:.0}× the SDK's and handler peak RSS ≤ {} MiB at every size.",
        upload::RATIO_TARGET,
        upload::RSS_TARGET_KIB / 1024
    ));
    o
}

/// Round trips measured from the bench client alone.
struct RoundTrips {
    null_queue: Vec<Duration>,
    azurite_put: Vec<Duration>,
    dm_resources: Vec<Duration>,
    dm_identity: Vec<Duration>,
    token: Vec<Duration>,
}

async fn round_trips(stack: &Stack) -> Result<RoundTrips, String> {
    let client = &stack.client;
    let max_time = Duration::from_secs(2);
    // A message the size the handler posts (base64 of ~900 bytes of JSON).
    let text = "A".repeat(1200);
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>{text}</MessageText></QueueMessage>"
    );

    let null_queue_url = stack
        .emu_null
        .ingestion_resources()
        .into_iter()
        .find(|(kind, _)| kind == "SecuredReadyForAggregationQueue")
        .map(|(_, url)| url)
        .ok_or("the null-queue emulator hands out no queue")?;
    let put_url = |queue_url: &str| match queue_url.split_once('?') {
        Some((base, sas)) => format!("{base}/messages?{sas}"),
        None => format!("{queue_url}/messages"),
    };
    let post_xml = |url: String| {
        let body = xml.clone();
        async move {
            let rsp = client
                .post(&url)
                .header("x-ms-version", "2021-08-06")
                .header("content-type", "application/xml")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("Put Message: {e}"))?;
            let status = rsp.status();
            let _ = rsp.bytes().await;
            if status.as_u16() == 201 {
                Ok(())
            } else {
                Err(format!("Put Message answered {status}"))
            }
        }
    };
    let nq = put_url(&null_queue_url);
    let null_queue = load::round_trips(5000, max_time, || post_xml(nq.clone())).await?;
    let (account, queue) = stack
        .emu_az
        .ingestion_queues()
        .into_iter()
        .next()
        .ok_or("the Azurite emulator has no queue")?;
    let aq = put_url(&stack.azurite.queue_sas_url(
        &account,
        &queue,
        "a",
        Duration::from_secs(3600),
    ));
    let azurite_put = load::round_trips(2000, max_time, || post_xml(aq.clone())).await?;

    let token = stack
        .emu_null
        .issue_token("https://kusto.kusto.windows.net");
    let mgmt_url = format!("{}/v1/rest/mgmt", stack.emu_null.url());
    let mgmt = |csl: &'static str| {
        let (url, token) = (mgmt_url.clone(), token.clone());
        async move {
            let rsp = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(serde_json::json!({ "csl": csl, "db": "NetDefaultDB" }).to_string())
                .send()
                .await
                .map_err(|e| format!("{csl}: {e}"))?;
            let status = rsp.status();
            let _ = rsp.bytes().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{csl} answered {status}"))
            }
        }
    };
    let dm_resources =
        load::round_trips(2000, max_time, || mgmt(".get ingestion resources")).await?;
    let dm_identity =
        load::round_trips(2000, max_time, || mgmt(".get kusto identity token")).await?;
    let identity_url = format!(
        "{}?api-version=2019-08-01&resource=https%3A%2F%2Fkusto.kusto.windows.net",
        stack.emu_null.identity_endpoint()
    );
    let header = stack.emu_null.identity_header().to_owned();
    let token = load::round_trips(2000, max_time, || {
        let (url, header) = (identity_url.clone(), header.clone());
        async move {
            let rsp = client
                .get(&url)
                .header("x-identity-header", header)
                .send()
                .await
                .map_err(|e| format!("token endpoint: {e}"))?;
            let status = rsp.status();
            let _ = rsp.bytes().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("token endpoint answered {status}"))
            }
        }
    })
    .await?;
    Ok(RoundTrips {
        null_queue,
        azurite_put,
        dm_resources,
        dm_identity,
        token,
    })
}

/// One fresh handler process against the null queue.
struct StartSample {
    ready: Duration,
    idle_rss_kib: u64,
    cold: Duration,
    /// Time between the emulator finishing the two DM commands of the cold request.
    dm_gap: Option<Duration>,
}

/// One cold start; `settings` on top of the bench's (the delayed starts pin the v1 method).
async fn measure_start(
    stack: &mut Stack,
    dm_delay: Duration,
    settings: &[(&str, String)],
) -> Result<StartSample, String> {
    stack.emu_null.faults().set_delay(dm_delay);
    stack.emu_null.clear_logs();
    let (mut handler, ready) = stack.start_handler_with(Dm::Null, settings)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_rss_kib = procfs::status_kib(handler.pid(), "VmRSS").unwrap_or(0);
    let body = load::ingest_body(&stack.blob_uris, 1);
    let url = format!("{}/api/ingest", handler.url());
    let t = Instant::now();
    let rsp = stack
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("cold request: {e}"))?;
    let status = rsp.status();
    let text = rsp.text().await.unwrap_or_default();
    let cold = t.elapsed();
    if status.as_u16() != 202 {
        return Err(format!(
            "cold request answered {status}: {text}\n{}",
            handler.log_tail()
        ));
    }
    let log = stack.emu_null.mgmt_requests();
    let at = |needle: &str| {
        log.iter()
            .find(|r| r.command.to_ascii_lowercase().contains(needle))
            .map(|r| r.at)
    };
    let dm_gap = match (at("ingestion resources"), at("identity token")) {
        (Some(a), Some(b)) => Some(if a > b { a - b } else { b - a }),
        _ => None,
    };
    handler.stop(Duration::from_secs(3));
    Ok(StartSample {
        ready,
        idle_rss_kib,
        cold,
        dm_gap,
    })
}

/// One throughput cell's outcome.
struct Row {
    blobs: usize,
    concurrency: usize,
    result: CellResult,
    cpu: Option<Duration>,
    /// Messages the null queue counted during the cell (cross-check).
    null_count: Option<u64>,
    max_rss_kib: Option<u64>,
    note: Option<String>,
}

impl Row {
    /// Handler CPU time per queued blob over the cell.
    fn cpu_per_blob(&self) -> Option<Duration> {
        let cpu = self.cpu?;
        let blobs = u32::try_from(self.result.blobs_queued).ok()?;
        (blobs > 0).then(|| cpu / blobs)
    }
}

async fn run_cells(
    stack: &Stack,
    handler: &HandlerProcess,
    null: bool,
    args: &Args,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for blobs in SIZES {
        for concurrency in CONCURRENCY {
            let mut cell = Cell {
                blobs,
                concurrency,
                tracked: false,
                max_time: args.cell_time,
                max_requests: 1_000_000,
            };
            let mut note = None;
            if !null && blobs == 1000 && concurrency == 64 {
                cell.concurrency = AZURITE_BIG_CELL_CONCURRENCY;
                cell.max_requests = AZURITE_BIG_CELL_CONCURRENCY as u64;
                note = Some(format!(
                    "reduced to one wave of {AZURITE_BIG_CELL_CONCURRENCY} concurrent requests"
                ));
            }
            let mut row = measure_cell(stack, handler, null, cell).await?;
            row.concurrency = concurrency;
            row.note = note;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The CPU cell ([`CPU_CELL`]) against one handler, tracked or not.
async fn run_cpu_cell(
    stack: &Stack,
    handler: &HandlerProcess,
    null: bool,
    args: &Args,
    tracked: bool,
) -> Result<Row, String> {
    let (blobs, concurrency) = CPU_CELL;
    let cell = Cell {
        blobs,
        concurrency,
        tracked,
        max_time: args.cell_time.max(CPU_CELL_MIN_TIME),
        max_requests: 1_000_000,
    };
    measure_cell(stack, handler, null, cell).await
}

/// One warm-up request, then `cell`, with the handler's CPU time and maximum RSS over it.
async fn measure_cell(
    stack: &Stack,
    handler: &HandlerProcess,
    null: bool,
    cell: Cell,
) -> Result<Row, String> {
    let url = format!("{}/api/ingest", handler.url());
    let pid = handler.pid();
    let body = if cell.tracked {
        load::tracked_body(&stack.blob_uris, cell.blobs)
    } else {
        load::ingest_body(&stack.blob_uris, cell.blobs)
    };
    // Warm: the resource cache and a pooled connection.
    let warm = load::run_cell(
        &stack.client,
        &url,
        body.clone(),
        Cell {
            max_requests: 1,
            concurrency: 1,
            ..cell
        },
    )
    .await;
    if let Some(e) = warm.first_error {
        return Err(format!(
            "warm-up request failed: {e}\n{}",
            handler.log_tail()
        ));
    }
    let sampler = RssSampler::start(pid);
    let cpu0 = procfs::cpu_time(pid);
    let count0 = stack.emu_null.null_queue_count();
    let result = load::run_cell(&stack.client, &url, body, cell).await;
    let cpu = procfs::cpu_time(pid)
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    let null_count = null.then(|| stack.emu_null.null_queue_count() - count0);
    let max_rss_kib = Some(sampler.stop());
    let row = Row {
        blobs: cell.blobs,
        concurrency: cell.concurrency,
        result,
        cpu,
        null_count,
        max_rss_kib,
        note: None,
    };
    let result = &row.result;
    eprintln!(
        "  {} {:>4} blobs x {:>2}: {:>8.0} blobs/s ({} requests, {} failed, {:.1} s), CPU {} per blob, max RSS {}{}",
        if null { "null   " } else { "azurite" },
        cell.blobs,
        cell.concurrency,
        result.blobs_per_sec(),
        result.requests,
        result.failed_requests,
        result.elapsed.as_secs_f64(),
        row.cpu_per_blob().map(us).unwrap_or_else(|| "—".into()),
        row.max_rss_kib.map(mib).unwrap_or_else(|| "—".into()),
        result
            .first_error
            .as_ref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    );
    Ok(row)
}

/// Samples a process's VmRSS every 5 ms on its own thread; `stop` returns the maximum (KiB).
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(procfs::status_kib(pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

// ----- report ---------------------------------------------------------------------------

struct Report<'a> {
    args: &'a Args,
    rtt: RoundTrips,
    starts: Vec<StartSample>,
    delayed: Vec<StartSample>,
    null_rows: Vec<Row>,
    az_rows: Vec<Row>,
    /// The CPU cell against each queue.
    cpu_null: Option<Row>,
    cpu_az: Option<Row>,
    /// The same cell with `"tracking": true`.
    tracked_null: Option<Row>,
    tracked_az: Option<Row>,
    peak_rss_kib: u64,
    total: Duration,
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / MIB)
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

impl Report<'_> {
    fn cell(&self, row: Option<&Row>) -> (String, String) {
        let Some(r) = row else {
            return ("—".into(), "—".into());
        };
        let res = &r.result;
        let mut rate = thousands(res.blobs_per_sec());
        if res.failed_requests > 0 {
            rate.push_str(&format!(" ({} failed)", res.failed_requests));
        }
        let mut detail = format!(
            "{} in {:.1} s",
            thousands(res.requests as f64),
            res.elapsed.as_secs_f64()
        );
        if let Some(n) = &r.note {
            detail.push_str(&format!("; {n}"));
        }
        (rate, detail)
    }

    /// Handler CPU per blob and max RSS of a cell, "—" when not measured.
    fn cpu_rss(row: Option<&Row>) -> (String, String) {
        let cpu = row
            .and_then(Row::cpu_per_blob)
            .map(us)
            .unwrap_or_else(|| "—".into());
        let rss = row
            .and_then(|r| r.max_rss_kib)
            .map(mib)
            .unwrap_or_else(|| "—".into());
        (cpu, rss)
    }

    fn markdown(&self) -> String {
        let mut o = String::new();
        let mut line = |s: String| {
            o.push_str(&s);
            o.push('\n');
        };
        line("## Machine".into());
        line(String::new());
        line("| | |".into());
        line("|---|---|".into());
        for (k, v) in procfs::machine() {
            line(format!("| {k} | {v} |"));
        }
        line(String::new());
        line(format!(
            "Handler: release build, `RUST_LOG=info`, `INGEST_MAX_CONCURRENCY=64`, `INGEST_MAX_BLOBS=5000`. \
             Everything (bench client, handler, DM emulator, Azurite) shares the machine's CPUs. \
             Each throughput cell runs for {:.0} s (then the requests in flight finish); the total run took {:.0} s.",
            self.args.cell_time.as_secs_f64(),
            self.total.as_secs_f64()
        ));
        line(String::new());

        line(
            "## Throughput: blobs queued per second, end to end (`POST /api/ingest` → 202)".into(),
        );
        line(String::new());
        line("| blobs/request | concurrent requests | null queue: blobs/s | requests | handler CPU per blob | handler max RSS | Azurite: blobs/s | requests | handler CPU per blob | handler max RSS |".into());
        line("|---:|---:|---:|---|---:|---:|---:|---|---:|---:|".into());
        for blobs in SIZES {
            for concurrency in CONCURRENCY {
                let null_row = self
                    .null_rows
                    .iter()
                    .find(|r| r.blobs == blobs && r.concurrency == concurrency);
                let az_row = self
                    .az_rows
                    .iter()
                    .find(|r| r.blobs == blobs && r.concurrency == concurrency);
                let (nr, nd) = self.cell(null_row);
                let (ar, ad) = self.cell(az_row);
                let (ncpu, nrss) = Self::cpu_rss(null_row);
                let (acpu, arss) = Self::cpu_rss(az_row);
                line(format!(
                    "| {blobs} | {concurrency} | {nr} | {nd} | {ncpu} | {nrss} | {ar} | {ad} | {acpu} | {arss} |"
                ));
            }
        }
        let mismatches: Vec<String> = self
            .null_rows
            .iter()
            .filter(|r| r.null_count.is_some_and(|n| n != r.result.blobs_queued))
            .map(|r| {
                format!(
                    "{}x{}: handler said {} queued, null queue counted {}",
                    r.blobs,
                    r.concurrency,
                    r.result.blobs_queued,
                    r.null_count.unwrap_or(0)
                )
            })
            .collect();
        line(String::new());
        if mismatches.is_empty() {
            line("Null-queue counts match the handler's `queued` totals in every cell.".into());
        } else {
            line(format!(
                "Null-queue count mismatches: {}",
                mismatches.join("; ")
            ));
        }
        line(String::new());

        let (blobs, concurrency) = CPU_CELL;
        line(format!(
            "## Handler CPU per queued blob: {blobs}-blob requests, {concurrency} concurrent, warm"
        ));
        line(String::new());
        line("| queue | blobs/s | requests | handler CPU per blob | handler max RSS |".into());
        line("|---|---:|---|---:|---:|".into());
        for (name, row) in [
            ("null queue", self.cpu_null.as_ref()),
            ("Azurite", self.cpu_az.as_ref()),
        ] {
            let (rate, detail) = self.cell(row);
            let (cpu, rss) = Self::cpu_rss(row);
            line(format!("| {name} | {rate} | {detail} | {cpu} | {rss} |"));
        }
        line(String::new());

        line(
            "## Status tracking: the same cell with `\"tracking\": true` (a status-table transaction per 100 blobs first)"
                .into(),
        );
        line(String::new());
        line("| queue | untracked blobs/s | tracked blobs/s | throughput kept | untracked CPU per blob | tracked CPU per blob |".into());
        line("|---|---:|---:|---:|---:|---:|".into());
        for (name, plain, tracked) in [
            (
                "null queue",
                self.cpu_null.as_ref(),
                self.tracked_null.as_ref(),
            ),
            ("Azurite", self.cpu_az.as_ref(), self.tracked_az.as_ref()),
        ] {
            let rate = |r: Option<&Row>| r.map(|r| r.result.blobs_per_sec());
            let kept = rate(tracked)
                .zip(rate(plain))
                .filter(|(_, p)| *p > 0.0)
                .map(|(t, p)| format!("{:.0} %", t / p * 100.0))
                .unwrap_or_else(|| "—".into());
            let cpu = |r: Option<&Row>| Self::cpu_rss(r).0;
            line(format!(
                "| {name} | {} | {} | {kept} | {} | {} |",
                rate(plain).map(thousands).unwrap_or_else(|| "—".into()),
                rate(tracked).map(thousands).unwrap_or_else(|| "—".into()),
                cpu(plain),
                cpu(tracked)
            ));
        }
        line(String::new());

        let warm_null = self
            .null_rows
            .iter()
            .find(|r| r.blobs == 1 && r.concurrency == 1);
        let warm_az = self
            .az_rows
            .iter()
            .find(|r| r.blobs == 1 && r.concurrency == 1);
        line("## Latency".into());
        line(String::new());
        line("| measurement | p50 | p99 | samples |".into());
        line("|---|---:|---:|---:|".into());
        let mut lat = |name: &str, s: &[Duration]| {
            if s.is_empty() {
                line(format!("| {name} | — | — | 0 |"));
            } else {
                line(format!(
                    "| {name} | {} | {} | {} |",
                    ms(percentile(s, 50.0)),
                    ms(percentile(s, 99.0)),
                    s.len()
                ));
            }
        };
        lat(
            "warm 1-blob request, null queue",
            warm_null.map(|r| &r.result.latencies[..]).unwrap_or(&[]),
        );
        lat(
            "warm 1-blob request, Azurite",
            warm_az.map(|r| &r.result.latencies[..]).unwrap_or(&[]),
        );
        lat(
            "null-queue round trip alone (bench → Put Message)",
            &self.rtt.null_queue,
        );
        lat(
            "Azurite Put Message round trip alone",
            &self.rtt.azurite_put,
        );
        lat(
            "DM emulator round trip, `.get ingestion resources`",
            &self.rtt.dm_resources,
        );
        lat(
            "DM emulator round trip, `.get kusto identity token`",
            &self.rtt.dm_identity,
        );
        lat("token endpoint round trip", &self.rtt.token);
        let colds: Vec<Duration> = self.starts.iter().map(|s| s.cold).collect();
        lat(
            "cold: first request after start (null queue, one per start)",
            &colds,
        );
        let delayed: Vec<Duration> = self.delayed.iter().map(|s| s.cold).collect();
        lat(
            &format!(
                "cold, with +{} ms injected on every DM call (`KUSTO_INGEST_METHOD=v1`)",
                DM_DELAY.as_millis()
            ),
            &delayed,
        );
        line(String::new());

        let dm_rtt = median(&self.rtt.dm_resources);
        let gaps: Vec<Duration> = self.starts.iter().filter_map(|s| s.dm_gap).collect();
        let delayed_gaps: Vec<Duration> = self.delayed.iter().filter_map(|s| s.dm_gap).collect();
        let delayed_overlapped = delayed_gaps.iter().filter(|g| **g < DM_DELAY / 2).count();
        let extra = median(&delayed).saturating_sub(median(&colds));
        let dm_round_trips = extra.as_secs_f64() / DM_DELAY.as_secs_f64();
        line(format!(
            "Cold DM calls: the emulator finished `.get ingestion resources` and `.get kusto identity token` \
             {} apart (median of {}; one DM round trip is {}, too short to tell concurrent from sequential \
             calls by their timestamps). With +{} ms on every DM call they finished {} apart (overlapped, i.e. \
             less than half the delay apart, in {delayed_overlapped}/{} starts), and the first request took {} \
             longer = {dm_round_trips:.2} DM round trips (concurrent calls: 1, sequential: 2). The delayed \
             starts pin `KUSTO_INGEST_METHOD=v1`: in the default `auto` a cold DM's configuration is read \
             first, one round trip more.",
            us(median(&gaps)),
            gaps.len(),
            us(dm_rtt),
            DM_DELAY.as_millis(),
            ms(median(&delayed_gaps)),
            delayed_gaps.len(),
            ms(extra),
        ));
        line(String::new());

        let readies: Vec<Duration> = self.starts.iter().map(|s| s.ready).collect();
        let mut idle: Vec<u64> = self.starts.iter().map(|s| s.idle_rss_kib).collect();
        idle.sort_unstable();
        let idle_median = idle.get(idle.len() / 2).copied().unwrap_or(0);
        let busy_rss = self
            .null_rows
            .iter()
            .find(|r| r.blobs == 1000 && r.concurrency == 64)
            .and_then(|r| r.max_rss_kib)
            .unwrap_or(0);
        line("## Start-up and memory".into());
        line(String::new());
        line("| measurement | value |".into());
        line("|---|---:|".into());
        line(format!(
            "| exec → answers `GET /` (median of {}; min / max) | {} ({} / {}) |",
            readies.len(),
            ms(median(&readies)),
            ms(readies.iter().min().copied().unwrap_or_default()),
            ms(readies.iter().max().copied().unwrap_or_default()),
        ));
        line(format!(
            "| idle RSS 200 ms after ready (median of {}) | {} |",
            idle.len(),
            mib(idle_median)
        ));
        line(format!(
            "| RSS while queuing 64 × 1,000 blobs (max of 5 ms samples) | {} |",
            mib(busy_rss)
        ));
        line(format!(
            "| peak RSS (VmHWM) of the null-queue handler after all its cells | {} |",
            mib(self.peak_rss_kib)
        ));
        line(String::new());

        line("## Targets".into());
        line(String::new());
        line("| target | measured | |".into());
        line("|---|---|:-:|".into());
        let cpu_az = self.cpu_az.as_ref().and_then(Row::cpu_per_blob);
        let cpu_null = self.cpu_null.as_ref().and_then(Row::cpu_per_blob);
        let fmt_cpu = |c: Option<Duration>| {
            c.map(|c| format!("{:.1} µs", c.as_secs_f64() * 1e6))
                .unwrap_or_else(|| "—".into())
        };
        line(format!(
            "| handler CPU per queued blob ≤ {} µs against Azurite / ≤ {} µs against the null queue ({blobs}-blob requests, {concurrency} concurrent, warm) | {} Azurite / {} null | {} |",
            CPU_TARGET_AZURITE.as_micros(),
            CPU_TARGET_NULL.as_micros(),
            fmt_cpu(cpu_az),
            fmt_cpu(cpu_null),
            mark(
                cpu_az.is_some_and(|c| c <= CPU_TARGET_AZURITE)
                    && cpu_null.is_some_and(|c| c <= CPU_TARGET_NULL)
            )
        ));
        let kept = |plain: Option<&Row>, tracked: Option<&Row>| {
            plain
                .zip(tracked)
                .map(|(p, t)| t.result.blobs_per_sec() / p.result.blobs_per_sec().max(1.0))
        };
        let kept_az = kept(self.cpu_az.as_ref(), self.tracked_az.as_ref());
        let kept_null = kept(self.cpu_null.as_ref(), self.tracked_null.as_ref());
        line(format!(
            "| status tracking costs ≤ 25 % throughput ({blobs}-blob requests, {concurrency} concurrent; one status-table transaction per 100 blobs) | {} Azurite / {} null kept | {} |",
            kept_az
                .map(|k| format!("{:.0} %", k * 100.0))
                .unwrap_or_else(|| "—".into()),
            kept_null
                .map(|k| format!("{:.0} %", k * 100.0))
                .unwrap_or_else(|| "—".into()),
            mark(kept_az.is_some_and(|k| k >= 0.75) && kept_null.is_some_and(|k| k >= 0.75))
        ));
        let best = self
            .null_rows
            .iter()
            .filter(|r| r.blobs == 1000)
            .max_by(|a, b| {
                a.result
                    .blobs_per_sec()
                    .total_cmp(&b.result.blobs_per_sec())
            });
        line(format!(
            "| ≥ 10,000 blobs/s into the null queue with 1,000-blob requests (best concurrency) | {} | {} |",
            best.map(|r| format!(
                "{} blobs/s at {} concurrent",
                thousands(r.result.blobs_per_sec()),
                r.concurrency
            ))
            .unwrap_or_else(|| "—".into()),
            mark(best.is_some_and(|r| r.result.blobs_per_sec() >= 10_000.0))
        ));
        let warm_p50 = warm_null.map(|r| percentile(&r.result.latencies, 50.0));
        let nq = median(&self.rtt.null_queue);
        line(format!(
            "| warm 1-blob latency p50 ≤ null-queue round trip + 1 ms | {} vs {} + 1 ms | {} |",
            warm_p50.map(ms).unwrap_or_else(|| "—".into()),
            ms(nq),
            mark(warm_p50.is_some_and(|p| p <= nq + Duration::from_millis(1)))
        ));
        let ready = median(&readies);
        line(format!(
            "| exec → ready ≤ 50 ms (median) | {} | {} |",
            ms(ready),
            mark(ready <= Duration::from_millis(50))
        ));
        line(format!(
            "| idle RSS ≤ 20 MiB | {} | {} |",
            mib(idle_median),
            mark(idle_median as f64 <= 20.0 * MIB)
        ));
        line(format!(
            "| RSS while queuing 64 × 1,000 blobs ≤ 100 MiB | {} | {} |",
            mib(busy_rss),
            mark(busy_rss > 0 && busy_rss as f64 <= 100.0 * MIB)
        ));
        let warm = warm_p50.unwrap_or_default();
        let cold_extra = median(&colds).saturating_sub(warm);
        let cold_trips = cold_extra.as_secs_f64() / dm_rtt.as_secs_f64().max(1e-9);
        line(format!(
            "| cold first request ≈ two round trips more than a warm one (token + the concurrent DM calls) | cold {} − warm {} = {} ≈ {cold_trips:.0} DM round trips | {} |",
            ms(median(&colds)),
            ms(warm),
            ms(cold_extra),
            mark(cold_trips <= 3.0)
        ));
        line(format!(
            "| cold first request: the two DM calls run concurrently | {dm_round_trips:.2} DM round trips added by +{} ms per call; overlapped {delayed_overlapped}/{} | {} |",
            DM_DELAY.as_millis(),
            delayed_gaps.len(),
            mark(
                dm_round_trips < 1.5
                    && delayed_overlapped == delayed_gaps.len()
                    && !delayed_gaps.is_empty()
            )
        ));
        o
    }
}
