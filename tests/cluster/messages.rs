//! Messages across nodes: in order, exactly once, also when the bus loses them.

use std::time::{Duration, Instant};

use chatroom::pb;

use crate::common::{self, Ev, Sub, chat, create, join};
use crate::{Cluster, attached};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_through_any_node_reach_every_node_in_order_once() {
    // No repair from the store within the test: every message crosses the bus (a
    // stream that gets them out of order reads the missing ones by their gap).
    let cluster = Cluster::start(600_000).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut on_a = attached(a, "watcher-a").await;
    let mut on_b = attached(b, "watcher-b").await;

    // Ten publishers, half through each node, 20 messages each.
    let mut publishers = publishers(&cluster, 10, 20, Duration::ZERO).await;
    while let Some(done) = publishers.join_next().await {
        done.unwrap();
    }
    let all: Vec<u64> = (1..=200).collect();
    assert_eq!(on_a.chat_seqs_until(200).await, all, "the stream on node A");
    assert_eq!(on_b.chat_seqs_until(200).await, all, "the stream on node B");

    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_bus_lost_are_read_from_the_store() {
    let mut cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut sender = a.client("sender").await;
    sender.create_room(create("r")).await.unwrap();
    let mut on_b = attached(b, "watcher").await;

    // The bus is down: nothing crosses it, and the last message leaves no gap behind
    // it. The stream on B gets every message anyway, soon after the last was sent.
    cluster.nats.stop();
    for i in 0..20 {
        sender
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    let sent = Instant::now();
    assert_eq!(on_b.chat_seqs_until(20).await, (1..=20).collect::<Vec<_>>());
    let healed = sent.elapsed();
    assert!(healed <= Duration::from_secs(2), "healed after {healed:?}");

    // The bus is back: what follows arrives too, in order, nothing twice.
    cluster.nats.start_again();
    for i in 20..40 {
        sender
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        on_b.chat_seqs_until(40).await,
        (21..=40).collect::<Vec<_>>()
    );

    cluster.stop().await;
}

/// `chatroom-bench fanout --targets A,B` spreads its streams over both nodes and
/// publishes through the first: every stream gets every message, in order, once (a
/// smoke run; its figures are measured by running the program, BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fanout_bench_runs_clean_across_nodes() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (cluster.a.addr.to_string(), cluster.b.addr.to_string());
    let pid = std::process::id().to_string();
    let (targets, pids) = (format!("{a},{b}"), format!("{pid},{pid}"));
    let report = common::bench(
        &a,
        &[
            "fanout",
            "--targets",
            &targets,
            "--subscribers",
            "20",
            "--connections",
            "2",
            "--duration",
            "1",
            "--lead",
            "16",
            "--server-pid",
            &pids,
        ],
    )
    .await;
    assert_eq!(report["nodes"], 2);
    assert_eq!(report["connections"], 4);
    for figure in [
        "server_cpu_percent_by_node",
        "server_cpu_us_per_delivery_by_node",
        "server_cpu_us_per_message_by_node",
    ] {
        assert_eq!(
            report[figure].as_array().map(Vec::len),
            Some(2),
            "{figure}: one figure per node"
        );
    }
    let published = report["published"].as_u64().unwrap();
    assert!(published > 0);
    assert_eq!(report["delivered"].as_u64(), Some(published * 20));
    common::assert_fanout_clean(&report);
    cluster.stop().await;
}

/// NATS killed and started again in the middle of a storm from both nodes: every
/// stream on every node ends with every message, in order, once — within 2 s of the
/// storm's end, which comes after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_restarted_mid_storm_loses_nothing() {
    let mut cluster = Cluster::start(500).await;
    let mut owner = cluster.a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut on_a = attached(&cluster.a, "watcher-a").await;
    let mut on_b = attached(&cluster.b, "watcher-b").await;

    // Four publishers, two through each node, 60 paced messages each (~1.2 s).
    let mut publishers = publishers(&cluster, 4, 60, Duration::from_millis(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nats.stop();
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.nats.start_again();
    while let Some(done) = publishers.join_next().await {
        done.unwrap();
    }
    let ended = Instant::now();
    let all: Vec<u64> = (1..=240).collect();
    assert_eq!(on_a.chat_seqs_until(240).await, all, "the stream on node A");
    assert_eq!(on_b.chat_seqs_until(240).await, all, "the stream on node B");
    let took = ended.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "complete {took:?} after the storm"
    );

    cluster.stop().await;
}

/// BARRAGE reaches the room's streams on the other node; a COMMAND to some users
/// reaches their streams wherever they are attached, and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrage_and_commands_cross_nodes() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut bob = attached(b, "bob").await;
    let mut carol = attached(b, "carol").await;
    let mut dave = attached(a, "dave").await;

    owner
        .send_message(pb::SendMessageRequest {
            kind: pb::MessageKind::Barrage as i32,
            ..chat("r", "whoosh")
        })
        .await
        .unwrap();
    owner
        .send_message(pb::SendMessageRequest {
            kind: pb::MessageKind::Command as i32,
            to_user_ids: vec!["bob".into(), "dave".into()],
            ..chat("r", "do it")
        })
        .await
        .unwrap();
    // A CHAT after both: whoever has it has whatever came before it.
    owner.send_message(chat("r", "after")).await.unwrap();

    assert_eq!(texts(&mut bob).await, ["whoosh", "do it", "after"]);
    assert_eq!(texts(&mut dave).await, ["whoosh", "do it", "after"]);
    assert_eq!(texts(&mut carol).await, ["whoosh", "after"], "not a target");

    cluster.stop().await;
}

