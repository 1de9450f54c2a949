//! Careless and hostile clients: one user must never be able to stall, poison or
//! outgrow the service. Each test is a defect found from outside, over real TCP, on
//! SQLite and on PostgreSQL (the outage test on a PostgreSQL cluster of its own).

mod common;

use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Endpoint;

use chatroom::pb;
use common::{
    Backend, Client, Ev, ServerProcess, Sub, TestApp, TestDb, TestServer, UserHeader,
    assert_bad_request, assert_error, chat, create, eventually, eventually_room, get_room,
    health_status, join, millis,
};
use pb::chat_room_service_client::ChatRoomServiceClient;

on_both_stores!(
    stalled_streams_do_not_starve_other_calls,
    a_vanished_client_is_reaped_by_keepalive,
    a_nul_byte_fails_only_its_own_request,
    the_writer_isolates_an_entry_the_database_refuses,
    online_members_with_a_stale_last_seen_do_not_block_timeouts,
    a_stream_cancelled_mid_attach_leaves_nobody_online,
    a_presence_timeout_removed_and_added_again_applies,
    a_member_who_left_gets_nothing_committed_after,
    a_member_who_switched_while_behind_follows,
    malformed_frames_are_invalid_argument,
    durations_below_a_millisecond_are_refused,
    a_flood_of_small_frames_does_not_end_the_connection,
    room_updates_do_not_multiply_memory,
    catch_up_is_bounded_by_bytes,
);

mod postgres_outage {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_outage_fails_fast_and_recovers() {
        super::a_database_outage_fails_fast_and_recovers().await
    }
}

