//! Failing fast while PostgreSQL is unreachable.
//!
//! Without this, every call made during an outage would wait out the pool's acquire
//! timeout (sqlx keeps trying to connect until it passes), and the writers, which
//! take one batch at a time, would spend that timeout on every batch: under a send
//! storm the queue behind them grows by seconds. So the first call that finds the
//! database unreachable marks it down, and from then on calls fail at once with the
//! same UNAVAILABLE. Only [`crate::store::Store::ping`] still tries while it is down
//! — the health service pings every few hundred milliseconds then — and its first
//! success marks it up again: recovery needs no restart, and no caller's request is
//! the one left waiting on a database that is not there.
//!
//! Only connection-level failures count (I/O, TLS, the pool timing out, PostgreSQL
//! saying it is shutting down or cannot accept connections), never a statement the
//! database refused. A SQLite file does not go away: for it this never trips.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Connections taken with a check after an outage: more than any pool holds.
const SUSPECT_AFTER_OUTAGE: u32 = 256;

use tokio::sync::Notify;

/// Whether the database is known to be unreachable right now.
#[derive(Debug)]
pub(super) struct Reach {
    /// `false` for SQLite.
    trips: bool,
    down: AtomicBool,
    /// Connections still to be checked before use since the database came back:
    /// the idle ones the pool kept may have died with the outage, and taking one
    /// without a check (the fast path) would fail the first calls after health
    /// said SERVING again.
    suspect: AtomicU32,
    /// Woken when the database is found unreachable (the health service says so at
    /// once, instead of at its next check).
    tripped: Notify,
}

impl Reach {
    pub(super) fn new(trips: bool) -> Self {
        Reach {
            trips,
            down: AtomicBool::new(false),
            suspect: AtomicU32::new(0),
            tripped: Notify::new(),
        }
    }

    /// Marks the database down: a round trip outlived its deadline.
    pub(super) fn trip(&self) {
        if self.trips && !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!("the database stopped answering; calls fail at once until it answers");
            self.tripped.notify_waiters();
        }
    }

    /// Resolves the next time the database is found unreachable.
    pub(super) async fn tripped(&self) {
        self.tripped.notified().await;
    }

    /// Lets a call go to the database, or fails it at once while the database is
    /// down.
    pub(super) fn admit(&self) -> Result<(), sqlx::Error> {
        if self.down.load(Ordering::Relaxed) {
            // What waiting for a connection would have ended in, without the wait.
            return Err(sqlx::Error::PoolTimedOut);
        }
        Ok(())
    }

    /// Learns from what a call to the database found.
    pub(super) fn observe<T>(&self, result: &Result<T, sqlx::Error>) {
        match result {
            Ok(_) => {
                if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
                    self.suspect.store(SUSPECT_AFTER_OUTAGE, Ordering::Relaxed);
                    tracing::info!("the database answers again");
                }
            }
            Err(error) if self.trips && super::connection_lost(error) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "the database is unreachable; calls fail at once until it answers");
                    self.tripped.notify_waiters();
                }
            }
            Err(_) => {}
        }
    }

    /// Whether the next connection taken from the pool should be checked first (the
    /// database came back a moment ago); counts one check down.
    pub(super) fn check_connection(&self) -> bool {
        self.suspect
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Whether calls fail at once now.
    pub(super) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}
