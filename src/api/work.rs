//! Database work of Subscribe streams, on tasks of their own and bounded.
//!
//! A stream's session runs only while HTTP/2 lets it send: a client that grants no
//! window (or vanished) stops it wherever it is. Database work awaited inside the
//! session would then keep its pooled connection for as long as the client wants, and
//! a handful of such clients would take the pool from everyone. So every read or
//! write a stream needs runs on a task of its own: it reads, releases the connection
//! and leaves its result for the session, whether or not the session runs again.
//!
//! What one stream holds is one such task at a time (and its result: one catch-up
//! page, bounded in bytes), and no connection for longer than its statement takes.
//! At most [`TOTAL`] run at once per server (one [`Pool`] each), in arrival order: after a restart
//! thousands of clients reconnect at once, and their work waits its turn instead of
//! all its futures (and the heap they leave fragmented) existing together. How many
//! streams one user may have is the bound on what one user holds.
//!
//! (A per-user semaphore on top was measured: a map entry, a key and a semaphore per
//! user with work waiting cost 0.2 KiB per stream after 10,000 streams attached at
//! once — 3.9 → 4.15 KiB — for a fairness the arrival order mostly gives already.)

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Database work of streams in progress at once, per server.
pub const TOTAL: usize = 64;

/// The turns of one server's stream work (its streams share it; two servers in one
/// process, as in the tests, do not).
#[derive(Clone, Debug)]
pub struct Pool {
    permits: Arc<Semaphore>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            permits: Arc::new(Semaphore::new(TOTAL)),
        }
    }
}

impl Pool {
    /// Runs the future `make` returns on a task of its own, once a permit is free.
    /// The future is made, on the heap, only then: database futures are several
    /// kilobytes, and thousands of streams attaching at once would otherwise all hold
    /// theirs while they wait. Dropping the handle leaves the task to finish (and
    /// release what it holds) on its own. The task runs in the span current when it
    /// is spawned (the stream's), so what it logs carries the stream's user.
    pub fn spawn<T, F>(&self, make: impl FnOnce() -> F + Send + 'static) -> JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let permits = self.permits.clone();
        tokio::spawn(
            async move {
                let _permit = permits.acquire().await.expect("never closed");
                Box::pin(make()).await
            }
            .in_current_span(),
        )
    }
}
