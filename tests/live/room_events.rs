//! Room events on streams: member events (coalesced, suppressed) and the detaches of
//! leave, switch and delete.

use crate::common::{Backend, Ev, Sub, TestApp, create, get_room, join};
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
    let app = TestApp::with(backend, |c| c.member_event_window_ms = 400).await;
    app.create_room("owner", "r").await;
    let mut sub = app.attached("owner", "r").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let mut c = app.client(&format!("u{i}")).await;
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

    app.leave("u0", "r").await;
    let left = member_frames(&mut sub, 1).await;
    let Ev::MembersLeft(left) = &left[0] else {
        panic!("expected a leave")
    };
    assert_eq!(
        (left.members[0].user_id.as_str(), left.member_count),
        ("u0", 5)
    );
}

async fn member_events_none_suppresses_them(backend: Backend) {
    let app = TestApp::with(backend, |c| c.member_event_window_ms = 20).await;
    let mut owner = app.client("owner").await;
    app.create_room_with(
        "owner",
        pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                member_events: pb::MemberEvents::None as i32,
                ..Default::default()
            }),
            ..create("quiet")
        },
    )
    .await;
    let mut sub = app.attached("owner", "quiet").await;
    for i in 0..3 {
        app.join(&format!("u{i}"), "quiet").await;
    }
    app.leave("u1", "quiet").await;
    assert_eq!(get_room(&mut owner, "quiet").await.unwrap().member_count, 3);
    // A marker: once the room announces members again, one more join. Member changes
    // go out in the order they were made, so any frame of the ones above would come
    // before the marker's (or with it).
    owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "quiet".into(),
            settings: Some(pb::RoomSettings {
                member_events: pb::MemberEvents::All as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    app.join("marker", "quiet").await;
    loop {
        match sub.event().await {
            Ev::RoomUpdated(_) => {}
            Ev::MembersJoined(j) if j.members.iter().all(|m| m.user_id == "marker") => break,
            other => panic!("no member frames before the marker's join: {other:?}"),
        }
    }
    app.send("owner", "quiet", "only this").await;
    let Ev::Message(m) = sub.event().await else {
        panic!("no member frames before the message")
    };
    assert_eq!(m.text, "only this");
}

async fn leave_switch_and_delete_detach_streams(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    let mut bob = app.client("bob").await;
    for id in ["a", "b", "c"] {
        owner.create_room(create(id)).await.unwrap();
        bob.join_room(join(id)).await.unwrap();
    }
    let mut sub = app.attached("bob", "a").await;
    sub.attached("c", None).await;

    // LeaveRoom from anywhere detaches the user's streams.
    app.leave("bob", "a").await;
    let Ev::Detached(d) = sub.event().await else {
        panic!("expected detached")
    };
    assert_eq!(
        (d.room_id.as_str(), d.reason),
        ("a", pb::DetachReason::Left as i32)
    );
    app.send("owner", "a", "not for bob").await;
    assert!(
        sub.until_pong().await.is_empty(),
        "nothing from a room left"
    );

    // SwitchRoom moves the stream: detached{SWITCHED}, then attached to the new room.
    app.join("bob", "a").await;
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
    app.send("owner", "b", "to b").await;
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
}