/// Fills a room with `n` small messages from `client` (a member), 16 at a time.
async fn fill(client: &Client, room: &str, n: usize, text: impl Fn(usize) -> String) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let mut client = client.clone();
        let texts: Vec<String> = (lane..n).step_by(16).map(&text).collect();
        let room = room.to_string();
        tasks.spawn(async move {
            for t in texts {
                client.send_message(chat(&room, &t)).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// A stream of a new member `user` of `room` that attaches it from the start (a long
/// catch-up) and then never reads: what it holds must be kept for as long as the
/// stream should stall.
async fn stalled_stream(
    server: &TestServer,
    user: &str,
    room: &str,
) -> (
    Client,
    tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
    tonic::Streaming<pb::SubscribeResponse>,
) {
    let mut client = server.small_window_client(user);
    client.join_room(join(room)).await.unwrap();
    let (frames, rx) = tokio::sync::mpsc::channel(4);
    let responses = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    frames
        .send(pb::SubscribeRequest {
            request_id: "a".into(),
            frame: Some(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
                room_id: room.into(),
                after_seq: Some(0),
            })),
        })
        .await
        .unwrap();
    (client, frames, responses)
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

/// A NUL byte is refused at the edge on both stores, and never fails anyone else's
/// message (on PostgreSQL it used to fail the whole group-committed batch).
async fn a_nul_byte_fails_only_its_own_request(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    let mut mallory = app.client("mallory").await;
    app.join("mallory", "r").await;

    let mut sends = tokio::task::JoinSet::new();
    for i in 0..30 {
        let mut alice = alice.clone();
        sends.spawn(async move { alice.send_message(chat("r", &format!("ok {i}"))).await });
    }
    let bad = mallory.send_message(chat("r", "nul\0here"));
    let bad = bad.await.unwrap_err();
    assert_bad_request(&bad, "text");
    let mut ok = 0;
    while let Some(sent) = sends.join_next().await {
        sent.unwrap().expect("alice's message is stored");
        ok += 1;
    }
    assert_eq!(ok, 30);

    let with = |f: fn(&mut pb::SendMessageRequest)| {
        let mut req = chat("r", "x");
        f(&mut req);
        req
    };
    let content_type = with(|r| r.content_type = "text/\0plain".into());
    let client_msg_id = with(|r| r.client_msg_id = "id\0".into());
    for (req, field) in [
        (content_type, "content_type"),
        (client_msg_id, "client_msg_id"),
    ] {
        let status = mallory.send_message(req).await.unwrap_err();
        assert_bad_request(&status, field);
    }
    // Over a stream, the same.
    let mut sub = app.attached("mallory", "r").await;
    match sub.send(chat("r", "\0")).await {
        Ev::Error(e) => assert_eq!(e.reason, "INVALID_ARGUMENT"),
        other => panic!("expected an error, got {other:?}"),
    }
    // Attributes and page tokens.
    let mut attrs = create("attrs");
    attrs.attributes.insert("k".into(), "v\0".into());
    assert_bad_request(&alice.create_room(attrs).await.unwrap_err(), "attributes");
    let update = pb::UpdateRoomRequest {
        room_id: "r".into(),
        set_attributes: [("k\0".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    assert_bad_request(
        &alice.update_room(update).await.unwrap_err(),
        "set_attributes",
    );
    use base64::Engine;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("k1:a\0b");
    let status = alice
        .list_rooms(pb::ListRoomsRequest {
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_request(&status, "page_token");

    // Nothing of the refused ones was stored; alice's 30 were.
    let stored = common::history(&mut alice, "r").await;
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|m| !m.text.contains('\0')));
}

/// The message writer applies a batch in one transaction; when the database refuses
/// one entry of it, the others are still stored and answered. The entry here is one
/// the API would refuse (a NUL byte), handed to the writer directly: PostgreSQL
/// cannot store it, SQLite can.
async fn the_writer_isolates_an_entry_the_database_refuses(backend: Backend) {
    use chatroom::domain::{Draft, Message, MessageKind, RoomId};
    let mut app = TestApp::start(backend).await;
    app.create_room("alice", "r").await;
    app.stop_server().await;

    let store = chatroom::store::Store::connect(&app.db().url, 4)
        .await
        .unwrap();
    let hubs = std::sync::Arc::new(chatroom::live::Hubs::new(
        16,
        1 << 20,
        Duration::from_millis(10),
    ));
    let (sequencer, writer) = chatroom::rooms::Sequencer::start(store.clone(), hubs);
    let draft = |text: &str| Draft {
        room_id: RoomId::parse("r").unwrap(),
        kind: MessageKind::Chat,
        text: text.into(),
        payload: Vec::new(),
        content_type: String::new(),
        to_user_ids: Vec::new(),
        client_msg_id: String::new(),
    };
    // Handed over before any is awaited, so that they share batches.
    let mut answers = Vec::new();
    for i in 0..40 {
        let text = if i == 17 {
            "bad\0".to_string()
        } else {
            format!("ok {i}")
        };
        let message = Message::accept(draft(&text), "alice", "");
        answers.push(sequencer.submit(message, false).await.unwrap());
    }
    let mut stored = 0;
    let mut refused = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        match answer.await {
            Ok(_) => stored += 1,
            Err(error) => {
                assert_eq!(i, 17, "only the bad entry fails: {error}");
                refused += 1;
            }
        }
    }
    let nul_storable = app.db().backend() == Backend::Sqlite;
    assert_eq!(stored, if nul_storable { 40 } else { 39 });
    assert_eq!(refused, if nul_storable { 0 } else { 1 });
    drop(sequencer);
    writer.await.unwrap();
    store.close().await;
}

/// Runs one SQL statement against the test's database from outside the server.
async fn execute(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    if db.backend() == Backend::Sqlite {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

/// Hundreds of attached members whose stored last-seen is long past (as a lost race
/// between a detach and an attach can leave it) must not keep other rooms' presence
/// timeouts from firing.
async fn online_members_with_a_stale_last_seen_do_not_block_timeouts(backend: Backend) {
    let app = TestApp::with(backend, |c| c.member_event_window_ms = 10).await;
    let mut owner = app.client("owner").await;
    let mut crowded = create("crowded");
    crowded.settings = Some(pb::RoomSettings {
        presence_timeout: millis(60_000),
        ..Default::default()
    });
    owner.create_room(crowded).await.unwrap();
    let mut subs = Vec::new();
    let mut client = app.client("u0").await;
    for i in 0..230 {
        let user = format!("u{i}");
        let mut c = app.client(&user).await;
        c.join_room(join("crowded")).await.unwrap();
        let mut sub = Sub::open(&mut c).await;
        sub.attached("crowded", None).await;
        subs.push(sub);
        client = c;
    }
    drop(client);
    execute(
        app.db(),
        "UPDATE members SET last_seen_us = 1 WHERE room_id = 'crowded' AND user_id <> 'owner'",
    )
    .await;

    let mut quick = create("quick");
    quick.settings = Some(pb::RoomSettings {
        presence_timeout: millis(200),
        ..Default::default()
    });
    owner.create_room(quick).await.unwrap();
    // The owner stays, attached; bob goes away.
    let owner_sub = app.attached("owner", "quick").await;
    app.join("bob", "quick").await;
    let sub = app.attached("bob", "quick").await;
    drop(sub);
    eventually_room(&owner, "quick", "bob's presence timeout fired", 1, |r| {
        r.member_count
    })
    .await;
    // The crowded room's attached members stay.
    assert_eq!(
        get_room(&mut owner, "crowded").await.unwrap().member_count,
        231
    );
    drop((subs, owner_sub));
}

/// Streams dropped at every moment of an attach leave nobody online.
async fn a_stream_cancelled_mid_attach_leaves_nobody_online(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    let mut room = create("r");
    room.settings = Some(pb::RoomSettings {
        presence_timeout: millis(600_000),
        ..Default::default()
    });
    owner.create_room(room).await.unwrap();
    let mut bob = app.client("bob").await;
    app.join("bob", "r").await;
    for i in 0..120u64 {
        let mut sub = Sub::open(&mut bob).await;
        sub.request(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
            room_id: "r".into(),
            after_seq: None,
        }))
        .await;
        // Each stream goes away at another moment of its attach: what is tested.
        tokio::time::sleep(Duration::from_micros(50 * (i % 40))).await;
        drop(sub);
    }
    eventually_room(
        &owner,
        "r",
        "nobody online after every stream went away",
        0,
        |r| r.online_count,
    )
    .await;
}

/// A presence timeout removed and then added again while a member is attached applies
/// once the member's stream goes away — also when the stream goes away before it has
/// read the second change (the detach used the stream's own, stale copy of the room).
async fn a_presence_timeout_removed_and_added_again_applies(backend: Backend) {
    let app = TestApp::with(backend, |c| c.member_event_window_ms = 10).await;
    let mut owner = app.client("owner").await;
    let with_timeout = |ms| pb::RoomSettings {
        presence_timeout: ms,
        ..Default::default()
    };
    app.create_room("owner", "big").await;
    fill(&owner, "big", 2000, |i| format!("m{i}")).await;
    let mut room = create("r");
    room.settings = Some(with_timeout(millis(300)));
    owner.create_room(room).await.unwrap();
    // The owner stays, attached: only bob may go.
    let owner_sub = app.attached("owner", "r").await;
    let mut bob = app.small_window_client("bob");
    bob.join_room(join("r")).await.unwrap();
    bob.join_room(join("big")).await.unwrap();
    let mut sub = Sub::open(&mut bob).await;
    sub.attached("r", None).await;
    let update = |settings| pb::UpdateRoomRequest {
        room_id: "r".into(),
        settings: Some(settings),
        ..Default::default()
    };
    owner.update_room(update(with_timeout(None))).await.unwrap();
    // The stream has seen the removal...
    loop {
        if let Ev::RoomUpdated(_) = sub.event().await {
            break;
        }
    }
    sub.until_pong().await;
    // ...but then falls behind (a long catch-up it does not read) and goes away
    // before it has read that the timeout is back.
    sub.request(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
        room_id: "big".into(),
        after_seq: Some(0),
    }))
    .await;
    // Time to fall behind on the catch-up it does not read (nothing it reads can say so).
    tokio::time::sleep(Duration::from_millis(300)).await;
    owner
        .update_room(update(with_timeout(millis(300))))
        .await
        .unwrap();
    drop(sub);
    eventually_room(&owner, "r", "bob's presence timeout fired", 1, |r| {
        r.member_count
    })
    .await;
    let members = common::all_members(&mut owner, "r").await;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, "owner");
    drop(owner_sub);
}

/// A new room of `owner` with 2,000 messages, and the stream of bob, a member, that
/// attached it from the start and read only a few of them: far behind, catching up.
async fn far_behind(server: &TestServer, owner: &mut Client, room: &str) -> (Client, Sub) {
    owner.create_room(create(room)).await.unwrap();
    fill(owner, room, 2000, |i| format!("before {i}")).await;
    let mut bob = server.small_window_client("bob");
    bob.join_room(join(room)).await.unwrap();
    let mut sub = Sub::open(&mut bob).await;
    sub.attached(room, Some(0)).await;
    for _ in 0..5 {
        sub.event().await;
    }
    (bob, sub)
}

/// Once the stream's user has left `room` (the last seq then: `at`), 20 more messages
/// are sent to it: the stream reads on until it is detached with `reason`, and none of
/// what it got from the room was committed after the leave.
async fn nothing_after_the_detach(
    owner: &mut Client,
    sub: &mut Sub,
    room: &str,
    reason: pb::DetachReason,
) {
    let at = get_room(owner, room).await.unwrap().last_seq;
    for i in 0..20 {
        owner
            .send_message(chat(room, &format!("after {i}")))
            .await
            .unwrap();
    }
    loop {
        match sub.event().await {
            Ev::Message(m) => assert!(
                m.room_id == room && m.seq <= at,
                "message {} of {} committed after the leave reached the leaver",
                m.seq,
                m.room_id
            ),
            Ev::Detached(d) => {
                assert_eq!(d.room_id, room);
                assert_eq!(d.reason, reason as i32);
                return;
            }
            _ => {}
        }
    }
}

/// A stream catching up slowly when its user leaves gets nothing committed after the
/// leave: catch-up stops, and the stream is told it left.
async fn a_member_who_left_gets_nothing_committed_after(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    let (mut bob, mut sub) = far_behind(&app, &mut owner, "r").await;
    bob.leave_room(pb::LeaveRoomRequest {
        room_id: "r".into(),
    })
    .await
    .unwrap();
    nothing_after_the_detach(&mut owner, &mut sub, "r", pb::DetachReason::Left).await;
}

/// The same for a switch: a stream catching up slowly on `from` when its user switches
/// gets nothing of `from` committed after the switch, is told it switched, and
/// follows into `to`.
async fn a_member_who_switched_while_behind_follows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "to").await;
    let (mut bob, mut sub) = far_behind(&app, &mut owner, "from").await;
    bob.switch_room(pb::SwitchRoomRequest {
        from_room_id: "from".into(),
        to_room_id: "to".into(),
        display_name: "Bob".into(),
    })
    .await
    .unwrap();
    nothing_after_the_detach(&mut owner, &mut sub, "from", pb::DetachReason::Switched).await;
    loop {
        match sub.event().await {
            Ev::Attached(a) => {
                assert_eq!(a.room.unwrap().room_id, "to");
                break;
            }
            Ev::Message(m) => panic!("message {} of {} after the detach", m.seq, m.room_id),
            _ => {}
        }
    }
    app.send("owner", "to", "welcome").await;
    loop {
        if let Ev::Message(m) = sub.event().await {
            assert_eq!((m.room_id.as_str(), m.text.as_str()), ("to", "welcome"));
            break;
        }
    }
}

