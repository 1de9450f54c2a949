//! Messages: live delivery and history, order under a storm, resuming, idempotency,
//! the kinds, paging, and send errors.

use tonic::Code;

use crate::common::{
    Backend, Ev, Sub, TestApp, assert_bad_request, assert_error, chat, get_room, history, join,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    messages_flow_live_and_into_history,
    storm_of_sends_reaches_every_stream_in_order,
    resume_with_after_seq_across_a_restart,
    idempotent_retry_is_stored_and_delivered_once,
    barrage_is_delivered_but_not_stored,
    command_reaches_only_its_targets,
    list_messages_pages_both_ways,
    send_message_errors,
);

fn seq_of(ev: Ev) -> u64 {
    match ev {
        Ev::SendAck(ack) => ack.message.unwrap().seq,
        other => panic!("expected a send ack, got {other:?}"),
    }
}

async fn messages_flow_live_and_into_history(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    app.create_room("alice", "r").await;
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
}

async fn storm_of_sends_reaches_every_stream_in_order(backend: Backend) {
    const PUBLISHERS: usize = 20;
    const EACH: usize = 500;
    const TOTAL: u64 = (PUBLISHERS * EACH) as u64;
    // A ring far smaller than the storm, so that the slow reader really falls off it
    // and is caught up from the store.
    let app = TestApp::with(backend, |c| c.room_buffer = 64).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "storm").await;

    let mut readers = Vec::new();
    for i in 0..5 {
        // The last one (the slow reader) with a small HTTP/2 window: it holds back the
        // server's side of its stream, not just its own buffer.
        let mut client = if i == 4 {
            app.small_window_client(&format!("reader{i}"))
        } else {
            app.client(&format!("reader{i}")).await
        };
        client.join_room(join("storm")).await.unwrap();
        let mut sub = Sub::open(&mut client).await;
        sub.attached("storm", None).await;
        readers.push(sub);
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let publisher = format!("pub{p:02}");
        app.join(&publisher, "storm").await;
        publishers.push(app.subscribe(&publisher).await);
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
}

async fn resume_with_after_seq_across_a_restart(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    for i in 1..=10 {
        alice
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    let mut sub = Sub::open(&mut alice).await;
    let room = sub.attached("r", Some(4)).await;
    assert_eq!(room.last_seq, 10);
    app.send("alice", "r", "m11").await;
    assert_eq!(sub.chat_seqs_until(11).await, (5..=11).collect::<Vec<_>>());
    app.restart().await;
    let mut alice = app.client("alice").await;
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", Some(8)).await;
    app.send("alice", "r", "m12").await;
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
    app.send("alice", "r", "m13").await;
    assert_eq!(beyond.chat_seqs_until(13).await, vec![13]);
}

async fn idempotent_retry_is_stored_and_delivered_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    app.create_room("alice", "r").await;
    app.join("bob", "r").await;
    let mut watcher = app.attached("bob", "r").await;

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
        let mut c = app.client("alice").await;
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
}

async fn barrage_is_delivered_but_not_stored(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    let mut sub = app.attached("alice", "r").await;

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
}

async fn command_reaches_only_its_targets(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    app.join("bob", "r").await;
    app.join("carol", "r").await;
    let mut bob_sub = app.attached("bob", "r").await;
    let mut carol_sub = app.attached("carol", "r").await;

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
    app.send("alice", "r", "after").await;
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
}

async fn list_messages_pages_both_ways(backend: Backend) {
    let app = TestApp::with(backend, |c| c.admin_users = vec!["root".into()]).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
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
    let mut root = app.client("root").await;
    assert_eq!(history(&mut root, "r").await.len(), 7, "admins may read");

    let err = alice
        .list_messages(list(Some(3), Some(1), 3))
        .await
        .unwrap_err();
    assert_bad_request(&err, "before_seq");
    let mut stranger = app.client("stranger").await;
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
}

async fn send_message_errors(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_text_bytes = 10).await;
    let mut alice = app.client("alice").await;
    let mut stranger = app.client("stranger").await;
    app.create_room("alice", "r").await;

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
}
