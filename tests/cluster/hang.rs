//! PostgreSQL hangs under two nodes (every server process frozen with SIGSTOP, on a
//! cluster of the test's own): sends through either node are answered within about
//! two seconds, both nodes say NOT_SERVING, and once it runs again both serve within
//! 5 s; every message acknowledged by either node is stored once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::common::{self, TestDb, assert_error, chat, create, health_status, join};
use crate::{Nats, node_with};

/// The longest any send may take while the database hangs.
const ANSWERED_WITHIN: Duration = Duration::from_millis(2_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_fails_calls_on_both_nodes_fast_and_they_recover() {
    let cluster = common::pg_cluster::PgCluster::start();
    let db = TestDb::on(cluster.url());
    let nats = Nats::start();
    let a = node_with(&db, &nats, 100, |_| {}).await;
    let b = node_with(&db, &nats, 100, |_| {}).await;
    let mut alice = a.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    let mut bob = b.client("bob").await;
    bob.join_room(join("r")).await.unwrap();

    cluster.freeze();
    let frozen_at = Instant::now();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    for i in 0..4 {
        let mut client = if i % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        let text = format!("in the hang {i}");
        let started = Instant::now();
        let answer = client.send_message(chat("r", &text)).await;
        let took = started.elapsed();
        assert!(took < ANSWERED_WITHIN, "send {i} took {took:?}");
        match answer {
            Ok(sent) => {
                acked.insert(text, sent.into_inner().message.unwrap().seq);
            }
            Err(status) => {
                assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the sends never met the hang");
    for node in [&a, &b] {
        common::eventually("NOT_SERVING", 2, || health_status(node, "")).await;
    }
    let not_serving_after = frozen_at.elapsed();
    assert!(
        not_serving_after < Duration::from_secs(5),
        "both NOT_SERVING only after {not_serving_after:?}"
    );

    cluster.thaw();
    let thawed_at = Instant::now();
    for (node, user) in [(&a, "alice"), (&b, "bob")] {
        let client = node.client(user).await;
        common::eventually("sends work again", true, || {
            let mut client = client.clone();
            async move { client.send_message(chat("r", "after")).await.is_ok() }
        })
        .await;
        common::eventually("SERVING again", 1, || health_status(node, "")).await;
    }
    let recovered = thawed_at.elapsed();
    assert!(
        recovered < Duration::from_secs(5),
        "recovered after {recovered:?}"
    );

    let stored = common::history(&mut alice, "r").await;
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>(), "holes");
    for (text, seq) in &acked {
        let found: Vec<u64> = stored
            .iter()
            .filter(|m| &m.text == text)
            .map(|m| m.seq)
            .collect();
        assert_eq!(found, [*seq], "{text}");
    }
    eprintln!(
        "cluster hang: {refused} of 4 sends refused, both NOT_SERVING after \
         {not_serving_after:?}, both serving {recovered:?} after the thaw"
    );
    a.stop().await;
    b.stop().await;
}