/// Encodes a message whose string field `tag` holds bytes that are not UTF-8.
fn with_bad_utf8(tag: u32) -> bytes::Bytes {
    let mut buf = Vec::new();
    prost::encoding::bytes::encode(tag, &vec![0xff, 0xfe, 0x41], &mut buf);
    bytes::Bytes::from(buf)
}

/// A codec that sends pre-encoded bytes and decodes `D`.
#[derive(Default)]
struct RawCodec<D>(std::marker::PhantomData<D>);

struct RawEncoder;
impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: prost::Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<D> {
    type Encode = bytes::Bytes;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<D>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Frames and requests that are not valid protobuf (a string that is not UTF-8) are
/// INVALID_ARGUMENT with ErrorInfo, on streams and unary calls alike.
async fn malformed_frames_are_invalid_argument(backend: Backend) {
    let app = TestApp::start(backend).await;
    let channel = app.channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);

    let mut request = tonic::Request::new(with_bad_utf8(1)); // GetRoomRequest.room_id
    request
        .metadata_mut()
        .insert("x-user-id", "alice".parse().unwrap());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, pb::GetRoomResponse, _>(
            request,
            "/chatroom.v1.ChatRoomService/GetRoom".parse().unwrap(),
            RawCodec::<pb::GetRoomResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");

    // SubscribeRequest.request_id (1) holds bytes that are not UTF-8.
    let frames = tokio_stream::iter(vec![with_bad_utf8(1)]);
    let mut request = tonic::Request::new(frames);
    request
        .metadata_mut()
        .insert("x-user-id", "alice".parse().unwrap());
    grpc.ready().await.unwrap();
    let mut responses = grpc
        .streaming::<_, _, pb::SubscribeResponse, _>(
            request,
            "/chatroom.v1.ChatRoomService/Subscribe".parse().unwrap(),
            RawCodec::<pb::SubscribeResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let status = match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
        Ok(Ok(Some(frame))) => panic!("a malformed frame was answered: {frame:?}"),
        Ok(Ok(None)) => panic!("the stream ended with OK"),
        Ok(Err(status)) => status,
        Err(_) => panic!("the stream did not end"),
    };
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
}

/// Durations are stored in whole milliseconds: a non-zero one below a millisecond is
/// refused (it used to be stored as 0, "unset", yet act at once), and one with a
/// fraction of a millisecond is rounded up — the room answers what is stored.
async fn durations_below_a_millisecond_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let micros = |us: i32| {
        Some(prost_types::Duration {
            seconds: 0,
            nanos: us * 1000,
        })
    };
    for field in ["presence_timeout", "destroy_when_empty_after"] {
        let mut room = create("r");
        let mut settings = pb::RoomSettings::default();
        match field {
            "presence_timeout" => settings.presence_timeout = micros(500),
            _ => settings.destroy_when_empty_after = micros(500),
        }
        room.settings = Some(settings);
        let status = alice.create_room(room).await.unwrap_err();
        assert_bad_request(&status, &format!("settings.{field}"));
    }
    assert_error(
        &get_room(&mut alice, "r").await.unwrap_err(),
        Code::NotFound,
        "ROOM_NOT_FOUND",
    );
    let mut room = create("r");
    room.settings = Some(pb::RoomSettings {
        presence_timeout: micros(1500),
        ..Default::default()
    });
    let created = alice
        .create_room(room)
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let two_ms = micros(2000);
    assert_eq!(created.settings.unwrap().presence_timeout, two_ms);
    let read = get_room(&mut alice, "r").await.unwrap();
    assert_eq!(read.settings.unwrap().presence_timeout, two_ms);
    assert_eq!(read.member_count, 1);
}

