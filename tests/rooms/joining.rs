//! JoinRoom, EnterRoom, LeaveRoom and SwitchRoom one at a time: what each changes,
//! and the per-user room limit.

use std::collections::HashMap;

use tonic::Code;

use crate::common::{
    Backend, TestApp, all_members, assert_bad_request, assert_error, create, enter, get_room, join,
};
use crate::{limited, on_both_stores, switch};
use chatroom::pb;

on_both_stores!(
    join_room_adds_a_member_once,
    join_room_errors,
    max_rooms_per_user_is_enforced_and_freed,
    enter_room_creates_then_joins,
    leave_room_is_idempotent,
    switch_room_moves_the_member,
    switch_room_failure_keeps_the_user_in_from,
);

async fn join_room_adds_a_member_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;

    app.create_room("alice", "r").await;
    let room = bob
        .join_room(pb::JoinRoomRequest {
            room_id: "r".into(),
            display_name: "Bob".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.member_count, 2);
    // Joining again is OK and changes nothing.
    let again = bob
        .join_room(join("r"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(again.member_count, 2);
    let members = all_members(&mut alice, "r").await;
    let ids: Vec<_> = members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert_eq!(
        members[1].display_name, "Bob",
        "the second join kept the first name"
    );
    assert_eq!(members[1].role, pb::Role::Member as i32);
}

async fn join_room_errors(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    let mut carol = app.client("carol").await;

    let err = bob.join_room(join("missing")).await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");

    app.create_room_with("alice", limited("small", 2)).await;
    app.join("bob", "small").await;
    let err = carol.join_room(join("small")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "ROOM_FULL");
    // A member re-joining a full room is still fine.
    app.join("bob", "small").await;
    assert_eq!(get_room(&mut alice, "small").await.unwrap().member_count, 2);
}

async fn max_rooms_per_user_is_enforced_and_freed(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_rooms_per_user = 2).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;

    app.create_room("alice", "a1").await;
    app.create_room("alice", "a2").await;
    app.create_room("bob", "b1").await;

    let err = alice.create_room(create("a3")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ROOMS");
    let err = get_room(&mut alice, "a3").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    let err = alice.join_room(join("b1")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ROOMS");
    let err = alice.enter_room(enter("a4")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ROOMS");
    let err = get_room(&mut alice, "a4").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    assert_eq!(get_room(&mut bob, "b1").await.unwrap().member_count, 1);

    // Re-joining a room already counted is not a new room.
    app.join("alice", "a1").await;

    app.leave("alice", "a1").await;
    app.join("alice", "b1").await;
    assert_eq!(get_room(&mut bob, "b1").await.unwrap().member_count, 2);
}

async fn enter_room_creates_then_joins(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;

    let first = alice.enter_room(enter("e")).await.unwrap().into_inner();
    assert!(first.created);
    let room = first.room.unwrap();
    assert_eq!(room.owner_id, "alice");
    assert_eq!(room.member_count, 1);

    let second = bob
        .enter_room(pb::EnterRoomRequest {
            name: "ignored".into(),
            attributes: HashMap::from([("ignored".into(), "yes".into())]),
            settings: Some(pb::RoomSettings {
                max_members: 99,
                ..Default::default()
            }),
            ..enter("e")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!second.created);
    let room = second.room.unwrap();
    assert_eq!(
        room.name, "room e",
        "create fields are ignored for an existing room"
    );
    assert!(room.attributes.is_empty());
    assert_eq!(room.settings.unwrap().max_members, 0);
    assert_eq!(room.owner_id, "alice");
    assert_eq!(room.member_count, 2);

    // Entering again is a no-op join.
    let third = bob.enter_room(enter("e")).await.unwrap().into_inner();
    assert!(!third.created);
    assert_eq!(third.room.unwrap().member_count, 2);

    // An empty id always creates.
    let fresh = bob.enter_room(enter("")).await.unwrap().into_inner();
    assert!(fresh.created);
    assert_eq!(fresh.room.unwrap().owner_id, "bob");
}

async fn leave_room_is_idempotent(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    let leave = |id: &str| pb::LeaveRoomRequest { room_id: id.into() };

    let err = bob.leave_room(leave("missing")).await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");

    app.create_room("alice", "r").await;
    bob.leave_room(leave("r"))
        .await
        .expect("leaving a room one is not in is OK");
    app.join("bob", "r").await;
    assert_eq!(get_room(&mut alice, "r").await.unwrap().member_count, 2);
    bob.leave_room(leave("r")).await.unwrap();
    bob.leave_room(leave("r")).await.unwrap();
    assert_eq!(get_room(&mut alice, "r").await.unwrap().member_count, 1);
    let ids: Vec<_> = all_members(&mut alice, "r")
        .await
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(ids, ["alice"]);

    // The owner may leave too; the room stays, and rejoining restores the owner role.
    alice.leave_room(leave("r")).await.unwrap();
    let room = get_room(&mut alice, "r").await.unwrap();
    assert_eq!((room.member_count, room.owner_id.as_str()), (0, "alice"));
    app.join("alice", "r").await;
    assert_eq!(
        all_members(&mut alice, "r").await[0].role,
        pb::Role::Owner as i32
    );
}

async fn switch_room_moves_the_member(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_rooms_per_user = 2).await;
    let mut owner = app.client("owner").await;
    let mut mover = app.client("mover").await;
    app.create_room("owner", "a").await;
    app.create_room("owner", "b").await;
    app.create_room("other", "c").await;
    app.leave("other", "c").await;
    app.join("mover", "a").await;
    app.join("mover", "b").await;

    // At the per-user limit, a move still works.
    let room = mover
        .switch_room(switch("a", "c"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.room_id, "c");
    assert_eq!(room.member_count, 1);
    assert_eq!(get_room(&mut owner, "a").await.unwrap().member_count, 1);
    let members = all_members(&mut mover, "c").await;
    assert_eq!(members[0].display_name, "Mover");

    // Switching into a room one is already in just leaves `from`.
    mover.switch_room(switch("b", "c")).await.unwrap();
    assert_eq!(get_room(&mut owner, "b").await.unwrap().member_count, 1);
    assert_eq!(get_room(&mut owner, "c").await.unwrap().member_count, 1);
    // ...and frees a slot: mover is in one room now, so two joins fit... but not three.
    app.join("mover", "a").await;
    let err = mover.join_room(join("b")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ROOMS");

    let err = mover.switch_room(switch("c", "c")).await.unwrap_err();
    assert_bad_request(&err, "to_room_id");
    let err = mover.switch_room(switch("b", "c")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    let err = mover.switch_room(switch("nope", "c")).await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
}

async fn switch_room_failure_keeps_the_user_in_from(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    let mut mover = app.client("mover").await;
    app.create_room("owner", "from").await;
    app.create_room_with("owner", limited("full", 1)).await;
    app.join("mover", "from").await;

    let err = mover.switch_room(switch("from", "full")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "ROOM_FULL");
    let err = mover
        .switch_room(switch("from", "missing"))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");

    assert_eq!(get_room(&mut owner, "from").await.unwrap().member_count, 2);
    let ids: Vec<_> = all_members(&mut owner, "from")
        .await
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(ids, ["mover", "owner"]);
    assert_eq!(get_room(&mut owner, "full").await.unwrap().member_count, 1);
}
