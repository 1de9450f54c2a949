//! Clients that stop reading or vanish, and a database that goes away: nobody else
//! waits on them, and the server recovers.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Endpoint;

use crate::common::{
    self, Backend, Ev, Sub, TestApp, TestDb, UserHeader, assert_error, chat, create, eventually,
    eventually_room, get_room, health_status, join,
};
use crate::{fill, on_both_stores, stalled_stream};
use chatroom::pb;
use pb::chat_room_service_client::ChatRoomServiceClient;

on_both_stores!(
    stalled_streams_do_not_starve_other_calls,
    a_vanished_client_is_reaped_by_keepalive,
    a_stream_left_unread_closes_its_connection,
);

mod postgres_outage {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_outage_fails_fast_and_recovers() {
        super::a_database_outage_fails_fast_and_recovers().await
    }
}

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

/// PostgreSQL goes away: sends fail fast with UNAVAILABLE (never INTERNAL, never a
/// database text), health turns NOT_SERVING; once it is back the same server works
/// again and every acknowledged message is there.
async fn a_database_outage_fails_fast_and_recovers() {
    let cluster = common::pg_cluster::PgCluster::start();
    let app = TestApp::over(TestDb::on(cluster.url()), |_| {}).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    let mut sub = app.attached("alice", "r").await;
    app.send("alice", "r", "before").await;

    cluster.down();
    for i in 0..3 {
        let started = Instant::now();
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            alice.send_message(chat("r", &format!("during {i}"))),
        )
        .await
        .expect("a send answers while the database is down")
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "answered after {:?}",
            started.elapsed()
        );
        assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");
        let text = status.message().to_lowercase();
        for leak in [
            "pool",
            "connection",
            "refused",
            "sqlx",
            "postgres",
            "io error",
        ] {
            assert!(
                !text.contains(leak),
                "details reached the client: {status:?}"
            );
        }
    }
    match sub.send(chat("r", "during, on the stream")).await {
        Ev::Error(e) => {
            assert_eq!(e.reason, "STORE_UNAVAILABLE");
            assert_eq!(e.code, Code::Unavailable as i32);
            let text = e.message.to_lowercase();
            assert!(
                !text.contains("pool") && !text.contains("connection"),
                "{e:?}"
            );
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    eventually("health is NOT_SERVING", 2, || health_status(&app, "")).await;

    cluster.up();
    eventually("sends work again", true, || {
        let mut alice = alice.clone();
        async move { alice.send_message(chat("r", "after")).await.is_ok() }
    })
    .await;
    eventually("health is SERVING", 1, || health_status(&app, "")).await;
    let stored: Vec<String> = common::history(&mut alice, "r")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(stored.first().map(String::as_str), Some("before"));
    assert!(
        stored.iter().all(|t| !t.starts_with("during")),
        "{stored:?}"
    );
    assert!(stored.iter().any(|t| t == "after"));
    drop(sub);
    app.stop().await;
}