/// A raw HTTP/2 connection: every gRPC message its streams send goes out as a DATA
/// frame of its own.
mod raw {
    use bytes::{Buf, Bytes, BytesMut};
    use prost::Message;

    use super::pb;

    pub struct Conn(h2::client::SendRequest<Bytes>);

    pub struct Stream {
        pub send: h2::SendStream<Bytes>,
        pub recv: Reader,
    }

    /// The receiving half of a stream.
    pub struct Reader {
        recv: h2::RecvStream,
        buf: BytesMut,
    }

    impl Conn {
        pub async fn open(addr: std::net::SocketAddr) -> Conn {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (send, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Conn(send)
        }

        pub async fn subscribe(&mut self, user: &str) -> Stream {
            let request = http::Request::builder()
                .method("POST")
                .uri("http://localhost/chatroom.v1.ChatRoomService/Subscribe")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("x-user-id", user)
                .body(())
                .unwrap();
            let mut ready = self.0.clone().ready().await.unwrap();
            let (response, send) = ready.send_request(request, false).unwrap();
            let recv = response.await.unwrap().into_body();
            Stream {
                send,
                recv: Reader {
                    recv,
                    buf: BytesMut::new(),
                },
            }
        }
    }

    pub fn frame(request: &pb::SubscribeRequest) -> Bytes {
        let body = request.encode_to_vec();
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(0);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        Bytes::from(out)
    }

