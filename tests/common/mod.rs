//! Test harness: starts the real handler binary against the shared Azurite and its own Kusto DM
//! emulator, and talks to it only over HTTP, exactly as the Functions host does.
//!
//! * One Azurite per test binary (`Azurite::shared`); it is installed with npm on first use. A
//!   missing Node.js or a failed install panics: the suite never skips silently.
//! * One `DmEmulator` (unique queue prefix) and one handler process per test; the handler's
//!   stdout and stderr are captured line by line (`TestApp::logs`), printed when a test fails,
//!   and echoed live with `HANDLER_LOG_ECHO=1`.
//! * Every response body is kept, so `assert_no_secrets` can scan responses and logs at the end.
#![allow(dead_code)]

use base64::Engine as _;
use kusto_dev::{Azurite, DmEmulator, EmulatorConfig, Faults};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Storage account the test blobs live in (not one of the DM's ingestion accounts).
pub const DATA_ACCOUNT: &str = "datalake1";
pub const FUNCTION_KEY: &str = "testkey";
pub const HOST_USER_AGENT: &str = "Azure-Functions-Host/4.1037.0";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// One handler process with its own DM emulator.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub azurite: &'static Azurite,
    pub dm: DmEmulator,
    pub container: String,
    /// What the handler speaks to the emulator.
    pub protocol: Protocol,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    responses: Mutex<Vec<String>>,
    client: reqwest::Client,
}

/// What the handler answered.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body parsed as JSON, `Value::Null` when it is not JSON (see `text`).
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// `error.code` of an error body.
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
    pub fn error_target(&self) -> &str {
        self.body["error"]["target"].as_str().unwrap_or("<none>")
    }
    /// The answer is `status` with the Azure error `code`; the body is shown when it is not.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.error_code(), code, "{}", self.text);
    }
}

/// A decoded ingestion message and where it was found.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub account: String,
    pub queue: String,
    pub body: Value,
}

/// Fault injection run between the emulator's start and the handler's.
type FaultSetup = Box<dyn FnOnce(&Faults) + Send>;

/// Which queued-ingestion protocol the handler speaks to the emulator. `V1` leaves
/// `KUSTO_INGEST_METHOD` at its default (auto; the emulator prefers v1), `V2` sets it to `v2`.
/// The core API tests run both ways ([`both_protocols!`]); `INGEST_TEST_PROTOCOL=v2` makes v2 the
/// default of every other black-box test too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2,
}

impl Protocol {
    fn from_env() -> Self {
        match std::env::var("INGEST_TEST_PROTOCOL").as_deref() {
            Ok("v2" | "V2") => Protocol::V2,
            _ => Protocol::V1,
        }
    }
}

/// Runs each `async fn name(protocol: Protocol)` once per protocol, as tests `name::v1` and
/// `name::v2`: one harness, no copies of the tests.
#[macro_export]
macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn v1() {
                    super::$name(super::Protocol::V1).await
                }
                #[tokio::test]
                async fn v2() {
                    super::$name(super::Protocol::V2).await
                }
            }
        )*
    };
}

pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    config: EmulatorConfig,
    faults: Option<FaultSetup>,
    protocol: Protocol,
}

impl TestAppBuilder {
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn emulator(mut self, f: impl FnOnce(&mut EmulatorConfig)) -> Self {
        f(&mut self.config);
        self
    }

    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Faults injected after the emulator starts and before the handler does (so "cold" really
    /// means the handler never got an answer from the DM).
    pub fn faults(mut self, f: impl FnOnce(&Faults) + Send + 'static) -> Self {
        self.faults = Some(Box::new(f));
        self
    }

    pub async fn start(self) -> TestApp {
        let azurite = Azurite::shared();
        let dm = DmEmulator::start(azurite, self.config)
            .await
            .unwrap_or_else(|e| panic!("start the Kusto DM emulator: {e}"));
        if let Some(f) = self.faults {
            f(&dm.faults());
        }
        let mut env = self.env;
        if self.protocol == Protocol::V2 {
            // First, so a test that sets the method itself wins (later values override).
            env.insert(0, ("KUSTO_INGEST_METHOD".to_owned(), "v2".to_owned()));
        }
        let mut app = TestApp::spawn(azurite, dm, env).await;
        app.protocol = self.protocol;
        app
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: Vec::new(),
            config: EmulatorConfig::default(),
            faults: None,
            protocol: Protocol::from_env(),
        }
    }

