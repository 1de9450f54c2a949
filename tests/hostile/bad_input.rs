//! Input the server must refuse without harm to anyone else: NUL bytes, bytes that
//! are not protobuf, durations it cannot store, floods of tiny frames, 64 MiB requests.

use std::time::Duration;

use tonic::Code;

use crate::common::{
    self, Backend, Ev, Sub, TestApp, assert_bad_request, assert_error, chat, create, get_room,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    a_nul_byte_fails_only_its_own_request,
    the_writer_isolates_an_entry_the_database_refuses,
    malformed_frames_are_invalid_argument,
    durations_below_a_millisecond_are_refused,
    a_flood_of_small_frames_does_not_end_the_connection,
    oversized_requests_are_refused_by_size,
);

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
    use chatroom::domain::{Clock, Draft, Message, MessageKind, RoomId};
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
        tokio_util::task::TaskTracker::new(),
    ));
    let window = std::time::Duration::from_secs(120);
    let (sequencer, writers) = chatroom::rooms::Sequencer::start(store.clone(), hubs, window, 1);
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
        let message = Message::accept(draft(&text), "alice", "", Clock::system().now());
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
    for writer in writers {
        writer.await.unwrap();
    }
    store.close().await;
}

/// Encodes a message whose string field `tag` holds bytes that are not UTF-8.
pub(crate) fn with_bad_utf8(tag: u32) -> bytes::Bytes {
    let mut buf = Vec::new();
    prost::encoding::bytes::encode(tag, &vec![0xff, 0xfe, 0x41], &mut buf);
    bytes::Bytes::from(buf)
}

/// A codec that sends pre-encoded bytes and decodes `D`.
#[derive(Default)]
pub(crate) struct RawCodec<D>(std::marker::PhantomData<D>);

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

pub(crate) struct RawEncoder;

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

/// A 64 MiB request — unary or a stream frame — is refused by its size before it is
/// buffered whole (the limit follows the configured message limits, about 1.1 MiB by
/// default): RESOURCE_EXHAUSTED `REQUEST_TOO_LARGE` with its `ErrorInfo` (the limit in
/// its metadata), nothing stored, and the server and the connection's other calls go
/// on.
async fn oversized_requests_are_refused_by_size(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    let huge = pb::SendMessageRequest {
        payload: vec![7u8; 64 << 20],
        ..chat("r", "huge")
    };
    let status = alice.send_message(huge.clone()).await.unwrap_err();
    common::assert_error(&status, tonic::Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    let limit = too_large_limit(&status);
    assert!(
        (1 << 20..2 << 20).contains(&limit),
        "the limit follows the message limits: {limit}"
    );

    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;
    sub.frames_raw(pb::SubscribeRequest {
        request_id: "huge".into(),
        frame: Some(pb::subscribe_request::Frame::Send(huge)),
    })
    .await;
    let ended = loop {
        match sub.responses_result().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    common::assert_error(&ended, tonic::Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    assert_eq!(too_large_limit(&ended), limit);

    // Nothing was stored; the same client's next calls are served.
    alice.send_message(chat("r", "small")).await.unwrap();
    let texts: Vec<String> = common::history(&mut alice, "r")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["small"]);
}

/// The `limit` a REQUEST_TOO_LARGE refusal names in its `ErrorInfo`.
fn too_large_limit(status: &tonic::Status) -> usize {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info().expect("an ErrorInfo");
    info.metadata["limit"].parse().expect("a number")
}
