//! The membership writer under concurrency: every kind of membership change —
//! CreateRoom, JoinRoom, EnterRoom, LeaveRoom, SwitchRoom — goes through one writer
//! that applies many at once in one transaction. Whatever lands in one batch, each
//! change must be decided as if it ran alone, in arrival order, and the counts must
//! stay exact. On SQLite and on PostgreSQL.

mod common;

use tonic::Code;

use chatroom::pb;
use common::{Backend, Client, TestApp, all_members, assert_error, create, get_room, join};

on_both_stores!(
    concurrent_create_room_creates_exactly_once,
    switches_and_joins_racing_for_the_last_places_keep_counts_exact,
    create_room_beyond_the_room_limit_creates_nothing,
);

fn switch(from: &str, to: &str) -> pb::SwitchRoomRequest {
    pb::SwitchRoomRequest {
        from_room_id: from.into(),
        to_room_id: to.into(),
        display_name: String::new(),
    }
}

fn member_ids(members: Vec<pb::Member>) -> Vec<String> {
    members.into_iter().map(|m| m.user_id).collect()
}

/// Of many CreateRoom calls for one id at once (likely in one batch), exactly one
/// creates the room and owns it; every other is told ROOM_EXISTS and joins nothing.
async fn concurrent_create_room_creates_exactly_once(backend: Backend) {
    let app = TestApp::start(backend).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let user = format!("user{i:02}");
        let mut client = app.client(&user).await;
        tasks.spawn(async move { (user, client.create_room(create("taken")).await) });
    }
    let mut owners = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (user, Ok(response)) => {
                let room = response.into_inner().room.unwrap();
                assert_eq!((room.owner_id.as_str(), room.member_count), (&*user, 1));
                owners.push(user);
            }
            (_, Err(status)) => assert_error(&status, Code::AlreadyExists, "ROOM_EXISTS"),
        }
    }
    assert_eq!(
        owners.len(),
        1,
        "exactly one CreateRoom succeeds: {owners:?}"
    );
    let mut owner = app.client(&owners[0]).await;
    let room = get_room(&mut owner, "taken").await.unwrap();
    assert_eq!(
        (room.owner_id.as_str(), room.member_count),
        (&*owners[0], 1)
    );
    let members = all_members(&mut owner, "taken").await;
    assert_eq!(member_ids(members.clone()), [owners[0].clone()]);
    assert_eq!(members[0].role, pb::Role::Owner as i32);
}

/// Switches into a room and joins of it race for its last places. The room never
/// passes `max_members`, its count matches its rows, a switch that found the room
/// full left its user where it was, and one that got in left its old room.
async fn switches_and_joins_racing_for_the_last_places_keep_counts_exact(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                max_members: 6,
                ..Default::default()
            }),
            ..create("target")
        })
        .await
        .unwrap();
    // Ten movers, each in a room of its own (with the owner, so it outlives them).
    let mut movers: Vec<(String, Client)> = Vec::new();
    for i in 0..10 {
        let user = format!("mover{i}");
        let from = format!("from{i}");
        owner.create_room(create(&from)).await.unwrap();
        let mut client = app.client(&user).await;
        client.join_room(join(&from)).await.unwrap();
        movers.push((user, client));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (i, (user, mut client)) in movers.into_iter().enumerate() {
        tasks.spawn(async move {
            let result = client
                .switch_room(switch(&format!("from{i}"), "target"))
                .await
                .map(drop);
            (user, Some(i), result)
        });
    }
    for i in 0..10 {
        let user = format!("joiner{i}");
        let mut client = app.client(&user).await;
        tasks.spawn(async move { (user, None, client.join_room(join("target")).await.map(drop)) });
    }
    let mut inside = vec!["owner".to_string()];
    while let Some(result) = tasks.join_next().await {
        let (user, from, result) = result.unwrap();
        let from_members = match &from {
            Some(i) => member_ids(all_members(&mut owner, &format!("from{i}")).await),
            None => Vec::new(),
        };
        match result {
            Ok(()) => {
                if from.is_some() {
                    assert_eq!(from_members, ["owner"], "{user} moved out of its room");
                }
                inside.push(user);
            }
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "ROOM_FULL");
                if from.is_some() {
                    assert_eq!(from_members, [user.as_str(), "owner"], "{user} stayed");
                }
            }
        }
    }
    inside.sort();
    assert_eq!(inside.len(), 6, "the room filled exactly: {inside:?}");
    let room = get_room(&mut owner, "target").await.unwrap();
    assert_eq!(room.member_count, 6);
    assert_eq!(member_ids(all_members(&mut owner, "target").await), inside);
}

/// A CreateRoom the per-user room limit refuses leaves no room behind, and the id
/// stays free for someone else.
async fn create_room_beyond_the_room_limit_creates_nothing(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_rooms_per_user = 1).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    alice.create_room(create("first")).await.unwrap();

    let err = alice.create_room(create("second")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ROOMS");
    let err = get_room(&mut alice, "second").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");

    let room = bob
        .create_room(create("second"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!((room.owner_id.as_str(), room.member_count), ("bob", 1));
}
