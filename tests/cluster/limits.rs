//! Limits and idempotency across nodes, and what a cluster needs.

use chatroom::Config;
use chatroom::pb;

use crate::Cluster;
use crate::common::{self, chat, create, join};

/// The same idempotency key sent through two nodes at once is stored once, and both
/// answers carry that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_through_two_nodes_at_once_is_stored_once() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut on_a = a.client("alice").await;
    let mut on_b = b.client("alice").await;
    on_a.create_room(create("r")).await.unwrap();
    for round in 0..20 {
        let keyed = pb::SendMessageRequest {
            client_msg_id: format!("key-{round}"),
            ..chat("r", &format!("round {round}"))
        };
        let (first, second) =
            tokio::join!(on_a.send_message(keyed.clone()), on_b.send_message(keyed));
        let first = first.expect("node A answers").into_inner().message.unwrap();
        let second = second
            .expect("node B answers")
            .into_inner()
            .message
            .unwrap();
        assert_eq!(
            (first.seq, &first.message_id),
            (second.seq, &second.message_id),
            "round {round}"
        );
    }
    let stored = common::history(&mut on_a, "r").await;
    assert_eq!(stored.len(), 20, "one message per key");

    cluster.stop().await;
}

/// Joins racing through two nodes for a room's last places: `max_members` holds, and
/// the count matches the member rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_limit_holds_for_joins_through_two_nodes() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                max_members: 5,
                ..Default::default()
            }),
            ..create("five")
        })
        .await
        .unwrap();
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..20 {
        let through = if i % 2 == 0 { a } else { b };
        let mut client = through.client(&format!("joiner{i:02}")).await;
        joins.spawn(async move { client.join_room(join("five")).await });
    }
    let mut admitted = 0;
    while let Some(joined) = joins.join_next().await {
        match joined.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => {
                common::assert_error(&status, tonic::Code::ResourceExhausted, "ROOM_FULL")
            }
        }
    }
    assert_eq!(admitted, 4);
    assert_eq!(
        common::get_room(&mut owner, "five")
            .await
            .unwrap()
            .member_count,
        5
    );
    assert_eq!(common::all_members(&mut owner, "five").await.len(), 5);

    cluster.stop().await;
}

#[tokio::test]
async fn a_cluster_needs_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chatroom.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::new(listener.local_addr().unwrap(), url);
    config.nats_url = Some("nats://127.0.0.1:4222".into());
    let error = chatroom::serve(config, listener, async {})
        .await
        .expect_err("a cluster on SQLite is refused");
    assert!(error.to_string().contains("PostgreSQL"), "{error}");
    assert!(
        !dir.path().join("chatroom.db").exists(),
        "nothing was created before the refusal"
    );
}

/// Slow mode holds for one member's CHATs sent through two nodes at once: of ten
/// sent together, half through each node, one is stored; the rest are refused
/// SLOW_MODE (each node's writer reads the last CHAT time under the room's lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_mode_holds_for_sends_through_two_nodes() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                slow_mode_interval: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..create("slow")
        })
        .await
        .unwrap();
    b.client("bob").await.join_room(join("slow")).await.unwrap();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..10 {
        let through = if i % 2 == 0 { a } else { b };
        let mut client = through.client("bob").await;
        sends.spawn(async move { client.send_message(chat("slow", &format!("m{i}"))).await });
    }
    let mut stored = 0;
    while let Some(sent) = sends.join_next().await {
        match sent.unwrap() {
            Ok(_) => stored += 1,
            Err(status) => {
                common::assert_error(&status, tonic::Code::ResourceExhausted, "SLOW_MODE")
            }
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(common::history(&mut owner, "slow").await.len(), 1);

    cluster.stop().await;
}
