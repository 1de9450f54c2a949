//! Nodes that die or stop: a killed node's lease runs out and its members go offline,
//! their presence timeouts then fire once whichever nodes are up; a room emptied on a
//! node that then stops is still destroyed; health follows the bus.

use std::time::{Duration, Instant};

use chatroom::pb;

use crate::common::{self, Sub, create, eventually, health_status, join, millis};
use crate::{Cluster, LEASE_MS, NATS_GRACE_MS, attached};

/// A node killed without shutdown (SIGKILL) holds its members online only until its
/// lease runs out; then they count offline through the others, and their presence
/// timeout removes them exactly once, though two nodes run timers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_go_offline_when_its_lease_runs_out() {
    let cluster = Cluster::start(500).await;
    let mut owner = cluster.a.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                presence_timeout: millis(1_000),
                ..Default::default()
            }),
            ..create("r")
        })
        .await
        .unwrap();
    let mut watcher = attached(&cluster.b, "watcher").await;
    let mut process = cluster.add_process().await;
    let bob = attached(&process.server, "bob").await;
    let reader = cluster.a.client("watcher").await;
    let online = || {
        let mut owner = reader.clone();
        async move {
            common::get_room(&mut owner, "r")
                .await
                .unwrap()
                .online_count
        }
    };
    eventually("bob and the watcher online", 2, online).await;

    process.child.start_kill().unwrap();
    process.child.wait().await.unwrap();
    let killed = Instant::now();
    eventually("bob offline once the lease ran out", 1, online).await;
    let offline_after = killed.elapsed();
    assert!(
        offline_after <= Duration::from_secs(20),
        "offline after {offline_after:?}"
    );
    assert!(
        offline_after >= Duration::from_millis(LEASE_MS / 2),
        "offline after {offline_after:?}, before the lease could run out"
    );
    // (The owner, a member never attached, times out too.)
    while !watcher.members_left().await.contains(&"bob".to_string()) {}
    let removed_after = killed.elapsed();
    assert!(
        removed_after >= Duration::from_millis(1_000),
        "the timeout counts from the lease's end: removed after {removed_after:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = watcher.until_pong().await;
    assert!(
        !crate::presence::left(&later).contains(&"bob".to_string()),
        "bob left once: {later:?}"
    );
    let members = common::all_members(&mut reader.clone(), "r").await;
    assert_eq!(
        members
            .iter()
            .map(|m| m.user_id.as_str())
            .collect::<Vec<_>>(),
        ["watcher"]
    );
    drop(bob);
    cluster.stop().await;
}

/// A destroy-when-empty room whose last member leaves through node B, which then
/// stops: node A destroys it once the delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_emptied_on_a_node_that_stops_is_still_destroyed() {
    let mut cluster = Cluster::start(500).await;
    let mut watcher_client = cluster.a.client("admin").await;
    let mut owner = cluster.b.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                destroy_when_empty_after: millis(800),
                ..Default::default()
            }),
            ..create("r")
        })
        .await
        .unwrap();
    owner
        .leave_room(pb::LeaveRoomRequest {
            room_id: "r".into(),
        })
        .await
        .unwrap();
    let replacement = cluster.add_node().await;
    std::mem::replace(&mut cluster.b, replacement).stop().await;
    let stopped = Instant::now();

    eventually(
        "the room destroyed through A",
        tonic::Code::NotFound,
        || {
            let mut client = watcher_client.clone();
            async move {
                common::get_room(&mut client, "r")
                    .await
                    .map(|_| tonic::Code::Ok)
                    .unwrap_or_else(|s| s.code())
            }
        },
    )
    .await;
    assert!(stopped.elapsed() <= Duration::from_secs(10));
    // And it is gone for good: a new room of that id starts empty.
    watcher_client.create_room(create("r")).await.unwrap();
    let members = common::all_members(&mut watcher_client, "r").await;
    assert_eq!(members.len(), 1);
    cluster.stop().await;
}

/// Health says NOT_SERVING once the bus has been away past its grace period, and
/// SERVING again when it is back; a stream attached meanwhile still gets messages
/// (from the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_bus() {
    let mut cluster = Cluster::start(200).await;
    assert_eq!(health_status(&cluster.a, "").await, SERVING);
    let mut sender = cluster.a.client("sender").await;
    sender.create_room(create("r")).await.unwrap();

    cluster.nats.stop();
    let stopped = Instant::now();
    eventually("NOT_SERVING without the bus", NOT_SERVING, || {
        health_status(&cluster.b, "")
    })
    .await;
    assert!(stopped.elapsed() >= Duration::from_millis(NATS_GRACE_MS));
    let mut client = cluster.b.client("reader").await;
    client.join_room(join("r")).await.unwrap();
    let mut reader = Sub::open(&mut client).await;
    reader.attached("r", None).await;
    sender
        .send_message(common::chat("r", "through the store"))
        .await
        .unwrap();
    assert_eq!(reader.chat_seqs_until(1).await, [1]);

    cluster.nats.start_again();
    eventually("SERVING with the bus back", SERVING, || {
        health_status(&cluster.b, "")
    })
    .await;
    assert_eq!(health_status(&cluster.a, "").await, SERVING);
    cluster.stop().await;
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;
