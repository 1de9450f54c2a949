//! Live rooms over a real gRPC connection: the Subscribe stream, messages, history,
//! room events, presence and shutdown — on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use tonic::Code;

use chatroom::pb;
use common::{
    Backend, Ev, Sub, TestDb, TestServer, assert_bad_request, assert_error, chat, create,
    eventually, get_room, history, join,
};

on_both_stores!(
    messages_flow_live_and_into_history,
    storm_of_sends_reaches_every_stream_in_order,
    resume_with_after_seq_across_a_restart,
    idempotent_retry_is_stored_and_delivered_once,
    barrage_is_delivered_but_not_stored,
    command_reaches_only_its_targets,
    member_events_are_coalesced,
    member_events_none_suppresses_them,
    leave_switch_and_delete_detach_streams,
    stream_errors_do_not_end_the_stream,
    list_messages_pages_both_ways,
    send_message_errors,
    online_follows_attached_streams,
    presence_timeout_removes_absent_members,
    destroy_when_empty_with_and_without_rejoin,
    timers_survive_a_restart,
    shutdown_during_a_send_storm_loses_no_acknowledged_message,
    sigterm_during_a_send_storm_loses_no_acknowledged_message,
    a_half_closed_stream_keeps_delivering,
    presence_timeout_set_while_attached_applies,
    shutdown_ends_streams_with_unavailable,
    subscribe_without_identity_is_unauthenticated,
);

/// A server shutting down ends each stream with UNAVAILABLE (in its trailers), after
/// the frames already produced: clients reconnect and resume.
async fn shutdown_ends_streams_with_unavailable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;
    alice.send_message(chat("r", "before")).await.unwrap();

    let stopping = tokio::spawn(server.stop());
    let mut texts = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.responses_result()).await {
            Ok(Ok(Some(frame))) => {
                if let Some(Ev::Message(m)) = frame.event {
                    texts.push(m.text);
                }
            }
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stream did not end at shutdown"),
        }
    };
    assert_eq!(texts, ["before"]);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{status:?}");
    stopping.await.unwrap();
    db.remove().await;
}

/// Subscribe checks the caller like every other call.
async fn subscribe_without_identity_is_unauthenticated(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut anon = server.anonymous().await;
    let frames = tokio_stream::iter(vec![pb::SubscribeRequest {
        request_id: "p".into(),
        frame: Some(pb::subscribe_request::Frame::Ping(pb::Ping {})),
    }]);
    let status = match anon.subscribe(frames).await {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status,
            Ok(frame) => panic!("an anonymous stream answered {frame:?}"),
        },
    };
    assert_error(&status, Code::Unauthenticated, "UNAUTHENTICATED");

    server.stop().await;
    db.remove().await;
}

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

async fn a_half_closed_stream_keeps_delivering(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;
    sub.close_sending();
    // Listening only: messages still arrive after the client closed its side...
    alice.send_message(chat("r", "still here")).await.unwrap();
    let Ev::Message(m) = sub.event().await else {
        panic!("expected the message")
    };
    assert_eq!(m.text, "still here");
    // ...until no room is left: then the stream ends cleanly.
    alice
        .delete_room(pb::DeleteRoomRequest {
            room_id: "r".into(),
        })
        .await
        .unwrap();
    assert!(matches!(sub.event().await, Ev::RoomDeleted(_)));
    assert!(matches!(sub.event().await, Ev::Detached(_)));
    assert_eq!(sub.end().await.code(), Code::Ok);

    server.stop().await;
    db.remove().await;
}

fn seq_of(ev: Ev) -> u64 {
    match ev {
        Ev::SendAck(ack) => ack.message.unwrap().seq,
        other => panic!("expected a send ack, got {other:?}"),
    }
}

