//! One user flooding: sends faster than `--send-rate` and room changes faster than
//! `--room-change-rate` are refused with how long to wait (and nothing is written for
//! them), and Subscribe streams beyond `--max-streams-per-user` are refused — also
//! after thousands opened and dropped.

use std::time::Duration;

use chatroom::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{
    self, Backend, Client, Ev, Sub, TestApp, assert_error, chat, create, enter, join, leave,
    member_ids,
};
use crate::on_both_stores;

on_both_stores!(
    sends_over_the_rate_wait_their_turn,
    room_changes_over_the_rate_wait_their_turn,
    streams_beyond_the_cap_are_refused,
);

fn barrage(room: &str, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        kind: pb::MessageKind::Barrage as i32,
        ..chat(room, text)
    }
}

/// The RetryInfo delay of a RATE_LIMITED status.
fn retry_delay(status: &tonic::Status) -> Duration {
    assert_error(status, Code::ResourceExhausted, "RATE_LIMITED");
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo with a delay")
}

async fn sends_over_the_rate_wait_their_turn(backend: Backend) {
    let app = TestApp::with(backend, |c| {
        c.send_rate = 5;
        c.send_burst = 3;
    })
    .await;
    let mut alice = app.client("alice").await;
    alice.create_room(create("r")).await.unwrap();

    // The burst passes; the next CHAT is refused with how long to wait.
    for i in 0..3 {
        alice
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    let delay = retry_delay(&alice.send_message(chat("r", "over")).await.unwrap_err());
    assert!(
        delay <= Duration::from_millis(250),
        "one send's worth at 5/s: {delay:?}"
    );

    // BARRAGE has a bucket of its own; other users have theirs.
    for i in 0..3 {
        alice
            .send_message(barrage("r", &format!("b{i}")))
            .await
            .unwrap();
    }
    retry_delay(&alice.send_message(barrage("r", "over")).await.unwrap_err());
    let mut bob = app.client("bob").await;
    bob.join_room(join("r")).await.unwrap();
    bob.send_message(chat("r", "bob's own")).await.unwrap();

    // A stream's sends draw on the same bucket: refused with retry_after too.
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;
    match sub.send(chat("r", "from the stream")).await {
        Ev::Error(e) => {
            assert_eq!(e.reason, "RATE_LIMITED", "{e:?}");
            assert!(e.retry_after.is_some(), "{e:?}");
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }

    // After the delay, a send passes again.
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    alice
        .send_message(chat("r", "after waiting"))
        .await
        .unwrap();

    // Nothing refused was stored.
    let texts: Vec<String> = common::history(&mut alice, "r")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2", "bob's own", "after waiting"]);
}

async fn room_changes_over_the_rate_wait_their_turn(backend: Backend) {
    let app = TestApp::with(backend, |c| {
        c.room_change_rate = 2;
        c.room_change_burst = 3;
    })
    .await;
    let mut alice = app.client("alice").await;
    // Create, join (already a member) and enter: the burst of three.
    alice.create_room(create("r")).await.unwrap();
    alice.join_room(join("r")).await.unwrap();
    alice.enter_room(enter("r")).await.unwrap();
    // Every room-changing call draws on the same bucket and changes nothing when
    // refused.
    let delay = retry_delay(&alice.create_room(create("r2")).await.unwrap_err());
    assert!(
        delay <= Duration::from_millis(500),
        "one change's worth at 2/s: {delay:?}"
    );
    retry_delay(&alice.leave_room(leave("r")).await.unwrap_err());
    retry_delay(
        &alice
            .delete_room(pb::DeleteRoomRequest {
                room_id: "r".into(),
            })
            .await
            .unwrap_err(),
    );
    assert_error(
        &alice
            .get_room(pb::GetRoomRequest {
                room_id: "r2".into(),
            })
            .await
            .unwrap_err(),
        Code::NotFound,
        "ROOM_NOT_FOUND",
    );
    assert_eq!(member_ids(&alice, "r").await, ["alice"], "still in r");

    // Reads and sends are not room changes; another user has a bucket of its own.
    alice
        .send_message(chat("r", "still sending"))
        .await
        .unwrap();
    let mut bob = app.client("bob").await;
    bob.join_room(join("r")).await.unwrap();

    // After the delay, a change passes again.
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    alice.create_room(create("r2")).await.unwrap();
}

/// Opens a Subscribe stream and proves it is open (a ping answered); the status
/// when it is refused.
async fn open(client: &mut Client) -> Result<Sub, tonic::Status> {
    let (frames, rx) = tokio::sync::mpsc::channel(16);
    let responses = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut sub = Sub::from_parts(frames, responses);
    sub.until_pong().await;
    Ok(sub)
}

async fn streams_beyond_the_cap_are_refused(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_streams_per_user = 3).await;
    let mut alice = app.client("alice").await;
    let mut open_ones = Vec::new();
    for _ in 0..3 {
        open_ones.push(open(&mut alice).await.expect("within the cap"));
    }
    let refused = open(&mut alice).await.err().expect("the fourth is refused");
    assert_error(&refused, Code::ResourceExhausted, "TOO_MANY_STREAMS");
    // Another user is not affected.
    let mut bob = app.client("bob").await;
    let _bob = open(&mut bob).await.expect("bob's first stream");

    // A stream that ends frees its slot.
    open_ones.pop();
    common::eventually("a freed slot", true, || {
        let mut alice = alice.clone();
        async move { open(&mut alice).await.is_ok() }
    })
    .await;

    // Thousands opened and dropped: every slot comes back.
    drop(open_ones);
    for _ in 0..2000 {
        let (frames, rx) = tokio::sync::mpsc::channel::<pb::SubscribeRequest>(1);
        let opened = alice
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        drop((frames, opened));
    }
    common::eventually("three slots again", 3, || {
        let mut alice = alice.clone();
        async move {
            let mut subs = Vec::new();
            while subs.len() < 4 {
                match open(&mut alice).await {
                    Ok(sub) => subs.push(sub),
                    Err(_) => break,
                }
            }
            subs.len()
        }
    })
    .await;
}
