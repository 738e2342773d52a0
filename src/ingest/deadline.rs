//! The time a request or invocation must be answered by: every wait on its behalf draws from it,
//! so timeouts share one budget instead of adding up.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub(crate) fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    pub(crate) fn instant(self) -> Instant {
        self.0
    }

    pub(crate) fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub(crate) fn expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// `timeout`, shortened to what is left.
    pub(crate) fn cap(self, timeout: Duration) -> Duration {
        timeout.min(self.remaining())
    }
}