    impl Stream {
        /// Sends one request as a DATA frame of its own.
        pub fn send(&mut self, request: &pb::SubscribeRequest) {
            self.send.send_data(frame(request), false).unwrap();
        }

        pub async fn next(&mut self) -> Option<pb::SubscribeResponse> {
            self.recv.next().await
        }
    }

    impl Reader {
        /// The next response; `None` when the stream ended. Reading releases window.
        pub async fn next(&mut self) -> Option<pb::SubscribeResponse> {
            loop {
                if self.buf.len() >= 5 {
                    let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                    if self.buf.len() >= 5 + len {
                        self.buf.advance(5);
                        let body = self.buf.split_to(len);
                        return Some(pb::SubscribeResponse::decode(body).unwrap());
                    }
                }
                let data = match self.recv.data().await? {
                    Ok(data) => data,
                    Err(error) => {
                        eprintln!("the stream failed: {error:?}");
                        return None;
                    }
                };
                let _ = self.recv.flow_control().release_capacity(data.len());
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

fn ping(id: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request_id: id.into(),
        frame: Some(pb::subscribe_request::Frame::Ping(pb::Ping {})),
    }
}

/// Thousands of tiny frames pipelined on one stream while it is busy with database
/// work do not get the whole connection closed (h2 sends GOAWAY when too many small
/// DATA frames wait unread): the stream reads on while its work runs, answering what
/// it cannot queue with an error, and its neighbour on the same connection carries on.
async fn a_flood_of_small_frames_does_not_end_the_connection(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.create_room("owner", "big").await;

    let mut conn = raw::Conn::open(app.addr).await;
    let mut neighbour = conn.subscribe("owner").await;
    neighbour.send(&ping("n0"));
    assert_eq!(neighbour.next().await.unwrap().request_id, "n0");

    let flooder = conn.subscribe("owner").await;
    let (mut send, mut answers) = (flooder.send, flooder.recv);
    // The client reads its answers as they come, on a task of its own.
    let reader = tokio::spawn(async move {
        let (mut answered, mut errors) = (0u32, 0u32);
        while let Some(r) = tokio::time::timeout(common::WAIT, answers.next())
            .await
            .expect("the flooded stream answers")
        {
            match r.event {
                Some(Ev::Error(e)) if e.reason == "TOO_MANY_PENDING_FRAMES" => errors += 1,
                Some(Ev::Error(e)) => {
                    // A refused attach leaves its detach nothing to detach, a refused
                    // detach leaves the next attach attached already.
                    assert!(
                        ["NOT_ATTACHED", "ALREADY_ATTACHED"].contains(&e.reason.as_str()),
                        "{e:?}"
                    );
                    answered += 1;
                }
                Some(_) => answered += 1,
                None => {}
            }
            // Every frame is answered once: 6,000 and the last ping.
            if answered + errors == 6001 {
                return (answered, errors);
            }
        }
        panic!("the flooded stream ended ({answered} answered, {errors} refused)");
    });
    // Pipelined attaches and detaches, each a DATA frame of its own, as fast as a
    // client writes them one by one (20 a millisecond): every attach is database
    // work, and the frames pour in meanwhile. (A burst of thousands in one write is
    // h2's own business: it closes such a connection whatever the server does.)
    let attach = pb::SubscribeRequest {
        request_id: "a".into(),
        frame: Some(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
            room_id: "big".into(),
            after_seq: None,
        })),
    };
    let detach = pb::SubscribeRequest {
        request_id: "d".into(),
        frame: Some(pb::subscribe_request::Frame::Detach(pb::DetachRoom {
            room_id: "big".into(),
        })),
    };
    for i in 0..3000 {
        send.send_data(raw::frame(&attach), false).unwrap();
        send.send_data(raw::frame(&detach), false).unwrap();
        if i % 10 == 0 {
            // Paces the flood as a client writing frame by frame does.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    send.send_data(raw::frame(&ping("last")), false).unwrap();
    let (answers, errors) = reader.await.unwrap();
    // The last frame may be answered either way; all before it were answered once.
    assert!(
        answers + errors >= 6000,
        "{answers} answers, {errors} errors"
    );
    // The neighbour on the same connection still works.
    neighbour.send(&ping("n1"));
    assert_eq!(
        tokio::time::timeout(common::WAIT, neighbour.next())
            .await
            .unwrap()
            .expect("the neighbour's stream is open")
            .request_id,
        "n1"
    );
}

/// A room whose attributes are as large as allowed (64 values of 4,096 four-byte
/// characters, 1 MiB), updated 60 times while 20 streams are attached and one of them
/// never reads: the server keeps one copy of the room, not one per stream and update.
async fn room_updates_do_not_multiply_memory(backend: Backend) {
    let db = TestDb::new(backend).await;
    let process = ServerProcess::start(&db).await;
    let server = &process.server;
    let mut owner = server.client("owner").await;
    server.create_room("owner", "r").await;
    let mut subs = Vec::new();
    for i in 0..20 {
        let user = format!("u{i}");
        server.join(&user, "r").await;
        subs.push(server.attached(&user, "r").await);
    }
    let before = process.rss_mib();
    for round in 0..60 {
        let value: String = std::iter::repeat_n('😀', 4096 - 1)
            .chain(std::iter::once(char::from(b'a' + (round % 26) as u8)))
            .collect();
        let attributes = (0..64).map(|k| (format!("k{k}"), value.clone())).collect();
        owner
            .update_room(pb::UpdateRoomRequest {
                room_id: "r".into(),
                set_attributes: attributes,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Every stream but the first takes what it was sent.
    for sub in subs.iter_mut().skip(1) {
        sub.until_pong().await;
    }
    // Lets the server settle what it sent before its memory is read (a measurement).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = process.rss_mib() - before;
    eprintln!("60 updates of a 1 MiB room: the server grew by {grown:.1} MiB");
    assert!(grown < 40.0, "the server grew by {grown:.0} MiB");
    drop(subs);
}

/// Streams that attach to a room of large messages and never read hold a bounded
/// number of bytes each, not a whole catch-up page of them.
async fn catch_up_is_bounded_by_bytes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let process = ServerProcess::start(&db).await;
    let server = &process.server;
    let owner = server.client("owner").await;
    owner.clone().create_room(create("r")).await.unwrap();
    let payload = vec![7u8; 64 * 1024];
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..8 {
        let mut owner = owner.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            for i in 0..40 {
                let mut m = chat("r", &format!("{lane}:{i}"));
                m.payload = payload.clone();
                owner.send_message(m).await.unwrap();
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let before = process.rss_mib();
    let mut stalled = Vec::new();
    for i in 0..20 {
        stalled.push(stalled_stream(server, &format!("s{i}"), "r").await);
    }
    // Lets the stalled catch-ups load all they would before memory is read (a
    // measurement; a stream that never reads has no marker to wait for).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = process.rss_mib() - before;
    eprintln!("20 stalled streams: the server grew by {grown:.1} MiB");
    // A whole page each (256 messages of 64 KiB) would be 16 MiB per stream.
    assert!(
        grown < 80.0,
        "20 stalled streams grew the server by {grown:.0} MiB"
    );
    drop(stalled);
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
