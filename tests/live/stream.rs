//! The Subscribe stream itself: identity, errors that do not end it, half-close, and
//! shutdown (also under a send storm, through the real binary and SIGTERM).

use std::time::Duration;

use tonic::Code;

use crate::common::{
    Backend, Ev, Sub, TestDb, TestServer, assert_error, chat, create, history, join,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    shutdown_ends_streams_with_unavailable,
    subscribe_without_identity_is_unauthenticated,
    a_half_closed_stream_keeps_delivering,
    stream_errors_do_not_end_the_stream,
    shutdown_during_a_send_storm_loses_no_acknowledged_message,
    sigterm_during_a_send_storm_loses_no_acknowledged_message,
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
