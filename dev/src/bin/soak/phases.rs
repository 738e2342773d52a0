//! The phases: each injects one fault while the load runs, holds it, heals it, and lets the
//! handler recover before the next one.
//!
//! Storage faults (`break_account`) and SAS lifetimes change the URLs the emulator hands out,
//! so they reach the handler at its next `.get ingestion resources`; the stack's short SAS
//! lifetime makes that every few seconds, and a phase holds its fault from the moment the
//! handler has fetched the broken resources ("live after").

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kusto_dev::BreakMode;

use super::clients::Shared;
use super::stack::{Stack, stop};

const ACCOUNT1: &str = "ingestacct1";
const ACCOUNT2: &str = "ingestacct2";
const RESOURCES: &str = ".get ingestion resources";
/// Both accounts answering "reset after enqueue" is held only this long: every blob is then
/// `unknown`.
const SHORT_HOLD: Duration = Duration::from_secs(3);
/// The SAS lifetime of the SAS-expiry phase (`se` has whole seconds, so 1–2 s in effect):
/// posts waiting their turn outlive it.
const SHORT_SAS: Duration = Duration::from_secs(2);
/// How long to wait for the handler to fetch resources after a fault changed them.
const PICKUP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Hang,
    Reset,
    ResetAfterEnqueue,
    ServerBusy,
    SlowDm,
    SasExpiry,
    Sigterm,
}

pub struct Phase {
    pub name: &'static str,
    pub fault: Fault,
    /// What is injected, for the report.
    pub what: &'static str,
}

pub const PHASES: [Phase; 8] = [
    Phase {
        name: "baseline",
        fault: Fault::None,
        what: "none",
    },
    Phase {
        name: "hang",
        fault: Fault::Hang,
        what: "`ingestacct1` Hang: reads the request, never answers",
    },
    Phase {
        name: "reset",
        fault: Fault::Reset,
        what: "`ingestacct1` Reset: TCP RST, nothing enqueued",
    },
    Phase {
        name: "reset after enqueue",
        fault: Fault::ResetAfterEnqueue,
        what: "both accounts ResetAfterEnqueue (3 s): enqueued, answer lost",
    },
    Phase {
        name: "503",
        fault: Fault::ServerBusy,
        what: "`ingestacct1` ServerBusy: every post 503",
    },
    Phase {
        name: "slow DM",
        fault: Fault::SlowDm,
        what: "DM answers after deadline + 3 s (held ≥ 2 deadlines); handler replaced by a cold one",
    },
    Phase {
        name: "SAS expiry",
        fault: Fault::SasExpiry,
        what: "queue SAS handed out with a 2 s lifetime",
    },
    Phase {
        name: "SIGTERM",
        fault: Fault::Sigterm,
        what: "SIGTERM to the handler while requests are in flight, then a new one",
    },
];

/// Injects `phase`'s fault, holds it for `hold`, heals, and waits `recovery`. Returns notes on
/// what happened (pickup times, handler exits) for the report.
pub async fn run(
    phase: &Phase,
    stack: &mut Stack,
    shared: &Shared,
    hold: Duration,
    recovery: Duration,
    deadline: Duration,
) -> Result<Vec<String>, String> {
    let faults = stack.emu.faults();
    let mut notes = Vec::new();
    match phase.fault {
        Fault::None => sleep(hold).await,
        Fault::Hang | Fault::Reset | Fault::ServerBusy => {
            let mode = match phase.fault {
                Fault::Hang => BreakMode::Hang,
                Fault::Reset => BreakMode::Reset,
                _ => BreakMode::ServerBusy,
            };
            notes.push(live(stack, "fault", || faults.break_account(ACCOUNT1, mode)).await);
            sleep(hold).await;
            notes.push(live(stack, "heal", || faults.heal_account(ACCOUNT1)).await);
        }
        Fault::ResetAfterEnqueue => {
            let both = || {
                faults.break_account(ACCOUNT1, BreakMode::ResetAfterEnqueue);
                faults.break_account(ACCOUNT2, BreakMode::ResetAfterEnqueue);
            };
            notes.push(live(stack, "fault", both).await);
            sleep(hold.min(SHORT_HOLD)).await;
            let heal = || {
                faults.heal_account(ACCOUNT1);
                faults.heal_account(ACCOUNT2);
            };
            notes.push(live(stack, "heal", heal).await);
        }
        Fault::SlowDm => {
            faults.set_delay(deadline + Duration::from_secs(3));
            let (url, ready, old) = stack.start_replacement()?;
            shared.set_url(url);
            notes.push(format!("cold handler ready in {} ms", ready.as_millis()));
            // The old one drains its in-flight requests meanwhile.
            let stopped = stop(old);
            notes.push(format!(
                "old handler: SIGTERM → exit {} in {:.1} s",
                exit_text(&stopped.status),
                stopped.took.as_secs_f64()
            ));
            // Long enough for requests to wait on the DM and for resources to expire.
            sleep(hold.max(2 * deadline)).await;
            faults.set_delay(Duration::ZERO);
        }
        Fault::SasExpiry => {
            let normal = faults.sas_lifetime();
            notes.push(live(stack, "fault", || faults.set_sas_lifetime(SHORT_SAS)).await);
            sleep(hold).await;
            notes.push(live(stack, "heal", || faults.set_sas_lifetime(normal)).await);
        }
        Fault::Sigterm => {
            sleep(hold / 2).await;
            let in_flight = wait_in_flight(shared).await;
            let stopped = stack.stop_handler().ok_or("no handler to stop")?;
            notes.push(format!(
                "SIGTERM with {in_flight} requests in flight → exit {} in {:.2} s",
                exit_text(&stopped.status),
                stopped.took.as_secs_f64()
            ));
            let (url, ready) = stack.start_handler()?;
            shared.set_url(url);
            notes.push(format!("new handler ready in {} ms", ready.as_millis()));
            sleep(hold / 2).await;
        }
    }
    sleep(recovery).await;
    Ok(notes)
}

/// Applies `change` and waits until the handler has fetched resources since: from then on
/// the change is live for it. Returns a note saying how long that took.
async fn live(stack: &Stack, what: &str, change: impl FnOnce()) -> String {
    let before = stack.emu.command_count(RESOURCES);
    let t = Instant::now();
    change();
    while stack.emu.command_count(RESOURCES) == before {
        if t.elapsed() > PICKUP_LIMIT {
            return format!("{what}: not fetched within {} s", PICKUP_LIMIT.as_secs());
        }
        sleep(Duration::from_millis(50)).await;
    }
    format!("{what} live after {:.1} s", t.elapsed().as_secs_f64())
}

/// Waits (up to 5 s) until a request is in flight; returns how many are.
async fn wait_in_flight(shared: &Shared) -> usize {
    let t = Instant::now();
    loop {
        let n = shared.in_flight.load(Ordering::Relaxed);
        if n > 0 || t.elapsed() > Duration::from_secs(5) {
            return n;
        }
        sleep(Duration::from_millis(1)).await;
    }
}

fn exit_text(status: &Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) => match s.code() {
            Some(code) => code.to_string(),
            None => s.to_string(),
        },
        None => "unknown".to_owned(),
    }
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await
}