async fn messages_flow_live_and_into_history(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice.create_room(create("r")).await.unwrap();
    bob.join_room(pb::JoinRoomRequest {
        room_id: "r".into(),
        display_name: "Bob".into(),
    })
    .await
    .unwrap();

    let mut bob_stream = Sub::open(&mut bob).await;
    let room = bob_stream.attached("r", None).await;
    assert_eq!(room.last_seq, 0);
    assert_eq!(room.online_count, 1);

    let sent = alice
        .send_message(chat("r", "hello"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(sent.seq, 1);
    assert_eq!(sent.sender_id, "alice");
    assert_eq!(sent.kind, pb::MessageKind::Chat as i32);
    assert!(uuid::Uuid::parse_str(&sent.message_id).is_ok());
    let Ev::Message(received) = bob_stream.event().await else {
        panic!("expected the message")
    };
    assert_eq!(received, sent);

    // Sending over the stream: the ack answers the frame's request id.
    let ack = bob_stream
        .send(pb::SendMessageRequest {
            payload: vec![1, 2, 3],
            content_type: "application/octet-stream".into(),
            ..chat("r", "")
        })
        .await;
    let Ev::SendAck(ack) = ack else {
        panic!("expected an ack, got {ack:?}")
    };
    let mine = ack.message.unwrap();
    assert_eq!((mine.seq, mine.sender_name.as_str()), (2, "Bob"));
    assert_eq!(mine.payload, vec![1, 2, 3]);
    // The sender's own stream receives it too.
    let Ev::Message(echo) = bob_stream.event().await else {
        panic!("expected the message")
    };
    assert_eq!(echo.seq, 2);

    let stored = history(&mut alice, "r").await;
    assert_eq!(stored, vec![sent, mine]);
    assert_eq!(get_room(&mut alice, "r").await.unwrap().last_seq, 2);

    server.stop().await;
    db.remove().await;
}

async fn storm_of_sends_reaches_every_stream_in_order(backend: Backend) {
    const PUBLISHERS: usize = 20;
    const EACH: usize = 500;
    const TOTAL: u64 = (PUBLISHERS * EACH) as u64;
    let db = TestDb::new(backend).await;
    // A ring far smaller than the storm, so that the slow reader really falls off it
    // and is caught up from the store.
    let server = TestServer::start(&db, |c| c.room_buffer = 64).await;
    let mut owner = server.client("owner").await;
    owner.create_room(create("storm")).await.unwrap();

    let mut readers = Vec::new();
    for i in 0..5 {
        // The last one (the slow reader) with a small HTTP/2 window: it holds back the
        // server's side of its stream, not just its own buffer.
        let mut client = if i == 4 {
            server.small_window_client(&format!("reader{i}"))
        } else {
            server.client(&format!("reader{i}")).await
        };
        client.join_room(join("storm")).await.unwrap();
        let mut sub = Sub::open(&mut client).await;
        sub.attached("storm", None).await;
        readers.push(sub);
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut client = server.client(&format!("pub{p:02}")).await;
        client.join_room(join("storm")).await.unwrap();
        publishers.push(Sub::open(&mut client).await);
    }

    // Four readers read all along; the fifth stops reading until the storm is over,
    // so it falls far behind and must be caught up from the store.
    let slow = readers.pop().unwrap();
    let mut reading = tokio::task::JoinSet::new();
    for mut reader in readers {
        reading.spawn(async move { reader.chat_seqs_until(TOTAL).await });
    }
    let mut sending = tokio::task::JoinSet::new();
    for (p, mut publisher) in publishers.into_iter().enumerate() {
        sending.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let id = publisher
                    .request(pb::subscribe_request::Frame::Send(chat(
                        "storm",
                        &format!("{p}:{i}"),
                    )))
                    .await;
                ids.push(id);
            }
            let mut seqs = Vec::new();
            for id in ids {
                seqs.push(seq_of(publisher.reply(&id).await));
            }
            seqs
        });
    }
    let mut acked = Vec::new();
    while let Some(seqs) = sending.join_next().await {
        let seqs = seqs.unwrap();
        // One publisher's messages are sequenced in the order it sent them.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        acked.extend(seqs);
    }
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=TOTAL).collect::<Vec<_>>(),
        "seqs 1..N, no gap, no repeat"
    );

    let expected: Vec<u64> = (1..=TOTAL).collect();
    while let Some(seqs) = reading.join_next().await {
        assert_eq!(seqs.unwrap(), expected);
    }
    let mut slow = slow;
    assert_eq!(slow.chat_seqs_until(TOTAL).await, expected);

    let stored: Vec<u64> = history(&mut owner, "storm")
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(stored, expected);

    server.stop().await;
    db.remove().await;
}

