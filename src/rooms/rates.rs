//! Per-user rates: a token bucket per user and per kind of traffic.
//!
//! Sends (`--send-rate`, `--send-burst`): CHAT and COMMAND in one bucket, BARRAGE
//! (cheap, unstored, bursty by nature) in another, so a flood of barrage cannot
//! starve a user's chat or the other way round. SendMessage and stream sends draw on
//! the same buckets. Room changes (`--room-change-rate`, `--room-change-burst`):
//! CreateRoom, JoinRoom, EnterRoom, LeaveRoom, SwitchRoom, UpdateRoom and DeleteRoom
//! share a third — each is a transaction and a room event for everyone in the room,
//! so they are what a hostile client would repeat to load the database and the
//! room's members.
//!
//! The buckets are per node: a user calling through two nodes of a cluster gets each
//! node's rate. Memory is one small entry per user who called lately; entries idle
//! long enough to be full again are dropped every [`SWEEP_EVERY`] checks.
//!
//! A send refused because its room does not exist or the sender may not send there
//! gives its token back ([`Rates::refund_send`]), so a client that mistypes a room id
//! does not use up its rate; refunds have a bucket of their own at the send rate, so
//! refused sends still cost the server no more than that (and a flood of them is
//! charged to the send bucket again once the refunds run out).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::domain::{Clock, MessageKind};
use crate::error::{Error, Result};

/// Checks after which idle buckets are swept.
const SWEEP_EVERY: u64 = 4096;
/// Users holding refunded sends, at most; past it the oldest refunds are forgotten
/// (the map is cleared), which only makes some refused sends count after all.
const MAX_REFUNDED_USERS: usize = 65_536;

type Buckets =
    RateLimiter<String, DefaultKeyedStateStore<String>, Measured, NoOpMiddleware<Duration>>;

/// The service's [`Clock`] as the buckets measure time: its monotonic
/// [`Clock::elapsed`] (a test's clock moves the buckets too).
#[derive(Clone, Debug)]
struct Measured(Clock);

impl governor::clock::Clock for Measured {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A rate: so many per second per user, up to `burst` at once (0: one second's
/// worth). `per_second` 0: unlimited.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    fn buckets(self, clock: &Measured) -> Option<Buckets> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        Some(RateLimiter::dashmap_with_clock(
            Quota::per_second(rate).allow_burst(burst),
            clock.clone(),
        ))
    }
}

/// The buckets; a kind with no rate is unlimited.
pub struct Rates {
    chat: Option<Buckets>,
    barrage: Option<Buckets>,
    changes: Option<Buckets>,
    /// How fast refused sends are refunded (the send rate; `None`: sends unlimited).
    refunds: Option<Buckets>,
    /// Sends given back per user and send bucket, spent before the bucket is.
    credits: Mutex<HashMap<(String, Bucket), u32>>,
    /// How many users hold credits: the send path takes no lock while none does.
    credited: AtomicUsize,
    /// At most this many credits per user and bucket (the burst).
    max_credits: u32,
    clock: Measured,
    checks: AtomicU64,
}

/// Which send bucket.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Bucket {
    Chat,
    Barrage,
}

impl Bucket {
    fn of(kind: MessageKind) -> Bucket {
        match kind {
            MessageKind::Barrage => Bucket::Barrage,
            MessageKind::Chat | MessageKind::Command | MessageKind::Recall | MessageKind::Edit => {
                Bucket::Chat
            }
        }
    }
}

