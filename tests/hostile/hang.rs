//! PostgreSQL hangs under a send storm (every server process frozen with SIGSTOP, on
//! a cluster of the test's own): no call waits for as long as it hangs — every send
//! is answered within about two seconds, acknowledged or UNAVAILABLE
//! `STORE_UNAVAILABLE` — and health says NOT_SERVING; once it runs again the server
//! recovers within 5 s. Nothing is acknowledged that is not stored, and a retry of
//! every refused send with its idempotency key stores each message exactly once,
//! whether or not its first commit happened.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::common::{self, Client, TestApp, TestDb, assert_error, chat, health_status};
use chatroom::pb;

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_database_fails_calls_fast_and_retries_store_once() {
        super::a_hung_database_fails_calls_fast_and_retries_store_once().await
    }
}

/// Concurrent senders in the storm.
const SENDERS: usize = 4;
/// How soon any call must be answered while the database hangs (the issue: ~2 s;
/// the deadline of one round trip is 1.5 s).
const ANSWERED_WITHIN: Duration = Duration::from_millis(2_500);
/// How long the database stays frozen.
const FROZEN_FOR: Duration = Duration::from_secs(4);
/// How soon after it runs again sends and health must work.
const RECOVERED_WITHIN: Duration = Duration::from_secs(5);

/// What one sender saw: acknowledged keys with their seq, refused keys, the slowest
/// answer of all.
#[derive(Default)]
struct Seen {
    acked: HashMap<String, u64>,
    refused: Vec<String>,
    slowest: Duration,
}

/// A CHAT message whose text is its idempotency key.
fn keyed(key: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        client_msg_id: key.into(),
        ..chat("r", key)
    }
}

/// Sends one message after another until `stop`; no answer may take longer than
/// [`ANSWERED_WITHIN`].
async fn storm(mut client: Client, lane: usize, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{lane}-{i}");
        i += 1;
        let started = Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(30), client.send_message(keyed(&key)))
                .await
                .unwrap_or_else(|_| panic!("{key} was left hanging"));
        seen.slowest = seen.slowest.max(started.elapsed());
        match answer {
            Ok(sent) => {
                seen.acked
                    .insert(key, sent.into_inner().message.unwrap().seq);
            }
            Err(status) => {
                assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");
                seen.refused.push(key);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    seen
}

/// Sends `key` again until it is acknowledged, as a client that retries with its key
/// does. A round trip that outlives its deadline after the thaw (PostgreSQL working
/// off what queued while it was frozen, on a loaded machine) marks the store down
/// again until the next health check finds it up, 250 ms later; meanwhile the answer
/// is UNAVAILABLE `STORE_UNAVAILABLE`, and nothing else. Stored within
/// [`RECOVERED_WITHIN`] of the first try.
async fn resend(client: &mut Client, key: &str) -> pb::Message {
    let deadline = Instant::now() + RECOVERED_WITHIN;
    loop {
        match client.send_message(keyed(key)).await {
            Ok(sent) => return sent.into_inner().message.unwrap(),
            Err(status) if Instant::now() < deadline => {
                assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("retry of {key} still refused: {status:?}"),
        }
    }
}

async fn a_hung_database_fails_calls_fast_and_retries_store_once() {
    let cluster = common::pg_cluster::PgCluster::start();
    let app = TestApp::over(TestDb::on(cluster.url()), |_| {}).await;
    app.create_room("alice", "r").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..SENDERS {
        senders.spawn(storm(app.client("alice").await, lane, stop.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.freeze();
    let frozen_at = Instant::now();
    // A read started during the hang is answered within the bound too.
    let mut reader = app.client("alice").await;
    let read_started = Instant::now();
    let read = common::get_room(&mut reader, "r").await;
    let read_took = read_started.elapsed();
    assert!(read_took < ANSWERED_WITHIN, "GetRoom took {read_took:?}");
    if let Err(status) = read {
        assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");
    }
    common::eventually("health is NOT_SERVING", 2, || health_status(&app, "")).await;
    let not_serving_after = frozen_at.elapsed();
    assert!(
        not_serving_after < Duration::from_secs(3),
        "NOT_SERVING {not_serving_after:?} after the hang began"
    );
    tokio::time::sleep(FROZEN_FOR.saturating_sub(frozen_at.elapsed())).await;

    cluster.thaw();
    let thawed_at = Instant::now();
    let alice = app.client("alice").await;
    common::eventually("sends work again", true, || {
        let mut alice = alice.clone();
        async move { alice.send_message(chat("r", "after")).await.is_ok() }
    })
    .await;
    let sends_back = thawed_at.elapsed();
    common::eventually("health is SERVING", 1, || health_status(&app, "")).await;
    let health_back = thawed_at.elapsed();
    assert!(
        sends_back < RECOVERED_WITHIN,
        "sends back after {sends_back:?}"
    );
    assert!(
        health_back < RECOVERED_WITHIN,
        "SERVING after {health_back:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut acked, mut refused, mut slowest) = (HashMap::new(), Vec::new(), Duration::ZERO);
    while let Some(seen) = senders.join_next().await {
        let seen = seen.expect("a sender");
        acked.extend(seen.acked);
        refused.extend(seen.refused);
        slowest = slowest.max(seen.slowest);
    }
    assert!(!refused.is_empty(), "the storm never met the hang");
    assert!(slowest < ANSWERED_WITHIN, "a send took {slowest:?}");

    // What was refused may or may not be stored (a commit in flight when the
    // database froze): a retry with the same key stores it if it is not, and
    // returns it if it is.
    let mut client = app.client("alice").await;
    let mut retried = HashMap::new();
    for key in &refused {
        let message = resend(&mut client, key).await;
        retried.insert(key.clone(), message.seq);
    }
    let stored = common::history(&mut client, "r").await;
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>(), "holes");
    let mut by_key: HashMap<&str, u64> = HashMap::new();
    for m in stored.iter().filter(|m| !m.client_msg_id.is_empty()) {
        assert!(
            by_key.insert(m.client_msg_id.as_str(), m.seq).is_none(),
            "{} stored twice",
            m.client_msg_id
        );
    }
    for (key, seq) in acked.iter().chain(&retried) {
        assert_eq!(by_key.get(key.as_str()), Some(seq), "{key}");
    }
    assert_eq!(
        by_key.len(),
        acked.len() + retried.len(),
        "only what was sent"
    );
    eprintln!(
        "hang: {} acknowledged, {} refused and retried (slowest answer {slowest:?}); \
         GetRoom in the hang {read_took:?}; NOT_SERVING after {not_serving_after:?}; \
         sends back {sends_back:?}, health back {health_back:?} after the thaw",
        acked.len(),
        refused.len()
    );
    app.stop().await;
}
