//! Room events on streams: member events (coalesced, suppressed) and the detaches of
//! leave, switch and delete.

use std::time::Duration;

use crate::common::{Backend, Ev, Sub, TestDb, TestServer, chat, create, get_room, join};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    member_events_are_coalesced,
    member_events_none_suppresses_them,
    leave_switch_and_delete_detach_streams,
);

/// Member frames read until `count` members were announced (joins and leaves).
async fn member_frames(sub: &mut Sub, count: usize) -> Vec<Ev> {
    let mut frames = Vec::new();
    let mut seen = 0;
    while seen < count {
        let ev = sub.event().await;
        match &ev {
            Ev::MembersJoined(j) => seen += j.members.len(),
            Ev::MembersLeft(l) => seen += l.members.len(),
            _ => continue,
        }
        frames.push(ev);
    }
    frames
}

async fn member_events_are_coalesced(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |c| c.member_event_window_ms = 400).await;
    let mut owner = server.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut sub = Sub::open(&mut owner).await;
    sub.attached("r", None).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let mut c = server.client(&format!("u{i}")).await;
        tasks.spawn(async move {
            c.join_room(pb::JoinRoomRequest {
                room_id: "r".into(),
                display_name: format!("User {i}"),
            })
            .await
            .unwrap()
        });
    }
    while tasks.join_next().await.is_some() {}
    let frames = member_frames(&mut sub, 5).await;
    assert!(
        frames.len() < 5,
        "five joins in one window are coalesced: {frames:?}"
    );
    let Some(Ev::MembersJoined(last)) = frames.last() else {
        panic!("expected joins")
    };
    assert_eq!(last.room_id, "r");
    assert_eq!(last.member_count, 6);
    let mut names: Vec<String> = frames
        .iter()
        .flat_map(|f| match f {
            Ev::MembersJoined(j) => j.members.iter().map(|m| m.display_name.clone()).collect(),
            _ => vec![],
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        (0..5).map(|i| format!("User {i}")).collect::<Vec<_>>()
    );

    let mut u0 = server.client("u0").await;
    u0.leave_room(pb::LeaveRoomRequest {
        room_id: "r".into(),
    })
    .await
    .unwrap();
    let left = member_frames(&mut sub, 1).await;
    let Ev::MembersLeft(left) = &left[0] else {
        panic!("expected a leave")
    };
    assert_eq!(
        (left.members[0].user_id.as_str(), left.member_count),
        ("u0", 5)
    );

    server.stop().await;
    db.remove().await;
}

async fn member_events_none_suppresses_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |c| c.member_event_window_ms = 20).await;
    let mut owner = server.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                member_events: pb::MemberEvents::None as i32,
                ..Default::default()
            }),
            ..create("quiet")
        })
        .await
        .unwrap();
    let mut sub = Sub::open(&mut owner).await;
    sub.attached("quiet", None).await;
    for i in 0..3 {
        let mut c = server.client(&format!("u{i}")).await;
        c.join_room(join("quiet")).await.unwrap();
    }
    let mut u1 = server.client("u1").await;
    u1.leave_room(pb::LeaveRoomRequest {
        room_id: "quiet".into(),
    })
    .await
    .unwrap();
    assert_eq!(get_room(&mut owner, "quiet").await.unwrap().member_count, 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    owner
        .send_message(chat("quiet", "only this"))
        .await
        .unwrap();
    let Ev::Message(m) = sub.event().await else {
        panic!("no member frames before the message")
    };
    assert_eq!(m.text, "only this");

    server.stop().await;
    db.remove().await;
}

async fn leave_switch_and_delete_detach_streams(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut owner = server.client("owner").await;
    let mut bob = server.client("bob").await;
    for id in ["a", "b", "c"] {
        owner.create_room(create(id)).await.unwrap();
        bob.join_room(join(id)).await.unwrap();
    }
    let mut sub = Sub::open(&mut bob).await;
    sub.attached("a", None).await;
    sub.attached("c", None).await;

    // LeaveRoom from anywhere detaches the user's streams.
    bob.leave_room(pb::LeaveRoomRequest {
        room_id: "a".into(),
    })
    .await
    .unwrap();
    let Ev::Detached(d) = sub.event().await else {
        panic!("expected detached")
    };
    assert_eq!(
        (d.room_id.as_str(), d.reason),
        ("a", pb::DetachReason::Left as i32)
    );
    owner.send_message(chat("a", "not for bob")).await.unwrap();
    assert!(
        sub.until_pong().await.is_empty(),
        "nothing from a room left"
    );

    // SwitchRoom moves the stream: detached{SWITCHED}, then attached to the new room.
    bob.join_room(join("a")).await.unwrap();
    bob.switch_room(pb::SwitchRoomRequest {
        from_room_id: "c".into(),
        to_room_id: "b".into(),
        display_name: String::new(),
    })
    .await
    .unwrap();
    let Ev::Detached(d) = sub.event().await else {
        panic!("expected detached")
    };
    assert_eq!(
        (d.room_id.as_str(), d.reason),
        ("c", pb::DetachReason::Switched as i32)
    );
    let Ev::Attached(att) = sub.event().await else {
        panic!("expected attached")
    };
    assert_eq!(att.room.unwrap().room_id, "b");
    owner.send_message(chat("b", "to b")).await.unwrap();
    let Ev::Message(m) = sub.event().await else {
        panic!("expected the message in b")
    };
    assert_eq!(m.room_id, "b");

    // DeleteRoom: room_deleted, then detached{ROOM_DELETED}.
    owner
        .delete_room(pb::DeleteRoomRequest {
            room_id: "b".into(),
        })
        .await
        .unwrap();
    let frames = sub.until_pong().await;
    let tail: Vec<_> = frames
        .into_iter()
        .filter(|e| matches!(e, Ev::RoomDeleted(_) | Ev::Detached(_)))
        .collect();
    assert!(
        matches!(&tail[0], Ev::RoomDeleted(r) if r.room_id == "b"),
        "{tail:?}"
    );
    assert!(
        matches!(&tail[1], Ev::Detached(d) if d.room_id == "b" && d.reason == pb::DetachReason::RoomDeleted as i32),
        "{tail:?}"
    );

    // UpdateRoom reaches attached streams as room_updated.
    sub.attached("a", None).await;
    owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "a".into(),
            name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let frames = sub.until_pong().await;
    assert!(
        frames
            .iter()
            .any(|e| matches!(e, Ev::RoomUpdated(u) if u.room.as_ref().unwrap().name == "renamed")),
        "{frames:?}"
    );

    server.stop().await;
    db.remove().await;
}
