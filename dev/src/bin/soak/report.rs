//! The Markdown report: the verdict, then requests and blobs phase by phase.

use std::collections::BTreeMap;
use std::time::Duration;

use super::load::percentile;
use super::phases::PHASES;
use super::reconcile::{Counts, Reconciliation};

pub struct Run<'a> {
    pub clients: usize,
    pub hold: Duration,
    pub recovery: Duration,
    pub deadline: Duration,
    pub sas_lifetime: Duration,
    pub handlers: usize,
    pub total: Duration,
    pub notes: &'a [Vec<String>],
    pub machine: Vec<(&'static str, String)>,
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// `a×3, b×1`, largest first.
fn tally(map: &BTreeMap<String, u64>) -> String {
    let mut items: Vec<(&String, &u64)> = map.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = items.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    if parts.is_empty() {
        "—".to_owned()
    } else {
        parts.join(", ")
    }
}

pub fn markdown(run: &Run, r: &Reconciliation) -> String {
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    let machine: Vec<String> = run
        .machine
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    line(format!("Machine: {}.", machine.join(", ")));
    line(String::new());
    line(format!(
        "{} clients; each phase holds its fault {:.0} s (from the moment it is live for the handler), then \
         heals and recovers {:.0} s. Handler: release build, `INGEST_REQUEST_DEADLINE_SECONDS={}`, other settings \
         default; queue SAS lifetime {} s (resources refreshed every ~{} s); {} handler processes in all. The run \
         took {:.0} s.",
        run.clients,
        run.hold.as_secs_f64(),
        run.recovery.as_secs_f64(),
        run.deadline.as_secs(),
        run.sas_lifetime.as_secs(),
        run.sas_lifetime.as_secs() / 4,
        run.handlers,
        run.total.as_secs_f64(),
    ));
    line(String::new());

    let t = &r.total;
    let late: usize = r
        .phases
        .iter()
        .map(|(req, _)| {
            req.latencies
                .iter()
                .filter(|l| **l > run.deadline + Duration::from_secs(1))
                .count()
        })
        .sum();
    line("### Verdict".into());
    line(String::new());
    line(format!(
        "{} blobs in {} requests; {} messages in the queues.",
        t.blobs,
        r.phases.iter().map(|(q, _)| q.count).sum::<u64>(),
        r.messages
    ));
    line(String::new());
    line("| check | blobs | |".into());
    line("|---|---:|:-:|".into());
    line(format!(
        "| **lost**: reported `queued`, no message | {} | {} |",
        t.lost,
        mark(t.lost == 0)
    ));
    line(format!(
        "| **mis-reported**: reported `failed`, message found | {} | {} |",
        t.failed_but_queued,
        mark(t.failed_but_queued == 0)
    ));
    line(format!(
        "| **mis-reported**: error answer without per-blob results (4xx/5xx), message found | {} | {} |",
        t.error_answer_but_queued,
        mark(t.error_answer_but_queued == 0)
    ));
    line(format!(
        "| connection refused (never sent), message found | {} | {} |",
        t.not_sent_but_queued,
        mark(t.not_sent_but_queued == 0)
    ));
    line(format!(
        "| no answer (connection broken or client timeout), message found — possible; what `idempotent` is for | {} of {} | |",
        t.no_answer_but_queued, t.no_answer
    ));
    line(format!(
        "| `unknown`: message found / none | {} / {} | |",
        t.unknown_queued,
        t.unknown - t.unknown_queued
    ));
    line(format!(
        "| **duplicated**: sourceIds with more than one message (extra copies) | {} ({}) | |",
        t.duplicated, t.extra_copies
    ));
    line(format!(
        "| messages no request sent (or undecodable) / with another blob's path | {} / {} | {} |",
        r.strays,
        r.wrong_path,
        mark(r.strays == 0 && r.wrong_path == 0)
    ));
    line(format!(
        "| requests answered later than the deadline + 1 s ({} s) | {} | {} |",
        run.deadline.as_secs() + 1,
        late,
        mark(late == 0)
    ));
    line(String::new());

    line("### Requests per phase".into());
    line(String::new());
    line("| # | phase | fault | requests | answers | p50 | p99 | max | notes |".into());
    line("|---:|---|---|---:|---|---:|---:|---:|---|".into());
    for (i, ((req, _), phase)) in r.phases.iter().zip(PHASES.iter()).enumerate() {
        let notes = run.notes.get(i).map(|n| n.join("; ")).unwrap_or_default();
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            phase.name,
            phase.what,
            req.count,
            tally(&req.statuses),
            ms(percentile(&req.latencies, 50.0)),
            ms(percentile(&req.latencies, 99.0)),
            ms(req.latencies.iter().max().copied().unwrap_or_default()),
            if notes.is_empty() {
                "—".into()
            } else {
                notes
            },
        ));
    }
    line(String::new());

    line("### Blobs per phase".into());
    line(String::new());
    line("| # | phase | blobs | queued | failed | unknown (→ queued) | no per-blob result | lost | mis-reported | no answer → queued | duplicated | not queued, why |".into());
    line("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".into());
    let row = |name: &str, i: String, c: &Counts| {
        format!(
            "| {i} | {name} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
            c.blobs,
            c.queued,
            c.failed,
            c.unknown,
            c.unknown_queued,
            c.error_answer + c.no_answer + c.not_sent,
            c.lost,
            c.failed_but_queued + c.error_answer_but_queued + c.not_sent_but_queued,
            c.no_answer_but_queued,
            c.duplicated,
            tally(&c.codes)
        )
    };
    for (i, ((_, counts), phase)) in r.phases.iter().zip(PHASES.iter()).enumerate() {
        line(row(phase.name, (i + 1).to_string(), counts));
    }
    line(row("**all**", String::new(), t));
    o
}
