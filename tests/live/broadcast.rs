//! BroadcastMessage: one message into many rooms by an admin who is a member of none
//! — each room its own next seq, seen live and in history; refusals per room, and
//! of the call as a whole for bad input or a caller who is no admin.

use tonic::Code;

use crate::common::{Backend, Ev, TestApp, assert_bad_request, assert_error, chat, history};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(broadcast_gives_each_room_its_own_next_seq,);

fn broadcast(rooms: &[String], kind: pb::MessageKind, text: &str) -> pb::BroadcastMessageRequest {
    pb::BroadcastMessageRequest {
        room_ids: rooms.to_vec(),
        kind: kind as i32,
        text: text.into(),
        ..Default::default()
    }
}

async fn broadcast_gives_each_room_its_own_next_seq(backend: Backend) {
    let app = TestApp::with(backend, |c| {
        c.admin_users = vec!["backend".into()];
        c.max_rooms_per_user = 0;
    })
    .await;
    let rooms: Vec<String> = (0..500).map(|i| format!("room-{i:03}")).collect();
    let mut creators = tokio::task::JoinSet::new();
    let creator = app.client("owner").await;
    for chunk in rooms.chunks(50) {
        let (chunk, mut owner) = (chunk.to_vec(), creator.clone());
        creators.spawn(async move {
            for room in chunk {
                owner
                    .create_room(pb::CreateRoomRequest {
                        room_id: room,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = creators.join_next().await {
        done.unwrap();
    }
    // Some rooms have history already: their next seq is further on.
    let mut owner = app.client("owner").await;
    for (i, room) in rooms.iter().take(10).enumerate() {
        for n in 0..i {
            owner
                .send_message(chat(room, &format!("m{n}")))
                .await
                .unwrap();
        }
    }
    let mut first = app.attached("owner", "room-000").await;
    let mut last = app.attached("owner", "room-499").await;

    let mut backend = app.client("backend").await;
    let mut asked = rooms.clone();
    asked.insert(250, "no-such-room".into());
    let results = backend
        .broadcast_message(broadcast(
            &asked,
            pb::MessageKind::Chat,
            "maintenance at noon",
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    let answered: Vec<&str> = results.iter().map(|r| r.room_id.as_str()).collect();
    assert_eq!(answered, asked, "one result per room, in request order");
    for (i, result) in results.iter().enumerate() {
        if i == 250 {
            let error = result.error.as_ref().expect("the missing room refuses");
            assert_eq!(
                (error.code, error.reason.as_str()),
                (Code::NotFound as i32, "ROOM_NOT_FOUND")
            );
            assert!(result.message.is_none());
            continue;
        }
        let message = result.message.as_ref().expect("sent");
        let had = if i < 10 { i as u64 } else { 0 };
        assert_eq!(message.seq, had + 1, "{}", result.room_id);
        assert_eq!(
            (message.sender_id.as_str(), message.text.as_str()),
            ("backend", "maintenance at noon")
        );
    }
    // Live in the rooms, and stored once each.
    for stream in [&mut first, &mut last] {
        loop {
            if let Ev::Message(m) = stream.event().await {
                assert_eq!((m.seq, m.sender_id.as_str()), (1, "backend"));
                break;
            }
        }
    }
    for room in ["room-000", "room-005", "room-499"] {
        let from_backend = history(&mut owner, room)
            .await
            .into_iter()
            .filter(|m| m.sender_id == "backend")
            .count();
        assert_eq!(from_backend, 1, "{room}");
    }

    // Unstored kinds are published to each room.
    let two = vec!["room-000".to_string(), "room-499".to_string()];
    let results = backend
        .broadcast_message(broadcast(&two, pb::MessageKind::Barrage, "wave"))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results.iter().all(|r| r.message.as_ref().unwrap().seq == 0));
    loop {
        if let Ev::Message(m) = last.event().await {
            assert_eq!((m.seq, m.text.as_str()), (0, "wave"));
            break;
        }
    }

    // Refused as a whole: not an admin, bad input.
    let err = owner
        .broadcast_message(broadcast(&two, pb::MessageKind::Chat, "x"))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_AN_ADMIN");
    for (rooms, field) in [
        (Vec::new(), "room_ids"),
        ((0..1001).map(|i| format!("r{i}")).collect(), "room_ids"),
        (vec!["room-000".into(), "room-000".into()], "room_ids"),
        (vec!["bad id".into()], "room_ids"),
    ] {
        let err = backend
            .broadcast_message(broadcast(&rooms, pb::MessageKind::Chat, "x"))
            .await
            .unwrap_err();
        assert_bad_request(&err, field);
    }
    let err = backend
        .broadcast_message(broadcast(&two, pb::MessageKind::Recall, "x"))
        .await
        .unwrap_err();
    assert_bad_request(&err, "kind");
    let err = backend
        .broadcast_message(broadcast(&two, pb::MessageKind::Chat, ""))
        .await
        .unwrap_err();
    assert_bad_request(&err, "text");
    assert_eq!(
        history(&mut owner, "room-000").await.len(),
        1,
        "nothing more stored"
    );
}
