//! Presence is one truth across nodes: a member is online while a stream of theirs is
//! attached on any node, a node that starts leaves the others' members online, and a
//! graceful restart of a node its clients reconnect from does not flap them out.

use std::time::Duration;

use chatroom::pb;

use crate::common::{self, Client, Ev, Sub, TestServer, chat, create, eventually, millis};
use crate::{Cluster, attached};

/// "r", with a presence timeout of `timeout_ms`, created through `node`.
async fn room_with_timeout(node: &TestServer, timeout_ms: i64) -> Client {
    let mut owner = node.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                presence_timeout: millis(timeout_ms),
                ..Default::default()
            }),
            ..create("r")
        })
        .await
        .unwrap();
    owner
}

/// The room's online count and its online members, as `client` sees them (members
/// listed as online but not flagged so are left out: they show as a mismatch).
async fn presence(client: &Client) -> (u32, Vec<String>) {
    let mut client = client.clone();
    let room = common::get_room(&mut client, "r").await.unwrap();
    let online = client
        .list_members(pb::ListMembersRequest {
            room_id: "r".into(),
            online_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    (
        room.online_count,
        online
            .into_iter()
            .filter(|m| m.online)
            .map(|m| m.user_id)
            .collect(),
    )
}

/// Who left, in `events`.
pub fn left(events: &[Ev]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::MembersLeft(l) => Some(l.members.iter().map(|m| m.user_id.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Streams on A and on B count through either node; a third node that starts sees
/// them too and leaves them online (it does not mark them offline: their timeouts do
/// not start), and messages through it reach both. A stream that closes on B counts
/// offline through A, and its timeout then removes the member once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_through_every_node_and_a_third_node_starting() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    room_with_timeout(a, 1_500).await;
    let mut alice = attached(a, "alice").await;
    let bob = attached(b, "bob").await;
    // Read as alice (the owner, never attached, times out of the room).
    for (name, node) in [("A", a), ("B", b)] {
        let client = node.client("alice").await;
        eventually(
            &format!("presence through {name}"),
            (2, users(&["alice", "bob"])),
            || presence(&client),
        )
        .await;
    }

    // A third node: it counts both, and after longer than the presence timeout
    // both are still members, online — starting did not set them offline.
    let c = cluster.add_node().await;
    let mut through_c = c.client("alice").await;
    let through_a = a.client("alice").await;
    eventually("presence through C", (2, users(&["alice", "bob"])), || {
        presence(&through_c)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(presence(&through_a).await, (2, users(&["alice", "bob"])));
    assert_eq!(
        common::member_ids(&through_c, "r").await,
        ["alice", "bob"],
        "the owner, never attached, timed out; the attached stay"
    );
    through_c.send_message(chat("r", "from C")).await.unwrap();
    assert_eq!(alice.chat_seqs_until(1).await, [1]);

    // bob's stream on B closes: offline through A and C, then removed once.
    drop(bob);
    eventually("bob offline through A", (1, users(&["alice"])), || {
        presence(&through_a)
    })
    .await;
    while !alice.members_left().await.contains(&"bob".to_string()) {}
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let later = alice.until_pong().await;
    assert!(
        !left(&later).contains(&"bob".to_string()),
        "bob left once, on three nodes: {later:?}"
    );
    assert_eq!(common::member_ids(&through_c, "r").await, ["alice"]);

    c.stop().await;
    cluster.stop().await;
}

/// A rolling restart: node B stops gracefully, its stream ends with UNAVAILABLE, the
/// client reconnects through A and resumes from its last seq with nothing lost; the
/// member's presence timeout is longer than the reconnect, so it never leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_nothing_and_does_not_flap_presence() {
    let mut cluster = Cluster::start(500).await;
    let owner = room_with_timeout(&cluster.a, 3_000).await;
    let mut watcher = attached(&cluster.a, "watcher").await;
    let mut bob = attached(&cluster.b, "bob").await;
    let mut sender = owner.clone();
    sender.send_message(chat("r", "before")).await.unwrap();
    assert_eq!(bob.chat_seqs_until(1).await, [1]);

    // B goes away (a deploy): its streams end with UNAVAILABLE; a replacement
    // starts. Messages sent meanwhile are stored.
    let replacement = cluster.add_node().await;
    let old_b = std::mem::replace(&mut cluster.b, replacement);
    let stopping = tokio::spawn(old_b.stop());
    let ended = loop {
        match bob.responses_result().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    stopping.await.unwrap();
    for i in 0..5 {
        sender
            .send_message(chat("r", &format!("gap {i}")))
            .await
            .unwrap();
    }

    // bob reconnects through A and resumes after seq 1.
    let mut client = cluster.a.client("bob").await;
    let mut bob = Sub::open(&mut client).await;
    bob.attached("r", Some(1)).await;
    assert_eq!(bob.chat_seqs_until(6).await, [2, 3, 4, 5, 6]);

    // Past the timeout bob is still a member and online; nobody left.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    // (The owner, a member never attached, times out: only it may leave.)
    let events = watcher.until_pong().await;
    assert_eq!(left(&events), ["owner"], "nobody else left: {events:?}");
    let (count, online) = presence(&cluster.a.client("watcher").await).await;
    assert_eq!((count, online), (2, users(&["bob", "watcher"])));

    cluster.stop().await;
}
