//! What every dev command's `main` does: its arguments parsed (a usage error exits 2), a tokio
//! runtime built, its run driven to the end, and any error printed under the command's name.

use std::future::Future;
use std::process::ExitCode;

/// Runs `run(args)` on `runtime`. `Err` is the exit code to return: 2 for bad arguments, failure
/// for a runtime that could not be built or a run that failed (printed as `{name}: {error}`).
pub fn run<A, T, F>(
    name: &str,
    args: Result<A, String>,
    runtime: std::io::Result<tokio::runtime::Runtime>,
    run: impl FnOnce(A) -> F,
) -> Result<T, ExitCode>
where
    F: Future<Output = Result<T, String>>,
{
    let args = args.map_err(|usage| {
        eprintln!("{usage}");
        ExitCode::from(2)
    })?;
    let runtime = runtime.map_err(|e| {
        eprintln!("{name}: cannot build a tokio runtime: {e}");
        ExitCode::FAILURE
    })?;
    runtime.block_on(run(args)).map_err(|e| {
        eprintln!("{name}: {e}");
        ExitCode::FAILURE
    })
}
