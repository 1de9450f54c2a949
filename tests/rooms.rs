//! Room lifecycle over a real gRPC connection: create, join, enter, leave, switch, get,
//! list, update, delete, list members — on SQLite and on PostgreSQL.

mod common;

use std::collections::HashMap;

use tonic::Code;

use chatroom::pb;
use common::{
    Backend, TestApp, all_members, assert_bad_request, assert_error, create, enter, get_room, join,
};

on_both_stores!(
    create_room_makes_the_caller_owner,
    create_room_generates_an_id_when_empty,
    create_room_with_a_taken_id_is_already_exists,
    bad_input_is_rejected_before_anything_is_written,
    calls_without_identity_are_unauthenticated,
    join_room_adds_a_member_once,
    join_room_errors,
    max_rooms_per_user_is_enforced_and_freed,
    enter_room_creates_then_joins,
    concurrent_enter_room_creates_exactly_once,
    concurrent_joins_respect_max_members,
    concurrent_joins_and_leaves_keep_counts_exact,
    leave_room_is_idempotent,
    switch_room_moves_the_member,
    switch_room_failure_keeps_the_user_in_from,
    get_room_is_open_to_every_user,
    list_rooms_pages_and_filters,
    update_room_permissions_and_versions,
    delete_room_permissions_and_cleanup,
    list_members_permissions_and_pages,
    everything_survives_a_restart,
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

async fn concurrent_enter_room_creates_exactly_once(backend: Backend) {
    let app = TestApp::start(backend).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut client = app.client(&format!("user{i:02}")).await;
        tasks.spawn(async move { client.enter_room(enter("hot")).await });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        let response = result.unwrap().expect("no EnterRoom fails").into_inner();
        created += usize::from(response.created);
    }
    assert_eq!(created, 1, "exactly one call creates the room");
    let mut observer = app.client("user00").await;
    assert_eq!(
        get_room(&mut observer, "hot").await.unwrap().member_count,
        50
    );
    assert_eq!(all_members(&mut observer, "hot").await.len(), 50);
}

async fn concurrent_joins_respect_max_members(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room_with("owner", limited("five", 5)).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut client = app.client(&format!("joiner{i:02}")).await;
        tasks.spawn(async move { client.join_room(join("five")).await });
    }
    let (mut admitted, mut full) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "ROOM_FULL");
                full += 1;
            }
        }
    }
    assert_eq!((admitted, full), (4, 16));
    assert_eq!(get_room(&mut owner, "five").await.unwrap().member_count, 5);
    assert_eq!(all_members(&mut owner, "five").await.len(), 5);
}

