//! Listen: the server-streaming Subscribe for clients that cannot stream requests.
//! Its rooms are attached as attach frames would be — resume points, errors per room
//! — and it ends once no room is left attached.

use tonic::Code;

use crate::common::{Backend, Client, TestApp, assert_bad_request, assert_error, chat, leave};
use crate::on_both_stores;
use chatroom::pb;
use pb::subscribe_response::Event;

on_both_stores!(
    listen_attaches_each_room_from_its_own_resume_point,
    listen_without_rooms_or_with_too_many_is_refused,
);

async fn listen(
    client: &mut Client,
    rooms: &[(&str, Option<u64>)],
) -> tonic::Streaming<pb::SubscribeResponse> {
    let request = pb::ListenRequest {
        rooms: rooms
            .iter()
            .map(|(room_id, after_seq)| pb::AttachRoom {
                room_id: room_id.to_string(),
                after_seq: *after_seq,
            })
            .collect(),
    };
    client.listen(request).await.expect("listen").into_inner()
}

async fn next(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::SubscribeResponse {
    tokio::time::timeout(crate::common::WAIT, stream.message())
        .await
        .expect("an event in time")
        .expect("no error")
        .expect("the stream goes on")
}

async fn listen_attaches_each_room_from_its_own_resume_point(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut bob = app.client("bob").await;
    for room in ["a", "b", "private"] {
        app.create_room("alice", room).await;
    }
    app.join("bob", "a").await;
    app.join("bob", "b").await;
    for i in 1..=3 {
        app.send("alice", "a", &format!("a{i}")).await;
        app.send("alice", "b", &format!("b{i}")).await;
    }
    // a from seq 1 on, b live only, and a room bob is not in.
    let mut stream = listen(&mut bob, &[("a", Some(1)), ("b", None), ("private", None)]).await;
    let mut answers = Vec::new();
    let mut texts = Vec::new();
    while answers.len() < 3 || texts.len() < 2 {
        let response = next(&mut stream).await;
        match response.event {
            Some(Event::Message(m)) => texts.push(m.text),
            Some(event) => answers.push((response.request_id, event)),
            None => panic!("an empty event"),
        }
    }
    answers.sort_by(|x, y| x.0.cmp(&y.0));
    assert!(
        matches!(&answers[0], (id, Event::Attached(_)) if id == "0"),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[1], (id, Event::Attached(_)) if id == "1"),
        "{answers:?}"
    );
    match &answers[2] {
        (id, Event::Error(e)) if id == "2" => {
            assert_eq!(
                (e.code, e.reason.as_str()),
                (Code::PermissionDenied as i32, "NOT_A_MEMBER")
            );
        }
        other => panic!("expected NOT_A_MEMBER for request 2, got {other:?}"),
    }
    assert_eq!(texts, ["a2", "a3"]);
    // Live in both rooms.
    app.send("alice", "b", "b4").await;
    app.send("alice", "a", "a4").await;
    let mut live = Vec::new();
    while live.len() < 2 {
        if let Some(Event::Message(m)) = next(&mut stream).await.event {
            live.push(m.text);
        }
    }
    assert_eq!(live, ["b4", "a4"]);
    // Leaving one room detaches it; leaving the last ends the stream with OK.
    bob.leave_room(leave("a")).await.unwrap();
    bob.leave_room(leave("b")).await.unwrap();
    let mut detached = 0;
    loop {
        match tokio::time::timeout(crate::common::WAIT, stream.message())
            .await
            .expect("in time")
        {
            Ok(Some(response)) => {
                if let Some(Event::Detached(_)) = response.event {
                    detached += 1;
                }
            }
            Ok(None) => break,
            Err(status) => panic!("the stream ended with {status:?}"),
        }
    }
    assert_eq!(detached, 2);
    // Sends go through SendMessage meanwhile, as for a browser.
    let mut alice = app.client("alice").await;
    alice.send_message(chat("a", "after")).await.unwrap();
    app.stop().await;
}

async fn listen_without_rooms_or_with_too_many_is_refused(backend: Backend) {
    let app = TestApp::with(backend, |c| {
        c.max_rooms_per_stream = 2;
        // One stream per user: a refused Listen that kept its slot would show.
        c.max_streams_per_user = 1;
    })
    .await;
    let mut bob = app.client("bob").await;
    let status = bob
        .listen(pb::ListenRequest { rooms: vec![] })
        .await
        .unwrap_err();
    assert_bad_request(&status, "rooms");
    // More rooms than a stream may attach: refused whole, before any attach.
    let rooms = (0..1000)
        .map(|i| pb::AttachRoom {
            room_id: format!("r{i}"),
            after_seq: None,
        })
        .collect();
    let status = bob.listen(pb::ListenRequest { rooms }).await.unwrap_err();
    assert_error(&status, Code::ResourceExhausted, "TOO_MANY_ROOMS");
    // The refused calls held no stream slot: a proper Listen still opens.
    app.create_room("bob", "mine").await;
    let mut stream = listen(&mut bob, &[("mine", None)]).await;
    assert!(matches!(
        next(&mut stream).await.event,
        Some(Event::Attached(_))
    ));
    app.stop().await;
}
