//! Reading and administering rooms: GetRoom, ListRooms, UpdateRoom, DeleteRoom,
//! ListMembers, and all of it across a restart.

use std::collections::HashMap;

use tonic::Code;

use crate::common::{
    Backend, TestApp, all_members, assert_bad_request, assert_error, create, get_room,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    get_room_is_open_to_every_user,
    list_rooms_pages_and_filters,
    list_my_rooms_pages_through_the_callers_rooms,
    update_room_permissions_and_versions,
    delete_room_permissions_and_cleanup,
    list_members_permissions_and_pages,
    everything_survives_a_restart,
);

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
                slow_mode_interval: None,
                muted: true,
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

async fn list_my_rooms_pages_through_the_callers_rooms(backend: Backend) {
    let app = TestApp::start(backend).await;
    for room in ["e", "b", "a", "d"] {
        app.create_room("alice", room).await;
    }
    app.create_room("bob", "c").await;
    app.create_room("bob", "not-hers").await;
    app.join("alice", "c").await;
    app.join("carol", "b").await;
    let _watching = app.attached("alice", "a").await;
    let mut alice = app.client("alice").await;
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = alice
            .list_my_rooms(pb::ListMyRoomsRequest {
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.rooms);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let ids: Vec<Vec<&str>> = pages
        .iter()
        .map(|p| p.iter().map(|r| r.room_id.as_str()).collect())
        .collect();
    assert_eq!(ids, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    // Rooms as GetRoom shows them: counts, online included.
    let (a, b) = (&pages[0][0], &pages[0][1]);
    assert_eq!((a.member_count, a.online_count), (1, 1));
    assert_eq!((b.member_count, b.online_count), (2, 0));
    assert_eq!(pages[1][0].owner_id, "bob");

    // A room left is no longer listed; a user in none lists nothing.
    app.leave("alice", "c").await;
    let mine = alice
        .list_my_rooms(pb::ListMyRoomsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = mine.rooms.iter().map(|r| r.room_id.as_str()).collect();
    assert_eq!(
        (ids, mine.next_page_token.as_str()),
        (vec!["a", "b", "d", "e"], "")
    );
    let none = app
        .client("nobody")
        .await
        .list_my_rooms(pb::ListMyRoomsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.rooms.is_empty());
    let err = alice
        .list_my_rooms(pb::ListMyRoomsRequest {
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "page_token");
}
