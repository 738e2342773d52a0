//! Spawning child processes that die with the current process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
//! process. Test harnesses and tokio runtimes create and retire threads freely, so
//! every child is forked from one dedicated thread that lives as long as the
//! process: the signal then fires exactly when the process dies (even on SIGKILL).

use std::io;
use std::os::unix::process::CommandExt;
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

/// Spawns the command built by `build` so that it receives SIGKILL when this process dies.
pub(crate) fn spawn_tied<F>(build: F) -> io::Result<Child>
where
    F: FnOnce() -> Command + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let parent = std::process::id();
    let job: Job = Box::new(move || {
        let mut cmd = build();
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
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .send(job)
        .map_err(|_| io::Error::other("kusto-dev spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("kusto-dev spawner thread dropped the request"))?
}