impl Rates {
    /// `sends` for each of the two send buckets, `changes` for room changes, on
    /// `clock`.
    pub fn new(sends: Rate, changes: Rate, clock: Clock) -> Self {
        let clock = Measured(clock);
        let max_credits = match NonZeroU32::new(sends.burst) {
            Some(burst) => burst.get(),
            None => sends.per_second.max(1),
        };
        Rates {
            chat: sends.buckets(&clock),
            barrage: sends.buckets(&clock),
            changes: changes.buckets(&clock),
            refunds: sends.buckets(&clock),
            credits: Mutex::new(HashMap::new()),
            credited: AtomicUsize::new(0),
            max_credits,
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one send of `kind` from `user`'s bucket (a refunded one first), or says
    /// how long to wait.
    pub fn check_send(&self, user: &str, kind: MessageKind) -> Result<()> {
        let bucket = Bucket::of(kind);
        let buckets = match bucket {
            Bucket::Barrage => &self.barrage,
            Bucket::Chat => &self.chat,
        };
        if buckets.is_some()
            && self.credited.load(Ordering::Relaxed) > 0
            && self.spend_credit(user, bucket)
        {
            return Ok(());
        }
        self.take(buckets, user)
    }

    /// Gives back the token a send of `kind` took, because it was refused before
    /// anything was stored or published (no such room, not a member there) — unless
    /// `user`'s refunds outran the send rate, when the refused send counts.
    pub fn refund_send(&self, user: &str, kind: MessageKind) {
        let Some(refunds) = &self.refunds else {
            return;
        };
        if refunds.check_key(&user.to_string()).is_err() {
            return;
        }
        let mut credits = self.credits.lock().expect("credits lock");
        if credits.len() >= MAX_REFUNDED_USERS {
            credits.clear();
        }
        let held = credits
            .entry((user.to_string(), Bucket::of(kind)))
            .or_insert(0);
        *held = (*held + 1).min(self.max_credits);
        self.credited.store(credits.len(), Ordering::Relaxed);
    }

    /// Spends one of `user`'s refunded sends of `bucket`, if it holds one.
    fn spend_credit(&self, user: &str, bucket: Bucket) -> bool {
        let mut credits = self.credits.lock().expect("credits lock");
        let key = (user.to_string(), bucket);
        let Some(held) = credits.get_mut(&key) else {
            return false;
        };
        *held -= 1;
        if *held == 0 {
            credits.remove(&key);
        }
        self.credited.store(credits.len(), Ordering::Relaxed);
        true
    }

    /// Takes one room change from `user`'s bucket, or says how long to wait.
    pub fn check_change(&self, user: &str) -> Result<()> {
        self.take(&self.changes, user)
    }

    fn take(&self, buckets: &Option<Buckets>, user: &str) -> Result<()> {
        let Some(buckets) = buckets else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for buckets in [&self.chat, &self.barrage, &self.changes, &self.refunds]
                .into_iter()
                .flatten()
            {
                buckets.retain_recent();
            }
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
        let sends = Rate {
            per_second: 10,
            burst: 3,
        };
        let rates = Rates::new(sends, Rate::default(), Clock::system());
        for _ in 0..3 {
            rates.check_send("alice", MessageKind::Chat).unwrap();
        }
        let Err(Error::RateLimited { retry_after }) = rates.check_send("alice", MessageKind::Chat)
        else {
            panic!("the fourth send is over the burst");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100));
        // Other users and barrage have buckets of their own.
        rates.check_send("bob", MessageKind::Chat).unwrap();
        rates.check_send("alice", MessageKind::Barrage).unwrap();
        assert!(
            rates.check_send("alice", MessageKind::Command).is_err(),
            "COMMAND shares CHAT's"
        );
        // Room changes are unlimited here and draw on no send bucket.
        for _ in 0..1000 {
            rates.check_change("alice").unwrap();
        }
    }

    #[test]
    fn room_changes_have_a_bucket_of_their_own() {
        let changes = Rate {
            per_second: 1,
            burst: 2,
        };
        let rates = Rates::new(Rate::default(), changes, Clock::system());
        rates.check_change("alice").unwrap();
        rates.check_change("alice").unwrap();
        let Err(Error::RateLimited { retry_after }) = rates.check_change("alice") else {
            panic!("the third change is over the burst");
        };
        assert!(retry_after > Duration::from_millis(500) && retry_after <= Duration::from_secs(1));
        rates.check_change("bob").unwrap();
        rates.check_send("alice", MessageKind::Chat).unwrap();
    }

    #[test]
    fn refused_sends_give_their_token_back_up_to_the_rate() {
        let sends = Rate {
            per_second: 1,
            burst: 2,
        };
        let rates = Rates::new(sends, Rate::default(), Clock::system());
        rates.check_send("alice", MessageKind::Chat).unwrap();
        rates.check_send("alice", MessageKind::Chat).unwrap();
        assert!(rates.check_send("alice", MessageKind::Chat).is_err());
        // Both sends were refused: both tokens come back (within the refund burst).
        rates.refund_send("alice", MessageKind::Chat);
        rates.refund_send("alice", MessageKind::Chat);
        rates.check_send("alice", MessageKind::Chat).unwrap();
        rates.check_send("alice", MessageKind::Chat).unwrap();
        assert!(rates.check_send("alice", MessageKind::Chat).is_err());
        // Refunds have their own bucket: a third refund this second is not given.
        rates.refund_send("alice", MessageKind::Chat);
        assert!(rates.check_send("alice", MessageKind::Chat).is_err());
        // A refund is for its own bucket and user only.
        rates.refund_send("bob", MessageKind::Barrage);
        assert!(rates.check_send("alice", MessageKind::Barrage).is_ok());
        assert_eq!(
            rates.credited.load(Ordering::Relaxed),
            1,
            "bob's barrage credit"
        );
    }

    /// The buckets refill as the service's clock moves, and only then: on a test's
    /// clock the wait a refusal names is exact, and the send after it passes.
    #[test]
    fn a_bucket_refills_as_the_clock_moves() {
        let clock = Clock::manual(crate::domain::UnixMicros(0));
        let sends = Rate {
            per_second: 10,
            burst: 2,
        };
        let rates = Rates::new(sends, Rate::default(), clock.clone());
        rates.check_send("alice", MessageKind::Chat).unwrap();
        rates.check_send("alice", MessageKind::Chat).unwrap();
        let Err(Error::RateLimited { retry_after }) = rates.check_send("alice", MessageKind::Chat)
        else {
            panic!("the third send is over the burst");
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        clock.advance(Duration::from_millis(99));
        assert!(
            rates.check_send("alice", MessageKind::Chat).is_err(),
            "1 ms early"
        );
        clock.advance(Duration::from_millis(1));
        rates.check_send("alice", MessageKind::Chat).unwrap();
        assert!(rates.check_send("alice", MessageKind::Chat).is_err());
        // A second later the whole burst is back.
        clock.advance(Duration::from_secs(1));
        rates.check_send("alice", MessageKind::Chat).unwrap();
        rates.check_send("alice", MessageKind::Chat).unwrap();
        assert!(rates.check_send("alice", MessageKind::Chat).is_err());
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let rates = Rates::new(Rate::default(), Rate::default(), Clock::system());
        for _ in 0..10_000 {
            rates.check_send("alice", MessageKind::Chat).unwrap();
            rates.check_change("alice").unwrap();
        }
    }
}
