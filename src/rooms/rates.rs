//! Per-user send rates (`--send-rate`, `--send-burst`): a token bucket per user and
//! per kind of traffic — CHAT and COMMAND in one, BARRAGE (cheap, unstored, bursty by
//! nature) in another, so a flood of barrage cannot starve a user's chat or the other
//! way round. SendMessage and stream sends draw on the same buckets.
//!
//! The buckets are per node: a user sending through two nodes of a cluster gets each
//! node's rate. Memory is one small entry per user who sent lately; entries idle long
//! enough to be full again are dropped every [`SWEEP_EVERY`] checks.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::domain::MessageKind;
use crate::error::{Error, Result};

/// Checks after which idle buckets are swept.
const SWEEP_EVERY: u64 = 4096;

type Buckets = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The send buckets; no limit when `--send-rate` is 0.
pub struct SendRates {
    /// CHAT and COMMAND, then BARRAGE.
    buckets: Option<(Buckets, Buckets)>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl SendRates {
    /// `rate` sends per second per user and kind, up to `burst` at once (at least
    /// one); `rate` 0: unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        let buckets = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            let quota = Quota::per_second(rate).allow_burst(burst);
            (RateLimiter::keyed(quota), RateLimiter::keyed(quota))
        });
        SendRates {
            buckets,
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one send of `kind` from `user`'s bucket, or says how long to wait.
    pub fn check(&self, user: &str, kind: MessageKind) -> Result<()> {
        let Some((chat, barrage)) = &self.buckets else {
            return Ok(());
        };
        let buckets = match kind {
            MessageKind::Barrage => barrage,
            MessageKind::Chat | MessageKind::Command => chat,
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            chat.retain_recent();
            barrage.retain_recent();
        }
        let key = user.to_string();
        buckets
            .check_key(&key)
            .map_err(|not_until| Error::RateLimited {
                retry_after: not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_millis(1)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_send_waits() {
        let rates = SendRates::new(10, 3);
        for _ in 0..3 {
            rates.check("alice", MessageKind::Chat).unwrap();
        }
        let Err(Error::RateLimited { retry_after }) = rates.check("alice", MessageKind::Chat)
        else {
            panic!("the fourth send is over the burst");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100));
        // Other users and barrage have buckets of their own.
        rates.check("bob", MessageKind::Chat).unwrap();
        rates.check("alice", MessageKind::Barrage).unwrap();
        assert!(
            rates.check("alice", MessageKind::Command).is_err(),
            "COMMAND shares CHAT's"
        );
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let rates = SendRates::new(0, 0);
        for _ in 0..10_000 {
            rates.check("alice", MessageKind::Chat).unwrap();
        }
    }
}
