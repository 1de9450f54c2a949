//! Browsers' way in, over real HTTP/1.1: gRPC-Web calls (unary, and the
//! server-streaming `Listen`), their errors with details, and CORS for the origins of
//! `--cors-origins` only — on SQLite and on PostgreSQL. Requests are made with reqwest
//! pinned to HTTP/1.1, framed by hand the way a gRPC-Web client frames them.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use tonic_types::StatusExt;

use chatroom::pb;
use common::{Backend, TestApp, chat, create};

on_both_stores!(
    unary_calls_and_their_errors_over_http1,
    listen_streams_history_then_live_until_the_room_is_left,
    cors_answers_only_the_configured_origins,
);

const PAGE: &str = "http://127.0.0.1:8080";

fn http1() -> reqwest::Client {
    // reqwest is built without a TLS provider of its own (the server's is ring).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().http1_only().build().unwrap()
}

/// A gRPC-Web request body: one uncompressed message frame.
fn framed(message: &impl prost::Message) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(message.encoded_len() as u32);
    message.encode(&mut body).unwrap();
    body.to_vec()
}

/// What a gRPC-Web response body holds: message frames, then the trailers frame.
#[derive(Default)]
struct Frames {
    messages: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
    pending: BytesMut,
}

impl Frames {
    /// Takes in `chunk`, splitting out every frame it completes.
    fn feed(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        while self.pending.len() >= 5 {
            let len = u32::from_be_bytes(self.pending[1..5].try_into().unwrap()) as usize;
            if self.pending.len() < 5 + len {
                return;
            }
            let flags = self.pending[0];
            self.pending.advance(5);
            let frame = self.pending.split_to(len).freeze();
            if flags & 0x80 != 0 {
                let mut trailers = http::HeaderMap::new();
                for line in std::str::from_utf8(&frame).unwrap().split("\r\n") {
                    if let Some((name, value)) = line.split_once(':') {
                        trailers.insert(
                            http::HeaderName::from_bytes(name.trim().to_lowercase().as_bytes())
                                .unwrap(),
                            value.trim().parse().unwrap(),
                        );
                    }
                }
                self.trailers = Some(trailers);
            } else {
                assert_eq!(flags, 0, "a compressed frame");
                self.messages.push(frame);
            }
        }
    }

    /// The call's status: from the trailers frame, or — a trailers-only answer, as
    /// gRPC-Web allows for a call that fails before any message — from the headers.
    fn status(&self, headers: &http::HeaderMap) -> tonic::Status {
        let trailers = self.trailers.as_ref().unwrap_or(headers);
        tonic::Status::from_header_map(trailers).expect("a grpc-status trailer or header")
    }
}

