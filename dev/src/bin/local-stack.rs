//! The local stack: everything the handler talks to, on the fixed loopback addresses of
//! `local.settings.json`, plus the handler itself.
//!
//! ```text
//! cargo run -p kusto-dev --bin local-stack [-- --settings PATH] [--handler PATH]
//! ```
//! 1. checks Node.js and that every port is free (before starting anything);
//! 2. installs Azurite from dev/azurite's lockfile if needed, builds the handler (`cargo build
//!    --bin handler`);
//! 3. starts Azurite (10000/10001/10002), the DM emulator (`KUSTO_INGEST_URI`) and the token
//!    endpoint (`IDENTITY_ENDPOINT`), then the handler with exactly the `Values` of
//!    local.settings.json as its environment, and waits for `GET /` to answer;
//! 4. uploads dev/sample/employees.csv, queues it with `POST /api/ingest` (`"tracking": true`) and
//!    prints the answer, then polls `GET /api/ingest/operations/{id}` until the emulator's
//!    ingestion worker is done and prints the outcome (`employees.csv: Succeeded, 5 rows in
//!    localdb.Employees`, or the DM error code);
//! 5. posts dev/sample/readings.ndjson as the body of `POST /api/ingest/localdb/Readings`
//!    (streamed through the DM's temporary storage) and shows it ingested the same way;
//! 6. watches the routed containers (`landing` by default) and posts a `BlobCreated` invocation
//!    to the handler for every new blob, as Event Grid would;
//! 7. on Ctrl-C stops the processes it started, by their ids.

// Shared with `bench`, which uses the parts this binary does not.
#[allow(dead_code)]
#[path = "local_stack/process.rs"]
mod process;
#[path = "local_stack/settings.rs"]
mod settings;
#[path = "local_stack/show.rs"]
mod show;
#[path = "local_stack/watcher.rs"]
mod watcher;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use kusto_dev::dm::DEFAULT_AUDIENCES;
use kusto_dev::{Azurite, AzuriteHandle, DmEmulator, EmulatorConfig, StorageAccount};
use serde_json::{Value, json};

use process::{HandlerProcess, Output};
use settings::{AZURITE_PORTS, LocalSettings};

/// The well-known Azurite account (`UseDevelopmentStorage=true`), kept for tools such as the
/// Functions host or Storage Explorer; its key is public.
const DEVSTORE_ACCOUNT: &str = "devstoreaccount1";
const DEVSTORE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Accounts holding the DM's ingestion queues.
const INGEST_ACCOUNTS: [&str; 2] = ["ingestacct1", "ingestacct2"];
/// Account for the user's data: the sample and the watched containers.
const DATA_ACCOUNT: &str = "datalake1";
const SAMPLE_CONTAINER: &str = "samples";
const SAMPLE_FILE: &str = "dev/sample/employees.csv";
/// Posted as data (not a blob URL) to the data route.
const SAMPLE_DATA_FILE: &str = "dev/sample/readings.ndjson";
const SAMPLE_DATA_TABLE: &str = "Readings";
/// Lifetime of the SAS URLs printed for copy and paste.
const PRINTED_SAS_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the DM emulator to ingest the sample.
const SAMPLE_INGEST_WAIT: Duration = Duration::from_secs(10);
/// The Functions host polls `GET /` every 25 ms.
const READY_POLL: Duration = Duration::from_millis(25);
const HANDLER_LOG_PREFIX: &str = "  handler | ";

