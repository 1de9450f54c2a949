//! Time as the store keeps it, and the clock the service reads it from.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A point in time, in microseconds since the Unix epoch (what the store keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixMicros(pub i64);

impl UnixMicros {
    /// The system's time. Only [`Clock`] reads it: the rules take their time from
    /// the clock they were given.
    fn system() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        UnixMicros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: Duration) -> UnixMicros {
        UnixMicros(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// This time less `d` (saturating).
    pub fn minus(self, d: Duration) -> UnixMicros {
        UnixMicros(
            self.0
                .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: UnixMicros) -> Duration {
        Duration::from_micros(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// Where the service reads the time and waits for it: the timers that survive
/// restarts (presence timeouts, destroy-when-empty), the rates, the times stored
/// with messages and members, retention.
///
/// A server runs on the system's clock ([`Clock::system`], the default). A test may
/// give it a clock of its own ([`Clock::manual`]) that moves only when the test
/// [advances](Clock::advance) it: a timer's test then says "500 ms later" instead of
/// sleeping 500 ms and hoping the machine kept up. Cloning shares the clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: the system's clock.
    manual: Option<Arc<Manual>>,
}

/// A clock that moves only when advanced.
#[derive(Debug)]
struct Manual {
    /// Its time; waiters watch it.
    now: watch::Sender<UnixMicros>,
    /// Where it started, for [`Clock::elapsed`].
    start: UnixMicros,
}

/// The origin of the system clock's [`Clock::elapsed`].
static ORIGIN: OnceLock<Instant> = OnceLock::new();

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that starts at `start` and moves only when [advanced](Clock::advance).
    pub fn manual(start: UnixMicros) -> Clock {
        Clock {
            manual: Some(Arc::new(Manual {
                now: watch::Sender::new(start),
                start,
            })),
        }
    }

    /// The time now.
    pub fn now(&self) -> UnixMicros {
        match &self.manual {
            None => UnixMicros::system(),
            Some(manual) => *manual.now.borrow(),
        }
    }

    /// Time since a fixed point of this clock, never going back (the rates measure
    /// with it: the system's wall time may be set back, its monotonic time is not).
    pub fn elapsed(&self) -> Duration {
        match &self.manual {
            None => ORIGIN.get_or_init(Instant::now).elapsed(),
            Some(manual) => manual.now.borrow().since(manual.start),
        }
    }

    /// Waits `d` of this clock's time.
    pub async fn sleep(&self, d: Duration) {
        match &self.manual {
            None => tokio::time::sleep(d).await,
            Some(manual) => {
                let until = manual.now.borrow().plus(d);
                let mut now = manual.now.subscribe();
                // The sender lives as long as this clock does.
                let _ = now.wait_for(|now| *now >= until).await;
            }
        }
    }

    /// Moves a manual clock `by` forward, waking whoever waits until then. Returns
    /// false (and does nothing) on the system's clock, which moves by itself.
    pub fn advance(&self, by: Duration) -> bool {
        match &self.manual {
            None => false,
            Some(manual) => {
                manual.now.send_modify(|now| *now = now.plus(by));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_advanced_and_wakes_its_sleepers() {
        let clock = Clock::manual(UnixMicros(1_000_000));
        let sleeping = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep(Duration::from_millis(500)).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(clock.now(), UnixMicros(1_000_000));
        assert!(clock.advance(Duration::from_millis(499)));
        tokio::task::yield_now().await;
        assert!(!sleeping.is_finished(), "woke 1 ms early");
        clock.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(5), sleeping)
            .await
            .expect("woken once its time came")
            .unwrap();
        assert_eq!(clock.now(), UnixMicros(1_500_000));
        assert_eq!(clock.elapsed(), Duration::from_millis(500));
    }

    #[test]
    fn the_system_clock_is_not_advanced_by_hand() {
        let clock = Clock::system();
        let before = clock.now();
        assert!(!clock.advance(Duration::from_secs(3600)));
        assert!(clock.now().since(before) < Duration::from_secs(60));
    }
}
