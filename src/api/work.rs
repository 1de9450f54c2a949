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
//! page, bounded in bytes). What one user holds across all their streams is bounded
//! here too ([`PER_USER`]), and so is the total ([`TOTAL`]): after a restart thousands
//! of clients reconnect at once, and their work waits its turn instead of all its
//! futures (and the heap they leave fragmented) existing together.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Database work of streams in progress at once, server-wide.
pub const TOTAL: usize = 64;
/// Database work of one user's streams in progress at once.
pub const PER_USER: usize = 4;

/// The permits: one pool for all, one per user that has work waiting or running.
struct Permits {
    total: Semaphore,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
}

static PERMITS: LazyLock<Permits> = LazyLock::new(|| Permits {
    total: Semaphore::new(TOTAL),
    users: Mutex::new(HashMap::new()),
});

/// Runs the future `make` returns for `user` on a task of its own, once a permit of
/// the user's and one of the server's are free. The future is made, on the heap, only
/// then: database futures are several kilobytes, and thousands of streams attaching
/// at once would otherwise all hold theirs while they wait (and leave the heap they
/// used fragmented). Dropping the handle leaves the task to finish (and release what
/// it holds) on its own.
pub fn spawn<T, F>(user: &str, make: impl FnOnce() -> F + Send + 'static) -> JoinHandle<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let user = user.to_string();
    tokio::spawn(async move {
        let mine = PERMITS
            .users
            .lock()
            .expect("permits lock")
            .entry(user.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_USER)))
            .clone();
        let done = {
            let _user = mine.acquire().await.expect("never closed");
            let _total = PERMITS.total.acquire().await.expect("never closed");
            Box::pin(make()).await
        };
        // Forget the user's semaphore once no other work of theirs holds it.
        let mut users = PERMITS.users.lock().expect("permits lock");
        drop(mine);
        if users.get(&user).is_some_and(|s| Arc::strong_count(s) == 1) {
            users.remove(&user);
        }
        done
    })
}
