//! Careless and hostile clients: one user must never be able to stall, poison or
//! outgrow the service. Each test is a defect found from outside, over real TCP, on
//! SQLite and on PostgreSQL (the outage test on a PostgreSQL cluster of its own). One
//! test binary, a module per kind of defect.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

mod bad_input;
mod fields;
mod flooding;
mod hang;
mod leaving;
mod memory;
mod outage;
mod presence;
mod stalls;

use chatroom::pb;
use common::{Client, TestServer, chat, join};

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
