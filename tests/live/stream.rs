//! The Subscribe stream itself: identity, errors that do not end it, half-close, and
//! shutdown (also under a send storm, through the real binary and SIGTERM).

use std::time::Duration;

use tonic::Code;

use crate::common::{
    Backend, Ev, ServerProcess, Sub, TestApp, TestDb, TestServer, WAIT, assert_error, chat, create,
    get_room, history, join,
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
    let mut app = TestApp::start(backend).await;
    app.create_room("alice", "r").await;
    let mut sub = app.attached("alice", "r").await;
    app.send("alice", "r", "before").await;

    let mut texts = Vec::new();
    let ending = async {
        loop {
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
        }
    };
    // The stop runs while the stream is read; it returns once the server is done.
    let ((), status) = tokio::join!(app.stop_server(), ending);
    assert_eq!(texts, ["before"]);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{status:?}");
}

/// Subscribe checks the caller like every other call.
async fn subscribe_without_identity_is_unauthenticated(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut anon = app.anonymous().await;
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
}

async fn a_half_closed_stream_keeps_delivering(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    let mut sub = app.attached("alice", "r").await;
    sub.close_sending();
    // Listening only: messages still arrive after the client closed its side...
    app.send("alice", "r", "still here").await;
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
}

async fn stream_errors_do_not_end_the_stream(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_rooms_per_stream = 2).await;
    let mut owner = app.client("owner").await;
    let mut stranger = app.client("stranger").await;
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

    let mut owner_sub = app.attached("owner", "a").await;
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
}

/// Returns once the storm in `room` has stored 100 messages (the storm ends with the
/// server: no fixed wait, which a slow machine could outlast before the first send).
async fn under_way(server: &TestServer, room: &str) {
    let mut client = server.client("owner").await;
    let started = std::time::Instant::now();
    while get_room(&mut client, room).await.unwrap().last_seq < 100 {
        assert!(started.elapsed() < WAIT, "the storm did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// Waits until the storm's senders stop (the server went away); the seqs they were
/// acknowledged.
async fn acknowledged(mut storm: tokio::task::JoinSet<Vec<u64>>) -> Vec<u64> {
    let mut acked = Vec::new();
    while let Some(seqs) = storm.join_next().await {
        acked.extend(seqs.unwrap());
    }
    assert!(
        acked.len() > 50,
        "the storm was running ({} acked)",
        acked.len()
    );
    acked
}

/// Checks, on a fresh server over the storm's database, that the history is 1..=N
/// without gaps and holds every acknowledged message.
async fn assert_stored(app: &TestApp, room: &str, acked: &[u64]) {
    let mut owner = app.client("owner").await;
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
}

async fn shutdown_during_a_send_storm_loses_no_acknowledged_message(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    app.create_room("owner", "s").await;
    let storm = start_storm(&app, "s").await;
    // The shutdown falls in the middle of the storm.
    under_way(app.server(), "s").await;
    app.stop_server().await;
    let acked = acknowledged(storm).await;
    app.start_again().await;
    assert_stored(&app, "s", &acked).await;
}

/// The same through the real binary and a real SIGTERM.
async fn sigterm_during_a_send_storm_loses_no_acknowledged_message(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut process = ServerProcess::start(&db).await;
    process.server.create_room("owner", "s").await;
    let storm = start_storm(&process.server, "s").await;
    // As above: the SIGTERM falls in the middle of the storm.
    under_way(&process.server, "s").await;

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &process.child.id().unwrap().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .expect("the server stops after SIGTERM")
        .unwrap();
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    let acked = acknowledged(storm).await;
    let app = TestApp::over(db, |_| {}).await;
    assert_stored(&app, "s", &acked).await;
}