    /// A handler with default settings.
    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    async fn spawn(
        azurite: &'static Azurite,
        dm: DmEmulator,
        extra_env: Vec<(String, String)>,
    ) -> TestApp {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        let container = format!("data-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        azurite
            .create_container(DATA_ACCOUNT, &container)
            .await
            .expect("create the test container in Azurite");
        // A free port is only free until someone else binds it: tests run in parallel, so a
        // handler that lost its port to another process is started again on a new one.
        let mut attempts = 0;
        let (port, child, log) = loop {
            attempts += 1;
            let (port, child, log) = Self::launch(&extra_env, &dm);
            match Self::wait_listening(child, &log).await {
                Ok(child) => break (port, child, log),
                Err(child) if attempts < 5 => drop(child),
                Err(_) => panic!(
                    "handler lost its port {attempts} times; log:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            }
        };
        let mut app = TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            azurite,
            dm,
            container,
            protocol: Protocol::V1,
            child: Some(child),
            log,
            responses: Mutex::new(Vec::new()),
            client,
        };
        app.wait_ready().await;
        app
    }

    /// Starts the handler process on a port that was free a moment ago.
    fn launch(
        extra_env: &[(String, String)],
        dm: &DmEmulator,
    ) -> (u16, Child, Arc<Mutex<Vec<String>>>) {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_handler"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("KUSTO_INGEST_URI", dm.url())
            .env("IDENTITY_ENDPOINT", dm.identity_endpoint())
            .env("IDENTITY_HEADER", dm.identity_header())
            .env("RUST_LOG", "info,kusto_ingest_api=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the handler binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        capture(
            child.stdout.take().expect("stdout piped"),
            "out",
            log.clone(),
        );
        capture(
            child.stderr.take().expect("stderr piped"),
            "err",
            log.clone(),
        );

        (port, child, log)
    }

    /// Waits until the handler says it listens (so the port is its own, not another test's):
    /// `Err` hands the child back when it exited because the port was taken meanwhile.
    async fn wait_listening(mut child: Child, log: &Mutex<Vec<String>>) -> Result<Child, Child> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            let listening = log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("handler listening"));
            if listening {
                return Ok(child);
            }
            if child.try_wait().ok().flatten().is_some() {
                // Let the readers drain what it printed before deciding why it exited.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let lost_port = log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("Address already in use"));
                return if lost_port { Err(child) } else { Ok(child) };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // wait_ready reports a handler that never came up, with its log.
        Ok(child)
    }

    /// The handler's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the handler is running")
    }

    /// Waits up to `timeout` for the handler to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Polls `GET /` like the Functions host does until the handler answers.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "handler exited during start-up with {status}; log:\n{}",
                    self.log_text()
                );
            }
            let probe = self
                .client
                .get(format!("{}/", self.address))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(resp) = probe {
                assert_eq!(resp.status(), StatusCode::OK, "GET / must answer 200");
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "handler did not answer GET / within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends a request exactly as the Functions host proxies it (`enableProxyingHttpRequest`).
    pub async fn post_ingest(&self, body: &Value) -> Reply {
        self.post_raw(
            serde_json::to_vec(body).expect("serialize"),
            "application/json",
        )
        .await
    }

    pub async fn post_raw(&self, bytes: Vec<u8>, content_type: &str) -> Reply {
        self.post_raw_with(bytes, content_type, &[]).await
    }

    /// `GET <path>` (`/api/ingest/operations/…`) with the function key, as the host forwards it.
    pub async fn get(&self, path_and_query: &str) -> Reply {
        let resp = self
            .client
            .get(format!("{}{path_and_query}", self.address))
            .header("x-functions-key", FUNCTION_KEY)
            .header("User-Agent", HOST_USER_AGENT)
            .send()
            .await
            .expect("GET reached the handler");
        self.reply(resp).await
    }

    /// `POST /api/ingest` with extra headers (those App Service Authentication adds, say).
    pub async fn post_ingest_with(&self, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let bytes = serde_json::to_vec(body).expect("serialize");
        self.post_raw_with(bytes, "application/json", headers).await
    }

    async fn post_raw_with(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut builder = self
            .client
            .post(format!("{}/api/ingest?code={FUNCTION_KEY}", self.address));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("X-Azure-Functions-InvocationId"))
        {
            builder = builder.header(
                "X-Azure-Functions-InvocationId",
                uuid::Uuid::new_v4().to_string(),
            );
        }
        let resp = builder
            .header("X-Azure-Functions-HostVersion", "4.1037.0")
            .header("x-functions-key", FUNCTION_KEY)
            .header("User-Agent", HOST_USER_AGENT)
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
            .await
            .expect("POST /api/ingest reached the handler");
        self.reply(resp).await
    }

    /// The answer, kept for `assert_no_secrets`.
    async fn reply(&self, resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("response body");
        self.responses.lock().unwrap().push(text.clone());
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// A real Azurite SAS URL (so it carries `sig=`) for a blob in this app's container.
    pub fn blob_uri(&self, name: &str) -> String {
        self.azurite.blob_sas_url(
            DATA_ACCOUNT,
            &self.container,
            name,
            "r",
            Duration::from_secs(3600),
        )
    }

    /// Uploads `content` and returns the blob's SAS URL.
    pub async fn upload_blob(&self, name: &str, content: &[u8]) -> String {
        self.azurite
            .upload_blob(DATA_ACCOUNT, &self.container, name, content, &[])
            .await
            .expect("upload a test blob");
        self.blob_uri(name)
    }

    /// Every message on every ingestion queue of this app's DM, removed from the queues, decoded
    /// (base64 → UTF-8 JSON).
    pub async fn drain_messages(&self) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        for (account, queue) in self.dm.ingestion_queues() {
            let texts = self
                .azurite
                .receive_all(&account, &queue)
                .await
                .unwrap_or_else(|e| panic!("read queue {account}/{queue}: {e}"));
            for text in texts {
                out.push(QueuedMessage {
                    account: account.clone(),
                    queue: queue.clone(),
                    body: decode_message(&text),
                });
            }
        }
        out
    }

    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.logs().join("\n")
    }

    pub fn responses(&self) -> Vec<String> {
        self.responses.lock().unwrap().clone()
    }

    /// No SAS signature and no token value in any response body or handler log line so far.
    pub fn assert_no_secrets(&self) {
        let mut secrets: Vec<String> = vec![
            "emu-token-".into(),
            "emu-authz-".into(),
            self.dm.identity_header().to_owned(),
        ];
        secrets.extend(self.dm.issued_authorization_contexts());
        let mut haystacks: Vec<(String, String)> = Vec::new();
        for r in self.responses() {
            haystacks.push(("response".into(), r));
        }
        for l in self.logs() {
            haystacks.push(("log".into(), l));
        }
        for (kind, text) in &haystacks {
            for s in &secrets {
                assert!(
                    !text.contains(s.as_str()),
                    "{kind} leaks a token ({s:.12}…): {text}"
                );
            }
            if let Some(value) = sas_signatures(text).first() {
                panic!("{kind} leaks a SAS signature (sig={value:.6}…): {text}");
            }
        }
    }
}

