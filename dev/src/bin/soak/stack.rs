//! The soak's own stack on free loopback ports: Azurite, one DM emulator whose queues are
//! Azurite's, and the release handler as a child process that can be stopped and replaced.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use kusto_dev::azurite::SHARED_ACCOUNTS;
use kusto_dev::dm::pick_free_ports;
use kusto_dev::{Azurite, DmEmulator, EmulatorConfig};

use super::process::{HandlerProcess, Output};
use super::procfs;

/// The source blobs' account (the blobs are never read: `rawDataSize` is given).
pub const DATA_ACCOUNT: &str = "datalake1";
/// After SIGTERM the handler gives in-flight requests 30 s; a little more before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(35);

pub struct Stack {
    pub azurite: Azurite,
    pub emu: DmEmulator,
    exe: PathBuf,
    log_dir: PathBuf,
    deadline_secs: u64,
    handler: Option<HandlerProcess>,
    started: usize,
}

/// How a handler ended.
pub struct Stopped {
    pub status: Option<ExitStatus>,
    /// SIGTERM → exit.
    pub took: Duration,
    pub peak_rss_kib: u64,
}

impl Stack {
    /// Azurite and the emulator; queue SAS handed out with `sas_lifetime` (the handler refreshes
    /// its resources at about a quarter of it, which is how injected faults reach it).
    pub async fn start(
        exe: PathBuf,
        log_dir: PathBuf,
        deadline_secs: u64,
        sas_lifetime: Duration,
    ) -> Result<Stack, String> {
        let azurite = Azurite::start(&SHARED_ACCOUNTS).map_err(|e| e.to_string())?;
        let emu = DmEmulator::start(
            &azurite,
            EmulatorConfig {
                sas_lifetime,
                ..EmulatorConfig::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Stack {
            azurite,
            emu,
            exe,
            log_dir,
            deadline_secs,
            handler: None,
            started: 0,
        })
    }

    /// SAS URL of the container the request bodies name blobs in.
    pub fn container_sas_url(&self) -> String {
        self.azurite
            .container_sas_url(DATA_ACCOUNT, "soak", "r", Duration::from_secs(24 * 3600))
    }

    pub fn handlers_started(&self) -> usize {
        self.started
    }

    /// Starts a new handler (the current one, if any, keeps running until `stop_previous`) and
    /// returns its URL and exec → ready time. Call from the main thread (see `HandlerProcess`).
    pub fn start_handler(&mut self) -> Result<(String, Duration), String> {
        let mut last = String::new();
        // A free port can be taken between picking and binding: try a few.
        for _ in 0..3 {
            let port = pick_free_ports(1).map_err(|e| e.to_string())?[0];
            let mut env: Vec<(String, String)> = vec![
                ("FUNCTIONS_WORKER_RUNTIME".into(), "custom".into()),
                ("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()),
                (
                    "INGEST_REQUEST_DEADLINE_SECONDS".into(),
                    self.deadline_secs.to_string(),
                ),
                ("RUST_LOG".into(), "info".into()),
            ];
            env.extend(self.emu.handler_env());
            self.started += 1;
            let log = self.log_dir.join(format!("handler-{}.log", self.started));
            let mut h = HandlerProcess::spawn(&self.exe, &env, port, Output::File(log))?;
            match h.wait_ready(Duration::from_secs(20), Duration::from_millis(5)) {
                Ok(ready) => {
                    let url = h.url();
                    if let Some(mut old) = self.handler.replace(h) {
                        // Not asked for: stop it in order rather than leak it.
                        old.stop(STOP_GRACE);
                    }
                    return Ok((url, ready));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts a fresh handler while the current one keeps serving, then hands back the current one
    /// for the caller to stop once clients point at the new one.
    pub fn start_replacement(&mut self) -> Result<(String, Duration, HandlerProcess), String> {
        let old = self.handler.take().ok_or("no handler is running")?;
        match self.start_handler() {
            Ok((url, ready)) => Ok((url, ready, old)),
            Err(e) => {
                self.handler = Some(old);
                Err(e)
            }
        }
    }

    /// SIGTERM to the current handler; waits for it to exit (SIGKILL after 35 s).
    pub fn stop_handler(&mut self) -> Option<Stopped> {
        self.handler.take().map(stop)
    }

    /// The last lines of the current handler's log.
    pub fn log_tail(&self) -> String {
        self.handler
            .as_ref()
            .map(HandlerProcess::log_tail)
            .unwrap_or_default()
    }
}

/// SIGTERM (the handler drains), exit status and time to exit, peak RSS read just before.
pub fn stop(mut h: HandlerProcess) -> Stopped {
    let peak_rss_kib = procfs::status_kib(h.pid(), "VmHWM").unwrap_or(0);
    let t = Instant::now();
    let status = h.stop(STOP_GRACE);
    Stopped {
        status,
        took: t.elapsed(),
        peak_rss_kib,
    }
}
