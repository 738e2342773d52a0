//! Building the handler binary and running it as a child process, the way the Functions host
//! does: a fixed environment, `FUNCTIONS_CUSTOMHANDLER_PORT`, and `GET /` polled until it answers.
//! Shared by `local-stack` and `bench` (which includes this file with `#[path]`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of handler output kept for error messages.
const TAIL_LINES: usize = 40;

/// The workspace root (the handler crate), parent of `dev/`.
pub fn workspace_root() -> PathBuf {
    let dev = Path::new(env!("CARGO_MANIFEST_DIR"));
    dev.parent().unwrap_or(dev).to_path_buf()
}

/// `cargo build [--release] --bin handler` in the workspace root; returns the executable's path
/// as cargo reports it (so `CARGO_TARGET_DIR` and friends are honoured). Cargo's progress and
/// diagnostics go to our stderr.
pub fn build_handler(release: bool) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "kusto-ingest-api",
            "--bin",
            "handler",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run `{} build`: {e} (is Rust installed?)",
            cargo.to_string_lossy()
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build{} --bin handler` failed ({}); see the compiler output above",
            if release { " --release" } else { "" },
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "handler")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .ok_or_else(|| "cargo built the handler but reported no executable path".to_owned())
}

/// Where the handler's stdout/stderr go.
pub enum Output {
    /// Each line to our stderr, after `prefix` (and kept for error messages).
    Forward(&'static str),
    /// Written to a file, replacing it (cheap: no reader thread competes with a benchmark).
    File(PathBuf),
}

/// A running handler. Stopped (SIGTERM, then SIGKILL) on drop; it also gets SIGKILL if this
/// process dies first (`PR_SET_PDEATHSIG`), and runs in its own process group so a terminal's
/// Ctrl-C reaches only us and we stop it in order.
pub struct HandlerProcess {
    child: Option<Child>,
    pid: u32,
    port: u16,
    spawned_at: Instant,
    tail: Arc<Mutex<VecDeque<String>>>,
    log_file: Option<PathBuf>,
}

impl HandlerProcess {
    /// Starts `exe` with exactly `env` as its environment, listening on `port` (which must also
    /// be `FUNCTIONS_CUSTOMHANDLER_PORT` in `env`). Call it from a thread that lives as long as
    /// the process (the main thread): `PR_SET_PDEATHSIG` fires when the spawning thread exits.
    pub fn spawn(
        exe: &Path,
        env: &[(String, String)],
        port: u16,
        output: Output,
    ) -> Result<Self, String> {
        let mut cmd = Command::new(exe);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .process_group(0);
        let log_file = match &output {
            Output::Forward(_) => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                None
            }
            Output::File(path) => {
                let file = File::create(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                let err = file
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate {}: {e}", path.display()))?;
                cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
                Some(path.clone())
            }
        };
        kusto_dev::tie_to_parent(&mut cmd, std::process::id());
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Output::Forward(prefix) = output {
            if let Some(out) = child.stdout.take() {
                forward_lines(out, prefix, tail.clone());
            }
            if let Some(err) = child.stderr.take() {
                forward_lines(err, prefix, tail.clone());
            }
        }
        Ok(HandlerProcess {
            pid: child.id(),
            child: Some(child),
            port,
            spawned_at,
            tail,
            log_file,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Polls `GET /` every `poll` until any HTTP answer (the host's readiness rule) and returns
    /// the time since the process was spawned. Fails if the process exits or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration, poll: Duration) -> Result<Duration, String> {
        let deadline = self.spawned_at + timeout;
        loop {
            if probe(self.port) {
                return Ok(self.spawned_at.elapsed());
            }
            if let Some(status) = self.try_exit() {
                return Err(format!(
                    "the handler exited with {status} before answering GET /\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the handler did not answer GET / on 127.0.0.1:{} within {timeout:?}\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(poll);
        }
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM (the handler drains in-flight requests), then SIGKILL after `grace`.
    /// Only ever signals the process we started, by its id.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: plain kill(2) on the pid of a child we have not reaped yet, so the id
        // cannot have been reused by another process.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Last lines the handler printed (or the end of its log file).
    pub fn log_tail(&self) -> String {
        if let Some(path) = &self.log_file {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(TAIL_LINES);
            return format!(
                "--- {} (last lines) ---\n{}",
                path.display(),
                lines[start..].join("\n")
            );
        }
        let lines = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            return "(the handler printed nothing)".to_owned();
        }
        let joined: Vec<&str> = lines.iter().map(String::as_str).collect();
        format!("--- handler output (last lines) ---\n{}", joined.join("\n"))
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// One readiness probe: connect, `GET /`, any HTTP status line means ready.
pub fn probe(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Azure-Functions-Host/4.1037.0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    // Reading also keeps the handler from blocking on a full pipe.
    let _ = std::thread::Builder::new()
        .name("handler-output".into())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                eprintln!("{prefix}{line}");
                let mut buf = tail.lock().unwrap_or_else(|e| e.into_inner());
                if buf.len() == TAIL_LINES {
                    buf.pop_front();
                }
                buf.push_back(line);
            }
        });
}