/// Joins, leaves and enters of many users at once are applied in batches; whatever
/// the batching, the counts stay exact: the room's member count matches its member
/// rows and never passes `max_members`, each user's room slots match the rooms it is
/// in, and a user with two changes in flight gets both applied.
async fn concurrent_joins_and_leaves_keep_counts_exact(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_rooms_per_user = 2).await;
    let mut owner = app.client("owner").await;
    app.create_room_with("owner", limited("busy", 10)).await;
    for i in 0..9 {
        app.join(&format!("m{i}"), "busy").await;
    }
    // n0..n4 are in two rooms already: no slot left.
    for i in 0..5 {
        let full = format!("n{i:02}");
        app.create_room(&full, &format!("n{i}-a")).await;
        app.create_room(&full, &format!("n{i}-b")).await;
    }

    #[derive(Debug)]
    enum Call {
        Leave,
        Join(usize),
        Enter(usize),
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..9 {
        let mut member = app.client(&format!("m{i}")).await;
        tasks.spawn(async move {
            let r = member
                .leave_room(pb::LeaveRoomRequest {
                    room_id: "busy".into(),
                })
                .await
                .map(drop);
            (Call::Leave, r.map(|_| false))
        });
    }
    for i in 0..30 {
        let mut newcomer = app.client(&format!("n{i:02}")).await;
        tasks.spawn(async move {
            let r = newcomer.join_room(join("busy")).await.map(|_| false);
            (Call::Join(i), r)
        });
        // n25..n29 also enter a new room at the same time.
        if i >= 25 {
            let mut newcomer = app.client(&format!("n{i:02}")).await;
            tasks.spawn(async move {
                let r = newcomer
                    .enter_room(enter("fresh"))
                    .await
                    .map(|r| r.into_inner().created);
                (Call::Enter(i), r)
            });
        }
    }
    let mut in_busy = [false; 30];
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (Call::Leave, r) => {
                r.expect("a leave succeeds");
            }
            (Call::Join(i), Ok(_)) => {
                assert!(i >= 5, "n{i:02} has no slot left but joined");
                in_busy[i] = true;
            }
            (Call::Join(i), Err(status)) if i < 5 => {
                assert_error(&status, Code::ResourceExhausted, "TOO_MANY_ROOMS")
            }
            (Call::Join(_), Err(status)) => {
                assert_error(&status, Code::ResourceExhausted, "ROOM_FULL")
            }
            (Call::Enter(i), r) => {
                created += usize::from(r.unwrap_or_else(|s| panic!("n{i} enter: {s:?}")));
            }
        }
    }
    let admitted = in_busy.iter().filter(|&&x| x).count();
    let busy = get_room(&mut owner, "busy").await.unwrap();
    assert_eq!(busy.member_count as usize, 1 + admitted);
    assert!(busy.member_count <= 10, "max_members passed: {busy:?}");
    assert_eq!(all_members(&mut owner, "busy").await.len(), 1 + admitted);
    assert_eq!(created, 1, "exactly one EnterRoom creates the room");
    let mut observer = app.client("n25").await;
    assert_eq!(
        get_room(&mut observer, "fresh").await.unwrap().member_count,
        5
    );
    assert_eq!(all_members(&mut observer, "fresh").await.len(), 5);

    // Room slots: each newcomer may create exactly as many rooms as it has left.
    for (i, &in_room) in in_busy.iter().enumerate().skip(5) {
        let mut newcomer = app.client(&format!("n{i:02}")).await;
        let used = usize::from(in_room) + usize::from(i >= 25);
        for k in 0..=(2 - used) {
            let r = newcomer.create_room(create(&format!("n{i}-{k}"))).await;
            if k < 2 - used {
                r.unwrap_or_else(|s| panic!("n{i:02} should have a slot: {s:?}"));
            } else {
                let status = r.expect_err("no slot left");
                assert_error(&status, Code::ResourceExhausted, "TOO_MANY_ROOMS");
            }
        }
    }
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

/// A CreateRoom request for `room_id` that admits at most `max_members`.
fn limited(room_id: &str, max_members: u32) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        settings: Some(pb::RoomSettings {
            max_members,
            ..Default::default()
        }),
        ..create(room_id)
    }
}

