//! CreateRoom, and what every call refuses before anything is written: bad input,
//! no identity.

use std::collections::HashMap;

use tonic::Code;

use crate::common::{
    Backend, TestApp, all_members, assert_bad_request, assert_error, create, get_room, join,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    create_room_makes_the_caller_owner,
    create_room_generates_an_id_when_empty,
    create_room_with_a_taken_id_is_already_exists,
    bad_input_is_rejected_before_anything_is_written,
    calls_without_identity_are_unauthenticated,
);

async fn create_room_makes_the_caller_owner(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;

    let settings = pb::RoomSettings {
        max_members: 10,
        member_events: pb::MemberEvents::None as i32,
        destroy_when_empty_after: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        presence_timeout: Some(prost_types::Duration {
            seconds: 5,
            nanos: 500_000_000,
        }),
        slow_mode_interval: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        muted: true,
    };
    let room = app
        .create_room_with(
            "alice",
            pb::CreateRoomRequest {
                room_id: "lobby".into(),
                name: "The Lobby".into(),
                attributes: HashMap::from([("topic".into(), "rust".into())]),
                settings: Some(settings),
                display_name: "Alice".into(),
            },
        )
        .await;
    assert_eq!(room.room_id, "lobby");
    assert_eq!(room.name, "The Lobby");
    assert_eq!(room.attributes["topic"], "rust");
    assert_eq!(room.owner_id, "alice");
    assert_eq!(room.settings, Some(settings));
    assert_eq!(room.member_count, 1);
    assert_eq!(room.online_count, 0);
    assert_eq!(room.last_seq, 0);
    assert_eq!(room.version, 1);
    assert!(room.created_at.is_some());
    assert_eq!(room.created_at, room.updated_at);

    assert_eq!(get_room(&mut alice, "lobby").await.unwrap(), room);
    let members = all_members(&mut alice, "lobby").await;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, "alice");
    assert_eq!(members[0].display_name, "Alice");
    assert_eq!(members[0].role, pb::Role::Owner as i32);
    assert!(!members[0].online);
}

async fn create_room_generates_an_id_when_empty(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;

    let a = app.create_room("alice", "").await;
    let b = app.create_room("alice", "").await;
    let id = uuid::Uuid::parse_str(&a.room_id).expect("a UUID");
    assert_eq!(id.get_version_num(), 7);
    assert_ne!(a.room_id, b.room_id);
    assert_eq!(
        get_room(&mut alice, &a.room_id).await.unwrap().owner_id,
        "alice"
    );
}

async fn create_room_with_a_taken_id_is_already_exists(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;

    app.create_room("alice", "r1").await;
    let mut again = create("r1");
    again.name = "Bob's".into();
    let err = bob.create_room(again).await.unwrap_err();
    assert_error(&err, Code::AlreadyExists, "ROOM_EXISTS");

    // The failed create changed nothing: same owner and name, bob not a member.
    let room = get_room(&mut alice, "r1").await.unwrap();
    assert_eq!(room.owner_id, "alice");
    assert_eq!(room.name, "room r1");
    assert_eq!(room.member_count, 1);
}

async fn bad_input_is_rejected_before_anything_is_written(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;

    let cases: Vec<(pb::CreateRoomRequest, &str)> = vec![
        (create("has space"), "room_id"),
        (create(&"x".repeat(129)), "room_id"),
        (create("slash/room"), "room_id"),
        (
            pb::CreateRoomRequest {
                name: "n".repeat(257),
                ..create("ok-id")
            },
            "name",
        ),
        (
            pb::CreateRoomRequest {
                display_name: "d".repeat(257),
                ..create("ok-id")
            },
            "display_name",
        ),
        (
            pb::CreateRoomRequest {
                attributes: (0..65).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..create("ok-id")
            },
            "attributes",
        ),
        (
            pb::CreateRoomRequest {
                attributes: HashMap::from([(String::new(), "v".into())]),
                ..create("ok-id")
            },
            "attributes",
        ),
        (
            pb::CreateRoomRequest {
                settings: Some(pb::RoomSettings {
                    member_events: 99,
                    ..Default::default()
                }),
                ..create("ok-id")
            },
            "settings.member_events",
        ),
        (
            pb::CreateRoomRequest {
                settings: Some(pb::RoomSettings {
                    destroy_when_empty_after: Some(prost_types::Duration {
                        seconds: -5,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..create("ok-id")
            },
            "settings.destroy_when_empty_after",
        ),
        (
            pb::CreateRoomRequest {
                settings: Some(pb::RoomSettings {
                    slow_mode_interval: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..create("ok-id")
            },
            "settings.slow_mode_interval",
        ),
    ];
    for (request, field) in cases {
        let err = alice.create_room(request).await.unwrap_err();
        assert_bad_request(&err, field);
    }
    // None of them wrote anything.
    let err = get_room(&mut alice, "ok-id").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    let rooms = alice
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(rooms.rooms.is_empty());

    // Bad ids on the other RPCs name their own fields.
    let err = alice.join_room(join("bad id")).await.unwrap_err();
    assert_bad_request(&err, "room_id");
    let err = alice
        .switch_room(pb::SwitchRoomRequest {
            from_room_id: "ok".into(),
            to_room_id: "not ok!".into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "to_room_id");
    let err = alice
        .list_rooms(pb::ListRoomsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "page_token");
}

async fn calls_without_identity_are_unauthenticated(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut anon = app.anonymous().await;

    let err = anon.create_room(create("r")).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    let err = anon
        .get_room(pb::GetRoomRequest {
            room_id: "r".into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    let err = anon
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "UNAUTHENTICATED");

    // A present but invalid id is rejected too.
    let mut bad = app.client("has\tno").await;
    let err = bad.create_room(create("r")).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "UNAUTHENTICATED");

    let mut alice = app.client("alice").await;
    let err = get_room(&mut alice, "r").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
}