struct Args {
    settings: PathBuf,
    handler: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: cargo run -p kusto-dev --bin local-stack [-- [--settings PATH] [--handler PATH]]\n\
     \n\
     --settings PATH  local.settings.json to run with (default: the workspace's)\n\
     --handler PATH   run this handler binary instead of building one"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        settings: process::workspace_root().join("local.settings.json"),
        handler: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--settings" => args.settings = value(&arg)?,
            "--handler" => args.handler = Some(value(&arg)?),
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // One thread: children are spawned from it, and it lives as long as the process (see
    // `HandlerProcess::spawn`); the DM emulator brings its own runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match kusto_dev::tool::run("local-stack", parse_args(), runtime, run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let settings = LocalSettings::load(&args.settings)?;
    check_node()?;
    check_ports(&settings)?;

    if !Azurite::bin_path().exists() {
        println!(
            "installing Azurite from the lockfile (npm ci in {})...",
            Azurite::package_dir().display()
        );
    }
    Azurite::install().map_err(|e| e.to_string())?;
    let exe = match args.handler {
        Some(p) => p,
        None => {
            println!("building the handler (cargo build --bin handler)...");
            process::build_handler(false)?
        }
    };
    // The build may have taken a while: look again right before binding.
    check_ports(&settings)?;

    let [blob_port, queue_port, table_port] = AZURITE_PORTS;
    println!(
        "starting Azurite (blob 127.0.0.1:{blob_port}, queue :{queue_port}, table :{table_port}, in memory)..."
    );
    let mut accounts = vec![StorageAccount {
        name: DEVSTORE_ACCOUNT.into(),
        key: DEVSTORE_KEY.into(),
    }];
    for name in INGEST_ACCOUNTS.iter().chain([&DATA_ACCOUNT]) {
        accounts.push(StorageAccount {
            name: (*name).into(),
            key: random_key(),
        });
    }
    let azurite = Azurite::start_on(&accounts, AZURITE_PORTS).map_err(|e| e.to_string())?;

    println!(
        "starting the DM emulator (127.0.0.1:{}) and the token endpoint (127.0.0.1:{})...",
        settings.dm_port, settings.identity_port
    );
    let mut audiences: Vec<String> = DEFAULT_AUDIENCES.iter().map(|s| s.to_string()).collect();
    if let Some(scope) = &settings.token_scope {
        audiences.push(scope.clone());
    }
    let emulator = DmEmulator::start(
        &azurite,
        EmulatorConfig {
            accounts: INGEST_ACCOUNTS.iter().map(|s| s.to_string()).collect(),
            queue_prefix: "local".into(),
            identity_header: Some(settings.identity_header.clone()),
            dm_port: settings.dm_port,
            identity_port: settings.identity_port,
            accepted_audiences: audiences,
            // Consume the queues and ingest, as a real DM does.
            ingest: true,
            ..EmulatorConfig::default()
        },
    )
    .await
    .map_err(|e| format!("the DM emulator did not start: {e}"))?;
    for container in std::iter::once(SAMPLE_CONTAINER)
        .chain(settings.watched_containers.iter().map(String::as_str))
    {
        azurite
            .create_container(DATA_ACCOUNT, container)
            .await
            .map_err(|e| e.to_string())?;
    }

    let mut extra = Vec::new();
    if settings.read_blob_metadata {
        // Get Blob Properties on Azurite needs a SAS; the keys are new on every run.
        let key = azurite
            .account_key(DATA_ACCOUNT)
            .map_err(|e| e.to_string())?;
        let sas = kusto_dev::sas::account_sas(
            DATA_ACCOUNT,
            key,
            "b",
            "o",
            "r",
            kusto_dev::sas::SasWindow::from_now(Duration::from_secs(7 * 24 * 3600)),
        );
        extra.push(("INGEST_LOCAL_BLOB_SAS", sas));
    }
    let env = settings.handler_env(&extra);
    println!(
        "starting the handler {} on 127.0.0.1:{} with the Values of {}...",
        exe.display(),
        settings.handler_port,
        args.settings.display()
    );
    let mut handler = HandlerProcess::spawn(
        &exe,
        &env,
        settings.handler_port,
        Output::Forward(HANDLER_LOG_PREFIX),
    )?;
    let ready = handler.wait_ready(READY_TIMEOUT, READY_POLL)?;
    println!(
        "handler ready: GET / answered {} ms after start (pid {})",
        ready.as_millis(),
        handler.pid()
    );

    let sample_curl = match ingest_sample(&azurite, &emulator, &handler).await {
        Ok(curl) => curl,
        Err(e) => {
            println!("\nthe sample ingestion failed: {e}\n(the stack stays up so you can look)");
            None
        }
    };
    let data_curl = match ingest_sample_data(&emulator, &handler).await {
        Ok(curl) => Some(curl),
        Err(e) => {
            println!("\nthe data sample failed: {e}\n(the stack stays up so you can look)");
            None
        }
    };

    let watcher = tokio::spawn(
        watcher::Watcher {
            azurite: azurite.handle(),
            account: DATA_ACCOUNT.into(),
            containers: settings.watched_containers.clone(),
            handler_url: handler.url(),
            control_url: emulator.control_url(),
        }
        .run(),
    );
    print_help(
        &settings,
        &azurite,
        &emulator,
        &handler,
        [sample_curl, data_curl],
    );

    let outcome = wait_for_stop(&mut handler).await;
    watcher.abort();
    println!("\nstopping the local stack...");
    let handler_pid = handler.pid();
    match handler.stop(Duration::from_secs(5)) {
        Some(status) => println!("  handler (pid {handler_pid}) stopped: {status}"),
        None => println!("  handler (pid {handler_pid}) stopped"),
    }
    emulator.shutdown();
    println!("  DM emulator and token endpoint closed");
    let azurite_pid = azurite.pid();
    azurite.kill();
    if let Some(pid) = azurite_pid {
        println!("  Azurite (pid {pid}) stopped");
    }
    outcome
}

/// Node.js must be there (Azurite runs on it); npm too when Azurite is not installed yet.
fn check_node() -> Result<(), String> {
    let version = program_version("node").map_err(|e| {
        format!(
            "Node.js is required: the local stack runs Azurite, which needs Node.js 20 or later, \
             and `node --version` failed ({e}). Install Node.js (https://nodejs.org or your \
             package manager) and run this command again."
        )
    })?;
    let major = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_some_and(|m| m < 20) {
        return Err(format!(
            "Node.js {} is too old: Azurite needs Node.js 20 or later.",
            version.trim()
        ));
    }
    if !Azurite::bin_path().exists() {
        program_version("npm").map_err(|e| {
            format!(
                "npm is required to install Azurite the first time (`npm --version` failed: {e}); \
                 it comes with Node.js."
            )
        })?;
    }
    Ok(())
}

fn program_version(program: &str) -> Result<String, String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("exited with {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every fixed port must be free; all taken ones are named at once.
fn check_ports(s: &LocalSettings) -> Result<(), String> {
    let [blob, queue, table] = AZURITE_PORTS;
    let wanted = [
        (
            s.handler_port,
            "the handler (FUNCTIONS_CUSTOMHANDLER_PORT in local.settings.json)",
        ),
        (
            s.dm_port,
            "the DM emulator (KUSTO_INGEST_URI in local.settings.json)",
        ),
        (
            s.identity_port,
            "the token endpoint (IDENTITY_ENDPOINT in local.settings.json)",
        ),
        (blob, "Azurite's blob service"),
        (queue, "Azurite's queue service"),
        (table, "Azurite's table service"),
    ];
    let taken: Vec<String> = wanted
        .iter()
        .filter_map(
            |(port, what)| match TcpListener::bind(("127.0.0.1", *port)) {
                Ok(_) => None,
                Err(e) => Some(format!("  127.0.0.1:{port}, needed by {what}: {e}")),
            },
        )
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    Err(format!(
        "cannot start: {} already in use\n{}\n\
         Stop whatever listens there (`ss -ltnp` shows it; another local-stack or Azurite?) or \
         change the handler/DM/token ports in local.settings.json (Azurite's ports are fixed).",
        if taken.len() == 1 {
            "a port is"
        } else {
            "ports are"
        },
        taken.join("\n")
    ))
}

/// Uploads the sample CSV, queues it through `POST /api/ingest`, prints the answer and the
/// queued message. Returns the ready-to-paste curl for the same call.
async fn ingest_sample(
    azurite: &AzuriteHandle,
    emulator: &DmEmulator,
    handler: &HandlerProcess,
) -> Result<Option<String>, String> {
    let path = process::workspace_root().join(SAMPLE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = "employees.csv";
    azurite
        .upload_blob(DATA_ACCOUNT, SAMPLE_CONTAINER, name, bytes.clone(), &[])
        .await
        .map_err(|e| e.to_string())?;
    let blob_uri = azurite.blob_sas_url(
        DATA_ACCOUNT,
        SAMPLE_CONTAINER,
        name,
        "r",
        PRINTED_SAS_LIFETIME,
    );
    let request = json!({
        "database": "localdb",
        "table": "Employees",
        "format": "csv",
        "ignoreFirstRecord": true,
        "tracking": true,
        "blobs": [{ "blobUri": blob_uri, "rawDataSize": bytes.len() }]
    });
    let url = format!("{}/api/ingest", handler.url());
    println!(
        "\nuploaded {SAMPLE_FILE} to {DATA_ACCOUNT}/{SAMPLE_CONTAINER}/{name}; queueing it:\n  POST {url}"
    );
    println!("{}", show::pretty(&request, 4));
    let client = http_client()?;
    let post = client
        .post(&url)
        .header("content-type", "application/json")
        .body(request.to_string());
    let body = send_and_show(post, &url).await?;
    show_outcome(&client, handler, emulator, &body, name, "Employees").await;
    let curl = format!(
        "curl -sS -X POST {url} -H 'Content-Type: application/json' \\\n     -d '{request}'"
    );
    Ok(Some(curl))
}

/// Posts dev/sample/readings.ndjson as the body of the data route (tracked), prints the answer
/// and what the emulator made of it. Returns the ready-to-paste curl for the same call.
async fn ingest_sample_data(
    emulator: &DmEmulator,
    handler: &HandlerProcess,
) -> Result<String, String> {
    let path = process::workspace_root().join(SAMPLE_DATA_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lines = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let url = format!(
        "{}/api/ingest/localdb/{SAMPLE_DATA_TABLE}?tracking=true",
        handler.url()
    );
    println!(
        "\nposting {SAMPLE_DATA_FILE} ({} bytes, {lines} lines) as data, no blob of yours needed:\n  POST {url}\n  Content-Type: application/x-ndjson",
        bytes.len()
    );
    let client = http_client()?;
    let post = client
        .post(&url)
        .header("content-type", "application/x-ndjson")
        .body(bytes);
    let body = send_and_show(post, &url).await?;
    let label = SAMPLE_DATA_FILE
        .rsplit('/')
        .next()
        .unwrap_or(SAMPLE_DATA_FILE);
    show_outcome(&client, handler, emulator, &body, label, SAMPLE_DATA_TABLE).await;
    Ok(format!(
        "curl -sS -X POST '{url}' -H 'Content-Type: application/x-ndjson' \\\n     --data-binary @{SAMPLE_DATA_FILE}"
    ))
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())
}

/// Sends the request and prints the answer; its JSON body.
async fn send_and_show(request: reqwest::RequestBuilder, url: &str) -> Result<Value, String> {
    let rsp = request
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = rsp.status();
    let text = rsp.text().await.map_err(|e| format!("POST {url}: {e}"))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    println!("  answer: {status}");
    println!("{}", show::pretty(&body, 4));
    Ok(body)
}

/// Polls the answer's operation (when tracked) and prints each blob's outcome.
async fn show_outcome(
    client: &reqwest::Client,
    handler: &HandlerProcess,
    emulator: &DmEmulator,
    answer: &Value,
    label: &str,
    table: &str,
) {
    let Some(operation) = answer["operationId"].as_str() else {
        return;
    };
    let status_url = format!("{}/api/ingest/operations/{operation}", handler.url());
    println!("\nwaiting for the DM emulator to ingest it:\n  GET {status_url}");
    match poll_operation(client, &status_url).await {
        Ok(status) => {
            for blob in status["details"].as_array().into_iter().flatten() {
                println!("  {}", outcome_line(blob, emulator, label, table));
            }
        }
        Err(error) => println!("  {error}"),
    }
}

/// `GET` the operation until no blob is in progress (or the wait is over); its last answer.
async fn poll_operation(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let deadline = std::time::Instant::now() + SAMPLE_INGEST_WAIT;
    loop {
        let rsp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status: Value = rsp.json().await.map_err(|e| format!("GET {url}: {e}"))?;
        if status["state"] != "InProgress" || std::time::Instant::now() > deadline {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `employees.csv: Succeeded, 5 rows in localdb.Employees`, or the DM's error.
fn outcome_line(blob: &Value, emulator: &DmEmulator, name: &str, table: &str) -> String {
    match blob["status"].as_str().unwrap_or("?") {
        "Succeeded" => format!(
            "{name}: Succeeded, {} rows in localdb.{table}",
            emulator.row_count("localdb", table)
        ),
        "Failed" => format!(
            "{name}: Failed, {} ({}): {}",
            blob["errorCode"].as_str().unwrap_or("?"),
            blob["failureStatus"].as_str().unwrap_or("?"),
            blob["details"].as_str().unwrap_or("")
        ),
        other => format!("{name}: {other} (not ingested yet)"),
    }
}

fn print_help(
    s: &LocalSettings,
    azurite: &Azurite,
    emulator: &DmEmulator,
    handler: &HandlerProcess,
    curls: [Option<String>; 2],
) {
    let [sample_curl, data_curl] = curls;
    let rule = "=".repeat(78);
    let queues: Vec<String> = emulator
        .ingestion_queues()
        .iter()
        .map(|(a, q)| format!("{a}/{q}"))
        .collect();
    println!("\n{rule}");
    println!("local stack is up; Ctrl-C stops it");
    println!("{rule}");
    println!(
        "handler         {}   (pid {})  POST /api/ingest, POST /api/ingest/{{db}}/{{table}}, POST /BlobCreated",
        handler.url(),
        handler.pid()
    );
    println!(
        "DM emulator     {}   (KUSTO_INGEST_URI)  state: curl -s {}/state",
        emulator.url(),
        emulator.control_url()
    );
    println!(
        "                ingests what the handler queues: curl -s {0}/tables (rows per table), {0}/ingestions",
        emulator.control_url()
    );
    println!(
        "token endpoint  {}   (IDENTITY_ENDPOINT, header X-IDENTITY-HEADER: {})",
        emulator.identity_endpoint(),
        emulator.identity_header()
    );
    println!(
        "Azurite         blob {}, queue {}, table {} (pid {}, in memory)",
        format_args!("http://127.0.0.1:{}", azurite.blob_port()),
        format_args!("http://127.0.0.1:{}", azurite.queue_port()),
        format_args!("http://127.0.0.1:{}", azurite.table_port()),
        azurite
            .pid()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into()),
    );
    println!(
        "                accounts: {DATA_ACCOUNT} (your blobs), {} (ingestion queues), {DEVSTORE_ACCOUNT} (UseDevelopmentStorage=true)",
        INGEST_ACCOUNTS.join(", ")
    );
    println!("ingestion queues {}", queues.join(", "));
    println!();
    let watched: Vec<String> = s
        .watched_containers
        .iter()
        .map(|c| format!("{DATA_ACCOUNT}/{c}"))
        .collect();
    if s.routes_defaulted {
        println!(
            "watching {} for new blobs: INGEST_ROUTES is empty in local.settings.json, so the handler runs with the default route",
            watched.join(", ")
        );
        println!("  {}", s.routes);
        println!(
            "  (container landing -> database localdb, table LocalTable; format from the file extension)"
        );
    } else {
        println!(
            "watching {} for new blobs (the containers of INGEST_ROUTES)",
            watched.join(", ")
        );
    }
    if let Some(curl) = sample_curl {
        println!("\nqueue a blob yourself (the sample CSV; the SAS is valid for 24 h):");
        println!("  {curl}");
    }
    if let Some(curl) = data_curl {
        println!(
            "\npost data yourself (streamed through the DM's temporary storage, then queued):"
        );
        println!("  {curl}");
    }
    if let Some(container) = s.watched_containers.first() {
        let sas_url =
            azurite.container_sas_url(DATA_ACCOUNT, container, "rcw", PRINTED_SAS_LIFETIME);
        let (base, query) = sas_url.split_once('?').unwrap_or((&sas_url, ""));
        println!(
            "\ndrop a file into {DATA_ACCOUNT}/{container}; a BlobCreated event reaches the handler within a second:"
        );
        println!("  f={SAMPLE_FILE}");
        println!(
            "  curl -sS -X PUT -H 'x-ms-blob-type: BlockBlob' -T \"$f\" \"{base}/$(basename \"$f\")?{query}\""
        );
    }
    println!("{rule}");
}

/// Ctrl-C, SIGTERM, or the handler exiting on its own (an error).
async fn wait_for_stop(handler: &mut HandlerProcess) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = check.tick() => {
                if let Some(status) = handler.try_exit() {
                    return Err(format!("the handler exited on its own ({status})\n{}", handler.log_tail()));
                }
            }
        }
    }
}

fn random_key() -> String {
    use base64::Engine as _;
    let mut bytes = Vec::with_capacity(64);
    for _ in 0..4 {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
