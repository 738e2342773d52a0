use kusto_ingest_api::app::Application;
use kusto_ingest_api::settings::Settings;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (`_RJEM_MALLOC_CONF` in the environment adds to them). One arena:
/// memory allocated on one of the handler's threads is often freed on another; per-thread caches
/// take the contention away, and separate arenas only added RSS (measured in BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

fn main() -> ExitCode {
    // stdout is captured by the Functions host and shipped to Application Insights.
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(false)
        .init();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads())
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(settings)),
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            eprintln!("error: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(error) => {
            let error = error_chain(&error);
            tracing::error!(%error, "cannot start");
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = app.local_addr() {
        tracing::info!(%addr, "kusto-ingest-api handler listening");
    }
    app.run_until(shutdown_signal()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `RUST_LOG`, or `info`. The Azure SDK's own request logs (every failed call, URL included) stay
/// at warnings unless `RUST_LOG` names them: the handler logs each failure once, with its context.
fn log_filter() -> EnvFilter {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    if spec.trim().is_empty() {
        filter = EnvFilter::new("info");
    }
    for sdk in ["typespec_client_core", "azure_core"] {
        if !spec.contains(sdk)
            && let Ok(directive) = format!("{sdk}=warn").parse()
        {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// An error and every `source()` under it, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The host stops the worker with SIGTERM; Ctrl-C for local runs.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
