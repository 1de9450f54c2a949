//! PostgreSQL goes away under a send storm, on a cluster of the test's own: every send
//! is answered (acknowledged, or UNAVAILABLE `STORE_UNAVAILABLE` within a second —
//! never left hanging, never a database text), health says NOT_SERVING, attached
//! streams stay attached and keep carrying BARRAGE and COMMAND; once it is back the
//! same server recovers within 5 s and every acknowledged message is stored, once,
//! in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::common::{self, Client, Ev, Sub, TestApp, TestDb, assert_error, chat, health_status};
use chatroom::pb;

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_outage_under_a_send_storm_loses_nothing_acknowledged() {
        super::a_database_outage_under_a_send_storm_loses_nothing_acknowledged().await
    }
}

/// Concurrent senders in the storm.
const SENDERS: usize = 4;
/// How soon a send must be answered while the database is away (the issue's bound).
const ANSWERED_WITHIN: Duration = Duration::from_secs(1);
/// How soon after the database is back sends and health must work again.
const RECOVERED_WITHIN: Duration = Duration::from_secs(5);

/// What one sender of the storm saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged: text → seq.
    acked: HashMap<String, u64>,
    /// Refused with UNAVAILABLE: their texts, and the slowest answer.
    refused: Vec<String>,
    slowest_refusal: Duration,
}

/// Sends CHAT messages one after another until `stop`, recording every answer.
/// A send not answered within twice the bound fails the test: it was left hanging.
async fn storm(mut client: Client, lane: usize, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let text = format!("storm {lane}-{i}");
        i += 1;
        let started = Instant::now();
        let answer =
            tokio::time::timeout(ANSWERED_WITHIN * 2, client.send_message(chat("r", &text)))
                .await
                .unwrap_or_else(|_| panic!("{text} was left hanging"));
        match answer {
            Ok(sent) => {
                seen.acked
                    .insert(text, sent.into_inner().message.unwrap().seq);
            }
            Err(status) => {
                assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");
                let message = status.message().to_lowercase();
                for leak in [
                    "pool",
                    "connection",
                    "refused",
                    "sqlx",
                    "postgres",
                    "io error",
                ] {
                    assert!(
                        !message.contains(leak),
                        "details reached the client: {status:?}"
                    );
                }
                seen.slowest_refusal = seen.slowest_refusal.max(started.elapsed());
                seen.refused.push(text);
                // A client would back off; a short pause keeps the log readable.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    seen
}

/// Reads `sub` for as long as it lives (so that it never falls behind the storm),
/// passing on the kind and text of every message that is not part of the storm.
fn watch(
    mut sub: Sub,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(i32, String)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            if let Ev::Message(m) = sub.event().await
                && !m.text.starts_with("storm ")
                && tx.send((m.kind, m.text)).is_err()
            {
                return;
            }
        }
    });
    (task, rx)
}

/// Waits for a message of `kind` carrying `text` among what [`watch`] passes on.
async fn receives(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<(i32, String)>,
    kind: pb::MessageKind,
    text: &str,
) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((k, t)) = seen.recv().await {
            if k == kind as i32 && t == text {
                return;
            }
        }
        panic!("the watched stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("{text} did not arrive"));
}

