//! Local stack for manual runs and out-of-process tools: Azurite + the DM emulator.
//!
//! ```text
//! cargo run -p kusto-dev --bin dm-emulator -- [--null-queue] [--ingest] [--queues-per-account N]
//!     [--dm-port P] [--identity-port P] [--prefix NAME] [--sas-lifetime-secs S]
//! ```
//! Prints `KEY=VALUE` lines (handler settings, storage connection strings), then `READY`,
//! and runs until Ctrl-C / SIGTERM. Faults: `POST <EMULATOR_CONTROL_URL>/faults`.

use std::process::ExitCode;
use std::time::Duration;

use kusto_dev::azurite::SHARED_ACCOUNTS;
use kusto_dev::{Azurite, DmEmulator, EmulatorConfig};

fn usage() -> &'static str {
    "usage: dm-emulator [--null-queue] [--ingest] [--queues-per-account N] [--dm-port P] \
     [--identity-port P] [--storage-port P] [--prefix NAME] [--sas-lifetime-secs S] \
     [--token-lifetime-secs S]"
}

fn parse_args() -> Result<EmulatorConfig, String> {
    let mut config = EmulatorConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        let num = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|e| format!("{name}: invalid number {v:?}: {e}"))
        };
        match arg.as_str() {
            "--null-queue" => config.null_queue = true,
            "--ingest" => config.ingest = true,
            "--queues-per-account" => {
                config.queues_per_account = num(&arg, value(&arg)?)? as usize;
            }
            "--dm-port" => config.dm_port = num(&arg, value(&arg)?)? as u16,
            "--identity-port" => config.identity_port = num(&arg, value(&arg)?)? as u16,
            "--storage-port" => config.storage_port = num(&arg, value(&arg)?)? as u16,
            "--prefix" => config.queue_prefix = value(&arg)?,
            "--sas-lifetime-secs" => {
                config.sas_lifetime = Duration::from_secs(num(&arg, value(&arg)?)?);
            }
            "--token-lifetime-secs" => {
                config.token_lifetime = Duration::from_secs(num(&arg, value(&arg)?)?);
            }
            "-h" | "--help" => return Err(usage().to_string()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(config)
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
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
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("starting Azurite (accounts {SHARED_ACCOUNTS:?})...");
    let azurite = match Azurite::start(&SHARED_ACCOUNTS) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot build tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let emu = DmEmulator::start(&azurite, config).await?;
        for (k, v) in emu.handler_env() {
            println!("{k}={v}");
        }
        println!("EMULATOR_CONTROL_URL={}", emu.control_url());
        println!("AZURITE_PID={}", azurite.pid().unwrap_or_default());
        for account in azurite.accounts() {
            println!(
                "STORAGE_CONNECTION_STRING_{}={}",
                account.to_ascii_uppercase(),
                azurite.connection_string(&account)?
            );
        }
        for (account, queue) in emu.ingestion_queues() {
            println!("# ingestion queue: {account}/{queue}");
        }
        println!("READY");
        wait_for_shutdown().await;
        eprintln!("shutting down");
        emu.shutdown();
        Ok::<(), kusto_dev::Error>(())
    });
    // Killing explicitly (rather than relying on drop order) keeps the intent obvious.
    azurite.kill();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
