//! Spawning child processes that die with the current process.
//!
//! On Linux, `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! the process. Test harnesses and tokio runtimes create and retire threads freely, so
//! every child is forked from one dedicated thread that lives as long as the
//! process: the signal then fires exactly when the process dies (even on SIGKILL).
//!
//! Elsewhere (macOS) there is no parent-death signal: children are stopped by their
//! owners' `Drop` and shutdown paths, which covers every exit but a SIGKILL of the parent.

use std::io;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kusto-dev-spawner".into())
            // The sender lives in a static, so `rx` never disconnects and this
            // thread never exits: that is the point (see module docs).
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the kusto-dev spawner thread");
        tx
    })
}

/// Makes the child `cmd` will start receive SIGKILL when process `parent` (this one) dies.
/// Only Linux can; elsewhere this does nothing (see the module docs).
#[cfg(target_os = "linux")]
pub fn tie_to_parent(cmd: &mut Command, parent: u32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe libc calls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody
            // would ever kill us, so give up right away.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Makes the child `cmd` will start receive SIGKILL when process `parent` (this one) dies.
/// Only Linux can; elsewhere this does nothing (see the module docs).
#[cfg(not(target_os = "linux"))]
pub fn tie_to_parent(_cmd: &mut Command, _parent: u32) {}

/// Spawns the command built by `build` so that it receives SIGKILL when this process dies.
pub(crate) fn spawn_tied<F>(build: F) -> io::Result<Child>
where
    F: FnOnce() -> Command + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let parent = std::process::id();
    let job: Job = Box::new(move || {
        let mut cmd = build();
        tie_to_parent(&mut cmd, parent);
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .send(job)
        .map_err(|_| io::Error::other("kusto-dev spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("kusto-dev spawner thread dropped the request"))?
}