async fn resume_with_after_seq_across_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    for i in 1..=10 {
        alice
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    let mut sub = Sub::open(&mut alice).await;
    let room = sub.attached("r", Some(4)).await;
    assert_eq!(room.last_seq, 10);
    alice.send_message(chat("r", "m11")).await.unwrap();
    assert_eq!(sub.chat_seqs_until(11).await, (5..=11).collect::<Vec<_>>());
    server.stop().await;

    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", Some(8)).await;
    alice.send_message(chat("r", "m12")).await.unwrap();
    assert_eq!(sub.chat_seqs_until(12).await, vec![9, 10, 11, 12]);
    // after_seq 0 reads from the start; beyond the end it is live only.
    let mut from_start = Sub::open(&mut alice).await;
    from_start.attached("r", Some(0)).await;
    assert_eq!(
        from_start.chat_seqs_until(12).await,
        (1..=12).collect::<Vec<_>>()
    );
    let mut beyond = Sub::open(&mut alice).await;
    beyond.attached("r", Some(99)).await;
    alice.send_message(chat("r", "m13")).await.unwrap();
    assert_eq!(beyond.chat_seqs_until(13).await, vec![13]);

    server.stop().await;
    db.remove().await;
}

async fn idempotent_retry_is_stored_and_delivered_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice.create_room(create("r")).await.unwrap();
    bob.join_room(join("r")).await.unwrap();
    let mut watcher = Sub::open(&mut bob).await;
    watcher.attached("r", None).await;

    let keyed = pb::SendMessageRequest {
        client_msg_id: "k-1".into(),
        ..chat("r", "once")
    };
    let first = alice
        .send_message(keyed.clone())
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let again = alice
        .send_message(keyed.clone())
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first.client_msg_id, "k-1");
    let mut stream = Sub::open(&mut alice).await;
    let Ev::SendAck(ack) = stream.send(keyed.clone()).await else {
        panic!("expected an ack")
    };
    assert_eq!(ack.message.unwrap(), first);
    // Many concurrent retries still store one.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut c = server.client("alice").await;
        let k = pb::SendMessageRequest {
            client_msg_id: "k-2".into(),
            ..chat("r", "burst")
        };
        tasks.spawn(async move {
            c.send_message(k)
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap()
        });
    }
    let mut burst = Vec::new();
    while let Some(m) = tasks.join_next().await {
        burst.push(m.unwrap());
    }
    assert!(burst.iter().all(|m| *m == burst[0]));
    assert_eq!(burst[0].seq, 2);
    // The same key from another sender is another message.
    let bobs = bob
        .send_message(keyed)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(bobs.seq, 3);

    assert_eq!(
        watcher.chat_seqs_until(3).await,
        vec![1, 2, 3],
        "each delivered once"
    );
    assert_eq!(history(&mut alice, "r").await.len(), 3);

    server.stop().await;
    db.remove().await;
}

