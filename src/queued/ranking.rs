//! How healthy each storage account of a DM has been lately: the SDKs' success-rate window of six
//! 10-second buckets and their 90/70/30/0 % tiers. Kept per DM for the life of the process, so what
//! was learnt survives a resource refresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 6;
const BUCKET_SPAN: Duration = Duration::from_secs(10);
/// Lower bounds of the success rate of each tier, best first.
pub(super) const TIERS: [f64; 4] = [0.9, 0.7, 0.3, 0.0];

/// Success counts per storage account over the last minute.
#[derive(Default)]
pub(crate) struct AccountRanking {
    accounts: Mutex<HashMap<String, Window>>,
}

#[derive(Default)]
struct Window {
    /// (bucket start, successes, total), newest last.
    buckets: Vec<(Instant, u32, u32)>,
}

impl Window {
    fn record(&mut self, now: Instant, success: bool) {
        let fresh = matches!(self.buckets.last(), Some((start, _, _)) if now.duration_since(*start) < BUCKET_SPAN);
        if !fresh {
            self.buckets.push((now, 0, 0));
            if self.buckets.len() > BUCKETS {
                self.buckets.remove(0);
            }
        }
        if let Some(last) = self.buckets.last_mut() {
            last.1 += u32::from(success);
            last.2 += 1;
        }
    }

    /// Weighted success rate, newest bucket weighing most; 1.0 without recent data.
    fn rank(&self, now: Instant) -> f64 {
        let horizon = BUCKET_SPAN * BUCKETS as u32;
        let (mut weighted, mut weights) = (0.0, 0.0);
        for (age_index, (start, ok, total)) in self.buckets.iter().rev().enumerate() {
            if now.duration_since(*start) >= horizon || *total == 0 {
                continue;
            }
            let weight = (BUCKETS - age_index) as f64;
            weighted += f64::from(*ok) / f64::from(*total) * weight;
            weights += weight;
        }
        if weights == 0.0 {
            1.0
        } else {
            weighted / weights
        }
    }
}

impl AccountRanking {
    pub(crate) fn record(&self, account: &str, success: bool) {
        let now = Instant::now();
        if let Ok(mut accounts) = self.accounts.lock() {
            // Look up before inserting: the account's name is only copied the first time.
            match accounts.get_mut(account) {
                Some(window) => window.record(now, success),
                None => accounts
                    .entry(account.to_owned())
                    .or_default()
                    .record(now, success),
            }
        }
    }

    /// The tier (0 = best) of each of `accounts`, read under one lock.
    pub(super) fn tiers(&self, accounts: &[String], now: Instant) -> Vec<usize> {
        let known = self.accounts.lock().ok();
        accounts
            .iter()
            .map(|account| {
                let rank = known
                    .as_ref()
                    .and_then(|a| a.get(account).map(|w| w.rank(now)))
                    .unwrap_or(1.0);
                TIERS
                    .iter()
                    .position(|&threshold| rank >= threshold)
                    .unwrap_or(TIERS.len() - 1)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rank_weighs_recent_buckets() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert_eq!(w.rank(t0), 1.0);
        w.record(t0, false);
        w.record(t0 + BUCKET_SPAN, true);
        let r = w.rank(t0 + BUCKET_SPAN);
        assert!(r > 0.5 && r < 1.0, "newer success weighs more: {r}");
        assert_eq!(w.rank(t0 + BUCKET_SPAN * 8), 1.0, "old data expires");
    }
}