/// Runs the handler with exactly `env` (plus PATH) and expects it to stop by itself within 15 s;
/// returns its exit status and everything it printed. A run that lost its port to a parallel test
/// is run again on another.
pub fn run_to_exit(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    for _ in 0..4 {
        let (status, text) = run_once_to_exit(env);
        if !text.contains("Address already in use") {
            return (status, text);
        }
    }
    run_once_to_exit(env)
}

fn run_once_to_exit(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handler"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", free_port().to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the handler binary");
    let log = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        capture(child.stdout.take().expect("stdout"), "out", log.clone()),
        capture(child.stderr.take().expect("stderr"), "err", log.clone()),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the handler") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "handler kept running with settings {env:?}; log:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for reader in readers {
        let _ = reader.join();
    }
    let text = log.lock().unwrap().join("\n");
    (status, text)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let logs = self.logs();
            let skip = logs.len().saturating_sub(200);
            eprintln!("---- handler log (last {} lines) ----", logs.len() - skip);
            for line in &logs[skip..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Values of `sig=` query parameters in `text` that are real signatures (not `<redacted>` or empty).
pub fn sas_signatures(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = lower[from..].find("sig=") {
        let start = from + at + 4;
        let boundary = from + at;
        from = start;
        // `sig=` must start a query parameter, not be the tail of another word.
        if boundary > 0 {
            let prev = lower.as_bytes()[boundary - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' {
                continue;
            }
        }
        let value: String = text[start..]
            .chars()
            .take_while(|c| !matches!(c, '&' | '"' | '\'' | ' ' | '\\' | '<' | '>' | ',' | ')'))
            .collect();
        if !value.is_empty() {
            found.push(value);
        }
    }
    found
}

pub fn decode_message(text: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_else(|e| panic!("queue message is not base64 ({e}): {text:.200}"));
    let json = String::from_utf8(bytes).expect("message is UTF-8");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("message is not JSON ({e}): {json:.400}"))
}

fn capture(
    stream: impl std::io::Read + Send + 'static,
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => {
                    if std::env::var_os("HANDLER_LOG_ECHO").is_some() {
                        eprintln!("[handler {tag}] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
                Err(_) => break,
            }
        }
    })
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Case-insensitive lookup of an ingestion property in `AdditionalProperties`.
pub fn prop<'a>(message: &'a Value, key: &str) -> Option<&'a Value> {
    message["AdditionalProperties"]
        .as_object()
        .expect("AdditionalProperties is an object")
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// The mapping reference under whichever alias the handler kept; fails if several are present.
pub fn mapping_reference(message: &Value) -> Option<&Value> {
    let aliases = [
        "ingestionMappingReference",
        "mappingReference",
        "csvMappingReference",
        "jsonMappingReference",
    ];
    let found: Vec<&Value> = aliases.iter().filter_map(|a| prop(message, a)).collect();
    assert!(
        found.len() <= 1,
        "more than one mapping reference alias in {}",
        message["AdditionalProperties"]
    );
    found.into_iter().next()
}

/// A minimal valid request body.
pub fn request(blobs: Vec<Value>) -> Value {
    json!({ "database": "testdb", "table": "events", "blobs": blobs })
}

/// Finds the message for `blob_uri` (matched on `BlobPath`).
pub fn message_for<'a>(messages: &'a [QueuedMessage], blob_uri: &str) -> &'a QueuedMessage {
    let matching: Vec<&QueuedMessage> = messages
        .iter()
        .filter(|m| m.body["BlobPath"] == blob_uri)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one message for {blob_uri}, got {}",
        matching.len()
    );
    matching[0]
}

/// The URI without its query string, as the response reports it.
pub fn without_query(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

/// Peak resident memory of a process, from /proc.
#[cfg(target_os = "linux")]
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}
