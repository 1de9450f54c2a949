//! The `rooms` claim: a token limited to some rooms reaches only those, whatever the
//! call — create, join, enter, switch, leave, read, list members and history, send,
//! update, delete, attach, send on a stream, and which of the user's rooms it lists
//! — and whoever holds it, admins included (an admin's WatchRooms leaves the other
//! rooms' events out)
//! (others: PERMISSION_DENIED `ROOM_NOT_IN_TOKEN`, nothing written). A room joined
//! earlier with a broader token is outside a narrower one too.

use chatroom::pb;
use serde_json::json;
use tonic::Code;

use crate::common::{self, Backend, Ev, Sub, assert_error, create, join};
use crate::{claims, jwt_app, token, with};

crate::on_both_stores!(
    the_rooms_claim_limits_which_rooms_a_token_reaches,
    a_narrow_token_reaches_no_room_outside_it_even_one_joined_before,
    an_admin_token_limited_to_some_rooms_administers_only_those,
);

async fn the_rooms_claim_limits_which_rooms_a_token_reaches(backend: Backend) {
    let app = jwt_app(backend).await;
    let server = app.server();
    let mut owner = server.token_client(&token(&claims("owner")));
    owner.create_room(create("other")).await.unwrap();
    owner.create_room(create("team-a")).await.unwrap();
    let scoped = with(claims("viewer"), json!({"rooms": ["live-1", "team-*"]}));
    let mut viewer = server.token_client(&token(&scoped));
    let not_in_token = |status: tonic::Status| {
        assert_error(&status, Code::PermissionDenied, "ROOM_NOT_IN_TOKEN");
    };

    // Allowed: an exact id and a prefix.
    viewer.create_room(create("live-1")).await.unwrap();
    viewer.join_room(join("team-a")).await.unwrap();
    viewer
        .enter_room(pb::EnterRoomRequest {
            room_id: "team-b".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Refused, and nothing written.
    not_in_token(viewer.create_room(create("live-2")).await.unwrap_err());
    not_in_token(viewer.join_room(join("other")).await.unwrap_err());
    not_in_token(
        viewer
            .enter_room(pb::EnterRoomRequest {
                room_id: "elsewhere".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    not_in_token(
        viewer
            .switch_room(pb::SwitchRoomRequest {
                from_room_id: "team-a".into(),
                to_room_id: "other".into(),
                display_name: String::new(),
            })
            .await
            .unwrap_err(),
    );
    for missing in ["live-2", "elsewhere"] {
        let status = common::get_room(&mut owner, missing).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{missing} was not created");
    }
    assert_eq!(
        common::member_ids(&owner, "other").await,
        ["owner"],
        "the viewer joined nothing it may not"
    );
    assert_eq!(
        common::member_ids(&owner, "team-a").await,
        ["owner", "viewer"],
        "the failed switch left the viewer where it was"
    );

    // Streams: a room in the token attaches; one outside is refused, even for an
    // admin whose token is limited.
    let mut sub = Sub::open(&mut viewer).await;
    sub.attached("live-1", None).await;
    match sub.attach("other", None).await {
        Ev::Error(e) => assert_eq!(e.reason, "ROOM_NOT_IN_TOKEN", "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let limited_admin = with(
        claims("ops"),
        json!({"roles": ["admin"], "rooms": ["live-*"]}),
    );
    let mut ops = server.token_client(&token(&limited_admin));
    not_in_token(ops.join_room(join("other")).await.unwrap_err());
    let mut ops_sub = Sub::open(&mut ops).await;
    ops_sub.attached("live-1", None).await;

    // Inside its rooms a scoped token acts as any member.
    viewer
        .send_message(common::chat("live-1", "hello"))
        .await
        .unwrap();
    viewer
        .leave_room(pb::LeaveRoomRequest {
            room_id: "team-a".into(),
        })
        .await
        .unwrap();
}

/// Every call that names a room outside the token is refused with nothing written,
/// although the user joined that room earlier with a token that reached it.
async fn a_narrow_token_reaches_no_room_outside_it_even_one_joined_before(backend: Backend) {
    let app = jwt_app(backend).await;
    let server = app.server();
    let mut broad = server.token_client(&token(&claims("user")));
    broad.create_room(create("old-room")).await.unwrap();
    broad
        .send_message(common::chat("old-room", "before"))
        .await
        .unwrap();
    let narrow_claims = with(claims("user"), json!({"rooms": ["live-42*"]}));
    let mut narrow = server.token_client(&token(&narrow_claims));
    narrow.create_room(create("live-42")).await.unwrap();
    let refused = |status: tonic::Status| {
        assert_error(&status, Code::PermissionDenied, "ROOM_NOT_IN_TOKEN");
    };

    refused(common::get_room(&mut narrow, "old-room").await.unwrap_err());
    // The user's rooms, as this token sees them: the old room is not among them.
    let mine = narrow
        .list_my_rooms(pb::ListMyRoomsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = mine.rooms.iter().map(|r| r.room_id.as_str()).collect();
    assert_eq!(ids, ["live-42"]);
    refused(
        narrow
            .list_members(pb::ListMembersRequest {
                room_id: "old-room".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    refused(
        narrow
            .list_messages(pb::ListMessagesRequest {
                room_id: "old-room".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    for kind in [
        pb::MessageKind::Chat,
        pb::MessageKind::Barrage,
        pb::MessageKind::Command,
    ] {
        let mut send = common::chat("old-room", "after");
        send.kind = kind as i32;
        refused(narrow.send_message(send).await.unwrap_err());
    }
    refused(
        narrow
            .update_room(pb::UpdateRoomRequest {
                room_id: "old-room".into(),
                name: Some("renamed".into()),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    refused(
        narrow
            .switch_room(pb::SwitchRoomRequest {
                from_room_id: "old-room".into(),
                to_room_id: "live-42".into(),
                display_name: String::new(),
            })
            .await
            .unwrap_err(),
    );
    refused(
        narrow
            .leave_room(pb::LeaveRoomRequest {
                room_id: "old-room".into(),
            })
            .await
            .unwrap_err(),
    );
    refused(
        narrow
            .delete_room(pb::DeleteRoomRequest {
                room_id: "old-room".into(),
            })
            .await
            .unwrap_err(),
    );

    // A stream of the narrow token: attaching is refused, and so is a send.
    let mut sub = Sub::open(&mut narrow).await;
    match sub.attach("old-room", None).await {
        Ev::Error(e) => assert_eq!(e.reason, "ROOM_NOT_IN_TOKEN", "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    match sub.send(common::chat("old-room", "streamed")).await {
        Ev::Error(e) => assert_eq!(e.reason, "ROOM_NOT_IN_TOKEN", "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // Nothing was written: the room, its name, the membership and the history are
    // as the broad token left them.
    let room = common::get_room(&mut broad, "old-room").await.unwrap();
    assert_eq!(room.name, "room old-room", "the name `create` gives");
    assert_eq!(common::member_ids(&broad, "old-room").await, ["user"]);
    let texts: Vec<String> = common::history(&mut broad, "old-room")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["before"]);
    assert_eq!(common::member_ids(&broad, "live-42").await, ["user"]);
}

/// An admin whose token lists some rooms administers those and nothing else.
async fn an_admin_token_limited_to_some_rooms_administers_only_those(backend: Backend) {
    let app = jwt_app(backend).await;
    let server = app.server();
    let mut owner = server.token_client(&token(&claims("owner")));
    for room in ["public-1", "private-1"] {
        owner.create_room(create(room)).await.unwrap();
    }
    let scoped = with(
        claims("moderator"),
        json!({"roles": ["admin"], "rooms": ["public-*"]}),
    );
    let mut moderator = server.token_client(&token(&scoped));
    // Its watch of the room feed, from the start, sees its rooms alone.
    let mut watch = common::Watch::open(&moderator, Some(0)).await.unwrap();
    let refused = |status: tonic::Status| {
        assert_error(&status, Code::PermissionDenied, "ROOM_NOT_IN_TOKEN");
    };

    refused(
        moderator
            .send_message(common::chat("private-1", "hi"))
            .await
            .unwrap_err(),
    );
    // A broadcast reaches the rooms in the token; the others refuse it, each.
    let results = moderator
        .broadcast_message(pb::BroadcastMessageRequest {
            room_ids: vec!["public-1".into(), "private-1".into()],
            text: "to both".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].message.as_ref().map(|m| m.seq), Some(1));
    assert_eq!(
        results[1].error.as_ref().map(|e| e.reason.as_str()),
        Some("ROOM_NOT_IN_TOKEN")
    );
    refused(
        moderator
            .update_room(pb::UpdateRoomRequest {
                room_id: "private-1".into(),
                name: Some("taken".into()),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    refused(
        moderator
            .delete_room(pb::DeleteRoomRequest {
                room_id: "private-1".into(),
            })
            .await
            .unwrap_err(),
    );
    refused(
        moderator
            .list_messages(pb::ListMessagesRequest {
                room_id: "private-1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    let private = common::get_room(&mut owner, "private-1").await.unwrap();
    assert_eq!(
        (private.name.as_str(), private.last_seq),
        ("room private-1", 0)
    );

    // Inside its rooms it is an admin: it sends without being a member, renames,
    // deletes.
    moderator
        .send_message(common::chat("public-1", "welcome"))
        .await
        .unwrap();
    let renamed = moderator
        .update_room(pb::UpdateRoomRequest {
            room_id: "public-1".into(),
            name: Some("Lobby".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(renamed.name, "Lobby");
    moderator
        .delete_room(pb::DeleteRoomRequest {
            room_id: "public-1".into(),
        })
        .await
        .unwrap();
    let gone = common::get_room(&mut owner, "public-1").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    use pb::RoomFeedEventKind as K;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let response = watch.next().await.unwrap();
        seen.extend(
            response
                .events
                .iter()
                .map(|e| (e.kind(), e.room_id.clone())),
        );
    }
    let public = |kind| (kind, "public-1".to_string());
    assert_eq!(
        seen,
        [
            public(K::Created),
            public(K::MemberJoined),
            public(K::Occupied),
            public(K::Updated),
            public(K::Deleted)
        ],
        "private-1's events are left out"
    );
    watch
        .says_nothing_for(std::time::Duration::from_millis(300))
        .await;
}
