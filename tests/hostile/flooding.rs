//! One user flooding: sends faster than `--send-rate` and room changes faster than
//! `--room-change-rate` are refused with how long to wait (and nothing is written for
//! them) — sends refused for their room give their token back, up to the rate — Subscribe streams beyond `--max-streams-per-user` are refused — also
//! after thousands opened and dropped — and a flood of attach and detach on one
//! stream answers every frame once and leaves the stream and presence as they should
//! be.

use std::time::Duration;

use chatroom::pb;
use pb::subscribe_request::Frame;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{
    self, Backend, Client, Ev, Sub, TestApp, assert_error, chat, create, enter, join, leave,
    member_ids, test_clock,
};
use crate::on_both_stores;

on_both_stores!(
    sends_over_the_rate_wait_their_turn,
    sends_refused_for_their_room_do_not_use_up_the_rate,
    room_changes_over_the_rate_wait_their_turn,
    streams_beyond_the_cap_are_refused,
    an_attach_detach_flood_leaves_the_stream_consistent,
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
    // The buckets run on the test's clock: no token comes back unless it moves.
    let clock = test_clock();
    let app = TestApp::with_clock(backend, &clock, |c| {
        c.send_rate = 1;
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
    // Exact on the test's clock (none of the second has passed).
    assert!(
        delay > Duration::from_millis(990) && delay <= Duration::from_secs(1),
        "one send's worth at 1/s: {delay:?}"
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

    // After the delay, and not before, a send passes again.
    clock.advance(delay - Duration::from_millis(1));
    retry_delay(
        &alice
            .send_message(chat("r", "too early"))
            .await
            .unwrap_err(),
    );
    clock.advance(Duration::from_millis(1));
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
    let clock = test_clock();
    let app = TestApp::with_clock(backend, &clock, |c| {
        c.room_change_rate = 1;
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
    // Exact on the test's clock (none of the second has passed).
    assert!(
        delay > Duration::from_millis(990) && delay <= Duration::from_secs(1),
        "one change's worth at 1/s: {delay:?}"
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

    // After the delay, and not before, a change passes again.
    clock.advance(delay - Duration::from_millis(1));
    retry_delay(&alice.create_room(create("r2")).await.unwrap_err());
    clock.advance(Duration::from_millis(1));
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

async fn an_attach_detach_flood_leaves_the_stream_consistent(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.create_room("alice", "r").await;
    app.join("bob", "r").await;
    let mut alice = app.client("alice").await;
    let (frames, rx) = tokio::sync::mpsc::channel(1024);
    let responses = alice
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut sub = Sub::from_parts(frames.clone(), responses);

    // 10,000 frames as fast as the connection takes them, read while they go.
    const FRAMES: usize = 10_000;
    let flood = tokio::spawn(async move {
        for i in 0..FRAMES {
            let room_id = "r".to_string();
            let frame = if i % 2 == 0 {
                Frame::Attach(pb::AttachRoom {
                    room_id,
                    ..Default::default()
                })
            } else {
                Frame::Detach(pb::DetachRoom { room_id })
            };
            let request = pb::SubscribeRequest {
                request_id: format!("f{i}"),
                frame: Some(frame),
            };
            frames.send(request).await.expect("stream open");
        }
    });
    let mut answers = vec![0u32; FRAMES];
    let mut answered = 0;
    let mut pending_refusals = 0;
    while answered < FRAMES {
        let response = sub.next().await;
        let Some(i) = response.request_id.strip_prefix('f') else {
            continue;
        };
        let i: usize = i.parse().unwrap();
        answers[i] += 1;
        answered += 1;
        match response.event.expect("an answer") {
            Ev::Attached(_) => assert_eq!(i % 2, 0, "f{i} is a detach"),
            Ev::Detached(_) => assert_eq!(i % 2, 1, "f{i} is an attach"),
            Ev::Error(e) => match e.reason.as_str() {
                "TOO_MANY_PENDING_FRAMES" => pending_refusals += 1,
                "ALREADY_ATTACHED" | "NOT_ATTACHED" => {}
                other => panic!("f{i}: unexpected {other}: {e:?}"),
            },
            other => panic!("f{i} answered with {other:?}"),
        }
    }
    flood.await.unwrap();
    let twice: Vec<_> = (0..FRAMES).filter(|i| answers[*i] != 1).collect();
    assert!(twice.is_empty(), "answered other than once: {twice:?}");
    eprintln!("{pending_refusals} of {FRAMES} refused as pending");

    // The stream goes on: whatever the flood left, r can be detached and attached
    // again, and then delivers a message once.
    let detach = sub
        .request(Frame::Detach(pb::DetachRoom {
            room_id: "r".into(),
        }))
        .await;
    match sub.reply(&detach).await {
        Ev::Detached(_) => {}
        Ev::Error(e) if e.reason == "NOT_ATTACHED" => {}
        other => panic!("detach answered {other:?}"),
    }
    sub.attached("r", None).await;
    let mut bob = app.client("bob").await;
    bob.send_message(chat("r", "after the flood"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.is_empty() {
        for event in sub.until_pong().await {
            if let Ev::Message(m) = event {
                seen.push(m.text);
            }
        }
    }
    assert_eq!(seen, ["after the flood"]);
    let later = sub.until_pong().await;
    assert!(
        !later.iter().any(|e| matches!(e, Ev::Message(_))),
        "delivered twice: {later:?}"
    );

    // Presence counted the stream once, and lets go of it when it ends.
    let online = || {
        let mut bob = bob.clone();
        async move { common::get_room(&mut bob, "r").await.unwrap().online_count }
    };
    assert_eq!(online().await, 1);
    drop(sub);
    common::eventually("alice offline", 0, online).await;
}

/// Sends to a room that does not exist, or where the sender is not a member, give
/// their rate token back: the sends that follow to the sender's own room pass. A
/// flood of them still meets the rate once the refunds (at the send rate) run out.
async fn sends_refused_for_their_room_do_not_use_up_the_rate(backend: Backend) {
    let app = TestApp::with(backend, |c| {
        c.send_rate = 1;
        c.send_burst = 2;
    })
    .await;
    let mut alice = app.client("alice").await;
    alice.create_room(create("mine")).await.unwrap();
    app.create_room("bob", "bobs").await;

    // CHAT to a missing room (refused by the writer), BARRAGE where alice is not a
    // member (refused before publishing): each gives its token back.
    let missing = alice
        .send_message(chat("nowhere", "typo"))
        .await
        .unwrap_err();
    assert_error(&missing, Code::NotFound, "ROOM_NOT_FOUND");
    let outsider = alice.send_message(barrage("bobs", "hi")).await.unwrap_err();
    assert_error(&outsider, Code::PermissionDenied, "NOT_A_MEMBER");
    // The whole burst is still there for the room she meant.
    for i in 0..2 {
        alice
            .send_message(chat("mine", &format!("m{i}")))
            .await
            .unwrap_or_else(|s| panic!("send {i} after refused ones: {s:?}"));
    }
    alice.send_message(barrage("mine", "b")).await.unwrap();

    // A flood of refused sends is still bounded: once refunds run out, RATE_LIMITED.
    let mut limited = false;
    for i in 0..8 {
        match alice.send_message(chat("nowhere", &format!("f{i}"))).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                retry_delay(&status);
                limited = true;
                break;
            }
            Err(status) => assert_error(&status, Code::NotFound, "ROOM_NOT_FOUND"),
            Ok(_) => panic!("a send to a missing room was accepted"),
        }
    }
    assert!(limited, "refused sends flooded past the rate");
}
