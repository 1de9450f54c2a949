//! Clients that stop reading or vanish: nobody else waits on them.

use std::time::{Duration, Instant};

use tonic::transport::Endpoint;

use crate::common::{
    Backend, Ev, Sub, TestApp, UserHeader, chat, create, eventually, eventually_room, get_room,
    join,
};
use crate::{fill, on_both_stores, stalled_stream};
use chatroom::pb;
use pb::chat_room_service_client::ChatRoomServiceClient;

on_both_stores!(
    stalled_streams_do_not_starve_other_calls,
    a_vanished_client_is_reaped_by_keepalive,
    a_stream_left_unread_closes_its_connection,
);

/// Streams that attach with a long catch-up and then never read must not hold the
/// database: everyone else's reads, attaches and sends go on.
async fn stalled_streams_do_not_starve_other_calls(backend: Backend) {
    let app = TestApp::start(backend).await;
    let owner = app.client("owner").await;
    app.create_room("owner", "big").await;
    fill(&owner, "big", 3000, |i| format!("m{i}")).await;

    // More stalled streams than the pool has connections (8 here, 4 SQLite readers).
    let mut stalled = Vec::new();
    for i in 0..32 {
        stalled.push(stalled_stream(&app, &format!("s{i}"), "big").await);
    }
    // The stalled streams start their catch-ups and stall (the state under test); a
    // stream that never reads has no marker to wait for.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut other = app.client("other").await;
    let started = Instant::now();
    let within = Duration::from_secs(3);
    tokio::time::timeout(within, other.create_room(create("small")))
        .await
        .expect("CreateRoom answers")
        .unwrap();
    tokio::time::timeout(within, get_room(&mut other, "big"))
        .await
        .expect("GetRoom answers")
        .unwrap();
    tokio::time::timeout(within, other.send_message(chat("small", "hi")))
        .await
        .expect("SendMessage answers")
        .unwrap();
    let listed = tokio::time::timeout(
        within,
        other.list_messages(pb::ListMessagesRequest {
            room_id: "small".into(),
            after_seq: Some(0),
            before_seq: None,
            limit: 10,
        }),
    )
    .await
    .expect("ListMessages answers")
    .unwrap();
    assert_eq!(listed.into_inner().messages.len(), 1);
    let mut sub = Sub::open(&mut other).await;
    tokio::time::timeout(within, sub.attached("small", Some(0)))
        .await
        .expect("attach answers");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    drop(stalled);
}

/// A client whose HTTP/2 layer is alive (it answers keepalive pings) but whose
/// application stopped reading one stream: once frames have waited unread for
/// `--stalled-stream-timeout`, its connection is closed, and with it the stream, its
/// slot and its presence. A stream with nothing to send is idle, not stalled, and a
/// stream that reads is not touched.
async fn a_stream_left_unread_closes_its_connection(backend: Backend) {
    let app = TestApp::with(backend, |c| c.stalled_stream_timeout_secs = 1).await;
    app.create_room("owner", "busy").await;
    app.create_room("owner", "quiet").await;
    let mut owner = app.client("owner").await;

    // Carol never reads either, but nothing is sent to her room.
    let (_carol, _carol_frames, mut carol) = stalled_stream(&app, "carol", "quiet").await;
    // Alice stops reading a busy room; Dave reads it.
    let (_alice, _alice_frames, mut alice) = stalled_stream(&app, "alice", "busy").await;
    app.join("dave", "busy").await;
    let mut dave = app.attached("dave", "busy").await;
    let text = "x".repeat(1000);
    for i in 0..300 {
        owner
            .send_message(chat("busy", &format!("{i} {text}")))
            .await
            .unwrap();
    }
    // 300 KB for Alice's 64 KiB window: her stream is blocked; her connection goes.
    let online = |room: &'static str| {
        let mut owner = owner.clone();
        async move { get_room(&mut owner, room).await.unwrap().online_count }
    };
    eventually("alice's stalled stream released", 1, || online("busy")).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut delivered = 0;
        loop {
            match alice.message().await {
                Ok(Some(_)) => delivered += 1,
                Ok(None) => panic!("ended with OK after {delivered} frames"),
                Err(status) => return (delivered, status),
            }
        }
    })
    .await
    .expect("alice's stream ends once what was buffered is read");
    assert!(ended.0 < 300, "{} frames: the stream was not cut", ended.0);

    // Dave read everything and is still attached.
    let seqs = dave.chat_seqs_until(300).await;
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    // Carol's idle stream is still open, longer than the timeout after it attached.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(online("quiet").await, 1, "carol is still online");
    match carol.message().await.expect("carol's stream is open") {
        Some(frame) => assert!(matches!(frame.event, Some(Ev::Attached(_))), "{frame:?}"),
        None => panic!("carol's stream ended"),
    }
}

/// Forwards bytes between a client and the server until `freeze` is set, then stops
/// forwarding in both directions without closing anything: a client that vanished
/// (its machine lost power, a NAT dropped the mapping).
async fn freezable_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                ),
                (Box::new(sr), Box::new(cw)),
            ] {
                let mut frozen = frozen.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        tokio::select! {
                            read = from.read(&mut buf) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) if !*frozen.borrow() => {
                                    if to.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => break,
                            },
                            _ = frozen.changed() => {
                                if *frozen.borrow() {
                                    break;
                                }
                            }
                        }
                    }
                    // Hold both halves open and forward nothing, for as long as the
                    // test runs.
                    std::future::pending::<()>().await;
                    drop((from, to));
                });
            }
        }
    });
    (addr, freeze)
}

/// A client that disappears without closing its connection is noticed by HTTP/2
/// keepalive: its streams end and it goes offline.
async fn a_vanished_client_is_reaped_by_keepalive(backend: Backend) {
    let app = TestApp::with(backend, |c| {
        c.keepalive_interval_secs = 1;
        c.keepalive_timeout_secs = 1;
    })
    .await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    app.join("owner", "r").await;

    let (proxy, freeze) = freezable_proxy(app.addr).await;
    let channel = Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect_lazy();
    let mut ghost = ChatRoomServiceClient::with_interceptor(channel, UserHeader::new("ghost"));
    ghost.join_room(join("r")).await.unwrap();
    let mut sub = Sub::open(&mut ghost).await;
    sub.attached("r", None).await;
    assert_eq!(get_room(&mut owner, "r").await.unwrap().online_count, 1);

    freeze.send(true).unwrap();
    eventually_room(
        &owner,
        "r",
        "the vanished client's stream is gone",
        0,
        |r| r.online_count,
    )
    .await;
    drop(sub);
}
