//! The soak and fault run: `cargo run --release -p kusto-dev --bin soak`. Never part of the tests.
//!
//! Starts its own stack on free loopback ports (Azurite, a DM emulator whose queues are
//! Azurite's, the release handler), runs a bounded mixed load from several clients — requests
//! of 1 to 200 blobs, each blob with its own `sourceId` — through eight phases, each injecting
//! one fault while the load runs (storage hangs, resets, lost answers, 503s, a slow DM, SAS
//! expiry, SIGTERM), then reads every message back from the queues and reconciles by
//! `sourceId`: lost, mis-reported, unknown, duplicated, and latency per phase, as Markdown.
//! Exits non-zero when a blob was lost or reported not queued although it was.
//!
//! ```text
//! cargo run --release -p kusto-dev --bin soak -- [--seconds N] [--clients N] [--handler PATH] [--quick]
//! ```

// Shared with `local-stack` and `bench`; the soak uses only part of them.
#[allow(dead_code)]
#[path = "bench/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "local_stack/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "bench/procfs.rs"]
mod procfs;

#[path = "soak/clients.rs"]
mod clients;
#[path = "soak/drain.rs"]
mod drain;
#[path = "soak/phases.rs"]
mod phases;
#[path = "soak/reconcile.rs"]
mod reconcile;
#[path = "soak/report.rs"]
mod report;
#[path = "soak/stack.rs"]
mod stack;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clients::Shared;
use phases::PHASES;
use stack::Stack;

/// The handler's `INGEST_REQUEST_DEADLINE_SECONDS`: short, so faulty phases stay short.
const DEADLINE: Duration = Duration::from_secs(5);
/// Queue SAS lifetime for the run: the handler refreshes its resources every ~6 s, so a fault
/// injected in the emulator reaches it quickly.
const SAS_LIFETIME: Duration = Duration::from_secs(24);

struct Args {
    hold: Duration,
    clients: usize,
    handler: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: cargo run --release -p kusto-dev --bin soak -- [--seconds N (10): each fault held N s] \
     [--clients N (4)] [--handler PATH] [--quick (3 s, 2 clients)]"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        hold: Duration::from_secs(10),
        clients: 4,
        handler: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str, max: u64| {
            let v = it
                .next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))?;
            v.parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| format!("{name}: '{v}' is not a number in 1..={max}"))
        };
        match arg.as_str() {
            "--seconds" => args.hold = Duration::from_secs(number(&arg, 120)?),
            "--clients" => args.clients = number(&arg, 32)? as usize,
            "--handler" => {
                let path = it
                    .next()
                    .ok_or_else(|| format!("--handler needs a value\n{}", usage()))?;
                args.handler = Some(PathBuf::from(path));
            }
            "--quick" => {
                args.hold = Duration::from_secs(3);
                args.clients = 2;
            }
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // The main thread runs the conductor and spawns the handlers, and outlives them (see
    // `HandlerProcess::spawn`); the clients run on the worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match kusto_dev::tool::run("soak", parse_args(), runtime, run) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("soak: blobs were lost or mis-reported (see the verdict)");
            ExitCode::FAILURE
        }
        Err(code) => code,
    }
}

/// The whole run; `Ok(false)` when the verdict fails.
async fn run(args: Args) -> Result<bool, String> {
    let started = Instant::now();
    let exe = match args.handler.clone() {
        Some(p) => p,
        None => {
            eprintln!("building the release handler (cargo build --release --bin handler)...");
            process::build_handler(true)?
        }
    };
    let log_dir = process::workspace_root().join("target/soak");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    eprintln!(
        "starting Azurite, the DM emulator and the handler (logs in {})...",
        log_dir.display()
    );
    let mut stack = Stack::start(exe, log_dir, DEADLINE.as_secs(), SAS_LIFETIME).await?;
    let consumer = drain::Consumer::start(&stack.emu)?;
    let (url, _) = stack.start_handler()?;
    let shared = Arc::new(Shared::new(url, &stack.container_sas_url()));
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(DEADLINE + Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let clients: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(clients::run(i as u64 + 1, http.clone(), shared.clone())))
        .collect();

    let recovery = (args.hold / 3).max(Duration::from_secs(2));
    let mut notes = Vec::new();
    let mut failure = None;
    for (i, phase) in PHASES.iter().enumerate() {
        shared.set_phase(i);
        let t = Instant::now();
        eprintln!(
            "phase {}/{}: {} — {}",
            i + 1,
            PHASES.len(),
            phase.name,
            phase.what
        );
        match phases::run(phase, &mut stack, &shared, args.hold, recovery, DEADLINE).await {
            Ok(n) => {
                eprintln!(
                    "  {:.0} s; {} requests so far; {}",
                    t.elapsed().as_secs_f64(),
                    shared.requests.load(Ordering::Relaxed),
                    n.join("; ")
                );
                notes.push(n);
            }
            Err(e) => {
                failure = Some(format!("phase {}: {e}\n{}", phase.name, stack.log_tail()));
                break;
            }
        }
    }

    eprintln!("stopping the clients (requests in flight finish)...");
    shared.stop();
    let mut records = Vec::new();
    for c in clients {
        records.extend(c.await.map_err(|e| format!("a client failed: {e}"))?);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Nothing may reach a queue once the handler is gone; read them only then.
    if let (Some(stopped), Some(last)) = (stack.stop_handler(), notes.last_mut()) {
        last.push(format!(
            "after the run: SIGTERM → {} in {:.2} s, peak RSS {:.1} MiB",
            stopped
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "?".into()),
            stopped.took.as_secs_f64(),
            stopped.peak_rss_kib as f64 / 1024.0
        ));
    }
    stack.emu.faults().reset();
    eprintln!("reading the ingestion queues empty...");
    let messages = consumer.finish().await?;
    let reconciliation = reconcile::reconcile(PHASES.len(), &records, &messages);
    let run = report::Run {
        clients: args.clients,
        hold: args.hold,
        recovery,
        deadline: DEADLINE,
        sas_lifetime: SAS_LIFETIME,
        handlers: stack.handlers_started(),
        total: started.elapsed(),
        notes: &notes,
        machine: procfs::machine(),
    };
    println!("{}", report::markdown(&run, &reconciliation));
    Ok(reconciliation.total.violations() == 0
        && reconciliation.strays == 0
        && reconciliation.wrong_path == 0)
}