async fn barrage_is_delivered_but_not_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;

    let barrage = pb::SendMessageRequest {
        kind: pb::MessageKind::Barrage as i32,
        client_msg_id: "b1".into(),
        ..chat("r", "wow")
    };
    let sent = alice
        .send_message(barrage)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(sent.seq, 0);
    assert_eq!(sent.kind, pb::MessageKind::Barrage as i32);
    let Ev::Message(got) = sub.event().await else {
        panic!("expected the barrage")
    };
    assert_eq!(got, sent);
    assert!(history(&mut alice, "r").await.is_empty());
    assert_eq!(get_room(&mut alice, "r").await.unwrap().last_seq, 0);
    // The next CHAT still gets seq 1.
    let chat1 = alice
        .send_message(chat("r", "first"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(chat1.seq, 1);

    server.stop().await;
    db.remove().await;
}

async fn command_reaches_only_its_targets(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    alice.create_room(create("r")).await.unwrap();
    bob.join_room(join("r")).await.unwrap();
    carol.join_room(join("r")).await.unwrap();
    let mut bob_sub = Sub::open(&mut bob).await;
    bob_sub.attached("r", None).await;
    let mut carol_sub = Sub::open(&mut carol).await;
    carol_sub.attached("r", None).await;

    let command = pb::SendMessageRequest {
        kind: pb::MessageKind::Command as i32,
        to_user_ids: vec!["bob".into()],
        content_type: "application/json".into(),
        ..chat("r", r#"{"op":"mute"}"#)
    };
    let sent = alice
        .send_message(command)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(
        (sent.seq, sent.to_user_ids.clone()),
        (0, vec!["bob".to_string()])
    );
    let Ev::Message(got) = bob_sub.event().await else {
        panic!("expected the command")
    };
    assert_eq!(got, sent);
    // Carol's next frame is the CHAT that followed, not the command.
    alice.send_message(chat("r", "after")).await.unwrap();
    let Ev::Message(next) = carol_sub.event().await else {
        panic!("expected a message")
    };
    assert_eq!((next.seq, next.text.as_str()), (1, "after"));
    // A command with no targets goes to every member.
    let broadcast = pb::SendMessageRequest {
        kind: pb::MessageKind::Command as i32,
        ..chat("r", "all")
    };
    alice.send_message(broadcast).await.unwrap();
    let frames = carol_sub.until_pong().await;
    assert!(
        frames
            .iter()
            .any(|e| matches!(e, Ev::Message(m) if m.text == "all"))
    );
    assert!(
        history(&mut alice, "r")
            .await
            .iter()
            .all(|m| m.kind == pb::MessageKind::Chat as i32)
    );

    server.stop().await;
    db.remove().await;
}

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

async fn stream_errors_do_not_end_the_stream(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |c| c.max_rooms_per_stream = 2).await;
    let mut owner = server.client("owner").await;
    let mut stranger = server.client("stranger").await;
    for id in ["a", "b", "c"] {
        owner.create_room(create(id)).await.unwrap();
    }
    let mut sub = Sub::open(&mut stranger).await;
    let expect_error = |ev: Ev, code: Code, reason: &str| match ev {
        Ev::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (code as i32, reason), "{e:?}");
        }
        other => panic!("expected an error, got {other:?}"),
    };
    expect_error(
        sub.attach("a", None).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    expect_error(
        sub.attach("zzz", None).await,
        Code::NotFound,
        "ROOM_NOT_FOUND",
    );
    expect_error(
        sub.attach("bad id", None).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect_error(
        sub.send(chat("a", "hi")).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );

    let mut owner_sub = Sub::open(&mut owner).await;
    owner_sub.attached("a", None).await;
    owner_sub.attached("b", None).await;
    expect_error(
        owner_sub.attach("c", None).await,
        Code::ResourceExhausted,
        "TOO_MANY_ROOMS",
    );
    expect_error(
        owner_sub.attach("a", None).await,
        Code::FailedPrecondition,
        "ALREADY_ATTACHED",
    );
    expect_error(
        owner_sub.send(chat("a", "")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let detach = |room: &str| {
        pb::subscribe_request::Frame::Detach(pb::DetachRoom {
            room_id: room.into(),
        })
    };
    let id = owner_sub.request(detach("c")).await;
    expect_error(
        owner_sub.reply(&id).await,
        Code::FailedPrecondition,
        "NOT_ATTACHED",
    );
    let id = owner_sub.request(detach("b")).await;
    match owner_sub.reply(&id).await {
        Ev::Detached(d) => assert_eq!(d.reason, pb::DetachReason::Requested as i32),
        other => panic!("expected detached, got {other:?}"),
    }
    owner_sub.attached("c", None).await;
    // An empty frame is an error too; the stream still answers pings after all this.
    owner_sub
        .frames_raw(pb::SubscribeRequest {
            request_id: "empty".into(),
            frame: None,
        })
        .await;
    expect_error(
        owner_sub.reply("empty").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert!(owner_sub.until_pong().await.is_empty());
    assert!(sub.until_pong().await.is_empty());

    server.stop().await;
    db.remove().await;
}

async fn list_messages_pages_both_ways(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |c| c.admin_users = vec!["root".into()]).await;
    let mut alice = server.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    for i in 1..=7 {
        alice
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    let list = |before: Option<u64>, after: Option<u64>, limit: u32| pb::ListMessagesRequest {
        room_id: "r".into(),
        before_seq: before,
        after_seq: after,
        limit,
    };
    let seqs = |r: pb::ListMessagesResponse| {
        (
            r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            r.has_more,
        )
    };
    let page = alice
        .list_messages(list(None, None, 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(page), (vec![7, 6, 5], true));
    let page = alice
        .list_messages(list(Some(5), None, 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(page), (vec![4, 3, 2], true));
    let page = alice
        .list_messages(list(Some(2), None, 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(page), (vec![1], false));
    let page = alice
        .list_messages(list(None, Some(0), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(page), (vec![1, 2, 3], true));
    let page = alice
        .list_messages(list(None, Some(6), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(page), (vec![7], false));
    let page = alice
        .list_messages(list(None, None, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(page).0.len(), 7, "default limit 50");
    let mut root = server.client("root").await;
    assert_eq!(history(&mut root, "r").await.len(), 7, "admins may read");

    let err = alice
        .list_messages(list(Some(3), Some(1), 3))
        .await
        .unwrap_err();
    assert_bad_request(&err, "before_seq");
    let mut stranger = server.client("stranger").await;
    let err = stranger
        .list_messages(list(None, None, 3))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    let err = stranger
        .list_messages(pb::ListMessagesRequest {
            room_id: "none".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");

    server.stop().await;
    db.remove().await;
}

async fn send_message_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |c| c.max_text_bytes = 10).await;
    let mut alice = server.client("alice").await;
    let mut stranger = server.client("stranger").await;
    alice.create_room(create("r")).await.unwrap();

    let err = stranger.send_message(chat("r", "hi")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    let err = alice.send_message(chat("nope", "hi")).await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    let err = alice.send_message(chat("r", "")).await.unwrap_err();
    assert_bad_request(&err, "text");
    let err = alice
        .send_message(chat("r", "eleven byte"))
        .await
        .unwrap_err();
    assert_bad_request(&err, "text");
    let err = alice
        .send_message(pb::SendMessageRequest {
            to_user_ids: vec!["bob".into()],
            ..chat("r", "hi")
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "to_user_ids");
    let err = alice
        .send_message(pb::SendMessageRequest {
            kind: 42,
            ..chat("r", "hi")
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "kind");
    assert!(
        history(&mut alice, "r").await.is_empty(),
        "nothing was stored"
    );
    assert_eq!(get_room(&mut alice, "r").await.unwrap().last_seq, 0);

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

/// Eight members sending as fast as they can until the server goes away: four over
/// unary SendMessage, four over Subscribe streams. Each task returns the seqs that
/// were acknowledged to it.
async fn start_storm(server: &TestServer, room: &str) -> tokio::task::JoinSet<Vec<u64>> {
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..8 {
        let mut client = server.client(&format!("p{p}")).await;
        client.join_room(join(room)).await.unwrap();
        let room = room.to_string();
        if p % 2 == 0 {
            // Unary senders: acknowledged = an OK answer.
            tasks.spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    match client.send_message(chat(&room, &format!("{p}:{i}"))).await {
                        Ok(r) => acked.push(r.into_inner().message.unwrap().seq),
                        Err(_) => break,
                    }
                }
                acked
            });
        } else {
            // Stream senders: acknowledged = a send_ack frame.
            let mut sub = Sub::open(&mut client).await;
            tasks.spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    let send = pb::subscribe_request::Frame::Send(chat(&room, &format!("{p}:{i}")));
                    if sub.try_request(send).await.is_none() {
                        break;
                    }
                    match sub.responses_message().await {
                        Some(Ev::SendAck(ack)) => acked.push(ack.message.unwrap().seq),
                        Some(_) => {}
                        None => break,
                    }
                }
                acked
            });
        }
    }
    tasks
}

/// Collects what a storm acknowledged and checks, on a fresh server over the same
/// database, that the history is 1..=N without gaps and holds every one of them.
async fn assert_acknowledged_are_stored(
    db: &TestDb,
    room: &str,
    mut storm: tokio::task::JoinSet<Vec<u64>>,
) {
    let mut acked = Vec::new();
    while let Some(seqs) = storm.join_next().await {
        acked.extend(seqs.unwrap());
    }
    assert!(
        acked.len() > 50,
        "the storm was running ({} acked)",
        acked.len()
    );

    let server = TestServer::start(db, |_| {}).await;
    let mut owner = server.client("owner").await;
    let stored: Vec<u64> = history(&mut owner, room)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    let last = *stored.last().unwrap();
    assert_eq!(stored, (1..=last).collect::<Vec<_>>(), "no gaps");
    let stored: std::collections::HashSet<u64> = stored.into_iter().collect();
    assert!(
        acked.iter().all(|s| stored.contains(s)),
        "every acknowledged message is stored"
    );
    server.stop().await;
}

async fn shutdown_during_a_send_storm_loses_no_acknowledged_message(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut owner = server.client("owner").await;
    owner.create_room(create("s")).await.unwrap();
    let storm = start_storm(&server, "s").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.stop().await;
    assert_acknowledged_are_stored(&db, "s", storm).await;
    db.remove().await;
}

/// The same through the real binary and a real SIGTERM.
async fn sigterm_during_a_send_storm_loses_no_acknowledged_message(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args([
            "--listen",
            &addr.to_string(),
            "--database-url",
            &db.url,
            "--log",
            "warn",
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("start the chatroom binary");
    let server = TestServer::external(addr).await;
    let mut owner = server.client("owner").await;
    owner.create_room(create("s")).await.unwrap();
    let storm = start_storm(&server, "s").await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the server stops after SIGTERM")
        .unwrap();
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    assert_acknowledged_are_stored(&db, "s", storm).await;
    db.remove().await;
}
