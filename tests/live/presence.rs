//! Presence and timers: online, presence timeouts, destroy-when-empty, and both
//! across a restart.

use std::time::Duration;

use tonic::Code;

use crate::common::{
    self, Backend, Ev, Sub, TestDb, TestServer, chat, create, eventually, get_room, history, join,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    presence_timeout_set_while_attached_applies,
    online_follows_attached_streams,
    presence_timeout_removes_absent_members,
    destroy_when_empty_with_and_without_rejoin,
    timers_survive_a_restart,
);

/// A presence timeout added by UpdateRoom while a member's stream is attached applies
/// once that stream goes away.
async fn presence_timeout_set_while_attached_applies(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |c| c.member_event_window_ms = 10).await;
    let mut owner = server.client("owner").await;
    let mut bob = server.client("bob").await;
    owner.create_room(create("r")).await.unwrap();
    bob.join_room(join("r")).await.unwrap();
    let mut watcher = Sub::open(&mut owner).await;
    watcher.attached("r", None).await;
    let mut bob_sub = Sub::open(&mut bob).await;
    bob_sub.attached("r", None).await;

    owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "r".into(),
            settings: Some(pb::RoomSettings {
                presence_timeout: common::millis(500),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // Bob's stream learns of the change before it goes away.
    let frames = bob_sub.until_pong().await;
    assert!(
        frames.iter().any(|e| matches!(e, Ev::RoomUpdated(_))),
        "{frames:?}"
    );
    // He was online all along: his timeout counts from when his stream went away.
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(bob_sub);
    let gone = std::time::Instant::now();
    let mut left = Vec::new();
    while left.is_empty() {
        if let Ev::MembersLeft(l) = watcher.event().await {
            left = l.members.into_iter().map(|m| m.user_id).collect();
        }
    }
    assert_eq!(left, ["bob"]);
    assert!(
        gone.elapsed() >= Duration::from_millis(400),
        "removed {:?} after leaving, before the 500 ms timeout",
        gone.elapsed()
    );

    server.stop().await;
    db.remove().await;
}

async fn online_follows_attached_streams(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice.create_room(create("r")).await.unwrap();
    bob.join_room(join("r")).await.unwrap();

    let mut first = Sub::open(&mut bob).await;
    first.attached("r", None).await;
    let mut second = Sub::open(&mut bob).await;
    second.attached("r", None).await;
    assert_eq!(get_room(&mut alice, "r").await.unwrap().online_count, 1);
    let online = alice
        .list_members(pb::ListMembersRequest {
            room_id: "r".into(),
            online_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(online.members.len(), 1);
    assert_eq!(
        (online.members[0].user_id.as_str(), online.members[0].online),
        ("bob", true)
    );

    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get_room(&mut alice, "r").await.unwrap().online_count,
        1,
        "one stream left"
    );
    drop(second);
    eventually("offline once every stream is gone", 0, || {
        let mut alice = alice.clone();
        async move { get_room(&mut alice, "r").await.unwrap().online_count }
    })
    .await;

    server.stop().await;
    db.remove().await;
}

fn presence_room(id: &str, timeout_ms: i64) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        settings: Some(pb::RoomSettings {
            presence_timeout: common::millis(timeout_ms),
            ..Default::default()
        }),
        ..create(id)
    }
}

async fn presence_timeout_removes_absent_members(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |c| c.member_event_window_ms = 10).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    alice.create_room(presence_room("p", 800)).await.unwrap();
    let mut alice_sub = Sub::open(&mut alice).await;
    alice_sub.attached("p", None).await;
    bob.join_room(join("p")).await.unwrap();
    carol.join_room(join("p")).await.unwrap();
    let mut bob_sub = Sub::open(&mut bob).await;
    bob_sub.attached("p", None).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Carol never attached: gone. Bob is attached: stays. So is alice.
    let mut left = Vec::new();
    while left.is_empty() {
        if let Ev::MembersLeft(l) = alice_sub.event().await {
            left = l.members.into_iter().map(|m| m.user_id).collect();
        }
    }
    assert_eq!(left, ["carol"]);
    drop(bob_sub);
    let mut left = Vec::new();
    while left.is_empty() {
        if let Ev::MembersLeft(l) = alice_sub.event().await {
            left = l.members.into_iter().map(|m| m.user_id).collect();
        }
    }
    assert_eq!(
        left,
        ["bob"],
        "removed once its stream was gone for the timeout"
    );
    let room = get_room(&mut alice, "p").await.unwrap();
    assert_eq!(room.member_count, 1);
    // Bob's room slot was freed and he may join again.
    bob.join_room(join("p")).await.unwrap();

    server.stop().await;
    db.remove().await;
}

fn destroy_room(id: &str, after_ms: i64) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        settings: Some(pb::RoomSettings {
            destroy_when_empty_after: common::millis(after_ms),
            ..Default::default()
        }),
        ..create(id)
    }
}

async fn wait_gone(client: &mut common::Client, room: &str) {
    eventually(
        &format!("room {room} destroyed"),
        Some(Code::NotFound),
        || {
            let mut client = client.clone();
            async move { get_room(&mut client, room).await.err().map(|e| e.code()) }
        },
    )
    .await;
}

async fn destroy_when_empty_with_and_without_rejoin(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let leave = |id: &str| pb::LeaveRoomRequest { room_id: id.into() };
    alice.create_room(destroy_room("gone", 500)).await.unwrap();
    alice.create_room(destroy_room("kept", 800)).await.unwrap();
    alice
        .send_message(chat("gone", "history too"))
        .await
        .unwrap();
    let mut bob_watch = Sub::open(&mut bob).await;

    alice.leave_room(leave("gone")).await.unwrap();
    alice.leave_room(leave("kept")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.join_room(join("kept")).await.unwrap();
    bob_watch.attached("kept", None).await;
    wait_gone(&mut bob, "gone").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        get_room(&mut bob, "kept").await.unwrap().member_count,
        1,
        "a rejoin cancels it"
    );

    // Once bob leaves too, it goes; the id is free again, with no history left.
    bob.leave_room(leave("kept")).await.unwrap();
    wait_gone(&mut bob, "kept").await;
    alice.create_room(create("gone")).await.unwrap();
    assert!(history(&mut alice, "gone").await.is_empty());

    server.stop().await;
    db.remove().await;
}

async fn timers_survive_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice
        .create_room(destroy_room("empty-soon", 600))
        .await
        .unwrap();
    alice
        .create_room(presence_room("present", 600))
        .await
        .unwrap();
    bob.join_room(join("present")).await.unwrap();
    let mut alice_sub = Sub::open(&mut alice).await;
    alice_sub.attached("present", None).await;
    alice
        .leave_room(pb::LeaveRoomRequest {
            room_id: "empty-soon".into(),
        })
        .await
        .unwrap();
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(900)).await;

    // Overdue while the server was down: applied right after it starts.
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    wait_gone(&mut alice, "empty-soon").await;
    eventually(
        "bob never attached and alice's stream ended with the old process",
        0,
        || {
            let mut alice = alice.clone();
            async move { get_room(&mut alice, "present").await.unwrap().member_count }
        },
    )
    .await;

    server.stop().await;
    db.remove().await;
}
