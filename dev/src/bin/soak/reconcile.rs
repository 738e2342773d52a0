//! What the handler said about each blob against what the queues hold, by `sourceId`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use uuid::Uuid;

use super::clients::{Outcome, RequestRecord, path_matches};
use super::drain::Message;

/// Blob counts of one phase (or of the whole run).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub blobs: u64,
    pub queued: u64,
    pub failed: u64,
    pub unknown: u64,
    /// HTTP answers without a result for the blob.
    pub error_answer: u64,
    /// Sent (or maybe sent), no HTTP answer.
    pub no_answer: u64,
    pub not_sent: u64,
    /// Reported `queued`, no message.
    pub lost: u64,
    pub failed_but_queued: u64,
    pub error_answer_but_queued: u64,
    pub no_answer_but_queued: u64,
    pub not_sent_but_queued: u64,
    pub unknown_queued: u64,
    /// sourceIds with more than one message, and the copies beyond the first.
    pub duplicated: u64,
    pub extra_copies: u64,
    /// `failed`/`unknown`/error-answer codes with their blob counts.
    pub codes: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome, copies: u64) {
        let found = copies > 0;
        self.blobs += 1;
        if copies > 1 {
            self.duplicated += 1;
            self.extra_copies += copies - 1;
        }
        let code = match outcome {
            Outcome::Queued => {
                self.queued += 1;
                self.lost += u64::from(!found);
                None
            }
            Outcome::Failed(code) => {
                self.failed += 1;
                self.failed_but_queued += u64::from(found);
                Some(format!("failed {code}"))
            }
            Outcome::Unknown(code) => {
                self.unknown += 1;
                self.unknown_queued += u64::from(found);
                Some(format!("unknown {code}"))
            }
            Outcome::ErrorAnswer(status, code) => {
                self.error_answer += 1;
                self.error_answer_but_queued += u64::from(found);
                Some(format!("{status} {code}"))
            }
            Outcome::NoAnswer(why) => {
                self.no_answer += 1;
                self.no_answer_but_queued += u64::from(found);
                Some(format!("no answer: {why}"))
            }
            Outcome::NotSent => {
                self.not_sent += 1;
                self.not_sent_but_queued += u64::from(found);
                Some("connection refused".to_owned())
            }
        };
        if let Some(code) = code {
            *self.codes.entry(code).or_default() += 1;
        }
    }

    /// Counts that must be zero: a blob reported queued that is not, or reported not queued
    /// (failed, an error answer, never sent) that is.
    pub fn violations(&self) -> u64 {
        self.lost + self.failed_but_queued + self.error_answer_but_queued + self.not_sent_but_queued
    }
}

/// Requests of one phase: answers by status and latencies.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    pub count: u64,
    /// `"202"`, `"207"`, `"503"`, … or `"no answer"`, `"refused"`.
    pub statuses: BTreeMap<String, u64>,
    pub latencies: Vec<Duration>,
}

pub struct Reconciliation {
    pub phases: Vec<(Requests, Counts)>,
    pub total: Counts,
    pub messages: u64,
    /// Messages whose `Id` no request sent, or that did not decode.
    pub strays: u64,
    /// Messages whose `BlobPath` is not the blob their `Id` was sent with.
    pub wrong_path: u64,
}

pub fn reconcile(phases: usize, records: &[RequestRecord], messages: &[Message]) -> Reconciliation {
    let mut copies: HashMap<Uuid, u64> = HashMap::new();
    let mut wrong_path = 0;
    for m in messages {
        if let Some(id) = m.id {
            *copies.entry(id).or_default() += 1;
            wrong_path += u64::from(!path_matches(&m.blob_path, &id));
        }
    }
    let mut out = vec![(Requests::default(), Counts::default()); phases];
    let mut total = Counts::default();
    let mut sent = 0;
    for r in records {
        let (requests, counts) = &mut out[r.phase];
        requests.count += 1;
        let status = match (r.status, r.blobs.first().map(|b| &b.1)) {
            (Some(s), _) => s.to_string(),
            (None, Some(Outcome::NotSent)) => "refused".to_owned(),
            (None, _) => "no answer".to_owned(),
        };
        *requests.statuses.entry(status).or_default() += 1;
        requests.latencies.push(r.latency);
        for (id, outcome) in &r.blobs {
            let n = copies.remove(id).unwrap_or(0);
            sent += n;
            counts.add(outcome, n);
            total.add(outcome, n);
        }
    }
    // What is left in `copies` belongs to no blob any request sent.
    let undecoded = messages.iter().filter(|m| m.id.is_none()).count() as u64;
    let strays = copies.values().sum::<u64>() + undecoded;
    debug_assert_eq!(sent + strays, messages.len() as u64);
    Reconciliation {
        phases: out,
        total,
        messages: messages.len() as u64,
        strays,
        wrong_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: Uuid) -> Message {
        Message {
            id: Some(id),
            blob_path: format!("http://h/a/soak/p0/{id}.csv?sig=x"),
        }
    }

    #[test]
    fn outcomes_are_checked_against_the_messages() {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        let record = RequestRecord {
            phase: 1,
            latency: Duration::from_millis(5),
            status: Some(207),
            blobs: vec![
                (ids[0], Outcome::Queued),              // found twice
                (ids[1], Outcome::Queued),              // lost
                (ids[2], Outcome::Failed("X".into())),  // failed but queued
                (ids[3], Outcome::Unknown("Y".into())), // unknown, queued
                (ids[4], Outcome::Unknown("Y".into())), // unknown, not queued
                (ids[5], Outcome::NoAnswer("timeout")), // no answer, queued
            ],
        };
        let stray = Uuid::new_v4();
        let messages: Vec<Message> = [ids[0], ids[0], ids[2], ids[3], ids[5], stray]
            .into_iter()
            .map(message)
            .collect();
        let r = reconcile(2, &[record], &messages);
        let t = &r.total;
        assert_eq!((t.blobs, t.queued, t.lost), (6, 2, 1));
        assert_eq!(
            (t.failed_but_queued, t.unknown, t.unknown_queued),
            (1, 2, 1)
        );
        assert_eq!(
            (t.no_answer_but_queued, t.duplicated, t.extra_copies),
            (1, 1, 1)
        );
        assert_eq!(t.violations(), 2);
        assert_eq!((r.strays, r.wrong_path, r.messages), (1, 0, 6));
        assert_eq!(r.phases[1].1.blobs, 6);
        assert_eq!(r.phases[1].0.statuses["207"], 1);
        assert_eq!(r.phases[0].0.count, 0);
    }
}