/// Calls `method` as `user` over gRPC-Web on HTTP/1.1 and reads the whole answer.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    user: &str,
    request: &impl prost::Message,
) -> (http::HeaderMap, Frames) {
    let response = http1()
        .post(format!(
            "http://{addr}/chatroom.v1.ChatRoomService/{method}"
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("x-user-id", user)
        .body(framed(request))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let headers = response.headers().clone();
    let mut frames = Frames::default();
    frames.feed(&response.bytes().await.unwrap());
    (headers, frames)
}

async fn unary_calls_and_their_errors_over_http1(backend: Backend) {
    let app = TestApp::start(backend).await;
    let addr = app.server().addr;
    let (headers, frames) = call(addr, "CreateRoom", "alice", &create("r")).await;
    assert_eq!(
        headers["content-type"], "application/grpc-web+proto",
        "{headers:?}"
    );
    assert!(
        frames.trailers.is_some(),
        "a success ends with a trailers frame"
    );
    assert_eq!(frames.status(&headers).code(), tonic::Code::Ok);
    assert_eq!(frames.messages.len(), 1);
    let created = pb::CreateRoomResponse::decode(frames.messages[0].clone()).unwrap();
    assert_eq!(created.room.unwrap().room_id, "r");

    // The room exists for native gRPC clients too.
    app.send("alice", "r", "over native gRPC").await;

    // Errors keep their details: a browser reads ErrorInfo from the trailers.
    let (headers, frames) = call(
        addr,
        "GetRoom",
        "alice",
        &pb::GetRoomRequest {
            room_id: "nope".into(),
        },
    )
    .await;
    assert!(frames.messages.is_empty());
    let status = frames.status(&headers);
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "ROOM_NOT_FOUND"
    );

    // A Listen call without its request message is bad input, said so precisely.
    let response = http1()
        .post(format!("http://{addr}/chatroom.v1.ChatRoomService/Listen"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-user-id", "alice")
        .send()
        .await
        .unwrap();
    let headers = response.headers().clone();
    let mut frames = Frames::default();
    frames.feed(&response.bytes().await.unwrap());
    let status = frames.status(&headers);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations;
    assert_eq!(violations[0].field, "request", "{violations:?}");
    app.stop().await;
}

async fn listen_streams_history_then_live_until_the_room_is_left(backend: Backend) {
    let app = TestApp::start(backend).await;
    let addr = app.server().addr;
    app.create_room("alice", "r").await;
    app.join("bob", "r").await;
    for text in ["one", "two"] {
        app.send("alice", "r", text).await;
    }
    let listen = pb::ListenRequest {
        rooms: vec![pb::AttachRoom {
            room_id: "r".into(),
            after_seq: Some(0),
        }],
    };
    let mut response = http1()
        .post(format!("http://{addr}/chatroom.v1.ChatRoomService/Listen"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-user-id", "bob")
        .body(framed(&listen))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let mut frames = Frames::default();
    let mut events = Vec::new();
    // Reads the stream until `want` events have come (or it ends).
    async fn read(
        response: &mut reqwest::Response,
        frames: &mut Frames,
        events: &mut Vec<pb::SubscribeResponse>,
        want: usize,
    ) {
        tokio::time::timeout(common::WAIT, async {
            while events.len() < want && frames.trailers.is_none() {
                match response.chunk().await.unwrap() {
                    Some(chunk) => frames.feed(&chunk),
                    None => return,
                }
                for frame in frames.messages.drain(..) {
                    events.push(pb::SubscribeResponse::decode(frame).unwrap());
                }
            }
        })
        .await
        .expect("events in time");
    }
    use pb::subscribe_response::Event;
    // Attached (answering request "0"), then the history, in order.
    read(&mut response, &mut frames, &mut events, 3).await;
    assert_eq!(events[0].request_id, "0");
    assert!(matches!(&events[0].event, Some(Event::Attached(a)) if !a.history_truncated));
    let texts = |events: &[pb::SubscribeResponse]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Message(m)) => Some(m.text.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(texts(&events), ["one", "two"]);
    // Then live: a message sent with SendMessage while the stream is open.
    let mut alice = app.client("alice").await;
    alice.send_message(chat("r", "three")).await.unwrap();
    read(&mut response, &mut frames, &mut events, 4).await;
    assert_eq!(texts(&events), ["one", "two", "three"]);
    // Leaving the only room ends the stream: detached, then an OK status.
    let mut bob = app.client("bob").await;
    bob.leave_room(common::leave("r")).await.unwrap();
    read(&mut response, &mut frames, &mut events, usize::MAX).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.event, Some(Event::Detached(_)))),
        "{events:?}"
    );
    let status = frames.status(response.headers());
    assert_eq!(status.code(), tonic::Code::Ok, "{status:?}");
    app.stop().await;
}

async fn cors_answers_only_the_configured_origins(backend: Backend) {
    let app = TestApp::with(backend, |c| c.cors_origins = vec![PAGE.into()]).await;
    let addr = app.server().addr;
    let preflight = |origin: &'static str| {
        http1()
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{addr}/chatroom.v1.ChatRoomService/Listen"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-id",
            )
            .send()
    };
    let allowed = preflight(PAGE).await.unwrap();
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], PAGE, "{headers:?}");
    let allow_headers = headers["access-control-allow-headers"].to_str().unwrap();
    for header in ["x-user-id", "authorization", "x-grpc-web", "content-type"] {
        assert!(allow_headers.contains(header), "{allow_headers}");
    }
    let other = preflight("http://elsewhere.example").await.unwrap();
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        other.headers()
    );
    // An actual call from the page's origin exposes the status headers to it.
    let response = http1()
        .post(format!("http://{addr}/chatroom.v1.ChatRoomService/GetRoom"))
        .header("origin", PAGE)
        .header("content-type", "application/grpc-web+proto")
        .header("x-user-id", "alice")
        .body(framed(&pb::GetRoomRequest {
            room_id: "nope".into(),
        }))
        .send()
        .await
        .unwrap();
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{exposed}");
    }
    app.stop().await;
}