async fn a_database_outage_under_a_send_storm_loses_nothing_acknowledged() {
    let cluster = common::pg_cluster::PgCluster::start();
    let app = TestApp::over(TestDb::on(cluster.url()), |_| {}).await;
    app.create_room("alice", "r").await;
    app.join("bob", "r").await;
    app.join("carol", "r").await;
    let mut bob = app.attached("bob", "r").await;
    let (carol_task, mut carol) = watch(app.attached("carol", "r").await);

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..SENDERS {
        senders.spawn(storm(app.client("alice").await, lane, stop.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.down();
    let down_at = Instant::now();
    // Health follows within a few checks.
    common::eventually("health is NOT_SERVING", 2, || health_status(&app, "")).await;
    assert!(
        down_at.elapsed() < Duration::from_secs(5),
        "NOT_SERVING after {:?}",
        down_at.elapsed()
    );
    // Attached streams stay attached and carry what needs no database.
    let barrage = pb::SendMessageRequest {
        kind: pb::MessageKind::Barrage as i32,
        ..chat("r", "barrage while the database is away")
    };
    assert!(matches!(bob.send(barrage).await, Ev::SendAck(_)));
    receives(
        &mut carol,
        pb::MessageKind::Barrage,
        "barrage while the database is away",
    )
    .await;
    let command = pb::SendMessageRequest {
        kind: pb::MessageKind::Command as i32,
        to_user_ids: vec!["carol".into()],
        ..chat("r", "command while the database is away")
    };
    assert!(matches!(bob.send(command).await, Ev::SendAck(_)));
    receives(
        &mut carol,
        pb::MessageKind::Command,
        "command while the database is away",
    )
    .await;
    // A CHAT send on the stream is refused like a unary one, and the stream goes on.
    match bob.send(chat("r", "chat on the stream while away")).await {
        Ev::Error(e) => {
            assert_eq!(
                (e.code, e.reason.as_str()),
                (Code::Unavailable as i32, "STORE_UNAVAILABLE")
            );
        }
        other => panic!("expected an error frame, got {other:?}"),
    }

    cluster.up();
    let up_at = Instant::now();
    let alice = app.client("alice").await;
    common::eventually("sends work again", true, || {
        let mut alice = alice.clone();
        async move { alice.send_message(chat("r", "after")).await.is_ok() }
    })
    .await;
    let sends_back = up_at.elapsed();
    common::eventually("health is SERVING", 1, || health_status(&app, "")).await;
    let health_back = up_at.elapsed();
    assert!(
        sends_back < RECOVERED_WITHIN,
        "sends worked again after {sends_back:?}"
    );
    assert!(
        health_back < RECOVERED_WITHIN,
        "SERVING again after {health_back:?}"
    );
    // The storm goes on against the recovered server for a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut refused = Vec::new();
    let mut slowest = Duration::ZERO;
    while let Some(seen) = senders.join_next().await {
        let seen = seen.expect("a sender");
        acked.extend(seen.acked);
        refused.extend(seen.refused);
        slowest = slowest.max(seen.slowest_refusal);
    }
    assert!(!refused.is_empty(), "the storm never met the outage");
    assert!(slowest < ANSWERED_WITHIN, "a refusal took {slowest:?}");

    // Every acknowledged message is stored once, under its seq, and seqs have no
    // holes. A refused one may be stored only if its commit was in flight when the
    // database stopped (at most one per sender): the client was told UNAVAILABLE,
    // and a retry with a client_msg_id would find it.
    let mut client = app.client("alice").await;
    let stored = common::history(&mut client, "r").await;
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "holes in the history"
    );
    let by_text: HashMap<&str, u64> = stored.iter().map(|m| (m.text.as_str(), m.seq)).collect();
    assert_eq!(by_text.len(), stored.len(), "a message was stored twice");
    for (text, seq) in &acked {
        assert_eq!(
            by_text.get(text.as_str()),
            Some(seq),
            "{text} was acknowledged but not stored"
        );
    }
    let in_doubt = refused
        .iter()
        .filter(|t| by_text.contains_key(t.as_str()))
        .count();
    assert!(
        in_doubt <= SENDERS,
        "{in_doubt} refused messages were stored"
    );
    // Carol's stream, attached throughout, receives what is sent now.
    app.send("alice", "r", "live again").await;
    receives(&mut carol, pb::MessageKind::Chat, "live again").await;
    eprintln!(
        "outage: {} acknowledged, {} refused (slowest {slowest:?}, {in_doubt} in doubt); \
         sends back {sends_back:?}, health back {health_back:?} after the database",
        acked.len(),
        refused.len()
    );
    carol_task.abort();
    drop(bob);
    app.stop().await;
}