fn switch(from: &str, to: &str) -> pb::SwitchRoomRequest {
    pb::SwitchRoomRequest {
        from_room_id: from.into(),
        to_room_id: to.into(),
        display_name: "Mover".into(),
    }
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

async fn get_room_is_open_to_every_user(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut stranger = app.client("stranger").await;
    let created = app.create_room("alice", "open").await;
    assert_eq!(get_room(&mut stranger, "open").await.unwrap(), created);
    let err = get_room(&mut stranger, "closed").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
}

async fn list_rooms_pages_and_filters(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let rooms = [
        ("r5", "games"),
        ("r1", "music"),
        ("r3", "music-jazz"),
        ("r2", "Music"),
        ("r4", "music"),
    ];
    for (id, name) in rooms {
        app.create_room_with(
            "alice",
            pb::CreateRoomRequest {
                name: name.into(),
                ..create(id)
            },
        )
        .await;
    }

    // Pages of two, in id order, until no token.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = alice
            .list_rooms(pb::ListRoomsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.rooms.len() <= 2);
        seen.extend(page.rooms.into_iter().map(|r| r.room_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["r1", "r2", "r3", "r4", "r5"]);
    assert_eq!(pages, 3);

    let ids = |rooms: Vec<pb::Room>| rooms.into_iter().map(|r| r.room_id).collect::<Vec<_>>();
    let exact = alice
        .list_rooms(pb::ListRoomsRequest {
            name: "music".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(exact.rooms), ["r1", "r4"], "exact and case-sensitive");
    let prefixed = alice
        .list_rooms(pb::ListRoomsRequest {
            name_prefix: "music".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(prefixed.rooms), ["r1", "r3", "r4"]);
    assert!(prefixed.next_page_token.is_empty());
    let none = alice
        .list_rooms(pb::ListRoomsRequest {
            name: "nothing".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.rooms.is_empty() && none.next_page_token.is_empty());
}

async fn update_room_permissions_and_versions(backend: Backend) {
    let app = TestApp::with(backend, |c| c.admin_users = vec!["root".into()]).await;
    let mut owner = app.client("owner").await;
    let mut member = app.client("member").await;
    let mut stranger = app.client("stranger").await;
    let mut root = app.client("root").await;
    app.create_room_with(
        "owner",
        pb::CreateRoomRequest {
            attributes: HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
            ..create("u")
        },
    )
    .await;
    app.join("member", "u").await;

    // A member changes attributes: remove then set, version advances.
    let room = member
        .update_room(pb::UpdateRoomRequest {
            room_id: "u".into(),
            remove_attribute_keys: vec!["a".into()],
            set_attributes: HashMap::from([("c".into(), "3".into()), ("b".into(), "20".into())]),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.version, 2);
    assert_eq!(
        room.attributes,
        HashMap::from([("b".into(), "20".into()), ("c".into(), "3".into())])
    );
    let micros = |t: Option<prost_types::Timestamp>| {
        let t = t.unwrap();
        t.seconds * 1_000_000 + i64::from(t.nanos / 1000)
    };
    assert!(micros(room.updated_at) > micros(room.created_at));

    // A stale version is refused and changes nothing.
    let err = owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "u".into(),
            name: Some("stale".into()),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::Aborted, "VERSION_CONFLICT");

    // Only the owner (or an admin) may change the name or settings.
    let err = member
        .update_room(pb::UpdateRoomRequest {
            room_id: "u".into(),
            name: Some("mine now".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_ROOM_OWNER");
    let err = stranger
        .update_room(pb::UpdateRoomRequest {
            room_id: "u".into(),
            set_attributes: HashMap::from([("x".into(), "y".into())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");

    let room = owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "u".into(),
            name: Some("Renamed".into()),
            settings: Some(pb::RoomSettings {
                max_members: 3,
                ..Default::default()
            }),
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!((room.name.as_str(), room.version), ("Renamed", 3));
    assert_eq!(room.settings.unwrap().max_members, 3);

    let room = root
        .update_room(pb::UpdateRoomRequest {
            room_id: "u".into(),
            name: Some("By admin".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!((room.name.as_str(), room.version), ("By admin", 4));

    // Too many attributes after the merge: rejected, nothing changed.
    let err = member
        .update_room(pb::UpdateRoomRequest {
            room_id: "u".into(),
            set_attributes: (0..63).map(|i| (format!("k{i}"), "v".into())).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "set_attributes");
    let room = get_room(&mut stranger, "u").await.unwrap();
    assert_eq!((room.version, room.attributes.len()), (4, 2));

    let err = owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "gone".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
}

async fn delete_room_permissions_and_cleanup(backend: Backend) {
    let app = TestApp::with(backend, |c| {
        c.admin_users = vec!["root".into()];
        c.max_rooms_per_user = 1;
    })
    .await;
    let mut owner = app.client("owner").await;
    let mut member = app.client("member").await;
    let mut root = app.client("root").await;
    let delete = |id: &str| pb::DeleteRoomRequest { room_id: id.into() };

    app.create_room("owner", "d").await;
    app.join("member", "d").await;
    let err = member.delete_room(delete("d")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_ROOM_OWNER");
    assert_eq!(get_room(&mut member, "d").await.unwrap().member_count, 2);

    owner.delete_room(delete("d")).await.unwrap();
    let err = get_room(&mut member, "d").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    let err = owner.delete_room(delete("d")).await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");

    // Both users' room slots were freed (the limit is one room each).
    app.create_room("member", "m").await;
    app.join("owner", "m").await;
    // The id can be reused, with no members left over.
    app.create_room("root", "d").await;
    assert_eq!(get_room(&mut root, "d").await.unwrap().member_count, 1);

    // An admin may delete a room it does not own.
    root.delete_room(delete("m")).await.unwrap();
    assert_error(
        &get_room(&mut root, "m").await.unwrap_err(),
        Code::NotFound,
        "ROOM_NOT_FOUND",
    );
}

async fn list_members_permissions_and_pages(backend: Backend) {
    let app = TestApp::with(backend, |c| c.admin_users = vec!["root".into()]).await;
    let mut owner = app.client("m00").await;
    app.create_room("m00", "big").await;
    for i in 1..25 {
        app.join(&format!("m{i:02}"), "big").await;
    }

    let first = owner
        .list_members(pb::ListMembersRequest {
            room_id: "big".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.members.len(), 10);
    assert_eq!(first.members[0].user_id, "m00");
    assert_eq!(first.members[9].user_id, "m09");
    assert!(!first.next_page_token.is_empty());
    let default_page = owner
        .list_members(pb::ListMembersRequest {
            room_id: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_page.members.len(), 20, "default page size");

    let mut root = app.client("root").await;
    let all = all_members(&mut root, "big").await;
    assert_eq!(all.len(), 25);
    assert!(all.windows(2).all(|w| w[0].user_id < w[1].user_id));
    assert!(all.iter().all(|m| !m.online));

    let online = owner
        .list_members(pb::ListMembersRequest {
            room_id: "big".into(),
            online_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(online.members.is_empty(), "no streams are attached");

    let mut stranger = app.client("stranger").await;
    let err = stranger
        .list_members(pb::ListMembersRequest {
            room_id: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    let err = stranger
        .list_members(pb::ListMembersRequest {
            room_id: "none".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
}

async fn everything_survives_a_restart(backend: Backend) {
    let mut app = TestApp::with(backend, |c| c.max_rooms_per_user = 2).await;
    let mut alice = app.client("alice").await;
    app.create_room_with(
        "alice",
        pb::CreateRoomRequest {
            attributes: HashMap::from([("k".into(), "v".into())]),
            settings: Some(pb::RoomSettings {
                max_members: 7,
                member_events: pb::MemberEvents::None as i32,
                destroy_when_empty_after: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                presence_timeout: None,
            }),
            display_name: "Alice".into(),
            ..create("keep")
        },
    )
    .await;
    app.create_room("alice", "second").await;
    app.join("bob", "keep").await;
    alice
        .update_room(pb::UpdateRoomRequest {
            room_id: "keep".into(),
            name: Some("Kept".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let before_room = get_room(&mut alice, "keep").await.unwrap();
    let before_members = all_members(&mut alice, "keep").await;
    app.restart().await;
    let mut alice = app.client("alice").await;
    assert_eq!(get_room(&mut alice, "keep").await.unwrap(), before_room);
    assert_eq!(all_members(&mut alice, "keep").await, before_members);
    assert_eq!(
        get_room(&mut alice, "second").await.unwrap().owner_id,
        "alice"
    );
    // The per-user room count survived too: alice is still in two rooms.
    let err = alice.create_room(create("third")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ROOMS");
}