/// The texts of the messages `sub` gets up to and including "after".
async fn texts(sub: &mut Sub) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        if let Ev::Message(m) = sub.event().await {
            texts.push(m.text.clone());
            if m.text == "after" {
                return texts;
            }
        }
    }
}

/// `n` members of "r" sending `each` messages (`pace` apart), through A and B in
/// turn; the room must exist.
async fn publishers(
    cluster: &Cluster,
    n: usize,
    each: usize,
    pace: Duration,
) -> tokio::task::JoinSet<()> {
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..n {
        let through = if p % 2 == 0 { &cluster.a } else { &cluster.b };
        let mut client = through.client(&format!("p{p}")).await;
        client.join_room(join("r")).await.unwrap();
        publishers.spawn(async move {
            for i in 0..each {
                client
                    .send_message(chat("r", &format!("p{p}-{i}")))
                    .await
                    .unwrap();
                tokio::time::sleep(pace).await;
            }
        });
    }
    publishers
}

/// A recall and an edit made through node A reach a stream on node B as entries of
/// the room's log, in seq order, once; a resume on B shows the same room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recalls_and_edits_through_one_node_reach_another_in_order() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut on_b = attached(b, "watcher").await;
    let mut bob = a.client("bob").await;
    bob.join_room(join("r")).await.unwrap();
    for text in ["first", "second"] {
        bob.send_message(chat("r", text)).await.unwrap();
    }
    bob.recall_message(pb::RecallMessageRequest {
        room_id: "r".into(),
        seq: 1,
    })
    .await
    .unwrap();
    bob.edit_message(pb::EditMessageRequest {
        room_id: "r".into(),
        seq: 2,
        text: "second, edited".into(),
        payload: Vec::new(),
    })
    .await
    .unwrap();

    let mut live = Vec::new();
    while live.len() < 4 {
        if let Ev::Message(m) = on_b.event().await {
            live.push((m.seq, m.kind(), m.target_seq, m.text));
        }
    }
    assert_eq!(
        live,
        [
            (1, pb::MessageKind::Chat, 0, "first".to_string()),
            (2, pb::MessageKind::Chat, 0, "second".to_string()),
            (3, pb::MessageKind::Recall, 1, String::new()),
            (4, pb::MessageKind::Edit, 2, "second, edited".to_string()),
        ]
    );
    // Resumed on B from the start: the targets as they stand now, then the entries.
    let mut client = b.client("watcher").await;
    let mut resumed = Sub::open(&mut client).await;
    resumed.attached("r", Some(0)).await;
    let mut stored = Vec::new();
    while stored.len() < 2 {
        if let Ev::Message(m) = resumed.event().await {
            stored.push((m.seq, m.recalled, m.text));
        }
    }
    assert_eq!(
        stored,
        [
            (1, true, String::new()),
            (2, false, "second, edited".to_string())
        ]
    );

    cluster.stop().await;
}

/// A broadcast through node A reaches streams on node B: CHAT with each room's next
/// seq, BARRAGE as it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_through_one_node_reaches_streams_on_another() {
    let cluster = Cluster::start_with(500, |c| c.admin_users = vec!["ops".into()]).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    owner.create_room(create("other")).await.unwrap();
    owner.send_message(chat("other", "before")).await.unwrap();
    let mut on_b = attached(b, "watcher").await;
    let mut ops = a.client("ops").await;
    for kind in [pb::MessageKind::Chat, pb::MessageKind::Barrage] {
        let results = ops
            .broadcast_message(pb::BroadcastMessageRequest {
                room_ids: vec!["r".into(), "other".into()],
                kind: kind as i32,
                text: "notice".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        let seqs: Vec<u64> = results
            .iter()
            .map(|r| r.message.as_ref().unwrap().seq)
            .collect();
        let expected = if kind == pb::MessageKind::Chat {
            [1, 2]
        } else {
            [0, 0]
        };
        assert_eq!(seqs, expected);
        loop {
            if let Ev::Message(m) = on_b.event().await {
                assert_eq!(
                    (m.seq, m.kind(), m.sender_id.as_str()),
                    (expected[0], kind, "ops")
                );
                break;
            }
        }
    }

    cluster.stop().await;
}
