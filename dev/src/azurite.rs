//! Installing (npm, pinned in dev/azurite) and running Azurite on free loopback ports.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::{Error, Result};
use crate::spawn::spawn_tied;
use crate::storage::{AzuriteHandle, StorageAccount};

/// Accounts of [`Azurite::shared`]: two ingestion accounts and one "data lake" for source blobs.
pub const SHARED_ACCOUNTS: [&str; 3] = ["ingestacct1", "ingestacct2", "datalake1"];

const START_TIMEOUT: Duration = Duration::from_secs(60);
const OUTPUT_TAIL_LINES: usize = 60;

/// A running Azurite process (blob, queue and table services, in-memory).
/// Killed on drop. Derefs to [`AzuriteHandle`] for endpoints and REST helpers.
#[derive(Debug)]
pub struct Azurite {
    handle: AzuriteHandle,
    child: Mutex<Option<Child>>,
    output: Arc<Mutex<VecDeque<String>>>,
}

impl Deref for Azurite {
    type Target = AzuriteHandle;
    fn deref(&self) -> &AzuriteHandle {
        &self.handle
    }
}

impl Azurite {
    /// `dev/azurite` (holds package.json / package-lock.json pinning azurite 3.37.0).
    pub fn package_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("azurite")
    }

    /// `dev/azurite/node_modules/.bin/azurite`.
    pub fn bin_path() -> PathBuf {
        Self::package_dir().join("node_modules/.bin/azurite")
    }

    /// Runs `npm ci` in dev/azurite unless Azurite is already installed. Concurrent
    /// callers (threads or processes) are serialized with an flock on a lock file.
    pub fn install() -> Result<PathBuf> {
        let bin = Self::bin_path();
        if bin.exists() {
            return Ok(bin);
        }
        check_program("node")?;
        check_program("npm")?;
        let dir = Self::package_dir();
        let lock_path = dir.join(".install.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                format!("locking {}", lock_path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        // Another process may have finished the install while we waited for the lock.
        if bin.exists() {
            return Ok(bin);
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("running npm ci", e))?;
        if !out.status.success() || !bin.exists() {
            return Err(Error::Install {
                dir,
                detail: format!(
                    "{} (bin present: {})\n{}{}",
                    out.status,
                    bin.exists(),
                    tail(&String::from_utf8_lossy(&out.stdout), 20),
                    tail(&String::from_utf8_lossy(&out.stderr), 20)
                ),
            });
        }
        drop(lock);
        Ok(bin)
    }

    /// Installs if needed, then starts Azurite with the given accounts (random keys)
    /// on free loopback ports and waits until all three services accept connections.
    pub fn start(accounts: &[&str]) -> Result<Azurite> {
        if accounts.is_empty() {
            return Err(Error::Config("Azurite needs at least one account".into()));
        }
        let bin = Self::install()?;
        let accounts: Vec<StorageAccount> = accounts
            .iter()
            .map(|name| StorageAccount {
                name: name.to_string(),
                key: random_key(),
            })
            .collect();
        // Ports are picked by binding port 0 and releasing it, so another process can
        // grab one in between: retry a few times when Azurite fails to bind.
        let mut last_err = None;
        for _ in 0..3 {
            let ports = free_ports(3)?;
            match Self::start_once(&bin, &accounts, [ports[0], ports[1], ports[2]]) {
                Ok(a) => return Ok(a),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Emulator("Azurite start failed".into())))
    }

    /// Like [`Azurite::start`], but with the given accounts (name and base64 key, e.g. the
    /// well-known `devstoreaccount1`) on fixed loopback ports `[blob, queue, table]`
    /// (the local stack). No retry: a taken port is an error.
    pub fn start_on(accounts: &[StorageAccount], ports: [u16; 3]) -> Result<Azurite> {
        if accounts.is_empty() {
            return Err(Error::Config("Azurite needs at least one account".into()));
        }
        let bin = Self::install()?;
        Self::start_once(&bin, accounts, ports)
    }

    fn start_once(bin: &Path, accounts: &[StorageAccount], ports: [u16; 3]) -> Result<Azurite> {
        let [blob_port, queue_port, table_port] = ports;
        let env_accounts = accounts
            .iter()
            .map(|a| format!("{}:{}", a.name, a.key))
            .collect::<Vec<_>>()
            .join(";");
        let bin_owned = bin.to_path_buf();
        let mut child = spawn_tied(move || {
            let mut cmd = Command::new(&bin_owned);
            cmd.args([
                "--silent",
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--blobHost",
                "127.0.0.1",
                "--queueHost",
                "127.0.0.1",
                "--tableHost",
                "127.0.0.1",
                "--blobPort",
                &blob_port.to_string(),
                "--queuePort",
                &queue_port.to_string(),
                "--tablePort",
                &table_port.to_string(),
            ])
            .env("AZURITE_ACCOUNTS", env_accounts)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            cmd
        })
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NodeMissing {
                program: bin.display().to_string(),
                detail: e.to_string(),
            },
            _ => Error::io(format!("spawning {}", bin.display()), e),
        })?;

        let output = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            drain_lines(out, output.clone());
        }
        if let Some(err) = child.stderr.take() {
            drain_lines(err, output.clone());
        }

        let azurite = Azurite {
            handle: AzuriteHandle {
                host: "127.0.0.1".into(),
                blob_port,
                queue_port,
                table_port,
                accounts: accounts.to_vec(),
            },
            child: Mutex::new(Some(child)),
            output,
        };
        azurite.wait_ready(&[blob_port, queue_port, table_port])?;
        Ok(azurite)
    }

    fn wait_ready(&self, ports: &[u16]) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pending: Vec<u16> = ports.to_vec();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(Error::AzuriteStart {
                    reason: format!("azurite exited with {status}"),
                    tail: self.output_tail(),
                });
            }
            pending.retain(|p| {
                let addr = SocketAddr::from(([127, 0, 0, 1], *p));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            });
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::AzuriteStart {
                    reason: format!(
                        "ports {pending:?} not accepting connections after {START_TIMEOUT:?}"
                    ),
                    tail: self.output_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// One Azurite per process, accounts [`SHARED_ACCOUNTS`]. Started from a
    /// process-lifetime thread with `PR_SET_PDEATHSIG`, so node dies with the test
    /// binary. Panics with Azurite's output if it cannot start (use [`Azurite::try_shared`]).
    pub fn shared() -> &'static Azurite {
        match Self::try_shared() {
            Ok(a) => a,
            Err(e) => panic!("shared Azurite unavailable: {e}"),
        }
    }

    /// Fallible [`Azurite::shared`]; a failed start is remembered (not retried).
    pub fn try_shared() -> Result<&'static Azurite> {
        static SHARED: OnceLock<std::result::Result<Azurite, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Azurite::start(&SHARED_ACCOUNTS).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Emulator(e.clone()))
    }

    /// A cloneable copy of the endpoints/credentials (no process ownership).
    pub fn handle(&self) -> AzuriteHandle {
        self.handle.clone()
    }

    /// PID of the node process, while running.
    pub fn pid(&self) -> Option<u32> {
        let guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(Child::id)
    }

    /// Last lines Azurite printed (stdout and stderr interleaved).
    pub fn output_tail(&self) -> String {
        let lines = self.output.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Kills the process now (also done on drop).
    pub fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

fn check_program(program: &str) -> Result<()> {
    match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(Error::NodeMissing {
            program: program.into(),
            detail: format!("`{program} --version` exited with {}", out.status),
        }),
        Err(e) => Err(Error::NodeMissing {
            program: program.into(),
            detail: e.to_string(),
        }),
    }
}

fn random_key() -> String {
    let mut bytes = Vec::with_capacity(64);
    for _ in 0..4 {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    B64.encode(bytes)
}

/// Distinct free loopback ports (all bound at once so they differ, then released).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io("binding a free loopback port", e))?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| Error::io("reading a bound port", e))
        })
        .collect()
}

fn drain_lines(stream: impl Read + Send + 'static, sink: Arc<Mutex<VecDeque<String>>>) {
    // Draining also keeps a chatty child from blocking on a full pipe.
    let _ = std::thread::Builder::new()
        .name("azurite-output".into())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut buf = sink.lock().unwrap_or_else(|e| e.into_inner());
                if buf.len() == OUTPUT_TAIL_LINES {
                    buf.pop_front();
                }
                buf.push_back(line);
            }
        });
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = lines[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_node_is_a_clear_error() {
        let err = check_program("kusto-dev-no-such-program").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("Node.js is required to run Azurite: install Node.js 20+"),
            "{msg}"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(3).unwrap();
        assert!(p[0] != p[1] && p[1] != p[2] && p[0] != p[2]);
    }

    #[test]
    fn keys_are_64_bytes_base64() {
        let k = random_key();
        assert_eq!(B64.decode(k).unwrap().len(), 64);
    }
}
